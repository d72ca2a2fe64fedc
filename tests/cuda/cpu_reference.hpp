#pragma once
// The CPU kernels the CUDA tests compare against, compiled by the host
// compiler in their own translation unit (Highway is not built by nvcc).
#include "headrecon/cpu/attention_args.hpp"
#include "headrecon/cpu/reconstruct_args.hpp"

namespace headrecon::testing {
/// headrecon::reconstruct (static dispatch).
void cpu_reconstruct(const ReconstructArgs& args);
/// headrecon::decode_attention (static dispatch).
void cpu_decode_attention(const DecodeAttentionArgs& args);
/// Name of the Highway target the two functions above were compiled for.
const char* cpu_target_name();
}  // namespace headrecon::testing
