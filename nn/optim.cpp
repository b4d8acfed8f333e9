#include "nn/optim.h"

#include <array>
#include <cmath>
#include <set>
#include <stdexcept>

#include "autograd/dispatch.h"
#include "autograd/ops.h"

namespace nala {

std::vector<ParamGroup> split_decay_groups(const Module& module, double weight_decay) {
  ParamGroup decay{{}, weight_decay}, no_decay{{}, 0.0};
  for (const NamedTensor& p : module.named_parameters()) {
    const std::string& name = p.first;
    bool skip = p.second.dim() <= 1 || name.find("gamma") != std::string::npos ||
                name.find("norm") != std::string::npos || name.find("bias") != std::string::npos;
    (skip ? no_decay : decay).params.push_back(p);
  }
  return {decay, no_decay};
}

// Rows of (up to 4 arrays of one tensor, its weight decay) for the multi-tensor kernels.
using TensorRows = std::vector<std::pair<std::array<Tensor, 4>, double>>;

// The rows packed into TensorLists of at most TensorList<T>::kMaxTensors tensors each.
template <typename T>
static std::vector<kernels::TensorList<T>> tensor_lists(const TensorRows& entries) {
  std::vector<kernels::TensorList<T>> lists;
  for (size_t i = 0; i < entries.size(); ++i) {
    if (lists.empty() || lists.back().count == kernels::TensorList<T>::kMaxTensors)
      lists.emplace_back();
    kernels::TensorList<T>& l = lists.back();
    const auto& [arrays, decay] = entries[i];
    l.sizes[l.count] = arrays[0].numel();
    for (int a = 0; a < 4; ++a)
      l.arrays[a][l.count] = arrays[a].defined() ? arrays[a].data<T>() : nullptr;
    l.weight_decay[l.count] = static_cast<T>(decay);
    ++l.count;
  }
  return lists;
}

// ---- the optimizer base ----

Optimizer::Optimizer(std::vector<ParamGroup> groups, double lr)
    : lr(lr), groups_(std::move(groups)) {
  std::set<std::string> names;
  for (const ParamGroup& g : groups_)
    for (const auto& [name, p] : g.params) {
      if (!p.defined() || !p.requires_grad() || !p.is_leaf())
        throw std::invalid_argument("Optimizer: parameter '" + name +
                                    "' must be a defined leaf tensor with requires_grad");
      if (!names.insert(name).second)
        throw std::invalid_argument("Optimizer: parameter name '" + name + "' appears twice");
    }
}

void Optimizer::step(const Tensor& grad_scale) {
  NoGradGuard no_grad;
  ++step_;
  update_all(grad_scale);
}

void Optimizer::zero_grad() {
  for (const ParamGroup& g : groups_)
    for (const auto& [name, p] : g.params) p.zero_grad();
}

Tensor& Optimizer::state(const std::string& name, const NamedTensor& param) {
  Tensor& t = state_[name + "." + param.first];
  if (!t.defined()) t = zeros_like(param.second);
  return t;
}

bool Optimizer::has_state(const std::string& name, const NamedTensor& param) const {
  return state_.count(name + "." + param.first) > 0;
}

StateDict Optimizer::state_dict() const {
  StateDict dict = state_;
  dict["step"] = from_data<int64_t>({step_}, {});
  return dict;
}

void Optimizer::load_state_dict(const StateDict& dict) {
  auto step_it = dict.find("step");
  if (step_it == dict.end() || step_it->second.numel() != 1)
    throw std::invalid_argument("Optimizer::load_state_dict: no scalar entry 'step'");
  std::map<std::string, Tensor> params;
  for (const ParamGroup& g : groups_)
    for (const auto& [name, p] : g.params) params[name] = p;
  std::set<std::string> known_states;
  for (const std::string& s : state_names()) known_states.insert(s);
  StateDict loaded;
  for (const auto& [key, t] : dict) {
    if (key == "step") continue;
    size_t dot = key.find('.');
    std::string state_name = key.substr(0, dot);
    auto p = dot == std::string::npos ? params.end() : params.find(key.substr(dot + 1));
    if (!known_states.count(state_name) || p == params.end())
      throw std::invalid_argument("Optimizer::load_state_dict: unexpected entry '" + key +
                                  "' (not a state of a parameter of this optimizer)");
    if (t.shape() != p->second.shape())
      throw std::invalid_argument("Optimizer::load_state_dict: " + key + " has shape " +
                                  shape_str(t.shape()) + " but the parameter has " +
                                  shape_str(p->second.shape()));
    loaded[key] = copy_tensor(t, p->second.device(), p->second.dtype());
  }
  state_ = std::move(loaded);
  step_ = static_cast<int64_t>(step_it->second.item());
}

// ---- SGD ----

Sgd::Sgd(std::vector<ParamGroup> groups, SgdOptions options)
    : Optimizer(std::move(groups), options.lr), options(options) {
  if (options.nesterov && (options.momentum <= 0 || options.dampening != 0))
    throw std::invalid_argument("Sgd: Nesterov momentum needs momentum > 0 and dampening 0");
}

void Sgd::update_all(const Tensor& grad_scale) {
  for (const ParamGroup& group : groups_)
    for (const NamedTensor& param : group.params) {
      const Tensor& p = param.second;
      if (!p.grad().defined()) continue;
      Tensor g = grad_scale.defined() ? mul(p.grad(), grad_scale) : p.grad();
      if (group.weight_decay != 0) g = add(g, mul(p, group.weight_decay));
      if (options.momentum != 0) {
        bool first = !has_state("momentum_buffer", param);
        Tensor& buf = state("momentum_buffer", param);
        buf = first ? g.clone() : add(mul(buf, options.momentum), mul(g, 1.0 - options.dampening));
        g = options.nesterov ? add(g, mul(buf, options.momentum)) : buf;
      }
      p.copy_(sub(p, mul(g, lr)));
    }
}

// ---- AdamW ----

AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions options)
    : Optimizer(std::move(groups), options.lr), options(options) {}

