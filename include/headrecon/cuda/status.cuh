#pragma once
/// @file status.cuh
/// Errors of the CUDA backend: every host function returns a Status (no
/// exceptions, no exit); device code never fails loudly, it writes NaN where
/// a precondition it cannot report was broken (documented per function).

#if !defined(__CUDACC__)
#error "headrecon/cuda/*.cuh are CUDA headers: compile this file with nvcc (CMake target headrecon::cuda)"
#endif

#include <cuda_runtime.h>

#include <string>

namespace headrecon::cuda {

/// What went wrong, by kind.
enum class Code : int {
  ok = 0,
  invalid_argument,     ///< an argument breaks the documented contract (null pointer, index out of range, ...)
  workspace_too_small,  ///< the caller's workspace or buffer is smaller than the size function says
  unsupported,          ///< valid, but not implemented for this shape, dtype or device
  cuda_error,           ///< a CUDA runtime call failed (see Status::cuda)
};

/// Name of a code: "ok", "invalid argument", ...
inline const char* code_name(Code c) {
  switch (c) {
    case Code::ok: return "ok";
    case Code::invalid_argument: return "invalid argument";
    case Code::workspace_too_small: return "workspace too small";
    case Code::unsupported: return "unsupported";
    case Code::cuda_error: return "CUDA error";
  }
  return "unknown";
}

/// Result of a host API call. `what` is a static string naming the failed
/// check or CUDA call; `cuda` is the CUDA error for Code::cuda_error.
struct Status {
  Code code = Code::ok;
  cudaError_t cuda = cudaSuccess;
  const char* what = "";

  bool ok() const { return code == Code::ok; }
  /// "CODE: WHAT" plus, for CUDA errors, the CUDA error's name and text.
  std::string message() const {
    std::string m = code_name(code);
    if (what && *what) m += std::string(": ") + what;
    if (code == Code::cuda_error)
      m += std::string(": ") + cudaGetErrorName(cuda) + " (" + cudaGetErrorString(cuda) + ")";
    return m;
  }
};

namespace detail {
inline Status fail(Code c, const char* what) { return Status{c, cudaSuccess, what}; }
inline Status invalid(const char* what) { return fail(Code::invalid_argument, what); }
inline Status unsupported(const char* what) { return fail(Code::unsupported, what); }
/// Status of a CUDA call; clears the runtime's last-error state on failure.
inline Status check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return {};
  (void)cudaGetLastError();
  return Status{Code::cuda_error, e, what};
}
}  // namespace detail

/// Number of CUDA devices; a machine without a GPU or driver gives a
/// cuda_error Status (e.g. cudaErrorNoDevice, cudaErrorInsufficientDriver)
/// and count 0.
inline Status device_count(int& count) {
  count = 0;
  const Status s = detail::check(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
  if (!s.ok()) count = 0;
  return s;
}

}  // namespace headrecon::cuda
