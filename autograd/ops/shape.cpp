// Views (reshape, permute, slice, expand, ...), copies (contiguous, clone, to) and joining
// (concat, split). A view shares storage; its backward maps the gradient back to the input's
// shape: the inverse permutation, the reshape back, the sum over expanded dims, or the slice
// written into zeros.
#include <algorithm>
#include <numeric>

#include "autograd/dispatch.h"
#include "autograd/ops.h"

namespace nala {

// ---- checks shared by all ops ----

void check_floating(const char* op, const Tensor& t) {
  if (!t.defined()) throw std::invalid_argument(std::string(op) + ": got an undefined tensor");
  if (!is_floating(t.dtype()))
    throw std::invalid_argument(std::string(op) + ": expected a float32 or float64 tensor, got " +
                                dtype_name(t.dtype()) + " of shape " + shape_str(t.shape()));
}

void check_same(const char* op, const std::vector<Tensor>& tensors) {
  const Tensor* first = nullptr;
  for (const Tensor& t : tensors) {
    if (!t.defined()) continue;
    if (!first) {
      first = &t;
      continue;
    }
    if (t.device() != first->device())
      throw std::invalid_argument(std::string(op) +
                                  ": tensors on different devices: " + shape_str(first->shape()) +
                                  " on " + device_name(first->device()) + " and " +
                                  shape_str(t.shape()) + " on " + device_name(t.device()));
    if (t.dtype() != first->dtype())
      throw std::invalid_argument(std::string(op) + ": tensors of different dtypes: " +
                                  shape_str(first->shape()) + " " + dtype_name(first->dtype()) +
                                  " and " + shape_str(t.shape()) + " " + dtype_name(t.dtype()));
  }
}

void check_dim(const char* op, const Tensor& t, int64_t dims, const char* what) {
  if (t.dim() != dims)
    throw std::invalid_argument(std::string(op) + ": " + what + " must have " +
                                std::to_string(dims) + " dims, got shape " + shape_str(t.shape()));
}

int64_t wrap_dim(const char* op, int64_t dim, int64_t ndim) {
  int64_t n = std::max<int64_t>(ndim, 1);
  if (dim < -n || dim >= n)
    throw std::out_of_range(std::string(op) + ": dim " + std::to_string(dim) +
                            " out of range for a tensor with " + std::to_string(ndim) + " dims");
  return dim < 0 ? dim + n : dim;
}

// A view of x's storage with new sizes, strides and offset (no autograd yet).
static Tensor make_view(const Tensor& x, Shape shape, Shape strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = x.storage();
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = x.dtype();
  impl->autograd = std::make_shared<AutogradMeta>();
  return Tensor(impl);
}

// Resolves a -1 entry and checks the element count.
static Shape infer_shape(const char* op, const Shape& from, Shape to) {
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < to.size(); ++i) {
    if (to[i] == -1) {
      if (infer >= 0)
        throw std::invalid_argument(std::string(op) + ": only one -1 allowed in " + shape_str(to));
      infer = static_cast<int64_t>(i);
    } else {
      known *= to[i];
    }
  }
  int64_t n = shape_numel(from);
  if (infer >= 0 && known != 0 && n % known == 0) to[infer] = n / known;
  if (shape_numel(to) != n || (infer >= 0 && known == 0))
    throw std::invalid_argument(std::string(op) + ": cannot view shape " + shape_str(from) +
                                " as " + shape_str(to));
  return to;
}

// Strides for viewing (shape, strides) as `to` without a copy, or empty if impossible. Old dims
// are taken in chunks that are contiguous among themselves (each stride = next stride * size);
// the new dims covering a chunk get strides inside it (the algorithm of PyTorch's computeStride).
static Shape view_strides(const Shape& shape, const Shape& strides, const Shape& to) {
  if (shape.empty()) return Shape(to.size(), 1);
  Shape out(to.size());
  int64_t view_d = static_cast<int64_t>(to.size()) - 1;
  int64_t chunk_stride = strides.back(), chunk_numel = 1, view_numel = 1;
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    chunk_numel *= shape[d];
    bool chunk_ends = d == 0 || (shape[d - 1] != 1 && strides[d - 1] != chunk_numel * chunk_stride);
    if (!chunk_ends) continue;
    while (view_d >= 0 && (view_numel < chunk_numel || to[view_d] == 1)) {
      out[view_d] = view_numel * chunk_stride;
      view_numel *= to[view_d];
      --view_d;
    }
    if (view_numel != chunk_numel) return {};
    if (d > 0) {
      chunk_stride = strides[d - 1];
      chunk_numel = view_numel = 1;
    }
  }
  if (view_d != -1) return {};
  return out;
}

