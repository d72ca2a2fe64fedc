#include "cpu_reference.hpp"

#include "headrecon/cpu/attention.hpp"
#include "headrecon/cpu/reconstruct.hpp"

namespace headrecon::testing {
void cpu_reconstruct(const ReconstructArgs& args) { reconstruct(args); }
void cpu_decode_attention(const DecodeAttentionArgs& args) { decode_attention(args); }
const char* cpu_target_name() { return hwy::TargetName(HWY_STATIC_TARGET); }
}  // namespace headrecon::testing
