// Elementwise ops: unary functions, broadcasting binary arithmetic, scalar arithmetic, dropout.
// The derivative of each unary function f lives in the unary_backward kernel (dx = dy f'(x));
// the binary ops' gradients are written below with the ops themselves, then summed back over
// broadcast dims (sum_to).
#include <algorithm>

#include "autograd/dispatch.h"
#include "autograd/ops.h"

namespace nala {

using kernels::BinaryOp;
using kernels::ScalarOp;
using kernels::UnaryOp;

// ---- unary ----

static Tensor unary(UnaryOp op, const char* name, const Tensor& x_in) {
  check_floating(name, x_in);
  Tensor x = x_in.detach().contiguous();
  Tensor y = empty_like(x);
  NALA_KERNEL(x, unary_forward, op, x.numel(), x.data<T>(), y.data<T>());
  record(y, name, {x_in}, [op, x, y = y.detach()](const Tensor& dy_in) {
    Tensor dy = dy_in.contiguous();
    Tensor dx = empty_like(x);
    NALA_KERNEL(x, unary_backward, op, x.numel(), x.data<T>(), y.data<T>(), dy.data<T>(),
                dx.data<T>());
    return std::vector<Tensor>{dx};
  });
  return y;
}

Tensor neg(const Tensor& x) { return unary(UnaryOp::Neg, "neg", x); }
Tensor exp(const Tensor& x) { return unary(UnaryOp::Exp, "exp", x); }
Tensor log(const Tensor& x) { return unary(UnaryOp::Log, "log", x); }
Tensor sqrt(const Tensor& x) { return unary(UnaryOp::Sqrt, "sqrt", x); }
Tensor abs(const Tensor& x) { return unary(UnaryOp::Abs, "abs", x); }
Tensor tanh(const Tensor& x) { return unary(UnaryOp::Tanh, "tanh", x); }
Tensor sigmoid(const Tensor& x) { return unary(UnaryOp::Sigmoid, "sigmoid", x); }
Tensor relu(const Tensor& x) { return unary(UnaryOp::Relu, "relu", x); }
Tensor silu(const Tensor& x) { return unary(UnaryOp::Silu, "silu", x); }
Tensor gelu(const Tensor& x, GeluApproximation approximation) {
  return unary(approximation == GeluApproximation::Tanh ? UnaryOp::GeluTanh : UnaryOp::GeluErf,
               "gelu", x);
}

// ---- binary, with broadcasting ----

// The NumPy broadcast of two shapes, or a clear error naming the op.
static Shape broadcast_shape(const char* op, const Shape& a, const Shape& b) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da != db && da != 1 && db != 1)
      throw std::invalid_argument(std::string(op) + ": shapes " + shape_str(a) + " and " +
                                  shape_str(b) + " cannot be broadcast together");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

static Tensor binary_raw(BinaryOp op, const char* name, const Tensor& a, const Tensor& b) {
  check_floating(name, a);
  check_floating(name, b);
  check_same(name, {a, b});
  Shape shape = broadcast_shape(name, a.shape(), b.shape());
  Tensor ea = a.detach().expand(shape), eb = b.detach().expand(shape);
  kernels::Broadcast bc;
  bc.ndim = static_cast<int>(shape.size());
  for (int i = 0; i < bc.ndim; ++i) {
    bc.sizes[i] = shape[i];
    bc.a_strides[i] = ea.strides()[i];
    bc.b_strides[i] = eb.strides()[i];
  }
  Tensor y = empty(shape, TensorOptions{a.dtype(), a.device()});
  NALA_KERNEL(a, binary_forward, op, bc, ea.data<T>(), eb.data<T>(), y.data<T>());
  return y;
}

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor y = binary_raw(BinaryOp::Add, "add", a, b);
  record(y, "add", {a, b}, [sa = a.shape(), sb = b.shape()](const Tensor& dy) {
    return std::vector<Tensor>{sum_to(dy, sa), sum_to(dy, sb)};
  });
  return y;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor y = binary_raw(BinaryOp::Sub, "sub", a, b);
  record(y, "sub", {a, b}, [sa = a.shape(), sb = b.shape()](const Tensor& dy) {
    return std::vector<Tensor>{sum_to(dy, sa), sum_to(neg(dy), sb)};
  });
  return y;
}

