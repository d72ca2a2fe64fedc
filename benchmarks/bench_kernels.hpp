#pragma once
// The CPU kernels the benchmark problems call: by default those of the
// build's static Highway target; a tool that links headrecon::dispatch
// installs the best target of the running CPU instead (`headrecon bench`),
// as an engine would.
#include "headrecon/cpu/attention.hpp"
#include "headrecon/cpu/kv_attention.hpp"
#include "headrecon/cpu/reconstruct.hpp"

namespace headrecon::bench {

struct BenchKernels {
  AttentionKernel attention = nullptr;                           ///< null: headrecon::attention
  void (*reconstruct)(const ReconstructArgs&) = nullptr;         ///< null: headrecon::reconstruct
  void (*decode_attention)(const DecodeAttentionArgs&) = nullptr;  ///< null: headrecon::decode_attention

  void run_reconstruct(const ReconstructArgs& a) const { reconstruct ? reconstruct(a) : headrecon::reconstruct(a); }
  void run_decode_attention(const DecodeAttentionArgs& a) const {
    decode_attention ? decode_attention(a) : headrecon::decode_attention(a);
  }
};

}  // namespace headrecon::bench
