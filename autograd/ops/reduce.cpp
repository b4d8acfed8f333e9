// Reductions: sum, mean, max, var over chosen dims, and sum_to (the adjoint of broadcasting).
// The kernel reduces the middle axis of a contiguous (outer, r, inner) array; a set of dims
// that is not one contiguous block is reduced one block at a time.
#include <algorithm>

#include "autograd/dispatch.h"
#include "autograd/ops.h"

namespace nala {

// Sorted, unique, non-negative dims; empty means all.
static std::vector<int64_t> normalize_dims(const char* op, std::vector<int64_t> dims,
                                           int64_t ndim) {
  if (dims.empty())
    for (int64_t d = 0; d < ndim; ++d) dims.push_back(d);
  for (int64_t& d : dims) d = wrap_dim(op, d, ndim);
  std::sort(dims.begin(), dims.end());
  if (std::adjacent_find(dims.begin(), dims.end()) != dims.end())
    throw std::invalid_argument(std::string(op) + ": a dim is repeated");
  return dims;
}

static Shape reduced_shape(const Shape& shape, const std::vector<int64_t>& dims, bool keepdim) {
  Shape out;
  for (int64_t d = 0; d < static_cast<int64_t>(shape.size()); ++d) {
    bool reduced = std::binary_search(dims.begin(), dims.end(), d);
    if (!reduced)
      out.push_back(shape[d]);
    else if (keepdim)
      out.push_back(1);
  }
  return out;
}

// The reduction itself, no autograd: returns the keepdim-shaped result. The dims go in blocks of
// adjacent ones, the last block first, each an (outer, r, inner) reduction of the result so far:
// sum(dy, {0, 2, 3}) of an (N, C, H, W) image reduces each plane to (N, C, 1, 1), then the
// images. (Permuting the dims to the end would copy all of x first, as many bytes again as the
// reduction reads.)
static Tensor reduce_raw(kernels::ReduceOp op, const char* name, const Tensor& x_in,
                         const std::vector<int64_t>& dims) {
  check_floating(name, x_in);
  if (op == kernels::ReduceOp::Max)
    for (int64_t d : dims)
      if (x_in.shape()[d] == 0)
        throw std::invalid_argument(std::string(name) +
                                    ": cannot reduce over an empty dim of shape " +
                                    shape_str(x_in.shape()));
  Tensor y = x_in.detach().contiguous();
  for (size_t end = dims.size(); end > 0;) {
    size_t begin = end - 1;  // dims[begin .. end) is a block of adjacent dims
    while (begin > 0 && dims[begin - 1] + 1 == dims[begin]) --begin;
    Shape shape = y.shape();
    int64_t outer = 1, r = 1, inner = 1;
    for (int64_t d = 0; d < y.dim(); ++d) {
      if (d < dims[begin])
        outer *= shape[d];
      else if (d <= dims[end - 1])
        r *= shape[d], shape[d] = 1;
      else
        inner *= shape[d];
    }
    Tensor reduced = empty(shape, TensorOptions{y.dtype(), y.device()});
    NALA_KERNEL(y, reduce, op, outer, r, inner, y.data<T>(), reduced.data<T>());
    y = reduced;
    end = begin;
  }
  return y;
}

static Tensor drop_dims(const Tensor& y, const Shape& x_shape, const std::vector<int64_t>& dims,
                        bool keepdim) {
  return keepdim ? y : y.view(reduced_shape(x_shape, dims, false));
}

// d sum / dx = 1: the gradient is dy broadcast back over the reduced dims.
Tensor sum(const Tensor& x, std::vector<int64_t> dims_in, bool keepdim) {
  std::vector<int64_t> dims = normalize_dims("sum", dims_in, x.dim());
  if (dims.empty()) return x;  // a 0-d tensor
  Tensor y =
      drop_dims(reduce_raw(kernels::ReduceOp::Sum, "sum", x, dims), x.shape(), dims, keepdim);
  record(y, "sum", {x}, [xs = x.shape(), dims](const Tensor& dy) {
    return std::vector<Tensor>{dy.reshape(reduced_shape(xs, dims, true)).expand(xs)};
  });
  return y;
}

Tensor mean(const Tensor& x, std::vector<int64_t> dims_in, bool keepdim) {
  std::vector<int64_t> dims = normalize_dims("mean", dims_in, x.dim());
  int64_t count = 1;
  for (int64_t d : dims) count *= x.shape()[d];
  return mul(sum(x, dims, keepdim), 1.0 / static_cast<double>(count));
}

// d max / dx_i = 1 / (number of maxima) where x_i is a maximum, else 0.
Tensor max(const Tensor& x, std::vector<int64_t> dims_in, bool keepdim) {
  std::vector<int64_t> dims = normalize_dims("max", dims_in, x.dim());
  if (dims.empty()) return x;  // a 0-d tensor
  Tensor y_keep = reduce_raw(kernels::ReduceOp::Max, "max", x, dims);
  Tensor y = drop_dims(y_keep, x.shape(), dims, keepdim);
  record(y, "max", {x}, [x = x.detach(), y_keep, dims](const Tensor& dy) {
    Tensor is_max = eq(x, y_keep);
    Tensor share = div(is_max, sum(is_max, dims, true));
    return std::vector<Tensor>{mul(share, dy.reshape(y_keep.shape()))};
  });
  return y;
}

// var = sum (x - mean)^2 / (count - correction), composed from differentiable ops.
Tensor var(const Tensor& x, std::vector<int64_t> dims_in, int64_t correction, bool keepdim) {
  std::vector<int64_t> dims = normalize_dims("var", dims_in, x.dim());
  int64_t count = 1;
  for (int64_t d : dims) count *= x.shape()[d];
  if (count - correction <= 0)
    throw std::invalid_argument("var: " + std::to_string(count) + " elements with correction " +
                                std::to_string(correction) + " in shape " + shape_str(x.shape()));
  Tensor centered = sub(x, mean(x, dims, true));
  return mul(sum(mul(centered, centered), dims, keepdim),
             1.0 / static_cast<double>(count - correction));
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  int64_t lead = x.dim() - static_cast<int64_t>(shape.size());
  if (lead < 0)
    throw std::invalid_argument("sum_to: cannot sum shape " + shape_str(x.shape()) + " to " +
                                shape_str(shape));
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (d < lead || (shape[d - lead] == 1 && x.shape()[d] != 1)) dims.push_back(d);
  if (dims.empty()) return x.reshape(shape);
  return sum(x, dims, true).reshape(shape);
}

}  // namespace nala
