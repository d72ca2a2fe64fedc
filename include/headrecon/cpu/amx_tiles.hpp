// AMX-BF16 tiles for attention over bf16 and split streams (x86-64 Linux, Intel
// Sapphire Rapids and later): the score and value steps of many jobs (query
// vectors) on one stream run on the tile unit instead of the FMA units, so
// that a block's arithmetic costs a few tile operations and decode is bound
// by its reads. Highway does not drive AMX; these functions are compiled for
// AMX with target attributes and called only where usable() says the CPU and
// the OS allow it (HEADRECON_NO_AMX=1 in the environment, or the macro at
// build time, turns them off).
//
// Precision: bf16 products are exact in f32; the f32 operand of each step
// (the query, the probabilities) is split into two bf16 parts, hi + lo, that
// hold 16 of its 24 mantissa bits, and both parts are multiplied: results
// agree with f32 arithmetic on the same bf16 rows to ~1e-5 relative (AMX
// flushes denormal inputs and outputs to zero).
//
// Rows that are not bf16 (f32, or f16 / q8_0 / q4_0 rows widened to f32)
// take the tiles split too (split_row): each element becomes one 32-bit
// pair of bf16 parts, hi (truncated) + lo (the rounded remainder, so within
// 2^-16 of the element), and the products of every part of both operands
// are summed, so results agree with f32 arithmetic to within 2^-15 (3e-5)
// of the sum of the terms' magnitudes (16 of 24 mantissa bits of each
// operand), against ~1e-7 for the f32 units. A split row of d elements
// reads as a bf16 row of 2d: scores() takes it with queries packed by
// pack_split_queries, values_split() sums it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "headrecon/error.hpp"

#if !defined(HEADRECON_NO_AMX) && defined(__x86_64__) && defined(__linux__) && !defined(__CUDACC__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define HEADRECON_HAS_AMX 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#define HEADRECON_HAS_AMX 0
#endif

