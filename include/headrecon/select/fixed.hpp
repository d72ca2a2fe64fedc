#pragma once
/// @file fixed.hpp
/// A user-given selection: the targets and their references are listed in a
/// spec "L.H=L.H,L.H;L.H=L.H" (target = references; layer.head pairs). The
/// budget and --refs are ignored; every other head stays cached.

#include <cctype>
#include <string>

#include "headrecon/select.hpp"

namespace headrecon {

class FixedSelection : public SelectionStrategy {
 public:
  explicit FixedSelection(std::vector<TargetChoice> targets) : targets_(std::move(targets)) {}

  /// Parses a spec; throws Error naming the offending part.
  static std::vector<TargetChoice> parse(const std::string& spec) {
    std::vector<TargetChoice> out;
    std::size_t pos = 0;
    auto number = [&](const std::string& part) {
      std::size_t end = pos;
      while (end < spec.size() && std::isdigit(static_cast<unsigned char>(spec[end]))) ++end;
      if (end == pos || end - pos > 9)
        detail::fail("fixed selection spec '", spec, "': expected a number in ", part, " at offset ", pos);
      const auto v = std::int32_t(std::stol(spec.substr(pos, end - pos)));
      pos = end;
      return v;
    };
    auto expect = [&](char c) {
      if (pos >= spec.size() || spec[pos] != c)
        detail::fail("fixed selection spec '", spec, "': expected '", c, "' at offset ", pos);
      ++pos;
    };
    auto head = [&](const char* part) {
      HeadId h;
      h.layer = number(part);
      expect('.');
      h.head = number(part);
      return h;
    };
    if (spec.empty()) detail::fail("fixed selection needs a spec such as \"0.2=0.0,0.1;1.1=1.0\"");
    while (pos < spec.size()) {
      TargetChoice tc;
      tc.target = head("a target");
      expect('=');
      tc.refs.push_back(head("a reference"));
      while (pos < spec.size() && spec[pos] == ',') {
        ++pos;
        tc.refs.push_back(head("a reference"));
      }
      out.push_back(tc);
      if (pos < spec.size()) expect(';');
    }
    return out;
  }

  std::string name() const override { return "fixed"; }
  Selection select(const HeadMoments& stats, const SelectionOptions& opt) const override {
    const ScopedBlasThreads one_thread(1);  // many small LAPACK calls (blas_threads.hpp)
    Selection sel;
    sel.layers.resize(std::size_t(stats.n_layers()));
    for (const TargetChoice& t : targets_) {
      if (t.target.layer < 0 || t.target.layer >= stats.n_layers() || t.target.head < 0 ||
          t.target.head >= stats.n_heads())
        detail::fail("fixed selection: target ", t.target.layer, ".", t.target.head, " is outside ",
                     stats.n_layers(), " layers x ", stats.n_heads(), " heads");
      if (sel.is_target(t.target))
        detail::fail("fixed selection: target ", t.target.layer, ".", t.target.head, " is listed twice");
      sel.layers[std::size_t(t.target.layer)].push_back(t);
    }
    for (auto& layer : sel.layers) {
      for (TargetChoice& t : layer) {
        for (HeadId r : t.refs)
          if (sel.is_target(r))
            detail::fail("fixed selection: reference ", r.layer, ".", r.head, " of ", t.target.layer, ".",
                         t.target.head, " is itself a target");
        t.score = stats.evaluate(t.target, t.refs, opt.fit).score();  // checks scope and range
      }
      std::sort(layer.begin(), layer.end(),
                [](const TargetChoice& a, const TargetChoice& b) { return a.target.head < b.target.head; });
    }
    return sel;
  }

 private:
  std::vector<TargetChoice> targets_;
};

}  // namespace headrecon