// d(ab) = b da + a db
Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor y = binary_raw(BinaryOp::Mul, "mul", a, b);
  // Each input's gradient needs only the other input: keep just what a needed gradient uses.
  const bool need_a = needs_grad(a), need_b = needs_grad(b);
  record(y, "mul", {a, b},
         [sa = a.shape(), sb = b.shape(), need_a, need_b, a = need_b ? a.detach() : Tensor(),
          b = need_a ? b.detach() : Tensor()](const Tensor& dy) {
           return std::vector<Tensor>{need_a ? sum_to(mul(dy, b), sa) : Tensor(),
                                      need_b ? sum_to(mul(dy, a), sb) : Tensor()};
         });
  return y;
}

// d(a/b) = da / b - (a / b^2) db = (da - y db) / b
Tensor div(const Tensor& a, const Tensor& b) {
  Tensor y = binary_raw(BinaryOp::Div, "div", a, b);
  record(y, "div", {a, b},
         [sa = a.shape(), b = b.detach(), y = y.detach(), need_a = needs_grad(a),
          need_b = needs_grad(b)](const Tensor& dy) {
           Tensor da = div(dy, b);
           return std::vector<Tensor>{need_a ? sum_to(da, sa) : Tensor(),
                                      need_b ? sum_to(neg(mul(da, y)), b.shape()) : Tensor()};
         });
  return y;
}

// d(a^b) = b a^(b-1) da + a^b ln(a) db. Where a = 0 the ln term is taken as 0 (a^b = 0 there).
Tensor pow(const Tensor& a, const Tensor& b) {
  Tensor y = binary_raw(BinaryOp::Pow, "pow", a, b);
  record(y, "pow", {a, b}, [a = a.detach(), b = b.detach(), y = y.detach()](const Tensor& dy) {
    Tensor da = mul(dy, mul(b, pow(a, add(b, -1.0))));
    Tensor zeros_to_one = eq(a, zeros({}, TensorOptions{a.dtype(), a.device()}));
    Tensor db = mul(dy, mul(y, log(add(a, zeros_to_one))));
    return std::vector<Tensor>{sum_to(da, a.shape()), sum_to(db, b.shape())};
  });
  return y;
}

Tensor eq(const Tensor& a, const Tensor& b) { return binary_raw(BinaryOp::Eq, "eq", a, b); }
Tensor gt(const Tensor& a, const Tensor& b) { return binary_raw(BinaryOp::Gt, "gt", a, b); }

// ---- with a scalar ----

static Tensor scalar_raw(ScalarOp op, const char* name, const Tensor& x_in, double s) {
  check_floating(name, x_in);
  Tensor x = x_in.detach().contiguous();
  Tensor y = empty_like(x);
  NALA_KERNEL(x, scalar_forward, op, x.numel(), x.data<T>(), static_cast<T>(s), y.data<T>());
  return y;
}

Tensor add(const Tensor& x, double s) {
  Tensor y = scalar_raw(ScalarOp::Add, "add", x, s);
  record(y, "add_scalar", {x}, [](const Tensor& dy) { return std::vector<Tensor>{dy}; });
  return y;
}

Tensor mul(const Tensor& x, double s) {
  Tensor y = scalar_raw(ScalarOp::Mul, "mul", x, s);
  record(y, "mul_scalar", {x}, [s](const Tensor& dy) { return std::vector<Tensor>{mul(dy, s)}; });
  return y;
}

// d(x^p) = p x^(p-1) dx
Tensor pow(const Tensor& x, double p) {
  Tensor y = scalar_raw(ScalarOp::Pow, "pow", x, p);
  record(y, "pow_scalar", {x}, [p, x = x.detach()](const Tensor& dy) {
    return std::vector<Tensor>{mul(dy, mul(pow(x, p - 1.0), p))};
  });
  return y;
}

// ---- dropout ----

// y = x * mask / (1 - p), mask_i ~ Bernoulli(1 - p) from the global generator.
Tensor dropout(const Tensor& x, double p, bool training) {
  if (p < 0.0 || p >= 1.0)
    throw std::invalid_argument("dropout: p must be in [0, 1), got " + std::to_string(p));
  if (!training || p == 0.0) return x;
  check_floating("dropout", x);
  Tensor keep = gt(rand(x.shape(), TensorOptions{x.dtype(), x.device()}),
                   full({}, p, TensorOptions{x.dtype(), x.device()}));
  return mul(x, mul(keep, 1.0 / (1.0 - p)));
}

}  // namespace nala
