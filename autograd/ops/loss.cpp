// Softmax, log-softmax and the cross-entropy losses, each a fused node over the last dim.
#include "autograd/dispatch.h"
#include "autograd/ops.h"

namespace nala {

// Softmax over `dim`: the kernel works on the last dim, so another dim is swapped there first.
static Tensor softmax_impl(const Tensor& x_in, int64_t dim, bool log, const char* name) {
  check_floating(name, x_in);
  int64_t d = wrap_dim(name, dim, x_in.dim());
  if (x_in.dim() == 0)
    return log ? zeros({}, TensorOptions{x_in.dtype(), x_in.device()})
               : ones({}, TensorOptions{x_in.dtype(), x_in.device()});
  if (d != x_in.dim() - 1)
    return softmax_impl(x_in.transpose(d, -1), -1, log, name).transpose(d, -1);
  Tensor x = x_in.detach().contiguous();
  int64_t cols = x.size(-1), rows = cols ? x.numel() / cols : 0;
  Tensor y = empty_like(x);
  NALA_KERNEL(x, softmax_forward, rows, cols, x.data<T>(), y.data<T>(), log);
  record(y, name, {x_in}, [=, y = y.detach()](const Tensor& dy_in) {
    Tensor dy = dy_in.contiguous();
    Tensor dx = empty_like(y);
    NALA_KERNEL(y, softmax_backward, rows, cols, y.data<T>(), dy.data<T>(), dx.data<T>(), log);
    return std::vector<Tensor>{dx};
  });
  return y;
}

Tensor softmax(const Tensor& x, int64_t dim) { return softmax_impl(x, dim, false, "softmax"); }
Tensor log_softmax(const Tensor& x, int64_t dim) {
  return softmax_impl(x, dim, true, "log_softmax");
}

// The mean over rows of the per-row losses, one node: the kernels take the mean themselves, so
// the backward reads the scalar gradient and needs no broadcast of it to the rows.
static Tensor cross_entropy_mean(const Tensor& logits_in, const Tensor& labels_in,
                                 double smoothing) {
  Tensor logits = logits_in.detach().contiguous();
  Tensor labels = labels_in.contiguous();
  int64_t rows = logits.size(0), classes = logits.size(1);
  Tensor loss = empty({}, TensorOptions{logits.dtype(), logits.device()}),
         lse = empty({rows}, TensorOptions{logits.dtype(), logits.device()});
  NALA_KERNEL(logits, cross_entropy_forward, rows, classes, logits.data<T>(),
              labels.data<int64_t>(), T(smoothing), loss.data<T>(), lse.data<T>());
  record(loss, "cross_entropy", {logits_in}, [=](const Tensor& dloss_in) {
    Tensor dloss = dloss_in.contiguous();
    Tensor dlogits = empty_like(logits);
    NALA_KERNEL(logits, cross_entropy_backward, rows, classes, logits.data<T>(),
                labels.data<int64_t>(), T(smoothing), lse.data<T>(), dloss.data<T>(),
                dlogits.data<T>());
    return std::vector<Tensor>{dlogits};
  });
  return loss;
}

Tensor cross_entropy(const Tensor& logits, const Tensor& labels, double label_smoothing) {
  check_floating("cross_entropy", logits);
  if (logits.dim() != 2 || labels.dim() != 1 || labels.size(0) != logits.size(0))
    throw std::invalid_argument("cross_entropy: logits " + shape_str(logits.shape()) +
                                " and labels " + shape_str(labels.shape()) +
                                " (need [N, C] and [N])");
  if (labels.dtype() != DType::Int64)
    throw std::invalid_argument(std::string("cross_entropy: labels must be int64, got ") +
                                dtype_name(labels.dtype()));
  if (labels.device() != logits.device())
    throw std::invalid_argument(std::string("cross_entropy: logits on ") +
                                device_name(logits.device()) + " but labels on " +
                                device_name(labels.device()));
  if (label_smoothing < 0.0 || label_smoothing > 1.0)
    throw std::invalid_argument("cross_entropy: label_smoothing must be in [0, 1]");
  if (logits.size(0) == 0) throw std::invalid_argument("cross_entropy: empty batch");
  return cross_entropy_mean(logits, labels, label_smoothing);
}

// mean_r of -sum_c target_rc log_softmax(x)_rc, composed (its gradient comes from the parts).
Tensor soft_target_cross_entropy(const Tensor& logits, const Tensor& target) {
  if (logits.dim() != 2 || target.shape() != logits.shape())
    throw std::invalid_argument("soft_target_cross_entropy: logits " + shape_str(logits.shape()) +
                                " and target " + shape_str(target.shape()) +
                                " (need equal [N, C])");
  return neg(mean(sum(mul(target, log_softmax(logits, -1)), {1})));
}

}  // namespace nala