namespace headrecon::amx {

/// Jobs of one score or value call: two 16-column (or 16-row) tiles.
inline constexpr std::size_t kJobs = 32;
/// Tokens of one score or value call (bf16 values: two steps of 16 token
/// pairs; split values: four steps of 16 tokens).
inline constexpr std::size_t kTokens = 64;
/// Head sizes the tiles take: multiples of 32 up to this.
inline constexpr std::size_t kMaxDim = 256;
/// One stream's packed query tiles for up to kJobs jobs, in floats.
inline constexpr std::size_t query_tiles_floats(std::size_t d) { return d / 32 * 1024; }
/// Work buffers of one score or value call (rows, probabilities, value
/// pairs, tile results), in floats.
inline constexpr std::size_t work_floats(std::size_t d) { return 32 * d + 3072; }

/// Whether heads of d take the tiles (shape only; usable() says whether this
/// CPU runs them). Workspace sizes reserve the tiles' buffers by this alone,
/// so that they agree across builds.
inline constexpr bool fits(std::size_t d) { return d != 0 && d % 32 == 0 && d <= kMaxDim; }
/// Whether split rows of d elements (two bf16 parts each) take the tiles.
inline constexpr bool split_fits(std::size_t d) { return fits(d) && d <= kMaxDim / 2; }
/// Floats of one packed-query slot that holds either packing for heads of d.
inline constexpr std::size_t query_slot_floats(std::size_t d) {
  return query_tiles_floats(split_fits(d) ? 2 * d : d);
}
/// Work buffers of one values_split call (probabilities, tile results, a
/// partial step's rows), in floats.
inline constexpr std::size_t split_work_floats(std::size_t d) { return 5120 + 16 * d; }
/// Work buffers of one call of either kind for heads of d.
inline constexpr std::size_t call_work_floats(std::size_t d) {
  if (!split_fits(d)) return work_floats(d);
  return split_work_floats(d) > work_floats(2 * d) ? split_work_floats(d) : work_floats(2 * d);
}

#if HEADRECON_HAS_AMX
#define HEADRECON_AMX_TARGET \
  __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,bmi2")))

namespace detail {
// A call's jobs, tokens and head size within what its tiles and buffers hold.
inline void check(std::size_t n, std::size_t nb, std::size_t d, const char* what) {
  if (n > kJobs || nb > kTokens || !fits(d))
    headrecon::detail::fail("amx::", what, ": ", n, " jobs, ", nb, " tokens, head size ", d,
                            " (at most 32 jobs and 64 tokens, head size a multiple of 32 up to 256)");
}
inline bool xgetbv_has(std::uint64_t bits) {
  std::uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return ((std::uint64_t(hi) << 32 | lo) & bits) == bits;
}
inline bool detect() {
  if (const char* e = std::getenv("HEADRECON_NO_AMX"); e && *e && *e != '0') return false;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c >> 27 & 1u)) return false;  // OSXSAVE
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool avx512 = (b >> 16 & 1u) && (b >> 17 & 1u) && (b >> 30 & 1u) && (b >> 31 & 1u);  // F, DQ, BW, VL
  const bool tiles = (d >> 22 & 1u) && (d >> 24 & 1u);                                      // AMX-BF16, AMX-TILE
  if (!avx512 || !tiles || !__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a >> 5 & 1u)) return false;  // AVX512-BF16
  if (!xgetbv_has(0xe6)) return false;  // SSE, AVX and AVX-512 state enabled by the OS
  // Linux hands out the tile data state (8 KiB per thread) on request.
  constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
}
struct alignas(64) TileConfig {
  std::uint8_t palette = 1, start_row = 0, reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

// Sixteen u32 lanes as a vector extension: shifts and masks on it compile to
// the AVX-512 instructions without GCC 12's warnings on their intrinsics.
using U32x16 = std::uint32_t __attribute__((vector_size(64)));

// The bf16 round-to-nearest-even of each lane, as f32 (the bits rounded with
// vector extensions).
HEADRECON_AMX_TARGET inline __m512 hi_f32(__m512 p) {
  const U32x16 b = reinterpret_cast<U32x16>(p);
  return reinterpret_cast<__m512>((b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u);
}

// Sixteen query elements as bf16 hi + lo: hardware round-to-nearest-even
// (a NaN stays NaN), the remainder rounded again.
HEADRECON_AMX_TARGET inline void split_query(__m512 q, __m256i& hi, __m256i& lo) {
  hi = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(q));
  const U32x16 hi_bits = reinterpret_cast<U32x16>(_mm512_maskz_cvtepu16_epi32(0xffff, hi)) << 16;
  lo = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_sub_ps(q, reinterpret_cast<__m512>(hi_bits))));
}

// Prefetches n rows of `bytes` at `at` into L1: tile loads wait for each
// row's line in turn, so the rows should be there first.
inline void to_l1(const void* const* at, std::size_t n, std::size_t bytes) {
  for (std::size_t t = 0; t < n; ++t) {
    const auto a = reinterpret_cast<std::uintptr_t>(at[t]);
    for (std::uintptr_t line = a & ~std::uintptr_t(63); line < a + bytes; line += 64)
      __builtin_prefetch(reinterpret_cast<const void*>(line), 0, 3);
  }
}
}  // namespace detail

/// Whether this process may run the tiles (CPU, OS permission, environment);
/// decided once.
inline bool usable() {
  static const bool ok = detail::detect();
  return ok;
}

/// Configures the calling thread's tiles: eight of 16 rows × 64 bytes.
HEADRECON_AMX_TARGET inline void configure() {
  detail::TileConfig cfg;
  for (int t = 0; t < 8; ++t) cfg.colsb[t] = 64, cfg.rows[t] = 16;
  // Inline asm with the whole struct as its operand: GCC 12 drops the stores
  // above as dead before its _tile_loadconfig builtin.
  __asm__ volatile("ldtilecfg %0" : : "m"(cfg));
}
/// Returns the calling thread's tile state to the OS's initial state.
HEADRECON_AMX_TARGET inline void release() { _tile_release(); }

