#pragma once
// The plain C++ headers of headrecon that the CUDA backend builds on.
// view.hpp declares HeadsView<T>::operator HeadsView<const T>(), which for a
// const T converts to its own type; nvcc's front end warns (#554) that it is
// never called. Harmless; silenced for these headers only.
#pragma nv_diag_suppress 554
#include "headrecon/attention_plan.hpp"
#include "headrecon/cpu/reconstruct_args.hpp"
#include "headrecon/dtype.hpp"
#include "headrecon/head_stream.hpp"
#pragma nv_diag_default 554