Tensor Tensor::view(const Shape& shape_in) const {
  Shape to = infer_shape("view", shape(), shape_in);
  Shape strides_to = numel() == 0 ? contiguous_strides(to) : view_strides(shape(), strides(), to);
  if (strides_to.empty() && !to.empty())
    throw std::invalid_argument("view: shape " + shape_str(shape()) + " with strides " +
                                shape_str(strides()) + " cannot be viewed as " + shape_str(to) +
                                " without a copy; use reshape");
  Tensor y = make_view(*this, to, strides_to, offset());
  Shape from = shape();
  record(y, "view", {*this},
         [from](const Tensor& dy) { return std::vector<Tensor>{dy.reshape(from)}; });
  return y;
}

Tensor Tensor::reshape(const Shape& shape_in) const {
  Shape to = infer_shape("reshape", shape(), shape_in);
  Shape strides_to = numel() == 0 ? contiguous_strides(to) : view_strides(shape(), strides(), to);
  if (!strides_to.empty() || to.empty()) return view(to);
  return contiguous().view(to);
}

Tensor Tensor::permute(const std::vector<int64_t>& dims) const {
  if (static_cast<int64_t>(dims.size()) != dim())
    throw std::invalid_argument("permute: " + std::to_string(dims.size()) +
                                " dims given for shape " + shape_str(shape()));
  Shape sh(dim()), st(dim());
  std::vector<int64_t> inverse(dim(), -1);
  for (int64_t i = 0; i < dim(); ++i) {
    int64_t d = wrap_dim("permute", dims[i], dim());
    if (inverse[d] != -1)
      throw std::invalid_argument("permute: dim " + std::to_string(d) + " repeated");
    inverse[d] = i;
    sh[i] = shape()[d];
    st[i] = strides()[d];
  }
  Tensor y = make_view(*this, sh, st, offset());
  record(y, "permute", {*this},
         [inverse](const Tensor& dy) { return std::vector<Tensor>{dy.permute(inverse)}; });
  return y;
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  std::vector<int64_t> dims(dim());
  std::iota(dims.begin(), dims.end(), 0);
  std::swap(dims[wrap_dim("transpose", d0, dim())], dims[wrap_dim("transpose", d1, dim())]);
  return permute(dims);
}

// The adjoint of slicing: zeros of `shape` with dy written into the slice.
static Tensor embed_slice(const Tensor& dy, const Shape& shape, int64_t dim, int64_t start,
                          int64_t end, int64_t step) {
  Tensor dx = zeros(shape, TensorOptions{dy.dtype(), dy.device()});
  dx.slice(dim, start, end, step).copy_(dy);
  return dx;
}

Tensor Tensor::slice(int64_t dim_in, int64_t start, int64_t end, int64_t step) const {
  int64_t d = wrap_dim("slice", dim_in, dim());
  int64_t n = shape()[d];
  if (step <= 0) throw std::invalid_argument("slice: step must be positive");
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape sh = shape(), st = strides();
  sh[d] = (end - start + step - 1) / step;
  st[d] *= step;
  Tensor y = make_view(*this, sh, st, offset() + start * strides()[d]);
  Shape from = shape();
  record(y, "slice", {*this}, [=](const Tensor& dy) {
    return std::vector<Tensor>{embed_slice(dy, from, d, start, end, step)};
  });
  return y;
}

Tensor Tensor::select(int64_t dim_in, int64_t index) const {
  int64_t d = wrap_dim("select", dim_in, dim());
  if (index < -shape()[d] || index >= shape()[d])
    throw std::out_of_range("select: index " + std::to_string(index) + " out of range for dim " +
                            std::to_string(d) + " of shape " + shape_str(shape()));
  if (index < 0) index += shape()[d];
  return slice(d, index, index + 1).squeeze(d);
}

Tensor Tensor::expand(const Shape& to) const {
  int64_t n = static_cast<int64_t>(to.size());
  if (n < dim())
    throw std::invalid_argument("expand: cannot expand shape " + shape_str(shape()) + " to " +
                                shape_str(to));
  Shape st(n, 0);
  for (int64_t i = 0; i < n; ++i) {
    int64_t j = i - (n - dim());
    if (j < 0) continue;
    if (shape()[j] == to[i])
      st[i] = strides()[j];
    else if (shape()[j] != 1)
      throw std::invalid_argument("expand: cannot expand shape " + shape_str(shape()) + " to " +
                                  shape_str(to));
  }
  if (to == shape()) return *this;
  Tensor y = make_view(*this, to, st, offset());
  Shape from = shape();
  record(y, "expand", {*this},
         [from](const Tensor& dy) { return std::vector<Tensor>{sum_to(dy, from)}; });
  return y;
}

Tensor Tensor::unsqueeze(int64_t d) const {
  d = wrap_dim("unsqueeze", d, dim() + 1);
  Shape sh = shape();
  sh.insert(sh.begin() + d, 1);
  return view(sh);
}

Tensor Tensor::squeeze(int64_t d) const {
  d = wrap_dim("squeeze", d, dim());
  if (shape()[d] != 1) return *this;
  Shape sh = shape();
  sh.erase(sh.begin() + d);
  return view(sh);
}

