// Module: the base of every layer and model, micrograd-style.
//
// A module owns named parameters (leaf tensors with requires_grad, trained by an optimizer),
// named buffers (tensors it updates itself, like batch norm's running statistics) and named
// submodules, each registered in order. Names join with dots down the tree, so a weight deep in
// the model is called `layers.0.blocks.1.attn.qkvg.weight`. The state dict is every parameter
// and buffer by that name: what checkpoints store.
//
// A module keeps its tensors as handles: the member a layer reads in forward() (`weight`) and
// the registered entry are the same TensorImpl, so load_state_dict() and to() change them in
// place and every handle sees the new values.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tensor/tensor.h"

namespace nala {

using NamedTensor = std::pair<std::string, Tensor>;
// Name -> tensor, ordered by name (how checkpoints store it).
using StateDict = std::map<std::string, Tensor>;

class Module {
 public:
  virtual ~Module() = default;
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // The module's computation on one input. Modules with other signatures define their own.
  virtual Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) { return forward(x); }
  // Short description for errors and summaries, e.g. "Linear(16 -> 8)".
  virtual std::string describe() const { return "Module"; }

  // Parameters and buffers of this module and all submodules, in registration order.
  std::vector<Tensor> parameters() const;
  std::vector<NamedTensor> named_parameters() const;
  std::vector<NamedTensor> named_buffers() const;
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const {
    return children_;
  }
  int64_t num_parameters() const;  // total elements of all parameters

  // Parameters and buffers by name, sharing storage with the module (not copies).
  StateDict state_dict() const;
  // Copies values from `dict` into the module's tensors (converting device and dtype). Strict:
  // every name must match both ways. A shape mismatch is always an error naming the tensor.
  void load_state_dict(const StateDict& dict, bool strict = true);

  void train(bool on = true);  // recursive: this module and all submodules
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // Moves every parameter and buffer to `device` in place: handles stay valid, parameters stay
  // leaves with requires_grad; gradients are dropped.
  void to(Device device);
  // Converts every floating parameter and buffer to `dtype` in place, likewise (e.g. float64 for
  // a gradient check of a whole layer).
  void to(DType dtype);
  void zero_grad();  // drops every parameter's gradient
  // Calls fn on this module, then on every submodule, depth first (e.g. to initialise weights).
  void apply(const std::function<void(Module&)>& fn);

 protected:
  // Registers `t` as a parameter (sets requires_grad) and returns the same handle.
  Tensor register_parameter(const std::string& name, Tensor t);
  Tensor register_buffer(const std::string& name, Tensor t);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    check_new_name(name);
    children_.emplace_back(name, module);
    return module;
  }

 private:
  void check_new_name(const std::string& name) const;
  void collect(const std::string& prefix, bool buffers, std::vector<NamedTensor>& out) const;

  std::vector<NamedTensor> parameters_;
  std::vector<NamedTensor> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

}  // namespace nala
