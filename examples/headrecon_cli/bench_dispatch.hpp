#pragma once
// The FMA peak kernel of `headrecon bench` with runtime dispatch
// (bench_dispatch.cpp): the same Highway target headrecon::dispatch runs the
// attention and reconstruction kernels on, so that their fraction of the FMA
// peak is read against the peak of the vectors they use.

namespace headrecon::bench {
/// FmaChains (fma_chains-inl.h) on the best target of this CPU: one
/// thread's run; returns the flops done.
double dispatch_fma_chains(float* sink);
}  // namespace headrecon::bench