// The whole update is the adamw_update kernel (formula in kernels/kernel_list.inc), applied to
// the parameters in lists of TensorList::kMaxTensors (256): one launch for xt-cifar.
void AdamW::update_all(const Tensor& grad_scale) {
  double t = static_cast<double>(steps());
  kernels::AdamWStep step{lr,
                          options.beta1,
                          options.beta2,
                          options.eps,
                          1.0 - std::pow(options.beta1, t),
                          1.0 - std::pow(options.beta2, t)};
  TensorRows entries;  // (p, g, m, v), weight decay
  for (const ParamGroup& group : groups_)
    for (const NamedTensor& param : group.params) {
      const Tensor& p = param.second;
      if (!p.grad().defined()) continue;
      if (!p.is_contiguous())
        throw std::invalid_argument("AdamW: parameter '" + param.first + "' is not contiguous");
      entries.push_back(
          {{p, p.grad().contiguous(), state("exp_avg", param), state("exp_avg_sq", param)},
           group.weight_decay});
    }
  if (entries.empty()) return;
  const Tensor& first = entries[0].first[0];
  for (const auto& e : entries)
    check_same("AdamW", {first, e.first[0], e.first[1], e.first[2], e.first[3], grad_scale});
  Tensor scale = grad_scale.defined() ? grad_scale.contiguous() : Tensor();
  dispatch_floating(first, "AdamW", [&](auto zero) {
    using T = decltype(zero);
    const T* scale_ptr = scale.defined() ? scale.data<T>() : nullptr;
    for (const kernels::TensorList<T>& list : tensor_lists<T>(entries)) {
      if (first.is_cuda())
        NALA_CUDA_KERNEL(adamw_update<T>, list, step, scale_ptr);
      else
        kernels::cpu::adamw_update<T>(list, step, scale_ptr);
    }
  });
}

// ---- clipping ----

// The joint L2 norm of all gradients as a 0-d tensor on their device (the sum_of_squares
// multi-tensor kernel, a launch per 256 gradients), or undefined when no parameter has one.
static Tensor total_grad_norm(const char* op, const std::vector<Tensor>& params) {
  TensorRows grads;
  for (const Tensor& p : params)
    if (p.grad().defined())
      grads.push_back({{p.grad().contiguous(), Tensor(), Tensor(), Tensor()}, 0.0});
  if (grads.empty()) return Tensor();
  const Tensor& first = grads[0].first[0];
  for (const auto& g : grads) check_same(op, {first, g.first[0]});
  Tensor total_sq = zeros({}, TensorOptions{first.dtype(), first.device()});
  dispatch_floating(first, op, [&](auto zero) {
    using T = decltype(zero);
    for (const kernels::TensorList<T>& list : tensor_lists<T>(grads)) {
      if (first.is_cuda())
        NALA_CUDA_KERNEL(sum_of_squares<T>, list, total_sq.data<T>());
      else
        kernels::cpu::sum_of_squares<T>(list, total_sq.data<T>());
    }
  });
  return sqrt(total_sq);
}