/// Packs n <= kJobs query vectors of d floats as the B operand of the score
/// tiles: per group of 8 jobs and 32-dimension chunk, one 16-column tile
/// whose columns 2j and 2j + 1 hold job j's hi and lo bf16 parts, in the
/// pair-interleaved layout B[i / 2][2 col + i % 2] = part(q_j[32 c + i]);
/// unused columns are zero.
HEADRECON_AMX_TARGET inline void pack_queries(std::size_t n, const float* const* qs, std::size_t d,
                                              std::uint16_t* out) {
  detail::check(n, kTokens, d, "pack_queries");
  const std::size_t chunks = d / 32, tile = 512;  // a tile: 16 rows of 32 bf16
  if (n % 8)  // the last group's unused columns are zero (earlier groups are written whole)
    std::memset(out + n / 8 * chunks * tile, 0, chunks * tile * sizeof(std::uint16_t));
  for (std::size_t j = 0; j < n; ++j) {
    std::uint16_t* col = out + j / 8 * chunks * tile + 4 * (j % 8);  // row r: [hi pair r, lo pair r]
    for (std::size_t i = 0; i < d; i += 16) {
      __m256i hi, lo;
      detail::split_query(_mm512_loadu_ps(qs[j] + i), hi, lo);
      // 64-bit units [hi pair r, lo pair r]: pairs 0, 1, 4, 5 and 2, 3, 6, 7.
      alignas(32) std::uint64_t u[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(u), _mm256_unpacklo_epi32(hi, lo));
      _mm256_store_si256(reinterpret_cast<__m256i*>(u + 4), _mm256_unpackhi_epi32(hi, lo));
      constexpr int pair[8] = {0, 1, 4, 5, 2, 3, 6, 7};
      std::uint16_t* rows = col + i / 32 * tile + (i % 32) / 2 * 32;
      for (int k = 0; k < 8; ++k) std::memcpy(rows + pair[k] * 32, &u[k], sizeof(std::uint64_t));
    }
  }
}

/// Packs n <= kJobs query vectors of d floats as the B operand of score
/// tiles over split rows (split_row): the packing pack_queries gives the
/// vectors of 2d with every element twice, so that each bf16 part of a
/// row's element meets both parts of the query's. Read by scores() with
/// head size 2d; out holds query_tiles_floats(2d) floats.
HEADRECON_AMX_TARGET inline void pack_split_queries(std::size_t n, const float* const* qs, std::size_t d,
                                                    std::uint16_t* out) {
  if (n > kJobs || !split_fits(d))
    headrecon::detail::fail("amx::pack_split_queries: ", n, " jobs, head size ", d,
                            " (at most 32 jobs, head size a multiple of 32 up to 128)");
  const std::size_t chunks = d / 16, tile = 512;  // a chunk: 16 elements, one per tile row
  if (n % 8) std::memset(out + n / 8 * chunks * tile, 0, chunks * tile * sizeof(std::uint16_t));
  for (std::size_t j = 0; j < n; ++j) {
    std::uint16_t* col = out + j / 8 * chunks * tile + 4 * (j % 8);  // row r: [hi, hi, lo, lo]
    for (std::size_t c = 0; c < chunks; ++c) {
      __m256i hi, lo;
      detail::split_query(_mm512_loadu_ps(qs[j] + 16 * c), hi, lo);
      alignas(32) std::uint16_t h[16], l[16];
      _mm256_store_si256(reinterpret_cast<__m256i*>(h), hi);
      _mm256_store_si256(reinterpret_cast<__m256i*>(l), lo);
      for (std::size_t r = 0; r < 16; ++r) {
        const std::uint64_t u = std::uint64_t(h[r]) * 0x10001u | std::uint64_t(l[r]) * 0x10001u << 32;
        std::memcpy(col + c * tile + r * 32, &u, sizeof u);
      }
    }
  }
}

