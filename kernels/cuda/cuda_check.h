// Error checking, the stream, the cuBLAS handle and the device's attributes shared by every CUDA
// kernel.
//
// Every CUDA and cuBLAS call is wrapped in NALA_CUDA_CHECK / NALA_CUBLAS_CHECK, kernel launches
// too (launch_kernel in common.h checks cudaLaunchKernelEx); a failure throws std::runtime_error
// naming the call, where it was made and CUDA's own message.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace nala::kernels::cuda {

[[noreturn]] inline void throw_cuda_error(const char* call, const char* file, int line,
                                          const char* message) {
  throw std::runtime_error(std::string(call) + " failed at " + file + ":" + std::to_string(line) +
                           ": " + message);
}

// All work is queued on the legacy default stream, so kernels, copies and cuBLAS calls run in
// the order they are issued and a block freed on the host may be reused by the next kernel.
inline cudaStream_t stream() { return cudaStreamLegacy; }

// The process's cuBLAS handle, created on first use and bound to stream() (runtime.cu).
cublasHandle_t cublas_handle();

}  // namespace nala::kernels::cuda

#define NALA_CUDA_CHECK(call)                                                         \
  do {                                                                                \
    const cudaError_t nala_cuda_status_ = (call);                                     \
    if (nala_cuda_status_ != cudaSuccess)                                             \
      ::nala::kernels::cuda::throw_cuda_error(#call, __FILE__, __LINE__,              \
                                              cudaGetErrorString(nala_cuda_status_)); \
  } while (0)

#define NALA_CUBLAS_CHECK(call)                                                            \
  do {                                                                                     \
    const cublasStatus_t nala_cublas_status_ = (call);                                     \
    if (nala_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                      \
      ::nala::kernels::cuda::throw_cuda_error(#call, __FILE__, __LINE__,                   \
                                              cublasGetStatusString(nala_cublas_status_)); \
  } while (0)

namespace nala::kernels::cuda {

// An attribute of the current device (cudaDeviceGetAttribute): its multiprocessor count, say.
inline int device_attribute(cudaDeviceAttr attribute) {
  int device = 0, value = 0;
  NALA_CUDA_CHECK(cudaGetDevice(&device));
  NALA_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
  return value;
}

}  // namespace nala::kernels::cuda
