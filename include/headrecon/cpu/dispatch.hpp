#pragma once
/// @file dispatch.hpp
/// Opt-in runtime dispatch: the kernels compiled for every Highway target the
/// build can produce, the best one the running CPU supports chosen at the
/// first call. Declarations only; the definitions come from including
/// "headrecon/cpu/dispatch_impl.hpp" in exactly ONE translation unit (or from
/// linking the CMake OBJECT library headrecon::dispatch). Every translation
/// unit must see the same HWY_* configuration macros.

#include "headrecon/cpu/attention_args.hpp"
#include "headrecon/cpu/reconstruct_args.hpp"
#include "headrecon/parallel.hpp"

namespace headrecon::dispatch {
/// reconstruct() on the best target of this CPU.
void reconstruct(const ReconstructArgs& args);
/// attention() on the best target of this CPU.
void attention(const AttentionRunArgs& args, const ParallelFor& pf = ParallelFor());
/// decode_attention() on the best target of this CPU.
void decode_attention(const DecodeAttentionArgs& args);
/// Name of the Highway target the calls above use (e.g. "AVX3", "AVX2").
const char* target_name();
}  // namespace headrecon::dispatch
