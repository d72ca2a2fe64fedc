#pragma once
/// @file cuda.cuh
/// The optional CUDA backend of headrecon (CMake target headrecon::cuda,
/// option HEADRECON_ENABLE_CUDA): reconstruction of rebuilt heads and decode
/// attention over a reference-only cache on NVIDIA GPUs (sm_80 and newer).
/// Header-only like the rest of the library; include it from a .cu file
/// compiled by nvcc. Not included by headrecon/headrecon.hpp.

#include "headrecon/cuda/attention.cuh"
#include "headrecon/cuda/reconstruct.cuh"
#include "headrecon/cuda/status.cuh"
