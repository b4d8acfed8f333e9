// Matrix products: matmul (batched, broadcasting) and linear. Both end in the gemm kernel,
// which reads a transposed operand in place (no copy) when its last two dims are swapped.
#include <algorithm>

#include "autograd/dispatch.h"
#include "autograd/ops.h"

namespace nala {

// How gemm reads one operand: a base pointer offset, transposed or not, leading dimension, and
// one stride between the matrices of the batch.
struct GemmOperand {
  Tensor t;  // the tensor whose storage is read (possibly a contiguous copy)
  bool trans = false;
  int64_t ld = 0;
  int64_t batch_stride = 0;
};

// Reads x (batch..., rows, cols) in place when gemm can: rows contiguous (A, ld = row stride) or
// columns contiguous (A^T, ld = column stride), and the batch dims collapsing to one stride (or
// all broadcast, stride 0). Otherwise reads a contiguous copy.
static bool describe_operand(const Tensor& x, GemmOperand& op) {
  const Shape& sh = x.shape();
  const Shape& st = x.strides();
  int64_t n = x.dim(), rows = sh[n - 2], cols = sh[n - 1];
  // A stride along a dim of size 1 is never used: replace it with the value that fits.
  int64_t row_stride = rows == 1 ? cols : st[n - 2], col_stride = cols == 1 ? 1 : st[n - 1];
  int64_t t_row_stride = rows == 1 ? 1 : st[n - 2], t_col_stride = cols == 1 ? rows : st[n - 1];
  if (col_stride == 1 && row_stride >= cols) {
    op.trans = false;
    op.ld = std::max<int64_t>(row_stride, 1);
  } else if (t_row_stride == 1 && t_col_stride >= rows) {
    op.trans = true;
    op.ld = std::max<int64_t>(t_col_stride, 1);
  } else {
    return false;
  }
  std::vector<int64_t> batch_dims;
  for (int64_t d = 0; d < n - 2; ++d)
    if (sh[d] != 1) batch_dims.push_back(d);
  bool broadcast = true;
  for (int64_t d : batch_dims) broadcast = broadcast && st[d] == 0;
  op.batch_stride = 0;
  if (batch_dims.empty() || broadcast) return true;
  for (size_t i = 0; i + 1 < batch_dims.size(); ++i)
    if (st[batch_dims[i]] != st[batch_dims[i + 1]] * sh[batch_dims[i + 1]]) return false;
  op.batch_stride = st[batch_dims.back()];
  return true;
}

static GemmOperand gemm_operand(const Tensor& x) {
  GemmOperand op;
  if (describe_operand(x, op)) {
    op.t = x;
  } else {
    op.t = x.contiguous();
    describe_operand(op.t, op);
  }
  return op;
}

// c (batch..., m, n) = a (batch..., m, k) @ b (batch..., k, n), no autograd.
static Tensor matmul_raw(const Tensor& a_in, const Tensor& b_in) {
  Tensor a = a_in.detach(), b = b_in.detach();
  int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  // Broadcast the batch dims.
  Shape ba(a.shape().begin(), a.shape().end() - 2), bb(b.shape().begin(), b.shape().end() - 2);
  size_t nb = std::max(ba.size(), bb.size());
  Shape batch(nb);
  for (size_t i = 0; i < nb; ++i) {
    int64_t x = i < nb - ba.size() ? 1 : ba[i - (nb - ba.size())];
    int64_t y = i < nb - bb.size() ? 1 : bb[i - (nb - bb.size())];
    if (x != y && x != 1 && y != 1)
      throw std::invalid_argument("matmul: batch dims of " + shape_str(a.shape()) + " and " +
                                  shape_str(b.shape()) + " cannot be broadcast");
    batch[i] = x == 1 ? y : x;
  }
  Shape sa = batch, sb = batch, sc = batch;
  sa.insert(sa.end(), {m, k});
  sb.insert(sb.end(), {k, n});
  sc.insert(sc.end(), {m, n});
  GemmOperand A = gemm_operand(a.expand(sa)), B = gemm_operand(b.expand(sb));
  Tensor c = empty(sc, TensorOptions{a.dtype(), a.device()});
  if (c.numel() == 0) return c;
  if (k == 0) return zeros(sc, TensorOptions{a.dtype(), a.device()});
  int64_t nbatch = shape_numel(batch);
  NALA_KERNEL(a, gemm, A.trans, B.trans, m, n, k, T(1), A.t.data<T>(), A.ld, A.batch_stride,
              B.t.data<T>(), B.ld, B.batch_stride, T(0), c.data<T>(), n, m * n, nbatch);
  return c;
}

// C = A B:  dA = dC B^T,  dB = A^T dC  (summed over broadcast batch dims)
Tensor matmul(const Tensor& a, const Tensor& b) {
  check_floating("matmul", a);
  check_floating("matmul", b);
  check_same("matmul", {a, b});
  if (a.dim() < 2 || b.dim() < 2 || a.size(-1) != b.size(-2))
    throw std::invalid_argument("matmul: shapes " + shape_str(a.shape()) + " and " +
                                shape_str(b.shape()) + " are not aligned");
  Tensor c = matmul_raw(a, b);
  // dA needs only B and dB only A: keep just what a needed gradient uses.
  const bool need_a = needs_grad(a), need_b = needs_grad(b);
  record(c, "matmul", {a, b},
         [sa = a.shape(), sb = b.shape(), need_a, need_b, a = need_b ? a.detach() : Tensor(),
          b = need_a ? b.detach() : Tensor()](const Tensor& dc) {
           return std::vector<Tensor>{need_a ? sum_to(matmul_raw(dc, b.t()), sa) : Tensor(),
                                      need_b ? sum_to(matmul_raw(a.t(), dc), sb) : Tensor()};
         });
  return c;
}

// y = x W^T + b:  dx = dy W,  dW = dy^T x,  db = sum_rows dy   (x flattened to rows)
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  check_floating("linear", x);
  check_floating("linear", weight);
  check_same("linear", {x, weight, bias});
  if (weight.dim() != 2 || x.dim() < 1 || x.size(-1) != weight.size(1) ||
      (bias.defined() && (bias.dim() != 1 || bias.size(0) != weight.size(0))))
    throw std::invalid_argument("linear: input " + shape_str(x.shape()) + ", weight " +
                                shape_str(weight.shape()) + ", bias " +
                                (bias.defined() ? shape_str(bias.shape()) : "none") +
                                " do not fit (need input [..., in], weight [out, in], bias [out])");
  int64_t in = weight.size(1), out = weight.size(0);
  Tensor x2 = x.detach().reshape({-1, in});
  int64_t rows = x2.size(0);
  Shape out_shape = x.shape();
  out_shape.back() = out;
  Tensor y;
  if (bias.defined()) {
    // y starts as the bias on every row, then gemm adds x W^T (beta = 1): one pass over y.
    y = copy_tensor(bias.detach().expand({rows, out}), x.device(), x.dtype());
  } else {
    y = empty({rows, out}, TensorOptions{x.dtype(), x.device()});
  }
  GemmOperand X = gemm_operand(x2);
  Tensor w = weight.detach().contiguous();
  if (rows > 0 && out > 0)
    NALA_KERNEL(x, gemm, X.trans, true, rows, out, in, T(1), X.t.data<T>(), X.ld, 0, w.data<T>(),
                in, 0, T(bias.defined() ? 1 : 0), y.data<T>(), out, 0, 1);
  y = y.view(out_shape);
  // dx needs only W and dW only x: keep just what a needed gradient uses.
  const bool need_x = needs_grad(x), need_w = needs_grad(weight);
  record(y, "linear", {x, weight, bias},
         [rows, out, xs = x.shape(), need_x, need_w, need_b = needs_grad(bias),
          x2 = need_w ? x2 : Tensor(), w = need_x ? w : Tensor()](const Tensor& dy_in) {
           Tensor dy = dy_in.reshape({rows, out});
           return std::vector<Tensor>{need_x ? matmul_raw(dy, w).view(xs) : Tensor(),
                                      need_w ? matmul_raw(dy.t(), x2) : Tensor(),
                                      need_b ? sum(dy, {0}) : Tensor()};
         });
  return y;
}

}  // namespace nala