Tensor grad_clip_scale(const std::vector<Tensor>& params, double max_norm) {
  NoGradGuard no_grad;
  Tensor total = total_grad_norm("grad_clip_scale", params);
  if (!total.defined()) throw std::invalid_argument("grad_clip_scale: no parameter has a gradient");
  // min(1, c) = 1 - relu(1 - c)
  Tensor c =
      div(full({}, max_norm, TensorOptions{total.dtype(), total.device()}), add(total, 1e-6));
  return neg(add(relu(neg(add(c, -1.0))), -1.0));
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  NoGradGuard no_grad;
  Tensor total_t = total_grad_norm("clip_grad_norm", params);
  if (!total_t.defined()) return 0.0;
  double total = total_t.item();  // the one read back to the host
  double coef = max_norm / (total + 1e-6);
  if (std::isfinite(total) && coef < 1.0)
    for (const Tensor& p : params)
      if (p.grad().defined()) p.set_grad(mul(p.grad(), coef));
  return total;
}

// ---- schedules ----

// Linear from start to end over `steps` steps: step 0 gives start.
static double warmup_lr(double start, double end, int64_t step, int64_t steps) {
  return start + (end - start) * static_cast<double>(step) / static_cast<double>(steps);
}

WarmupCosineSchedule::WarmupCosineSchedule(double base_lr, int64_t total_steps,
                                           int64_t warmup_steps, double min_lr,
                                           double warmup_start_lr)
    : base_lr(base_lr),
      min_lr(min_lr),
      warmup_start_lr(warmup_start_lr),
      total_steps(total_steps),
      warmup_steps(warmup_steps) {
  if (warmup_steps < 0 || total_steps <= warmup_steps)
    throw std::invalid_argument("WarmupCosineSchedule: need 0 <= warmup_steps (" +
                                std::to_string(warmup_steps) + ") < total_steps (" +
                                std::to_string(total_steps) + ")");
}

double WarmupCosineSchedule::lr_at(int64_t step) const {
  if (step < warmup_steps) return warmup_lr(warmup_start_lr, base_lr, step, warmup_steps);
  double t =
      static_cast<double>(step - warmup_steps) / static_cast<double>(total_steps - warmup_steps);
  t = std::min(t, 1.0);
  return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + std::cos(M_PI * t));
}

StepDecaySchedule::StepDecaySchedule(double base_lr, int64_t step_size, double gamma,
                                     int64_t warmup_steps, double warmup_start_lr)
    : base_lr(base_lr),
      gamma(gamma),
      warmup_start_lr(warmup_start_lr),
      step_size(step_size),
      warmup_steps(warmup_steps) {
  if (step_size < 1 || warmup_steps < 0)
    throw std::invalid_argument("StepDecaySchedule: need step_size >= 1 and warmup_steps >= 0");
}

double StepDecaySchedule::lr_at(int64_t step) const {
  if (step < warmup_steps) return warmup_lr(warmup_start_lr, base_lr, step, warmup_steps);
  return base_lr * std::pow(gamma, static_cast<double>((step - warmup_steps) / step_size));
}

// ---- EMA ----

ModelEma::ModelEma(const Module& model, double decay) : decay(decay) {
  if (decay < 0 || decay > 1)
    throw std::invalid_argument("ModelEma: decay must be in [0, 1], got " + std::to_string(decay));
  for (const auto& [name, t] : model.state_dict()) averages_[name] = t.detach().clone();
}

void ModelEma::update(const Module& model) {
  NoGradGuard no_grad;
  StateDict current = model.state_dict();
  if (current.size() != averages_.size())
    throw std::invalid_argument("ModelEma::update: the model has " +
                                std::to_string(current.size()) + " tensors, the average " +
                                std::to_string(averages_.size()));
  for (auto& [name, avg] : averages_) {
    auto it = current.find(name);
    if (it == current.end() || it->second.shape() != avg.shape())
      throw std::invalid_argument("ModelEma::update: the model's " + name +
                                  " is missing or has another shape");
    const Tensor& value = it->second;
    avg = is_floating(avg.dtype()) ? add(mul(avg, decay), mul(value.detach(), 1.0 - decay))
                                   : value.detach().clone();
  }
}

void ModelEma::load_state_dict(const StateDict& dict) {
  for (const auto& [name, avg] : averages_) {
    auto it = dict.find(name);
    if (it == dict.end()) throw std::invalid_argument("ModelEma::load_state_dict: missing " + name);
    if (it->second.shape() != avg.shape())
      throw std::invalid_argument("ModelEma::load_state_dict: " + name + " has shape " +
                                  shape_str(it->second.shape()) + ", the average " +
                                  shape_str(avg.shape()));
  }
  if (dict.size() != averages_.size())
    throw std::invalid_argument("ModelEma::load_state_dict: " + std::to_string(dict.size()) +
                                " entries for an average of " + std::to_string(averages_.size()));
  for (auto& [name, avg] : averages_) avg = copy_tensor(dict.at(name), avg.device(), avg.dtype());
}

}  // namespace nala
