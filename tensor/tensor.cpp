// Storage, tensor metadata, factories, copies between dtypes and devices.
#include "tensor/tensor.h"

#include <cstdlib>
#include <cstring>
#include <sstream>
#include <stdexcept>

#include "autograd/autograd.h"
#include "kernels/kernels.h"

namespace nala {

size_t dtype_size(DType dtype) {
  return visit_dtype(dtype, [](auto zero) { return sizeof(zero); });
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::Float32:
      return "float32";
    case DType::Float64:
      return "float64";
    case DType::Int32:
      return "int32";
    case DType::Int64:
      return "int64";
    case DType::UInt8:
      return "uint8";
  }
  return "?";
}

const char* device_name(Device device) { return device == Device::CPU ? "cpu" : "cuda"; }

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::CPU;
  if (name == "cuda") return Device::CUDA;
  throw std::invalid_argument("unknown device '" + name + "' (expected cpu or cuda)");
}

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

// ---- Storage ----

Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  if (nbytes == 0) return;
  if (device == Device::CPU) {
    data_ = kernels::cpu::allocate(nbytes);
  } else {
#ifdef NALA_WITH_CUDA
    data_ = kernels::cuda::allocate(nbytes);
#else
    throw std::runtime_error(
        "this build of nala has no CUDA support (configure with nvcc present)");
#endif
  }
}

Storage::~Storage() {
  if (!data_) return;
  if (device_ == Device::CPU) {
    kernels::cpu::deallocate(data_, nbytes_);
  } else {
#ifdef NALA_WITH_CUDA
    kernels::cuda::deallocate(data_, nbytes_);
#endif
  }
}

// ---- metadata ----

const Shape& Tensor::shape() const {
  if (!impl_) throw std::logic_error("shape: the tensor is undefined");
  return impl_->shape;
}
const Shape& Tensor::strides() const { return impl_->strides; }
int64_t Tensor::offset() const { return impl_->offset; }
DType Tensor::dtype() const {
  if (!impl_) throw std::logic_error("dtype: the tensor is undefined");
  return impl_->dtype;
}
Device Tensor::device() const {
  if (!impl_) throw std::logic_error("device: the tensor is undefined");
  return impl_->storage->device();
}

