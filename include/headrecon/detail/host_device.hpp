#pragma once
// HEADRECON_HOST_DEVICE marks accessors usable from CUDA kernels; it expands
// to nothing outside nvcc so CPU-only builds never see CUDA keywords.
#if defined(__CUDACC__)
#define HEADRECON_HOST_DEVICE __host__ __device__
#else
#define HEADRECON_HOST_DEVICE
#endif
