// How an op reaches a kernel: NALA_KERNEL(t, kernel_name, args...) calls
// kernels::cpu::kernel_name<T>(args...) or kernels::cuda::kernel_name<T>(args...) for the device
// of tensor t, with T = float or double from t's dtype (T may be used in args, e.g. x.data<T>()).
// Also the input checks every op shares, each throwing a message that names the op.
#pragma once

#include <stdexcept>
#include <string>

#include "kernels/kernels.h"
#include "tensor/tensor.h"

namespace nala {

template <typename F>
void dispatch_floating(const Tensor& t, const char* op, F&& f) {
  if (t.dtype() == DType::Float32)
    f(float{});
  else if (t.dtype() == DType::Float64)
    f(double{});
  else
    throw std::invalid_argument(std::string(op) + ": expected a float32 or float64 tensor, got " +
                                dtype_name(t.dtype()) + " of shape " + shape_str(t.shape()));
}

#ifdef NALA_WITH_CUDA
#define NALA_CUDA_KERNEL(kernel, ...) ::nala::kernels::cuda::kernel(__VA_ARGS__)
#else
#define NALA_CUDA_KERNEL(kernel, ...) \
  throw std::runtime_error(#kernel ": this build of nala has no CUDA support")
#endif

#define NALA_KERNEL(tensor, kernel, ...)                         \
  ::nala::dispatch_floating((tensor), #kernel, [&](auto zero_) { \
    using T = decltype(zero_);                                   \
    if ((tensor).is_cuda())                                      \
      NALA_CUDA_KERNEL(kernel<T>, __VA_ARGS__);                  \
    else                                                         \
      ::nala::kernels::cpu::kernel<T>(__VA_ARGS__);              \
  })

// Throws unless t is a float tensor.
void check_floating(const char* op, const Tensor& t);
// Throws unless all defined tensors share a dtype and a device (names both when they differ).
void check_same(const char* op, const std::vector<Tensor>& tensors);
// Throws unless t has `dims` dimensions.
void check_dim(const char* op, const Tensor& t, int64_t dims, const char* what);
// Normalises a possibly negative dim for a tensor with `ndim` dims.
int64_t wrap_dim(const char* op, int64_t dim, int64_t ndim);

}  // namespace nala
