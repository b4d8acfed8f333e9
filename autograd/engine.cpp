// The autograd engine: requires_grad, grad mode, and backward().
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

#include "autograd/autograd.h"
#include "autograd/ops.h"

namespace nala {

// ---- grad mode ----

static thread_local bool g_grad_enabled = true;
bool grad_enabled() { return g_grad_enabled; }
NoGradGuard::NoGradGuard() : previous_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = previous_; }

// ---- per-tensor state ----

bool Tensor::requires_grad() const { return impl_ && impl_->autograd->requires_grad; }

Tensor& Tensor::requires_grad_(bool value) {
  if (!is_leaf())
    throw std::invalid_argument(
        "requires_grad_: only a leaf tensor's flag can be set (this one was made by " +
        grad_fn()->name + ")");
  if (value && !is_floating(dtype()))
    throw std::invalid_argument(
        std::string("requires_grad_: only float tensors can require grad, got ") +
        dtype_name(dtype()));
  impl_->autograd->requires_grad = value;
  return *this;
}

Tensor Tensor::grad() const { return impl_->autograd->grad; }
void Tensor::set_grad(const Tensor& grad) const { impl_->autograd->grad = grad; }
void Tensor::zero_grad() const { impl_->autograd->grad = Tensor(); }
std::shared_ptr<Node> Tensor::grad_fn() const { return impl_ ? impl_->autograd->grad_fn : nullptr; }

Tensor Tensor::detach() const {
  auto impl = std::make_shared<TensorImpl>(*impl_);
  impl->autograd = std::make_shared<AutogradMeta>();
  return Tensor(impl);
}

void record_outputs(const std::vector<Tensor>& outputs, const std::string& name,
                    const std::vector<Tensor>& inputs, MultiBackwardFn backward) {
  if (!grad_enabled()) return;
  bool any = false;
  for (const Tensor& t : inputs) any = any || (t.defined() && t.requires_grad());
  if (!any) return;
  auto node = std::make_shared<Node>();
  node->name = name;
  node->num_outputs = static_cast<int>(outputs.size());
  node->backward = std::move(backward);
  for (const Tensor& t : inputs) {
    Edge e;
    if (t.defined() && t.requires_grad()) {
      if (t.grad_fn()) {
        e.node = t.grad_fn();
        e.output_nr = t.impl()->autograd->output_nr;
      } else {
        e.leaf = t.impl()->autograd;
      }
    }
    node->inputs.push_back(e);
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    outputs[i].impl()->autograd->grad_fn = node;
    outputs[i].impl()->autograd->output_nr = static_cast<int>(i);
    outputs[i].impl()->autograd->requires_grad = true;
  }
}

void record(const Tensor& output, const std::string& name, const std::vector<Tensor>& inputs,
            BackwardFn backward) {
  record_outputs({output}, name, inputs,
                 [backward = std::move(backward)](const std::vector<Tensor>& grad_outputs) {
                   return backward(grad_outputs[0]);
                 });
}

// ---- backward ----

// Nodes reachable from `root`, each after every node that consumes its output.
static std::vector<Node*> topological_order(Node* root) {
  std::vector<Node*> order;  // post-order: inputs before consumers
  std::unordered_set<Node*> seen{root};
  std::vector<std::pair<Node*, size_t>> stack{{root, 0}};
  while (!stack.empty()) {
    auto& [node, next] = stack.back();
    if (next < node->inputs.size()) {
      Node* child = node->inputs[next++].node.get();
      if (child && seen.insert(child).second) stack.push_back({child, 0});
    } else {
      order.push_back(node);
      stack.pop_back();
    }
  }
  return {order.rbegin(), order.rend()};  // consumers first
}

static Tensor accumulate(const Tensor& sum, const Tensor& g) {
  return sum.defined() ? add(sum, g) : g;
}

void Tensor::backward(const Tensor& grad_in, bool retain_graph) const {
  if (!requires_grad())
    throw std::invalid_argument("backward: tensor of shape " + shape_str(shape()) +
                                " does not require grad (no input had requires_grad set)");
  Tensor grad = grad_in;
  if (!grad.defined()) {
    if (numel() != 1)
      throw std::invalid_argument(
          "backward: a gradient must be given for a non-scalar output of shape " +
          shape_str(shape()));
    grad = ones(shape(), TensorOptions{dtype(), device()});
  }
  if (grad.shape() != shape())
    throw std::invalid_argument("backward: gradient of shape " + shape_str(grad.shape()) +
                                " for an output of shape " + shape_str(shape()));
  NoGradGuard no_grad;
  if (is_leaf()) {
    impl_->autograd->grad = accumulate(impl_->autograd->grad, grad).contiguous();
    return;
  }
  // Each node's gradients, one per output, summed over the node's consumers.
  std::unordered_map<Node*, std::vector<Tensor>> grads;
  const auto grads_of = [&](Node* node) -> std::vector<Tensor>& {
    std::vector<Tensor>& g = grads[node];
    g.resize(node->num_outputs);
    return g;
  };
  grads_of(grad_fn().get())[impl_->autograd->output_nr] = grad;
  for (Node* node : topological_order(grad_fn().get())) {
    auto it = grads.find(node);
    if (it == grads.end()) continue;
    const std::vector<Tensor> g = std::move(it->second);
    grads.erase(it);
    if (!node->backward)
      throw std::runtime_error("backward: the graph through '" + node->name +
                               "' was already freed by an earlier backward(); call the first "
                               "backward with retain_graph = true to run it twice");
    std::vector<Tensor> input_grads = node->backward(g);
    if (!retain_graph) node->backward = nullptr;  // frees what the op saved
    for (size_t i = 0; i < node->inputs.size(); ++i) {
      const Edge& e = node->inputs[i];
      if (i >= input_grads.size() || !input_grads[i].defined()) continue;
      if (e.node) {
        Tensor& sum = grads_of(e.node.get())[e.output_nr];
        sum = accumulate(sum, input_grads[i]);
      }
      if (e.leaf) e.leaf->grad = accumulate(e.leaf->grad, input_grads[i]).contiguous();
    }
  }
}

}  // namespace nala