/// Splits a row of d floats (d % 16 == 0) into d 32-bit pairs of bf16 parts:
/// hi (the truncated top half of each float) in the low 16 bits, lo (the
/// remainder, rounded to nearest even) in the high 16; hi + lo holds 16 of
/// the float's 24 mantissa bits. dst may be src (in place). An infinite
/// element splits into inf + NaN (the remainder inf - inf), so its products
/// are NaN where the FMA units would give ±inf.
HEADRECON_AMX_TARGET inline void split_row(const float* src, std::size_t d, std::uint32_t* dst) {
  for (std::size_t i = 0; i < d; i += 16) {
    const __m512 v = _mm512_loadu_ps(src + i);
    const detail::U32x16 hi = reinterpret_cast<detail::U32x16>(v) & 0xffff0000u;
    const detail::U32x16 lo =
        reinterpret_cast<detail::U32x16>(detail::hi_f32(_mm512_sub_ps(v, reinterpret_cast<__m512>(hi))));
    const detail::U32x16 pair = (hi >> 16) | lo;
    _mm512_storeu_si512(dst + i, reinterpret_cast<__m512i>(pair));
  }
}

namespace detail {
// Base and stride of rows t0 .. t0 + 16 for a tile load: in place when all
// 16 exist and are evenly spaced, else copied into buf (zero past nb).
inline const char* tile_rows(const void* const* at, std::size_t t0, std::size_t nb, std::size_t row_bytes,
                             std::uint16_t* buf, std::ptrdiff_t& stride) {
  const char* base = static_cast<const char*>(at[t0]);
  if (t0 + 16 <= nb) {
    stride = static_cast<const char*>(at[t0 + 1]) - base;
    bool even = stride != 0;
    for (std::size_t k = 2; even && k < 16; ++k) even = static_cast<const char*>(at[t0 + k]) == base + k * stride;
    if (even) return base;
  }
  char* b = reinterpret_cast<char*>(buf);
  for (std::size_t k = 0; k < 16; ++k) {
    if (t0 + k < nb)
      std::memcpy(b + k * row_bytes, at[t0 + k], row_bytes);
    else
      std::memset(b + k * row_bytes, 0, row_bytes);
  }
  stride = std::ptrdiff_t(row_bytes);
  return b;
}

// The 16 columns of a row-major 16 × 16 block of floats at c.
HEADRECON_AMX_TARGET inline void transpose16(const float* c, __m512* col) {
  // The zero-masked forms with every lane kept: GCC 12 warns on the plain
  // shuffles' undefined pass-through operand.
  constexpr __mmask16 all = 0xffff;
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_load_ps(c + 16 * i);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_maskz_unpacklo_ps(all, r[i], r[i + 1]);
    t[i + 1] = _mm512_maskz_unpackhi_ps(all, r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_maskz_shuffle_ps(all, t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_maskz_shuffle_ps(all, t[i], t[i + 2], 0xee);
    r[i + 2] = _mm512_maskz_shuffle_ps(all, t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_maskz_shuffle_ps(all, t[i + 1], t[i + 3], 0xee);
  }
  for (int h = 0; h < 16; h += 8)
    for (int i = 0; i < 4; ++i) {
      t[h + i] = _mm512_maskz_shuffle_f32x4(all, r[h + i], r[h + 4 + i], 0x88);
      t[h + 4 + i] = _mm512_maskz_shuffle_f32x4(all, r[h + i], r[h + 4 + i], 0xdd);
    }
  for (int i = 0; i < 8; ++i) {
    col[i] = _mm512_maskz_shuffle_f32x4(all, t[i], t[8 + i], 0x88);
    col[8 + i] = _mm512_maskz_shuffle_f32x4(all, t[i], t[8 + i], 0xdd);
  }
}

// Up to two groups of 8 jobs (query tiles q0, q1 or null) over nb <= 32
// rows r0 (tokens 0-15) and r1 (16-31, or null): four result tiles, one per
// group and 16 tokens, so that four independent multiplies follow each
// chunk's loads (tiles are not renamed).
HEADRECON_AMX_TARGET inline void score_groups(std::size_t n, const std::uint16_t* q0, const std::uint16_t* q1,
                                              const char* r0, std::ptrdiff_t s0, const char* r1, std::ptrdiff_t s1,
                                              std::size_t nb, std::size_t d, float* const* ss, std::size_t at_token,
                                              float* cbuf) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (std::size_t c = 0; c < d / 32; ++c) {
    _tile_loadd(4, r0 + c * 64, s0);
    _tile_loadd(6, q0 + c * 512, 64);
    _tile_dpbf16ps(0, 4, 6);
    if (r1) {
      _tile_loadd(5, r1 + c * 64, s1);
      _tile_dpbf16ps(1, 5, 6);
    }
    if (q1) {
      _tile_loadd(7, q1 + c * 512, 64);
      _tile_dpbf16ps(2, 4, 7);
      if (r1) _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, cbuf, 64);
  if (r1) _tile_stored(1, cbuf + 256, 64);
  if (q1) _tile_stored(2, cbuf + 512, 64);
  if (q1 && r1) _tile_stored(3, cbuf + 768, 64);
  for (std::size_t g = 0; g * 8 < n; ++g)
    for (std::size_t t0 = 0; t0 < nb; t0 += 16) {
      const std::size_t u = nb - t0 < 16 ? nb - t0 : 16;
      const __mmask16 m = __mmask16((1u << u) - 1u);
      __m512 col[16];
      transpose16(cbuf + g * 512 + t0 * 16, col);
      for (std::size_t j = 8 * g; j < n && j < 8 * g + 8; ++j) {  // columns 2j (hi) and 2j + 1 (lo)
        float* dst = ss[j] + at_token + t0;
        const __m512 v = _mm512_add_ps(col[2 * (j % 8)], col[2 * (j % 8) + 1]);
        _mm512_mask_storeu_ps(dst, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, dst), v));
      }
    }
}
}  // namespace detail

