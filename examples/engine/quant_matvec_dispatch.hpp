#pragma once
// The engine's weight kernels with runtime dispatch (quant_matvec_dispatch.cpp,
// compiled into the engine executable only): the best Highway target of the
// running CPU, e.g. AVX3 on an AVX-512 machine from the AVX2 build.

#include "quant_matvec_args.hpp"

namespace headrecon_engine {
/// quant_matvec() on the best target of this CPU.
void dispatch_quant_matvec(const QuantMatVecArgs& a);
/// That target's name ("AVX3_SPR", "AVX2", ...).
const char* dispatch_quant_target();
}  // namespace headrecon_engine
