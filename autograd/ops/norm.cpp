// Layer norm (over the last dim) and batch norm (per channel), each one fused node: the kernels
// compute the statistics, normalise, and in the backward apply the closed-form gradient
// (formulas in kernels/kernel_list.inc next to the kernels).
#include "autograd/dispatch.h"
#include "autograd/ops.h"

namespace nala {

template <typename T>
static T* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

Tensor layer_norm(const Tensor& x_in, const Tensor& weight, const Tensor& bias, double eps) {
  check_floating("layer_norm", x_in);
  check_same("layer_norm", {x_in, weight, bias});
  if (x_in.dim() < 1) throw std::invalid_argument("layer_norm: input must have at least 1 dim");
  int64_t cols = x_in.size(-1), rows = cols ? x_in.numel() / cols : 0;
  for (const Tensor* p : {&weight, &bias})
    if (p->defined() && (p->dim() != 1 || p->size(0) != cols))
      throw std::invalid_argument("layer_norm: weight/bias of shape " + shape_str(p->shape()) +
                                  " for input " + shape_str(x_in.shape()) + " (need [" +
                                  std::to_string(cols) + "])");
  Tensor x = x_in.detach().contiguous();
  Tensor w = weight.defined() ? weight.detach().contiguous() : Tensor();
  Tensor b = bias.defined() ? bias.detach().contiguous() : Tensor();
  Tensor y = empty_like(x);
  Tensor mean = empty({rows}, TensorOptions{x.dtype(), x.device()}), rstd = empty_like(mean);
  NALA_KERNEL(x, layer_norm_forward, rows, cols, x.data<T>(), ptr_or_null<T>(w), ptr_or_null<T>(b),
              T(eps), y.data<T>(), mean.data<T>(), rstd.data<T>());
  record(y, "layer_norm", {x_in, weight, bias}, [=](const Tensor& dy_in) {
    Tensor dy = dy_in.contiguous();
    Tensor dx = empty_like(x);
    Tensor dw = w.defined() ? empty_like(w) : Tensor(), db = b.defined() ? empty_like(b) : Tensor();
    NALA_KERNEL(x, layer_norm_backward, rows, cols, x.data<T>(), dy.data<T>(), ptr_or_null<T>(w),
                mean.data<T>(), rstd.data<T>(), dx.data<T>(), ptr_or_null<T>(dw),
                ptr_or_null<T>(db));
    return std::vector<Tensor>{dx, dw, db};
  });
  return y;
}

Tensor batch_norm(const Tensor& x_in, const Tensor& weight, const Tensor& bias,
                  const Tensor& running_mean, const Tensor& running_var, bool training,
                  double momentum, double eps) {
  check_floating("batch_norm", x_in);
  check_same("batch_norm", {x_in, weight, bias, running_mean, running_var});
  if (x_in.dim() != 2 && x_in.dim() != 4)
    throw std::invalid_argument("batch_norm: input must be (N, C) or (N, C, H, W), got " +
                                shape_str(x_in.shape()));
  int64_t N = x_in.size(0), C = x_in.size(1), spatial = x_in.numel() / std::max<int64_t>(N * C, 1);
  for (const Tensor* p : {&weight, &bias, &running_mean, &running_var})
    if (p->defined() && (p->dim() != 1 || p->size(0) != C))
      throw std::invalid_argument("batch_norm: parameter of shape " + shape_str(p->shape()) +
                                  " for input " + shape_str(x_in.shape()) + " (need [" +
                                  std::to_string(C) + "])");
  Tensor x = x_in.detach().contiguous();
  Tensor w = weight.defined() ? weight.detach().contiguous() : Tensor();
  Tensor b = bias.defined() ? bias.detach().contiguous() : Tensor();
  Tensor y = empty_like(x);
  if (!training) {
    if (!running_mean.defined() || !running_var.defined())
      throw std::invalid_argument("batch_norm: eval mode needs running_mean and running_var");
    // Eval mode is an affine map per channel: y = x * scale + shift, differentiable by parts.
    Tensor scale = div(weight.defined() ? weight : ones({C}, TensorOptions{x.dtype(), x.device()}),
                       sqrt(add(running_var.detach(), eps)));
    Tensor shift = sub(bias.defined() ? bias : zeros({C}, TensorOptions{x.dtype(), x.device()}),
                       mul(running_mean.detach(), scale));
    Shape bshape(x.dim(), 1);
    bshape[1] = C;
    return add(mul(x_in, scale.view(bshape)), shift.view(bshape));
  }
  if (N * spatial < 2)
    throw std::invalid_argument(
        "batch_norm: training needs more than one value per channel, got input " +
        shape_str(x_in.shape()));
  Tensor mean = empty({C}, TensorOptions{x.dtype(), x.device()}), invstd = empty_like(mean);
  NALA_KERNEL(x, batch_norm_forward_train, N, C, spatial, x.data<T>(), ptr_or_null<T>(w),
              ptr_or_null<T>(b), T(eps), T(momentum), ptr_or_null<T>(running_mean),
              ptr_or_null<T>(running_var), y.data<T>(), mean.data<T>(), invstd.data<T>());
  record(y, "batch_norm", {x_in, weight, bias}, [=](const Tensor& dy_in) {
    Tensor dy = dy_in.contiguous();
    Tensor dx = empty_like(x), dw = empty_like(mean), db = empty_like(mean);
    NALA_KERNEL(x, batch_norm_backward, N, C, spatial, x.data<T>(), dy.data<T>(), ptr_or_null<T>(w),
                mean.data<T>(), invstd.data<T>(), dx.data<T>(), dw.data<T>(), db.data<T>());
    return std::vector<Tensor>{dx, w.defined() ? dw : Tensor(), b.defined() ? db : Tensor()};
  });
  return y;
}

}  // namespace nala
