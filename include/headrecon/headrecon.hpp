#pragma once
/// @file headrecon.hpp
/// Umbrella header: includes every public header of the library.
///
/// Every new public header must be added here (keep the list sorted);
/// tests/packaging/consumer_test.sh checks that none is missing. The CPU
/// kernels (cpu/) and the CUDA backend (cuda/) are not included yet.

#include "headrecon/accumulate.hpp"
#include "headrecon/activations_io.hpp"
#include "headrecon/attention_plan.hpp"
#include "headrecon/blas_threads.hpp"
#include "headrecon/calibrate.hpp"
#include "headrecon/dtype.hpp"
#include "headrecon/error.hpp"
#include "headrecon/fit.hpp"
#include "headrecon/head_moments.hpp"
#include "headrecon/head_stream.hpp"
#include "headrecon/kv_store.hpp"
#include "headrecon/limits.hpp"
#include "headrecon/loss_metric.hpp"
#include "headrecon/moments.hpp"
#include "headrecon/parallel.hpp"
#include "headrecon/plan.hpp"
#include "headrecon/plan_io.hpp"
#include "headrecon/projections_io.hpp"
#include "headrecon/ref_cache.hpp"
#include "headrecon/safetensors.hpp"
#include "headrecon/select.hpp"
#include "headrecon/select/budget.hpp"
#include "headrecon/select/fixed.hpp"
#include "headrecon/select/forward.hpp"
#include "headrecon/select/graph.hpp"
#include "headrecon/select/greedy.hpp"
#include "headrecon/select/model.hpp"
#include "headrecon/select/probe_weights.hpp"
#include "headrecon/select/random.hpp"
#include "headrecon/select/shared.hpp"
#include "headrecon/synthetic.hpp"
#include "headrecon/thread_pool.hpp"
#include "headrecon/version.hpp"
#include "headrecon/view.hpp"
