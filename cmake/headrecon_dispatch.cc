// The runtime-dispatch kernels as an OBJECT library (headrecon::dispatch).
#include "headrecon/cpu/dispatch_impl.hpp"