Tensor Tensor::flatten(int64_t start, int64_t end) const {
  if (dim() == 0) return reshape({1});
  start = wrap_dim("flatten", start, dim());
  end = wrap_dim("flatten", end, dim());
  Shape sh(shape().begin(), shape().begin() + start);
  int64_t n = 1;
  for (int64_t i = start; i <= end; ++i) n *= shape()[i];
  sh.push_back(n);
  sh.insert(sh.end(), shape().begin() + end + 1, shape().end());
  return reshape(sh);
}

// ---- copies ----

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : clone(); }

Tensor Tensor::clone() const {
  Tensor y = copy_tensor(*this, device(), dtype());
  record(y, "clone", {*this}, [](const Tensor& dy) { return std::vector<Tensor>{dy}; });
  return y;
}

Tensor Tensor::to(Device d) const {
  if (d == device()) return *this;
  Tensor y = copy_tensor(*this, d, dtype());
  Device from = device();
  record(y, "to_device", {*this},
         [from](const Tensor& dy) { return std::vector<Tensor>{dy.to(from)}; });
  return y;
}

Tensor Tensor::to(DType t) const {
  if (t == dtype()) return *this;
  Tensor y = copy_tensor(*this, device(), t);
  DType from = dtype();
  if (is_floating(t) && is_floating(from))
    record(y, "to_dtype", {*this},
           [from](const Tensor& dy) { return std::vector<Tensor>{dy.to(from)}; });
  return y;
}

// ---- joining and splitting ----

// Writes parts[i] into out along dim d, lengths[i] of it each, one after another (an undefined
// part: zeros): concat's forward and split's backward.
static void write_parts(const Tensor& out, int64_t d, const std::vector<Tensor>& parts,
                        const std::vector<int64_t>& lengths) {
  int64_t at = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    out.slice(d, at, at + lengths[i])
        .copy_(parts[i].defined() ? parts[i] : zeros({}, TensorOptions{out.dtype(), out.device()}));
    at += lengths[i];
  }
}

Tensor concat(const std::vector<Tensor>& tensors, int64_t dim) {
  if (tensors.empty()) throw std::invalid_argument("concat: no tensors given");
  check_same("concat", tensors);
  const Tensor& first = tensors[0];
  int64_t d = wrap_dim("concat", dim, first.dim());
  Shape shape = first.shape();
  shape[d] = 0;
  for (const Tensor& t : tensors) {
    Shape s = t.shape(), f = first.shape();
    s[d] = f[d] = 0;
    if (t.dim() != first.dim() || s != f)
      throw std::invalid_argument("concat: shapes " + shape_str(first.shape()) + " and " +
                                  shape_str(t.shape()) + " differ outside dim " +
                                  std::to_string(d));
    shape[d] += t.shape()[d];
  }
  std::vector<int64_t> lengths;
  for (const Tensor& t : tensors) lengths.push_back(t.shape()[d]);
  Tensor y = empty(shape, TensorOptions{first.dtype(), first.device()});
  write_parts(y.detach(), d, tensors, lengths);
  record(y, "concat", tensors, [=](const Tensor& dy) {
    std::vector<Tensor> dx;
    int64_t at = 0;
    for (int64_t length : lengths) {
      dx.push_back(dy.slice(d, at, at + length));
      at += length;
    }
    return dx;
  });
  return y;
}

// The parts are views of x (slices, no copy), all made by one node: its backward writes each
// part's gradient into its place in dx (zeros where a part got none) in one buffer. (A node per
// slice would give each part a full-size gradient, zeros around its slice, and add them up.)
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  int64_t d = wrap_dim("split", dim, x.dim());
  for (int64_t s : sizes)
    if (s < 0)
      throw std::invalid_argument("split: sizes must not be negative, got " + std::to_string(s) +
                                  " for shape " + shape_str(x.shape()));
  int64_t total = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  if (total != x.shape()[d])
    throw std::invalid_argument("split: sizes add up to " + std::to_string(total) + " but dim " +
                                std::to_string(d) + " of shape " + shape_str(x.shape()) + " is " +
                                std::to_string(x.shape()[d]));
  std::vector<Tensor> parts;
  const Tensor base = x.detach();
  int64_t at = 0;
  for (int64_t s : sizes) {
    parts.push_back(base.slice(d, at, at + s));
    at += s;
  }
  record_outputs(
      parts, "split", {x}, [shape = x.shape(), sizes, d](const std::vector<Tensor>& dys) {
        const Tensor& some =
            *std::find_if(dys.begin(), dys.end(), [](const Tensor& t) { return t.defined(); });
        Tensor dx = empty(shape, TensorOptions{some.dtype(), some.device()});
        write_parts(dx, d, dys, sizes);
        return std::vector<Tensor>{dx};
      });
  return parts;
}

}  // namespace nala
