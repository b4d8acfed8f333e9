// Reverse-mode automatic differentiation: the graph and the engine.
//
// Every differentiable op that sees an input with requires_grad (while grad mode is on) records
// one Node on its output. The Node holds the op's backward: a function from the gradient of its
// output to the gradients of its inputs, with whatever the op saved in its closure. Edges point
// from a node to the producers of its inputs: the input's own node, or, for a leaf, its
// AutogradMeta where .grad accumulates. Tensor::backward() walks the nodes in reverse
// topological order (autograd/engine.cpp); the whole engine fits on one screen.
// An op with several outputs (split) records one Node for all of them (record_outputs): its
// backward takes one gradient per output, undefined for an output that got none, so that it
// writes its input's gradient once instead of one full-size gradient per output added up.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace nala {

struct AutogradMeta {
  bool requires_grad = false;
  Tensor grad;                    // accumulated gradient (leaves only)
  std::shared_ptr<Node> grad_fn;  // the node that made this tensor (non-leaves only)
  int output_nr = 0;              // which of grad_fn's outputs this tensor is
};

// Where a gradient flows: into output `output_nr` of another node, or into a leaf's .grad. Both
// empty: nowhere.
struct Edge {
  std::shared_ptr<Node> node;
  int output_nr = 0;
  std::shared_ptr<AutogradMeta> leaf;
};

// grad_output -> one gradient per input (an undefined Tensor where an input gets none).
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_output)>;
// The same for a node of several outputs: one gradient per output (undefined where an output got
// none, at least one defined) -> one per input.
using MultiBackwardFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& grad_outputs)>;

struct Node {
  std::string name;          // the op, e.g. "matmul"
  std::vector<Edge> inputs;  // one per input of the op
  int num_outputs = 1;
  MultiBackwardFn backward;  // emptied once run, unless the graph is retained
};

// Grad mode: on by default; NoGradGuard turns it off for its scope (thread-local).
bool grad_enabled();
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// Called by every differentiable op after computing `output` from `inputs`: when grad mode is on
// and some input requires grad, attaches a Node named `name` that runs `backward`.
void record(const Tensor& output, const std::string& name, const std::vector<Tensor>& inputs,
            BackwardFn backward);
// The same for an op of several outputs: one Node for all of them.
void record_outputs(const std::vector<Tensor>& outputs, const std::string& name,
                    const std::vector<Tensor>& inputs, MultiBackwardFn backward);

// Whether an op's backward must produce a gradient for input t (PyTorch's needs_input_grad). Ops
// whose gradients cost real work (products, convolutions) check it when they record, and return
// an undefined Tensor for an input that needs none: a constant factor, or the network's input
// image, costs no kernel and no memory in the backward.
inline bool needs_grad(const Tensor& t) { return t.defined() && t.requires_grad(); }

}  // namespace nala
