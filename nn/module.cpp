#include "nn/module.h"

#include <stdexcept>

namespace nala {

Tensor Module::forward(const Tensor& x) {
  throw std::logic_error(describe() + ": this module has no forward(Tensor) (called with input " +
                         shape_str(x.shape()) + ")");
}

void Module::check_new_name(const std::string& name) const {
  if (name.empty() || name.find('.') != std::string::npos)
    throw std::invalid_argument(describe() + ": bad member name '" + name +
                                "' (non-empty, no dots)");
  auto taken = [&](const auto& list) {
    for (const auto& entry : list)
      if (entry.first == name) return true;
    return false;
  };
  if (taken(parameters_) || taken(buffers_) || taken(children_))
    throw std::invalid_argument(describe() + ": the name '" + name + "' is registered twice");
}

Tensor Module::register_parameter(const std::string& name, Tensor t) {
  check_new_name(name);
  if (!t.defined())
    throw std::invalid_argument(describe() + ": parameter '" + name + "' is undefined");
  t.requires_grad_(true);
  parameters_.emplace_back(name, t);
  return t;
}

Tensor Module::register_buffer(const std::string& name, Tensor t) {
  check_new_name(name);
  if (!t.defined())
    throw std::invalid_argument(describe() + ": buffer '" + name + "' is undefined");
  buffers_.emplace_back(name, t);
  return t;
}

// Own entries first, then each child's under "child_name.", depth first.
void Module::collect(const std::string& prefix, bool buffers, std::vector<NamedTensor>& out) const {
  for (const auto& [name, t] : buffers ? buffers_ : parameters_) out.emplace_back(prefix + name, t);
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", buffers, out);
}

std::vector<NamedTensor> Module::named_parameters() const {
  std::vector<NamedTensor> out;
  collect("", false, out);
  return out;
}

std::vector<NamedTensor> Module::named_buffers() const {
  std::vector<NamedTensor> out;
  collect("", true, out);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (const auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (const Tensor& p : parameters()) n += p.numel();
  return n;
}

StateDict Module::state_dict() const {
  StateDict dict;
  for (const auto& [name, t] : named_parameters()) dict[name] = t;
  for (const auto& [name, t] : named_buffers()) dict[name] = t;
  return dict;
}

void Module::load_state_dict(const StateDict& dict, bool strict) {
  StateDict own = state_dict();
  std::string missing, unexpected;
  for (const auto& [name, t] : own)
    if (!dict.count(name)) missing += (missing.empty() ? "" : ", ") + name;
  for (const auto& [name, t] : dict)
    if (!own.count(name)) unexpected += (unexpected.empty() ? "" : ", ") + name;
  if (strict && (!missing.empty() || !unexpected.empty()))
    throw std::invalid_argument(
        "load_state_dict: " + (missing.empty() ? "" : "missing keys: " + missing) +
        (missing.empty() || unexpected.empty() ? "" : "; ") +
        (unexpected.empty() ? "" : "unexpected keys: " + unexpected));
  // Check every shape before writing anything, so a failed load leaves the module unchanged.
  for (const auto& [name, t] : own) {
    auto it = dict.find(name);
    if (it != dict.end() && it->second.shape() != t.shape())
      throw std::invalid_argument("load_state_dict: " + name + " has shape " +
                                  shape_str(it->second.shape()) + " in the state dict but " +
                                  shape_str(t.shape()) + " in the model");
  }
  for (const auto& [name, t] : own) {
    auto it = dict.find(name);
    if (it != dict.end()) t.copy_(it->second);
  }
}

void Module::train(bool on) {
  training_ = on;
  for (const auto& [name, child] : children_) child->train(on);
}

// Points t's TensorImpl at a copy of its values on `device` in `dtype`; the autograd state
// (requires_grad) is kept, so every handle to t sees the new tensor.
static void replace_in_place(const Tensor& t, Device device, DType dtype) {
  if (t.device() == device && t.dtype() == dtype) return;
  Tensor moved = copy_tensor(t, device, dtype);
  TensorImpl* impl = t.impl();
  impl->storage = moved.storage();
  impl->shape = moved.shape();
  impl->strides = moved.strides();
  impl->offset = moved.offset();
  impl->dtype = dtype;
  t.zero_grad();
}

void Module::to(Device device) {
  for (const auto& [name, t] : named_parameters()) replace_in_place(t, device, t.dtype());
  for (const auto& [name, t] : named_buffers()) replace_in_place(t, device, t.dtype());
}

void Module::to(DType dtype) {
  for (const auto& [name, t] : named_parameters()) replace_in_place(t, t.device(), dtype);
  for (const auto& [name, t] : named_buffers())
    if (is_floating(t.dtype())) replace_in_place(t, t.device(), dtype);
}

void Module::zero_grad() {
  for (const Tensor& p : parameters()) p.zero_grad();
}

void Module::apply(const std::function<void(Module&)>& fn) {
  fn(*this);
  for (const auto& [name, child] : children_) child->apply(fn);
}

}  // namespace nala
