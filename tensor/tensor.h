// Tensor: an n-d strided view of a reference-counted Storage.
//
// A Tensor is a handle (a shared pointer to a TensorImpl). Copying a Tensor copies the handle,
// not the data. A view (reshape, permute, slice, expand, ...) is a new TensorImpl over the same
// Storage with other sizes, strides and offset; only contiguous(), clone() and ops copy data.
// Element (i0, i1, ...) lives at storage + offset + sum_k i_k * strides[k] (in elements).
//
// Autograd state (requires_grad, grad, grad_fn) sits in an AutogradMeta that edges of the graph
// point to, so a leaf's gradient can be accumulated without keeping its data alive.
#pragma once

#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "tensor/dtype.h"

namespace nala {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& shape);  // "[2, 3]"
int64_t shape_numel(const Shape& shape);

// Raw memory on one device, freed when the last tensor that views it is gone. CUDA memory comes
// from the caching allocator (kernels/cuda/runtime.cu), CPU memory is 64-byte aligned.
class Storage {
 public:
  Storage(size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
};

class Tensor;
struct Node;
struct AutogradMeta;

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;
  int64_t offset = 0;
  DType dtype = DType::Float32;
  std::shared_ptr<AutogradMeta> autograd;  // always set
};

struct TensorOptions {
  DType dtype = DType::Float32;
  Device device = Device::CPU;
  bool requires_grad = false;
  TensorOptions& with_dtype(DType d) {
    dtype = d;
    return *this;
  }
  TensorOptions& with_device(Device d) {
    device = d;
    return *this;
  }
};

class Tensor {
 public:
  Tensor() = default;  // an undefined tensor (no storage); defined() is false
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  const Shape& strides() const;
  int64_t offset() const;
  int64_t dim() const { return static_cast<int64_t>(shape().size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t numel() const { return shape_numel(shape()); }
  DType dtype() const;
  Device device() const;
  bool is_cuda() const { return device() == Device::CUDA; }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return impl_->storage; }
  TensorImpl* impl() const { return impl_.get(); }

  // Pointer to element (0, 0, ...) on the tensor's device; T must match dtype().
  template <typename T>
  T* data() const;
  void* raw_data() const;

  // Autograd (autograd/engine.cpp).
  bool requires_grad() const;
  Tensor& requires_grad_(bool value = true);  // only on leaves of floating dtype
  Tensor grad() const;                        // the accumulated gradient of a leaf, or undefined
  void set_grad(const Tensor& grad) const;
  void zero_grad() const;  // drops the gradient (like set_to_none in PyTorch)
  std::shared_ptr<Node> grad_fn() const;
  bool is_leaf() const { return !grad_fn(); }
  // Backpropagates from this tensor. With no gradient given it must hold one element.
  void backward(const Tensor& grad = Tensor(), bool retain_graph = false) const;
  Tensor detach() const;  // same storage, no autograd history

  // Views (differentiable; autograd/ops/shape.cpp). -1 in a shape is inferred.
  Tensor view(const Shape& shape) const;     // requires a compatible layout
  Tensor reshape(const Shape& shape) const;  // a view when possible, else a copy
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor t() const { return transpose(-2, -1); }
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor select(int64_t dim, int64_t index) const;  // slice then drop the dim
  Tensor expand(const Shape& shape) const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor squeeze(int64_t dim) const;
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;

  // Copies (differentiable).
  Tensor contiguous() const;  // itself when already contiguous
  Tensor clone() const;
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;
  Tensor cpu() const { return to(Device::CPU); }
  Tensor cuda() const { return to(Device::CUDA); }

  // Values, copied to the host.
  double item() const;  // the one element, as double
  template <typename T>
  std::vector<T> to_vector() const;

  // Writes `src` (same shape, broadcastable) into this tensor's memory, in place, outside
  // autograd. For initialisers, optimizers and data loading; never inside a differentiable op.
  void copy_(const Tensor& src) const;

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// ---- factories (tensor/tensor.cpp) ----
Tensor empty(const Shape& shape, TensorOptions options = {});
Tensor zeros(const Shape& shape, TensorOptions options = {});
Tensor ones(const Shape& shape, TensorOptions options = {});
Tensor full(const Shape& shape, double value, TensorOptions options = {});
Tensor zeros_like(const Tensor& t);
Tensor empty_like(const Tensor& t);  // contiguous, same dtype and device
Tensor arange(int64_t n, TensorOptions options = {});
// A tensor holding `values` (row-major) with `shape`, converted to options.dtype.
Tensor from_vector(const std::vector<double>& values, const Shape& shape,
                   TensorOptions options = {});
template <typename T>
Tensor from_data(const std::vector<T>& values, const Shape& shape, Device device = Device::CPU);

// ---- random numbers (tensor/random.cpp) ----
// One global generator. Its state is (seed, offset): a draw of n numbers uses the counters
// offset .. offset + n - 1 and advances offset by n, so CPU and CUDA draw identical values.
struct GeneratorState {
  uint64_t seed = 0;
  uint64_t offset = 0;
};
void manual_seed(uint64_t seed);
GeneratorState generator_state();
void set_generator_state(const GeneratorState& state);
Tensor rand(const Shape& shape, TensorOptions options = {});   // uniform [0, 1)
Tensor randn(const Shape& shape, TensorOptions options = {});  // standard normal
Tensor uniform(const Shape& shape, double low, double high, TensorOptions options = {});
// Normal(0, std) redrawn until inside [low, high], like torch.nn.init.trunc_normal_.
Tensor trunc_normal(const Shape& shape, double std, double low, double high,
                    TensorOptions options = {});

// ---- helpers for ops (not differentiable) ----
Shape contiguous_strides(const Shape& shape);
// A new contiguous tensor with src's values on `device` in `dtype`, outside autograd.
Tensor copy_tensor(const Tensor& src, Device device, DType dtype);

// NumPy-style printing: shape, dtype, device and the values.
std::ostream& operator<<(std::ostream& os, const Tensor& t);
std::string to_string(const Tensor& t);

// ---- .npy files (tensor/npy.cpp) ----
// Reads a NumPy .npy file (version 1-3, C order, little-endian f4 f8 i4 i8 u1; a Fortran-order
// array is read too). Throws std::runtime_error naming the file on any malformed header or size.
Tensor load_npy(const std::string& path);
void save_npy(const std::string& path, const Tensor& t);

}  // namespace nala
