// The list of ops `nala gradcheck` and the test suites check: every differentiable op, on small
// float64 inputs drawn away from the points where the op is not smooth (relu's kink, abs at 0,
// log and div near 0, ties of max).
#include <random>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"

namespace nala {

// Uniform values in [low, high], times a random sign when `signed_` (so |x| >= low > 0).
static Tensor input(const Shape& shape, Device device, double low = -1.0, double high = 1.0,
                    bool signed_ = false) {
  static std::mt19937_64 rng(42);
  std::uniform_real_distribution<double> dist(low, high);
  std::vector<double> v(shape_numel(shape));
  for (double& x : v) x = dist(rng) * (signed_ && (rng() & 1) ? -1.0 : 1.0);
  return from_vector(v, shape, TensorOptions{DType::Float64, device, true});
}

static Tensor labels(const std::vector<int64_t>& v, Device device) {
  return from_data(v, {static_cast<int64_t>(v.size())}, device);
}

using Inputs = std::vector<Tensor>;

const std::vector<GradcheckCase>& builtin_gradcheck_cases() {
  static const std::vector<GradcheckCase> cases = {
      // elementwise, broadcasting
      {"add (broadcast)",
       [](Device d) {
         return Inputs{input({3, 1, 4}, d), input({2, 4}, d)};
       },
       [](const Inputs& x) { return add(x[0], x[1]); }},
      {"sub (broadcast)",
       [](Device d) {
         return Inputs{input({2, 3}, d), input({3}, d)};
       },
       [](const Inputs& x) { return sub(x[0], x[1]); }},
      {"mul (broadcast)",
       [](Device d) {
         return Inputs{input({2, 1, 3}, d), input({4, 1}, d)};
       },
       [](const Inputs& x) { return mul(x[0], x[1]); }},
      {"div",
       [](Device d) {
         return Inputs{input({3, 4}, d), input({4}, d, 0.5, 1.5, true)};
       },
       [](const Inputs& x) { return div(x[0], x[1]); }},
      {"pow (tensor exponent)",
       [](Device d) {
         return Inputs{input({3, 4}, d, 0.5, 1.5), input({3, 4}, d, -1, 2)};
       },
       [](const Inputs& x) { return pow(x[0], x[1]); }},
      {"pow (scalar exponent)", [](Device d) { return Inputs{input({5}, d, 0.5, 2.0)}; },
       [](const Inputs& x) { return pow(x[0], 2.5); }},
      {"add/mul scalar", [](Device d) { return Inputs{input({5}, d)}; },
       [](const Inputs& x) { return mul(add(x[0], 3.0), -2.0); }},
      {"neg", [](Device d) { return Inputs{input({6}, d)}; },
       [](const Inputs& x) { return neg(x[0]); }},
      {"exp", [](Device d) { return Inputs{input({6}, d)}; },
       [](const Inputs& x) { return exp(x[0]); }},
      {"log", [](Device d) { return Inputs{input({6}, d, 0.5, 2.0)}; },
       [](const Inputs& x) { return log(x[0]); }},
      {"sqrt", [](Device d) { return Inputs{input({6}, d, 0.5, 2.0)}; },
       [](const Inputs& x) { return sqrt(x[0]); }},
      {"abs", [](Device d) { return Inputs{input({6}, d, 0.2, 1.0, true)}; },
       [](const Inputs& x) { return abs(x[0]); }},
      {"tanh", [](Device d) { return Inputs{input({6}, d, -2, 2)}; },
       [](const Inputs& x) { return tanh(x[0]); }},
      {"sigmoid", [](Device d) { return Inputs{input({6}, d, -3, 3)}; },
       [](const Inputs& x) { return sigmoid(x[0]); }},
      {"relu", [](Device d) { return Inputs{input({8}, d, 0.1, 1.0, true)}; },
       [](const Inputs& x) { return relu(x[0]); }},
      {"gelu (erf)", [](Device d) { return Inputs{input({8}, d, -3, 3)}; },
       [](const Inputs& x) { return gelu(x[0], GeluApproximation::Erf); }},
      {"gelu (tanh)", [](Device d) { return Inputs{input({8}, d, -3, 3)}; },
       [](const Inputs& x) { return gelu(x[0], GeluApproximation::Tanh); }},
      {"silu", [](Device d) { return Inputs{input({8}, d, -3, 3)}; },
       [](const Inputs& x) { return silu(x[0]); }},
      {"dropout",
       [](Device d) {
         return Inputs{input({4, 5}, d)};
       },
       [](const Inputs& x) {
         manual_seed(7);  // the same mask at every evaluation
         return dropout(x[0], 0.3, true);
       }},
      // reductions
      {"sum (dims 0, 2)",
       [](Device d) {
         return Inputs{input({2, 3, 4}, d)};
       },
       [](const Inputs& x) {
         return sum(x[0], {0, 2});
       }},
      {"sum (all)",
       [](Device d) {
         return Inputs{input({2, 3}, d)};
       },
       [](const Inputs& x) { return sum(x[0]); }},
      {"mean (dim 1, keepdim)",
       [](Device d) {
         return Inputs{input({2, 3, 4}, d)};
       },
       [](const Inputs& x) { return mean(x[0], {1}, true); }},
      {"max (dim -1)",
       [](Device d) {
         return Inputs{input({3, 5}, d)};
       },
       [](const Inputs& x) { return max(x[0], {-1}); }},
      {"var (dims 0, 1)",
       [](Device d) {
         return Inputs{input({3, 4, 2}, d)};
       },
       [](const Inputs& x) {
         return var(x[0], {0, 1});
       }},
      // matrix products
      {"matmul",
       [](Device d) {
         return Inputs{input({3, 4}, d), input({4, 5}, d)};
       },
       [](const Inputs& x) { return matmul(x[0], x[1]); }},
      {"matmul (batched, broadcast)",
       [](Device d) {
         return Inputs{input({2, 1, 3, 4}, d), input({3, 4, 2}, d)};
       },
       [](const Inputs& x) { return matmul(x[0], x[1]); }},
      {"matmul (transposed input)",
       [](Device d) {
         return Inputs{input({4, 3}, d), input({5, 4}, d)};
       },
       [](const Inputs& x) { return matmul(x[0].t(), x[1].t()); }},
      {"linear",
       [](Device d) {
         return Inputs{input({2, 3, 4}, d), input({5, 4}, d), input({5}, d)};
       },
       [](const Inputs& x) { return linear(x[0], x[1], x[2]); }},
      {"linear (no bias, strided)",
       [](Device d) {
         return Inputs{input({4, 3}, d), input({2, 4}, d)};
       },
       [](const Inputs& x) { return linear(x[0].t(), x[1]); }},
      // convolution
      {"conv2d (stride 2, pad 1)",
       [](Device d) {
         return Inputs{input({2, 3, 5, 5}, d), input({4, 3, 3, 3}, d), input({4}, d)};
       },
       [](const Inputs& x) { return conv2d(x[0], x[1], x[2], 2, 1); }},
      {"conv2d (groups 2, 2x3)",
       [](Device d) {
         return Inputs{input({2, 4, 4, 5}, d), input({6, 2, 2, 3}, d), input({6}, d)};
       },
       [](const Inputs& x) { return conv2d(x[0], x[1], x[2], 1, 1, 2); }},
      {"conv2d (depthwise 3x3)",
       [](Device d) {
         return Inputs{input({2, 3, 5, 4}, d), input({3, 1, 3, 3}, d), input({3}, d)};
       },
       [](const Inputs& x) { return conv2d(x[0], x[1], x[2], 1, 1, 3); }},
      {"conv2d (depthwise 5x5, s2)",
       [](Device d) {
         return Inputs{input({1, 2, 7, 6}, d), input({2, 1, 5, 5}, d)};
       },
       [](const Inputs& x) { return conv2d(x[0], x[1], Tensor(), 2, 2, 2); }},
      {"global_avg_pool2d",
       [](Device d) {
         return Inputs{input({2, 3, 2, 3}, d)};
       },
       [](const Inputs& x) { return global_avg_pool2d(x[0]); }},
      // normalisation
      {"layer_norm",
       [](Device d) {
         return Inputs{input({3, 5}, d), input({5}, d), input({5}, d)};
       },
       [](const Inputs& x) { return layer_norm(x[0], x[1], x[2], 1e-5); }},
      {"batch_norm (train, 4d)",
       [](Device d) {
         return Inputs{input({3, 2, 2, 2}, d), input({2}, d), input({2}, d)};
       },
       [](const Inputs& x) { return batch_norm(x[0], x[1], x[2], Tensor(), Tensor(), true); }},
      {"batch_norm (train, 2d)",
       [](Device d) {
         return Inputs{input({4, 3}, d), input({3}, d), input({3}, d)};
       },
       [](const Inputs& x) { return batch_norm(x[0], x[1], x[2], Tensor(), Tensor(), true); }},
      {"batch_norm (eval)",
       [](Device d) {
         return Inputs{input({2, 3, 2, 2}, d), input({3}, d), input({3}, d)};
       },
       [](const Inputs& x) {
         TensorOptions o{x[0].dtype(), x[0].device()};
         return batch_norm(x[0], x[1], x[2], full({3}, 0.2, o), full({3}, 1.5, o), false);
       }},
      // softmax and losses
      {"softmax",
       [](Device d) {
         return Inputs{input({3, 5}, d, -2, 2)};
       },
       [](const Inputs& x) { return softmax(x[0]); }},
      {"softmax (dim 0)",
       [](Device d) {
         return Inputs{input({4, 3}, d, -2, 2)};
       },
       [](const Inputs& x) { return softmax(x[0], 0); }},
      {"log_softmax",
       [](Device d) {
         return Inputs{input({3, 5}, d, -2, 2)};
       },
       [](const Inputs& x) { return log_softmax(x[0]); }},
      {"cross_entropy (smoothing)",
       [](Device d) {
         return Inputs{input({4, 5}, d, -2, 2)};
       },
       [](const Inputs& x) {
         return cross_entropy(x[0], labels({1, 0, 4, 2}, x[0].device()), 0.1);
       }},
      {"soft_target_cross_entropy",
       [](Device d) {
         return Inputs{input({3, 4}, d, -2, 2), input({3, 4}, d, 0.1, 1)};
       },
       [](const Inputs& x) { return soft_target_cross_entropy(x[0], x[1]); }},
      // views and joins
      {"permute + reshape",
       [](Device d) {
         return Inputs{input({2, 3, 4}, d)};
       },
       [](const Inputs& x) {
         return mul(x[0].permute({2, 0, 1}).reshape({4, 6}), x[0].reshape({4, 6}));
       }},
      {"slice (step 2) + select",
       [](Device d) {
         return Inputs{input({5, 4}, d)};
       },
       [](const Inputs& x) {
         return mul(x[0].slice(0, 1, 5, 2), x[0].select(1, 2).unsqueeze(0).slice(1, 0, 2).t());
       }},
      {"expand",
       [](Device d) {
         return Inputs{input({3, 1}, d)};
       },
       [](const Inputs& x) {
         return mul(x[0].expand({2, 3, 4}), 1.5);
       }},
      {"concat",
       [](Device d) {
         return Inputs{input({2, 3}, d), input({2, 1}, d)};
       },
       [](const Inputs& x) {
         return concat({x[0], x[1], x[0]}, 1);
       }},
      {"split",
       [](Device d) {
         return Inputs{input({5, 2}, d)};
       },
       [](const Inputs& x) {
         // One node for all parts: p[0] used twice (its gradients add up), p[1] unused (zeros
         // in its place of dx), and x used beside the split too (dx adds to that gradient).
         std::vector<Tensor> p = split(x[0], {2, 1, 2}, 0);
         return add(add(sum(mul(p[0], p[0]), {0}), add(sum(p[0], {0}), mul(sum(p[2], {0}), 2.0))),
                    mul(sum(x[0], {0}), 0.5));
       }},
      // attention, (B, H, N, d) = (1, 2, 6, 8) on a 2 x 3 grid
      {"nala_attention",
       [](Device d) {
         return Inputs{input({1, 2, 6, 8}, d), input({1, 2, 6, 8}, d), input({1, 2, 6, 8}, d)};
       },
       [](const Inputs& x) { return attention(AttentionKind::Nala, x[0], x[1], x[2], 2, 3); }},
      {"relu_attention",
       [](Device d) {
         return Inputs{input({1, 2, 6, 8}, d), input({1, 2, 6, 8}, d), input({1, 2, 6, 8}, d)};
       },
       [](const Inputs& x) { return attention(AttentionKind::Relu, x[0], x[1], x[2], 2, 3); }},
      {"softmax_attention",
       [](Device d) {
         return Inputs{input({1, 2, 6, 8}, d), input({1, 2, 6, 8}, d), input({1, 2, 6, 8}, d)};
       },
       [](const Inputs& x) { return attention(AttentionKind::Softmax, x[0], x[1], x[2], 2, 3); }},
  };
  return cases;
}

}  // namespace nala
