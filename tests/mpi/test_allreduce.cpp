// Statistics reduced across MPI ranks (run under mpirun with 1, 2 and 4
// ranks): the all-reduced HeadMoments / Moments / QueryMoments equal, bit for
// bit, the same Chan merges done locally in the documented tree order, and
// one pass over all tokens to ~1e-12; errors on one rank reach every rank.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <mpi.h>

#include <cmath>
#include <string>
#include <vector>

#include "headrecon/mpi/allreduce_moments.hpp"
#include "headrecon/mpi/collective_error.hpp"
#include "headrecon/synthetic.hpp"

using namespace headrecon;

namespace {
int rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int size() {
  int s = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

// Statistics of tokens [t0, t1) of a synthetic model shifted by 1e3 (a large
// mean: summing uncentered moments would lose digits), in batches of 97 from t0.
HeadMoments piece(const SyntheticModel& m, Kind kind, RefScope scope, std::int32_t window, std::size_t t0,
                  std::size_t t1) {
  const auto& s = m.spec();
  const std::size_t H = std::size_t(m.n_heads(kind)), d = std::size_t(s.head_dim);
  HeadMoments hm(s.n_layers, m.n_heads(kind), s.head_dim, scope, window);
  HoldoutSplit split;
  split.block = 16;
  std::vector<std::vector<float>> bufs(std::size_t(s.n_layers));
  for (std::size_t a = t0; a < t1; a += 97) {
    const std::size_t n = std::min<std::size_t>(97, t1 - a);
    std::vector<AnyHeadsView> views;
    for (std::int32_t l = 0; l < s.n_layers; ++l) {
      auto& b = bufs[std::size_t(l)];
      b.resize(n * H * d);
      m.generate(kind, l, a, n, b.data());
      for (float& x : b) x += 1000.f;
      views.push_back(erase(make_view<const float>(b.data(), b.size(), Extents3{n, H, d}, Layout::token_major)));
    }
    hm.add(views, a, split);
  }
  return hm;
}

// Merges per-rank pieces in the order allreduce documents: for s = 1, 2, 4, ...
// piece r absorbs piece r + s when r mod 2s = 0.
template <class T>
T tree_merge(std::vector<T> p) {
  const std::size_t n = p.size();
  for (std::size_t s = 1; s < n; s <<= 1)
    for (std::size_t r = 0; r + s < n; r += 2 * s) p[r].merge(p[r + s]);
  return p[0];
}

void require_equal(const Moments& a, const Moments& b, double rel) {
  REQUIRE(a.count() == b.count());
  REQUIRE(a.dim() == b.dim());
  double scale = 0.0, err = 0.0;
  for (std::size_t i = 0; i < a.comoment().size(); ++i) {
    scale = std::max(scale, std::fabs(b.comoment()[i]));
    err = std::max(err, std::fabs(a.comoment()[i] - b.comoment()[i]));
  }
  for (std::size_t i = 0; i < a.dim(); ++i) CHECK(std::fabs(a.mean()[i] - b.mean()[i]) <= rel * std::fabs(b.mean()[i]));
  CHECK(err <= rel * scale);
}
}  // namespace

TEST_CASE("allreduce of HeadMoments equals the tree-ordered merge() and one pass", "[mpi]") {
  SyntheticSpec spec;
  spec.n_layers = 3;
  spec.n_heads = 3;
  spec.head_dim = 8;
  const SyntheticModel m(spec);
  const std::size_t tokens = 1000;
  const int n = size();
  for (RefScope scope : {RefScope::same_layer, RefScope::cross_layer, RefScope::cross_layer_window}) {
    std::vector<HeadMoments> pieces;
    // Whole batches per rank (as `headrecon fit` distributes them): the float
    // Gram of a batch is then the same on every split, only the double merges differ.
    const std::size_t batches = (tokens + 96) / 97;
    for (int r = 0; r < n; ++r)
      pieces.push_back(piece(m, Kind::k, scope, 1, std::min(tokens, 97 * (batches * std::size_t(r) / std::size_t(n))),
                             std::min(tokens, 97 * (batches * std::size_t(r + 1) / std::size_t(n)))));
    HeadMoments mine = pieces[std::size_t(rank())];
    mpi::allreduce(mine, MPI_COMM_WORLD);
    const HeadMoments tree = tree_merge(pieces);
    const HeadMoments one = piece(m, Kind::k, scope, 1, 0, tokens);
    REQUIRE(mine.n_groups() == tree.n_groups());
    for (std::size_t g = 0; g < mine.n_groups(); ++g) {
      for (int side = 0; side < 2; ++side) {
        const Moments& a = side ? mine.group_at(g).heldout : mine.group_at(g).train;
        const Moments& b = side ? tree.group_at(g).heldout : tree.group_at(g).train;
        const Moments& c = side ? one.group_at(g).heldout : one.group_at(g).train;
        CHECK(a.count() == b.count());
        CHECK(a.mean() == b.mean());          // bit for bit: the same merges in the same order
        CHECK(a.comoment() == b.comoment());
        require_equal(a, c, 1e-12);           // one pass over all tokens, up to rounding
      }
    }
  }
}

TEST_CASE("allreduce of Moments with a rank that holds nothing, and of QueryMoments", "[mpi]") {
  Moments m(4);
  std::vector<float> rows(40);
  for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = float(1e3 + std::sin(double(i) * 0.7 + rank()));
  if (rank() % 2 == 0) m.add_batch(rows.data(), 10, 4);  // odd ranks add nothing
  mpi::allreduce(m, MPI_COMM_WORLD);
  Moments ref(4);
  for (int r = 0; r < size(); r += 2) {
    for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = float(1e3 + std::sin(double(i) * 0.7 + r));
    ref.add_batch(rows.data(), 10, 4);
  }
  require_equal(m, ref, 1e-12);

  QueryMoments q(2, 2, 4), qref(2, 2, 4);
  for (int r = 0; r < size(); ++r) {
    std::vector<float> v(5 * 2 * 4);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = float(std::cos(double(i) + 3.0 * r));
    const auto view = erase(make_view<const float>(v.data(), v.size(), Extents3{5, 2, 4}, Layout::token_major));
    for (std::int32_t l = 0; l < 2; ++l) {
      if (r == rank()) q.add(l, view);
      qref.add(l, view);
    }
  }
  mpi::allreduce(q, MPI_COMM_WORLD);
  for (std::size_t i = 0; i < q.parts().size(); ++i) require_equal(q.parts()[i], qref.parts()[i], 1e-12);
}

TEST_CASE("an error on one rank is thrown on every rank; shapes that differ are an error", "[mpi]") {
  const int last = size() - 1;
  try {
    mpi::collectively(MPI_COMM_WORLD, [&] {
      if (rank() == last) detail::fail("bad.safetensors: truncated");
    });
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()) == "rank " + std::to_string(last) + " of " + std::to_string(size()) +
                                       ": bad.safetensors: truncated");
  }
  mpi::collectively(MPI_COMM_WORLD, [] {});  // no error: returns on every rank
  if (size() > 1) {
    Moments m(rank() == 0 ? 3 : 4);
    CHECK_THROWS_WITH(mpi::allreduce(m, MPI_COMM_WORLD), Catch::Contains("differ in shape"));
  }
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  const int rc = Catch::Session().run(argc, argv);
  int worst = rc;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}
