#include "nn/layers.h"

#include <cmath>
#include <stdexcept>

#include "autograd/ops.h"

namespace nala {

// PyTorch's default for Linear and Conv2d weights and biases: uniform in +-1/sqrt(fan_in).
static Tensor default_init(const Shape& shape, int64_t fan_in) {
  double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  return uniform(shape, -bound, bound);
}

// ---- Linear ----

Linear::Linear(int64_t in_features, int64_t out_features, bool bias)
    : in_features(in_features), out_features(out_features) {
  if (in_features < 1 || out_features < 1)
    throw std::invalid_argument(describe() + ": feature counts must be positive");
  weight = register_parameter("weight", default_init({out_features, in_features}, in_features));
  if (bias) this->bias = register_parameter("bias", default_init({out_features}, in_features));
}

std::string Linear::describe() const {
  return "Linear(" + std::to_string(in_features) + " -> " + std::to_string(out_features) + ")";
}

Tensor Linear::forward(const Tensor& x) {
  if (x.dim() < 1 || x.size(-1) != in_features)
    throw std::invalid_argument(describe() + ": input of shape " + shape_str(x.shape()) +
                                " must end in " + std::to_string(in_features));
  return linear(x, weight, bias);
}

// ---- Conv2d ----

Conv2d::Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride,
               int64_t padding, int64_t groups, bool bias)
    : in_channels(in_channels),
      out_channels(out_channels),
      kernel_size(kernel_size),
      stride(stride),
      padding(padding),
      groups(groups) {
  if (in_channels < 1 || out_channels < 1 || kernel_size < 1 || stride < 1 || padding < 0 ||
      groups < 1 || in_channels % groups || out_channels % groups)
    throw std::invalid_argument(describe() + ": bad configuration");
  int64_t fan_in = in_channels / groups * kernel_size * kernel_size;
  weight = register_parameter(
      "weight",
      default_init({out_channels, in_channels / groups, kernel_size, kernel_size}, fan_in));
  if (bias) this->bias = register_parameter("bias", default_init({out_channels}, fan_in));
}

std::string Conv2d::describe() const {
  std::string s = "Conv2d(" + std::to_string(in_channels) + " -> " + std::to_string(out_channels) +
                  ", " + std::to_string(kernel_size) + "x" + std::to_string(kernel_size);
  if (stride != 1) s += ", stride " + std::to_string(stride);
  if (padding != 0) s += ", pad " + std::to_string(padding);
  if (groups != 1) s += ", groups " + std::to_string(groups);
  return s + ")";
}

Tensor Conv2d::forward(const Tensor& x) {
  if (x.dim() != 4 || x.size(1) != in_channels)
    throw std::invalid_argument(describe() + ": input of shape " + shape_str(x.shape()) +
                                " must be (B, " + std::to_string(in_channels) + ", H, W)");
  return conv2d(x, weight, bias, stride, padding, groups);
}

// ---- norms ----

LayerNorm::LayerNorm(int64_t dim, double eps) : dim(dim), eps(eps) {
  weight = register_parameter("weight", ones({dim}));
  bias = register_parameter("bias", zeros({dim}));
}

std::string LayerNorm::describe() const { return "LayerNorm(" + std::to_string(dim) + ")"; }

Tensor LayerNorm::forward(const Tensor& x) { return layer_norm(x, weight, bias, eps); }

std::string ChannelLayerNorm::describe() const {
  return "ChannelLayerNorm(" + std::to_string(dim) + ")";
}

Tensor ChannelLayerNorm::forward(const Tensor& x) {
  if (x.dim() != 4 || x.size(1) != dim)
    throw std::invalid_argument(describe() + ": input of shape " + shape_str(x.shape()) +
                                " must be (B, " + std::to_string(dim) + ", H, W)");
  return layer_norm(x.permute({0, 2, 3, 1}), weight, bias, eps).permute({0, 3, 1, 2});
}

BatchNorm2d::BatchNorm2d(int64_t channels, double momentum, double eps)
    : channels(channels), momentum(momentum), eps(eps) {
  weight = register_parameter("weight", ones({channels}));
  bias = register_parameter("bias", zeros({channels}));
  running_mean = register_buffer("running_mean", zeros({channels}));
  running_var = register_buffer("running_var", ones({channels}));
}

std::string BatchNorm2d::describe() const {
  return "BatchNorm2d(" + std::to_string(channels) + ")";
}

Tensor BatchNorm2d::forward(const Tensor& x) {
  return batch_norm(x, weight, bias, running_mean, running_var, is_training(), momentum, eps);
}

// ---- regularisers ----

DropPath::DropPath(double p) : p(p) {
  if (p < 0.0 || p >= 1.0)
    throw std::invalid_argument("DropPath: p must be in [0, 1), got " + std::to_string(p));
}

Tensor DropPath::forward(const Tensor& x) {
  if (!is_training() || p == 0.0) return x;
  Shape mask_shape(x.dim(), 1);  // (B, 1, ..., 1): one draw per sample
  mask_shape[0] = x.size(0);
  TensorOptions options{x.dtype(), x.device()};
  Tensor keep = gt(rand(mask_shape, options), full({}, p, options));
  return mul(x, mul(keep, 1.0 / (1.0 - p)));
}

// ---- containers ----

Sequential::Sequential(const std::vector<std::shared_ptr<Module>>& modules) {
  for (const auto& m : modules) push_back(m);
}

Tensor Sequential::forward(const Tensor& x) {
  Tensor y = x;
  for (const auto& [name, module] : children()) y = module->forward(y);
  return y;
}

}  // namespace nala