/// score_j[t] += q_j · row_t for t < nb <= kTokens and n <= kJobs jobs whose
/// queries pack_queries packed into `qt`; rows are bf16 at `at[t]` (read in
/// place when 16 consecutive rows are evenly spaced, else copied), or split
/// rows of d/2 elements with queries from pack_split_queries. `work`:
/// work_floats(d) floats, 64-byte aligned. Needs configure().
HEADRECON_AMX_TARGET inline void scores(std::size_t n, const std::uint16_t* qt, const void* const* at, std::size_t nb,
                                        std::size_t d, float* const* ss, float* work) {
  detail::check(n, nb, d, "scores");
  auto* rowbuf = reinterpret_cast<std::uint16_t*>(work);  // 32 rows of d bf16
  float* cbuf = work + 32 * d + 1024;                     // four 16 × 16 results
  detail::to_l1(at, nb, 2 * d);
  const std::size_t tile = d / 32 * 512;  // one group's query tiles
  for (std::size_t t0 = 0; t0 < nb; t0 += 32) {  // 32 tokens: two 16-row tiles
    const std::size_t u = nb - t0 < 32 ? nb - t0 : 32;
    std::ptrdiff_t s0 = 0, s1 = 0;
    const char* r0 = detail::tile_rows(at + t0, 0, u, 2 * d, rowbuf, s0);
    const char* r1 = u > 16 ? detail::tile_rows(at + t0, 16, u, 2 * d, rowbuf + 16 * d, s1) : nullptr;
    for (std::size_t j = 0; j < n; j += 16) {
      const std::size_t m = n - j < 16 ? n - j : 16;
      detail::score_groups(m, qt + j / 8 * tile, m > 8 ? qt + (j / 8 + 1) * tile : nullptr, r0, s0, r1, s1, u, d,
                           ss + j, t0, cbuf);
    }
  }
}

