// Optimizers (SGD, AdamW), gradient clipping, learning-rate schedules and an exponential moving
// average of the weights.
//
// An optimizer holds parameter groups (named parameters sharing a weight decay) and, per
// parameter, its state tensors (momentum, Adam moments), all by name so that they survive a
// checkpoint: state_dict() gives `step` and `<state>.<parameter name>` tensors. step() updates
// every parameter that has a gradient, in place (handles held by the model stay valid), outside
// autograd. Each optimizer's update_all() is the one function that touches the parameters; AdamW's
// is one multi-tensor kernel (kernels adamw_update), a launch per 256 parameters.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "nn/module.h"

namespace nala {

struct ParamGroup {
  std::vector<NamedTensor> params;
  double weight_decay = 0.0;
};

// Two groups of the module's parameters: the weights, decayed by `weight_decay`, and those that
// are not decayed: every 1-d tensor (norm weights, biases, LayerScale) and every tensor whose
// name contains "gamma", "norm" or "bias".
std::vector<ParamGroup> split_decay_groups(const Module& module, double weight_decay);

class Optimizer {
 public:
  Optimizer(std::vector<ParamGroup> groups, double lr);
  virtual ~Optimizer() = default;

  // One update of every parameter with a gradient; counts steps. `grad_scale`, a one-element
  // tensor on the parameters' device (e.g. from grad_clip_scale), multiplies every gradient
  // without a round trip to the host.
  void step(const Tensor& grad_scale = Tensor());
  void zero_grad();  // drops every parameter's gradient
  int64_t steps() const { return step_; }
  const std::vector<ParamGroup>& param_groups() const { return groups_; }

  // `step` (int64 scalar) and every state tensor as `<state>.<parameter name>`.
  StateDict state_dict() const;
  // Restores what state_dict() gave, onto the parameters' devices; throws naming any state of
  // an unknown parameter or of the wrong shape.
  void load_state_dict(const StateDict& dict);

  double lr;  // set before each step (e.g. from a schedule)

 protected:
  // The update of every parameter with a gradient, for step number steps() (1 on the first).
  virtual void update_all(const Tensor& grad_scale) = 0;
  virtual std::vector<std::string> state_names() const = 0;
  // The state tensor `name` of parameter `param`, zeros like the parameter when first used.
  Tensor& state(const std::string& name, const NamedTensor& param);
  bool has_state(const std::string& name, const NamedTensor& param) const;

  std::vector<ParamGroup> groups_;

 private:
  int64_t step_ = 0;
  StateDict state_;  // "<state>.<parameter name>" -> tensor
};

struct SgdOptions {
  double lr = 0.1;
  double momentum = 0.0;
  double dampening = 0.0;
  bool nesterov = false;
};

// PyTorch's SGD: g = grad + wd * p;  b = momentum * b + (1 - dampening) * g (b = g on the first
// step);  g = g + momentum * b (Nesterov) or g = b;  p = p - lr * g.
class Sgd : public Optimizer {
 public:
  Sgd(std::vector<ParamGroup> groups, SgdOptions options);
  SgdOptions options;

 protected:
  void update_all(const Tensor& grad_scale) override;
  std::vector<std::string> state_names() const override { return {"momentum_buffer"}; }
};

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
};

// AdamW (decoupled weight decay), at step t:
//   p = p * (1 - lr * wd)
//   m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
//   p = p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
class AdamW : public Optimizer {
 public:
  AdamW(std::vector<ParamGroup> groups, AdamWOptions options);
  AdamWOptions options;

 protected:
  void update_all(const Tensor& grad_scale) override;
  std::vector<std::string> state_names() const override { return {"exp_avg", "exp_avg_sq"}; }
};

// Scales all gradients by max_norm / (total + 1e-6) when their joint L2 norm `total` exceeds
// max_norm, and returns total (before clipping). A non-finite total leaves the gradients as they
// are, so the caller can see it and skip the step.
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

// The coefficient clip_grad_norm would scale the gradients by, min(1, max_norm / (total +
// 1e-6)), as a one-element tensor on the gradients' device, computed there with one
// multi-tensor kernel per 256 gradients and no host synchronisation (pass it to
// Optimizer::step). A non-finite total gives a coefficient of 0 or NaN, which the step passes on.
Tensor grad_clip_scale(const std::vector<Tensor>& params, double max_norm);

// ---- learning-rate schedules: lr_at(step) for the 0-based step about to be taken ----

class LrSchedule {
 public:
  virtual ~LrSchedule() = default;
  virtual double lr_at(int64_t step) const = 0;
};

// Linear warmup from warmup_start_lr to base_lr over warmup_steps, then a half cosine from
// base_lr down to min_lr at total_steps (min_lr after that):
//   lr = min_lr + (base_lr - min_lr) (1 + cos(pi t)) / 2,  t = (step - warmup) / (total - warmup)
class WarmupCosineSchedule : public LrSchedule {
 public:
  WarmupCosineSchedule(double base_lr, int64_t total_steps, int64_t warmup_steps = 0,
                       double min_lr = 0.0, double warmup_start_lr = 0.0);
  double lr_at(int64_t step) const override;
  double base_lr, min_lr, warmup_start_lr;
  int64_t total_steps, warmup_steps;
};

// The same warmup, then base_lr * gamma^floor((step - warmup) / step_size).
class StepDecaySchedule : public LrSchedule {
 public:
  StepDecaySchedule(double base_lr, int64_t step_size, double gamma = 0.1, int64_t warmup_steps = 0,
                    double warmup_start_lr = 0.0);
  double lr_at(int64_t step) const override;
  double base_lr, gamma, warmup_start_lr;
  int64_t step_size, warmup_steps;
};

// ---- exponential moving average of a model's weights ----

// Keeps avg = decay * avg + (1 - decay) * value for every float parameter and buffer of the
// model (batch-norm statistics included, as timm's ModelEmaV2 does), under the model's names.
// Evaluate the average by loading it into a model of the same shape: copy_to(model).
class ModelEma {
 public:
  ModelEma(const Module& model, double decay);
  void update(const Module& model);
  void copy_to(Module& model) const { model.load_state_dict(averages_); }
  const StateDict& state_dict() const { return averages_; }
  void load_state_dict(const StateDict& dict);  // strict: same names and shapes
  double decay;

 private:
  StateDict averages_;
};

}  // namespace nala
