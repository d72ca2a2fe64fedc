#pragma once
/// @file cuda.cuh
/// The optional CUDA backend of headrecon (CMake target headrecon::cuda,
/// option HEADRECON_ENABLE_CUDA): reconstruction of rebuilt heads and decode
/// attention over a reference-only cache on NVIDIA GPUs (sm_80 and newer),
/// the GPU counterparts of cpu/reconstruct.hpp and cpu/attention.hpp.
/// Header-only like the rest of the library: include it from a .cu file
/// compiled by nvcc (C++17). Not included by headrecon/headrecon.hpp.
///
/// Decode attention, per layer:
///
///     namespace hc = headrecon::cuda;
///     AttentionLayerPlan ap = make_attention_plan(layout, layer, n_q_heads);  // CPU, once
///     hc::DeviceAttentionPlan dp;
///     hc::DeviceAttentionPlan::build(ap, dp);                  // host tables
///     cudaMalloc(&buf, dp.device_bytes()); dp.upload(buf, dp.device_bytes());
///     // per step: device arrays of HeadStreams [batch × streams], seq_lens, q
///     hc::DecodeAttentionArgs a;  a.plan = &dp;  a.batch = B;  ...
///     a.split_tokens = hc::default_split_tokens(B, max_len, sm_count);
///     a.workspace_bytes = hc::decode_attention_workspace_bytes(dp, B, max_len, a.split_tokens);
///     hc::Status s = hc::decode_attention(a, stream);     // s.message() on failure
///
/// Reconstruction: hc::reconstruct(hc::ReconstructArgs{...}, stream), with
/// host descriptor arrays (HeadStream, ReconTarget) pointing at device data.
/// Every function returns a hc::Status; nothing throws, exits or allocates.

#include "headrecon/cuda/attention.cuh"
#include "headrecon/cuda/reconstruct.cuh"
#include "headrecon/cuda/status.cuh"