namespace detail {
// acc_j[0..d) += the value tiles' products for n jobs: per pair of groups (A
// tiles 4, 5: probability rows hi, lo of 8 jobs at pt[group][step]) and pair
// of 16-dimension chunks (B tiles 6, 7 at b(chunk, step, stride)), four
// result tiles (group × chunk) of 16 rows (hi, lo) × 16, each summing the
// steps (the K dimension), stored to cbuf and added to the accumulators.
template <class BTile>
HEADRECON_AMX_TARGET __attribute__((always_inline)) inline void value_tiles(std::size_t n, std::size_t steps,
                                                                             std::size_t d, const std::uint16_t* pt,
                                                                             const BTile& b, float* const* accs,
                                                                             float* cbuf) {
  const std::size_t nc = d / 16, groups = (n + 7) / 8;
  for (std::size_t g = 0; g < groups; g += 2) {
    const bool g1 = g + 1 < groups;
    for (std::size_t c = 0; c < nc; c += 2) {  // d % 32 == 0: chunks come in pairs
      _tile_zero(0);
      _tile_zero(1);
      if (g1) {
        _tile_zero(2);
        _tile_zero(3);
      }
      for (std::size_t st = 0; st < steps; ++st) {
        std::size_t s0 = 64, s1 = 64;
        const void* b0 = b(c, st, s0);
        const void* b1 = b(c + 1, st, s1);
        _tile_loadd(4, pt + (g * steps + st) * 512, 64);
        _tile_loadd(6, b0, s0);
        _tile_dpbf16ps(0, 4, 6);
        _tile_loadd(7, b1, s1);
        _tile_dpbf16ps(1, 4, 7);
        if (g1) {
          _tile_loadd(5, pt + ((g + 1) * steps + st) * 512, 64);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
      }
      _tile_stored(0, cbuf, 64);
      _tile_stored(1, cbuf + 256, 64);
      if (g1) {
        _tile_stored(2, cbuf + 512, 64);
        _tile_stored(3, cbuf + 768, 64);
      }
      for (std::size_t j = 8 * g; j < n && j < 8 * g + 16; ++j) {
        const float* r = cbuf + (j - 8 * g) / 8 * 512 + (j % 8) * 32;  // rows hi, lo of job j, chunk c
        for (std::size_t k = 0; k < 2; ++k) {
          float* dst = accs[j] + 16 * (c + k);
          const __m512 v = _mm512_add_ps(_mm512_load_ps(r + k * 256), _mm512_load_ps(r + k * 256 + 16));
          _mm512_storeu_ps(dst, _mm512_add_ps(_mm512_loadu_ps(dst), v));
        }
      }
    }
  }
}
}  // namespace detail

/// acc_j[0..d) += Σ_t p_j[t] · row_t for t < nb <= kTokens and n <= kJobs
/// jobs; rows are bf16 at `at[t]`. `work`: work_floats(d) floats, 64-byte
/// aligned. `next`: n_next other bf16 rows of d (the next block's) to
/// prefetch toward L2, spread over the call's work. Needs configure().
HEADRECON_AMX_TARGET inline void values(std::size_t n, const float* const* ps, const void* const* at, std::size_t nb,
                                        std::size_t d, float* const* accs, float* work,
                                        const void* const* next = nullptr, std::size_t n_next = 0) {
  detail::check(n, nb, d, "values");
  // Tokens in steps of 32 (16 pairs): the K dimension of the tiles.
  const std::size_t steps = (nb + 31) / 32, groups = (n + 7) / 8;
  auto* vt = reinterpret_cast<std::uint16_t*>(work);                 // [d / 16][step] 16 token pairs × 16 dims × 2
  auto* pt = reinterpret_cast<std::uint16_t*>(work + 16 * d * steps);  // [group][step][hi, lo] 8 jobs × 32 tokens
  float* cbuf = work + 16 * d * steps + 1024 * steps;                  // four 16 × 16 results
  // Value rows in token pairs: B[k][2 i + (t % 2)] = row_{2k + t % 2}[16 c + i].
  const __m512i lo_idx = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                                          37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i hi_idx = _mm512_add_epi16(lo_idx, _mm512_set1_epi16(16));
  detail::to_l1(at, nb, 2 * d);
  std::size_t next_done = 0;
  for (std::size_t k = 0; k < 16 * steps; ++k) {
    for (const std::size_t upto = (k + 1) * n_next / (16 * steps); next_done < upto; ++next_done) {
      const auto a = reinterpret_cast<std::uintptr_t>(next[next_done]);
      for (std::uintptr_t line = a & ~std::uintptr_t(63); line < a + 2 * d; line += 64)
        __builtin_prefetch(reinterpret_cast<const void*>(line), 0, 1);
    }
    const auto* ra = static_cast<const std::uint16_t*>(2 * k < nb ? at[2 * k] : nullptr);
    const auto* rb = static_cast<const std::uint16_t*>(2 * k + 1 < nb ? at[2 * k + 1] : nullptr);
    std::uint16_t* to = vt + (k / 16) * 512 + (k % 16) * 32;
    for (std::size_t s = 0; s < d / 32; ++s) {
      const __m512i a = ra ? _mm512_loadu_si512(ra + 32 * s) : _mm512_setzero_si512();
      const __m512i b = rb ? _mm512_loadu_si512(rb + 32 * s) : _mm512_setzero_si512();
      _mm512_store_si512(to + (2 * s) * steps * 512, _mm512_permutex2var_epi16(a, lo_idx, b));
      _mm512_store_si512(to + (2 * s + 1) * steps * 512, _mm512_permutex2var_epi16(a, hi_idx, b));
    }
  }
  // Probabilities as bf16 rows 2j (hi) and 2j + 1 (lo) of 8-job groups per
  // step, zero past nb and n.
  for (std::size_t st = 0; st < steps; ++st) {
    const std::size_t t0 = 32 * st, u = nb - t0 < 32 ? nb - t0 : 32;
    const __mmask16 m0 = __mmask16(u >= 16 ? 0xffffu : (1u << u) - 1u);
    const __mmask16 m1 = __mmask16(u <= 16 ? 0u : u >= 32 ? 0xffffu : (1u << (u - 16)) - 1u);
    for (std::size_t j = 0; j < groups * 8; ++j) {
      std::uint16_t* row = pt + ((j / 8) * steps + st) * 512 + (j % 8) * 64;
      if (j >= n) {
        _mm512_store_si512(row, _mm512_setzero_si512());
        _mm512_store_si512(row + 32, _mm512_setzero_si512());
        continue;
      }
      const __m512 p0 = _mm512_maskz_loadu_ps(m0, ps[j] + t0), p1 = _mm512_maskz_loadu_ps(m1, ps[j] + t0 + 16);
      const __m512bh h = _mm512_cvtne2ps_pbh(p1, p0);  // low half from p0
      const __m512bh l =
          _mm512_cvtne2ps_pbh(_mm512_sub_ps(p1, detail::hi_f32(p1)), _mm512_sub_ps(p0, detail::hi_f32(p0)));
      _mm512_store_si512(row, reinterpret_cast<const __m512i&>(h));
      _mm512_store_si512(row + 32, reinterpret_cast<const __m512i&>(l));
    }
  }
  detail::value_tiles(n, steps, d, pt, [&](std::size_t c, std::size_t st, std::size_t&) {
    return static_cast<const void*>(vt + (c * steps + st) * 512);
  }, accs, cbuf);
}

/// acc_j[0..d) += Σ_t p_j[t] · row_t for t < nb <= kTokens and n <= kJobs
/// jobs over split rows (split_row): row t at rows + t·d. `work`:
/// call_work_floats(d) floats, 64-byte aligned. Needs configure().
HEADRECON_AMX_TARGET inline void values_split(std::size_t n, const float* const* ps, const std::uint32_t* rows,
                                              std::size_t nb, std::size_t d, float* const* accs, float* work) {
  if (n > kJobs || nb > kTokens || !split_fits(d))
    headrecon::detail::fail("amx::values_split: ", n, " jobs, ", nb, " tokens, head size ", d,
                            " (at most 32 jobs and 64 tokens, head size a multiple of 32 up to 128)");
  // Tokens in steps of 16 (the K dimension: each token's pairs hi, lo meet
  // its probability's part twice).
  const std::size_t steps = (nb + 15) / 16, groups = (n + 7) / 8;
  auto* pt = reinterpret_cast<std::uint16_t*>(work);  // [group][step] rows hi, lo of 8 jobs × 16 tokens × 2
  float* cbuf = work + 4096;                          // four 16 × 16 results
  auto* tail = reinterpret_cast<std::uint32_t*>(work + 5120);  // a partial step's 16 rows, zero past nb
  if (nb % 16) {
    const std::size_t t0 = nb / 16 * 16;
    std::memcpy(tail, rows + t0 * d, (nb - t0) * d * sizeof(std::uint32_t));
    std::memset(tail + (nb - t0) * d, 0, (16 - (nb - t0)) * d * sizeof(std::uint32_t));
  }
  for (std::size_t st = 0; st < steps; ++st) {
    const std::size_t t0 = 16 * st, u = nb - t0 < 16 ? nb - t0 : 16;
    const __mmask16 m = __mmask16(u >= 16 ? 0xffffu : (1u << u) - 1u);
    for (std::size_t j = 0; j < groups * 8; ++j) {
      std::uint16_t* row = pt + ((j / 8) * steps + st) * 512 + (j % 8) * 64;
      if (j >= n) {
        _mm512_store_si512(row, _mm512_setzero_si512());
        _mm512_store_si512(row + 32, _mm512_setzero_si512());
        continue;
      }
      const __m512 p = _mm512_maskz_loadu_ps(m, ps[j] + t0);
      const detail::U32x16 h = reinterpret_cast<detail::U32x16>(detail::hi_f32(p));
      const detail::U32x16 l = reinterpret_cast<detail::U32x16>(
          detail::hi_f32(_mm512_sub_ps(p, reinterpret_cast<__m512>(h))));
      _mm512_store_si512(row, reinterpret_cast<__m512i>(h | h >> 16));
      _mm512_store_si512(row + 32, reinterpret_cast<__m512i>(l | l >> 16));
    }
  }
  detail::value_tiles(n, steps, d, pt, [&](std::size_t c, std::size_t st, std::size_t& stride) {
    stride = 4 * d;
    const std::uint32_t* base = 16 * (st + 1) <= nb ? rows + 16 * st * d : tail;
    return static_cast<const void*>(base + 16 * c);
  }, accs, cbuf);
}
#undef HEADRECON_AMX_TARGET
#elif !defined(__CUDACC__)
// Built without AMX: usable() is false, and a call that skipped it throws.
inline bool usable() { return false; }
inline void configure() {}
inline void release() {}
[[noreturn]] inline void unavailable() { headrecon::detail::fail("amx: this build has no AMX support"); }
inline void pack_queries(std::size_t, const float* const*, std::size_t, std::uint16_t*) { unavailable(); }
inline void scores(std::size_t, const std::uint16_t*, const void* const*, std::size_t, std::size_t, float* const*,
                   float*) {
  unavailable();
}
inline void values(std::size_t, const float* const*, const void* const*, std::size_t, std::size_t, float* const*,
                   float*, const void* const* = nullptr, std::size_t = 0) {
  unavailable();
}
inline void pack_split_queries(std::size_t, const float* const*, std::size_t, std::uint16_t*) { unavailable(); }
inline void split_row(const float*, std::size_t, std::uint32_t*) { unavailable(); }
inline void values_split(std::size_t, const float* const*, const std::uint32_t*, std::size_t, std::size_t,
                         float* const*, float*) {
  unavailable();
}
#endif

}  // namespace headrecon::amx
