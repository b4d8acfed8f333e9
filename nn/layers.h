// The standard layers, each a thin Module around the differentiable ops of autograd/ops.h.
//
// Initialisation follows PyTorch's defaults so that a layer made here starts like its PyTorch
// twin: Linear and Conv2d draw weight and bias uniform in +-1/sqrt(fan_in) (fan_in = inputs
// per output), norms start at weight 1, bias 0. Models re-initialise as their paper says.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "autograd/ops.h"
#include "nn/module.h"

namespace nala {

// y = x W^T + b over the last dim: (..., in_features) -> (..., out_features).
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  int64_t macs(int64_t rows) const { return rows * in_features * out_features; }

  int64_t in_features, out_features;
  Tensor weight;  // (out_features, in_features)
  Tensor bias;    // (out_features), or undefined
};

// 2-d convolution of (B, C_in, H, W) images; groups == C_in == C_out is a depthwise conv.
class Conv2d : public Module {
 public:
  Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride = 1,
         int64_t padding = 0, int64_t groups = 1, bool bias = true);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  int64_t output_size(int64_t input_size) const {
    return (input_size + 2 * padding - kernel_size) / stride + 1;
  }
  // Multiply-adds for an output of out_h x out_w pixels (per image).
  int64_t macs(int64_t out_h, int64_t out_w) const {
    return out_channels * out_h * out_w * (in_channels / groups) * kernel_size * kernel_size;
  }

  int64_t in_channels, out_channels, kernel_size, stride, padding, groups;
  Tensor weight;  // (out_channels, in_channels / groups, kernel_size, kernel_size)
  Tensor bias;    // (out_channels), or undefined
};

// Normalises over the last dim, then scales and shifts per feature.
class LayerNorm : public Module {
 public:
  explicit LayerNorm(int64_t dim, double eps = 1e-5);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;

  int64_t dim;
  double eps;
  Tensor weight, bias;  // (dim)
};

// LayerNorm over the channels of (B, C, H, W) images: permute to (B, H, W, C), normalise the
// last dim, permute back (a view; the next op makes it contiguous if it needs to).
class ChannelLayerNorm : public LayerNorm {
 public:
  explicit ChannelLayerNorm(int64_t channels, double eps = 1e-5) : LayerNorm(channels, eps) {}
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
};

// Batch norm per channel of (B, C, H, W) images, or of (rows, C) feature rows (what PyTorch
// calls BatchNorm1d). Training normalises with the batch statistics and updates the running
// buffers: running = (1 - momentum) running + momentum * batch (unbiased variance); eval uses
// the running buffers.
class BatchNorm2d : public Module {
 public:
  explicit BatchNorm2d(int64_t channels, double momentum = 0.1, double eps = 1e-5);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;

  int64_t channels;
  double momentum, eps;
  Tensor weight, bias;               // (channels), parameters
  Tensor running_mean, running_var;  // (channels), buffers
};

class GELU : public Module {  // exact (erf) form, as PyTorch's default
 public:
  Tensor forward(const Tensor& x) override { return gelu(x); }
  std::string describe() const override { return "GELU"; }
};

class SiLU : public Module {  // x * sigmoid(x), also called Swish
 public:
  Tensor forward(const Tensor& x) override { return silu(x); }
  std::string describe() const override { return "SiLU"; }
};

// Zeroes each element with probability p in training and scales the rest by 1 / (1 - p).
class Dropout : public Module {
 public:
  explicit Dropout(double p) : p(p) {}
  Tensor forward(const Tensor& x) override { return dropout(x, p, is_training()); }
  std::string describe() const override { return "Dropout(" + std::to_string(p) + ")"; }
  double p;
};

// Stochastic depth: in training, drops a whole sample's residual branch with probability p,
// y = x * keep_b / (1 - p) with keep_b ~ Bernoulli(1 - p) drawn once per sample b; identity
// in eval.
class DropPath : public Module {
 public:
  explicit DropPath(double p);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override { return "DropPath(" + std::to_string(p) + ")"; }
  double p;
};

// Runs its submodules, named "0", "1", ..., one after the other. Also a plain list of modules.
class Sequential : public Module {
 public:
  Sequential() = default;
  explicit Sequential(const std::vector<std::shared_ptr<Module>>& modules);
  template <typename M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> module) {
    return register_module(std::to_string(size()), std::move(module));
  }
  size_t size() const { return children().size(); }
  const std::shared_ptr<Module>& operator[](size_t i) const { return children().at(i).second; }
  Tensor forward(const Tensor& x) override;
  std::string describe() const override { return "Sequential(" + std::to_string(size()) + ")"; }
};

}  // namespace nala