int64_t Tensor::size(int64_t d) const {
  int64_t n = dim();
  if (d < -n || d >= n)
    throw std::out_of_range("size: dim " + std::to_string(d) + " out of range for shape " +
                            shape_str(shape()));
  return shape()[d < 0 ? d + n : d];
}

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int64_t i = dim() - 1; i >= 0; --i) {
    if (impl_->shape[i] != 1 && impl_->strides[i] != expected) return false;
    expected *= impl_->shape[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  return static_cast<char*>(impl_->storage->data()) + impl_->offset * dtype_size(impl_->dtype);
}

template <typename T>
T* Tensor::data() const {
  if (dtype() != dtype_of<T>())
    throw std::invalid_argument(std::string("data: tensor is ") + dtype_name(dtype()) +
                                ", asked for " + dtype_name(dtype_of<T>()));
  return static_cast<T*>(raw_data());
}
template float* Tensor::data<float>() const;
template double* Tensor::data<double>() const;
template int32_t* Tensor::data<int32_t>() const;
template int64_t* Tensor::data<int64_t>() const;
template uint8_t* Tensor::data<uint8_t>() const;

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (int64_t i = static_cast<int64_t>(shape.size()) - 1; i >= 0; --i) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

// ---- factories ----

Tensor empty(const Shape& shape, TensorOptions options) {
  if (static_cast<int>(shape.size()) > kernels::kMaxDims)
    throw std::invalid_argument("empty: shape " + shape_str(shape) + " has more than " +
                                std::to_string(kernels::kMaxDims) + " dims");
  for (int64_t s : shape)
    if (s < 0) throw std::invalid_argument("empty: negative size in shape " + shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage =
      std::make_shared<Storage>(shape_numel(shape) * dtype_size(options.dtype), options.device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = options.dtype;
  impl->autograd = std::make_shared<AutogradMeta>();
  Tensor t(impl);
  if (options.requires_grad) t.requires_grad_(true);
  return t;
}

Tensor full(const Shape& shape, double value, TensorOptions options) {
  bool requires_grad = options.requires_grad;
  options.requires_grad = false;
  Tensor t = empty(shape, options);
  visit_dtype(t.dtype(), [&](auto zero) {
    using T = decltype(zero);
    if (t.is_cuda()) {
#ifdef NALA_WITH_CUDA
      kernels::cuda::fill<T>(t.numel(), static_cast<T>(value), t.data<T>());
#endif
    } else {
      kernels::cpu::fill<T>(t.numel(), static_cast<T>(value), t.data<T>());
    }
  });
  if (requires_grad) t.requires_grad_(true);
  return t;
}

Tensor zeros(const Shape& shape, TensorOptions options) { return full(shape, 0.0, options); }
Tensor ones(const Shape& shape, TensorOptions options) { return full(shape, 1.0, options); }
Tensor zeros_like(const Tensor& t) {
  return zeros(t.shape(), TensorOptions{t.dtype(), t.device()});
}
Tensor empty_like(const Tensor& t) {
  return empty(t.shape(), TensorOptions{t.dtype(), t.device()});
}

template <typename T>
Tensor from_data(const std::vector<T>& values, const Shape& shape, Device device) {
  if (static_cast<int64_t>(values.size()) != shape_numel(shape))
    throw std::invalid_argument("from_data: " + std::to_string(values.size()) +
                                " values do not fill shape " + shape_str(shape));
  Tensor t = empty(shape, TensorOptions{dtype_of<T>(), Device::CPU});
  if (!values.empty()) std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(T));
  return device == Device::CPU ? t : t.to(device);
}
template Tensor from_data(const std::vector<float>&, const Shape&, Device);
template Tensor from_data(const std::vector<double>&, const Shape&, Device);
template Tensor from_data(const std::vector<int32_t>&, const Shape&, Device);
template Tensor from_data(const std::vector<int64_t>&, const Shape&, Device);
template Tensor from_data(const std::vector<uint8_t>&, const Shape&, Device);

Tensor from_vector(const std::vector<double>& values, const Shape& shape, TensorOptions options) {
  Tensor t = from_data(values, shape, Device::CPU).to(options.dtype).to(options.device);
  t = t.detach();
  if (options.requires_grad) t.requires_grad_(true);
  return t;
}

Tensor arange(int64_t n, TensorOptions options) {
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<double>(i);
  return from_vector(v, {n}, options);
}

// ---- copies ----

static kernels::Layout layout_of(const Shape& shape, const Shape& strides) {
  kernels::Layout l;
  l.ndim = static_cast<int>(shape.size());
  for (int i = 0; i < l.ndim; ++i) {
    l.sizes[i] = shape[i];
    l.strides[i] = strides[i];
  }
  return l;
}

// dst[...] = src[...] elementwise, converting dtype; both on the same device, same shape.
static void copy_same_device(const Tensor& src, const Tensor& dst) {
  kernels::Layout ls = layout_of(dst.shape(), src.strides());
  kernels::Layout ld = layout_of(dst.shape(), dst.strides());
  visit_dtype(src.dtype(), [&](auto s0) {
    visit_dtype(dst.dtype(), [&](auto d0) {
      using S = decltype(s0);
      using D = decltype(d0);
      if (dst.is_cuda()) {
#ifdef NALA_WITH_CUDA
        kernels::cuda::copy_strided<S, D>(ls, src.data<S>(), ld, dst.data<D>());
#endif
      } else {
        kernels::cpu::copy_strided<S, D>(ls, src.data<S>(), ld, dst.data<D>());
      }
    });
  });
}

// Moves a contiguous tensor's bytes to another device.
static Tensor move_bytes(const Tensor& src, Device device) {
  Tensor dst = empty(src.shape(), TensorOptions{src.dtype(), device});
  size_t bytes = src.numel() * dtype_size(src.dtype());
  if (bytes == 0) return dst;
#ifdef NALA_WITH_CUDA
  if (device == Device::CUDA)
    kernels::cuda::copy_host_to_device(dst.raw_data(), src.raw_data(), bytes);
  else
    kernels::cuda::copy_device_to_host(dst.raw_data(), src.raw_data(), bytes);
#else
  throw std::runtime_error("to: this build of nala has no CUDA support");
#endif
  return dst;
}

void Tensor::copy_(const Tensor& src_in) const {
  Tensor src = src_in.detach();
  if (src.shape() != shape()) src = src.expand(shape());
  if (src.device() != device()) src = move_bytes(src.contiguous(), device());
  copy_same_device(src, *this);
}

// The raw copy behind contiguous(), clone(), to(): a new contiguous tensor, no autograd.
Tensor copy_tensor(const Tensor& src, Device device, DType dtype) {
  Tensor s = src.detach();
  if (s.device() != device) s = move_bytes(s.contiguous(), device);
  Tensor dst = empty(s.shape(), TensorOptions{dtype, device});
  if (dst.numel() > 0) copy_same_device(s, dst);
  return dst;
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  Tensor c = copy_tensor(*this, Device::CPU, dtype_of<T>());
  const T* p = c.data<T>();
  return std::vector<T>(p, p + c.numel());
}
template std::vector<float> Tensor::to_vector() const;
template std::vector<double> Tensor::to_vector() const;
template std::vector<int32_t> Tensor::to_vector() const;
template std::vector<int64_t> Tensor::to_vector() const;
template std::vector<uint8_t> Tensor::to_vector() const;

double Tensor::item() const {
  if (numel() != 1)
    throw std::invalid_argument("item: tensor of shape " + shape_str(shape()) +
                                " has more than one element");
  return to_vector<double>()[0];
}

}  // namespace nala
