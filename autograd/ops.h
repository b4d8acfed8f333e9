// The differentiable ops: the library's public math API.
//
// Each op checks its inputs (a bad shape, dtype or device throws std::invalid_argument naming
// the op and the shapes), runs its forward kernel on the input's device, and records a Node
// whose backward is written right below the forward in autograd/ops/<family>.cpp.
#pragma once

#include <vector>

#include "autograd/autograd.h"
#include "tensor/tensor.h"

namespace nala {

// ---- elementwise (autograd/ops/elementwise.cpp) ----
// Binary ops broadcast like NumPy: shapes align from the right; a dim of 1 stretches.
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);  // 0^b = 0 (b > 0), and so is its gradient
Tensor add(const Tensor& x, double s);
Tensor mul(const Tensor& x, double s);
Tensor pow(const Tensor& x, double p);
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
enum class GeluApproximation { Erf, Tanh };
Tensor gelu(const Tensor& x, GeluApproximation approximation = GeluApproximation::Erf);
Tensor silu(const Tensor& x);
// Comparisons give 1.0 / 0.0 in the inputs' dtype and are not differentiable.
Tensor eq(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
// Drops elements with probability p and scales the rest by 1 / (1 - p) (training only).
Tensor dropout(const Tensor& x, double p, bool training);

inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator-(const Tensor& x) { return neg(x); }
inline Tensor operator+(const Tensor& x, double s) { return add(x, s); }
inline Tensor operator-(const Tensor& x, double s) { return add(x, -s); }
inline Tensor operator*(const Tensor& x, double s) { return mul(x, s); }
inline Tensor operator/(const Tensor& x, double s) { return mul(x, 1.0 / s); }
inline Tensor operator*(double s, const Tensor& x) { return mul(x, s); }

// ---- reductions (autograd/ops/reduce.cpp) ----
// dims may be negative; an empty dims list reduces over every dim.
Tensor sum(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
// Gradient split evenly between tied maxima (like torch.amax).
Tensor max(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
// Variance with Bessel's correction by default (correction = 1), like torch.var.
Tensor var(const Tensor& x, std::vector<int64_t> dims = {}, int64_t correction = 1,
           bool keepdim = false);
// Sums a broadcast gradient back to `shape` (the adjoint of expand).
Tensor sum_to(const Tensor& x, const Shape& shape);

// ---- matrix products (autograd/ops/matmul.cpp) ----
// a (..., m, k) @ b (..., k, n) -> (..., m, n); batch dims broadcast.
Tensor matmul(const Tensor& a, const Tensor& b);
// y = x W^T + b: x (..., in), weight (out, in), bias (out) or undefined.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

// ---- convolution and pooling (autograd/ops/conv.cpp) ----
// x (N, C_in, H, W), weight (C_out, C_in / groups, kh, kw), bias (C_out) or undefined.
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t stride = 1,
              int64_t padding = 0, int64_t groups = 1);
Tensor global_avg_pool2d(const Tensor& x);  // (N, C, H, W) -> (N, C)

// ---- normalisation (autograd/ops/norm.cpp) ----
// Over the last dim; weight and bias (last dim) may be undefined.
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps = 1e-5);
// x (N, C, H, W) or (N, C). In training, normalises with the batch statistics and updates the
// running buffers (when defined) in place; in eval, uses the running buffers.
Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias,
                  const Tensor& running_mean, const Tensor& running_var, bool training,
                  double momentum = 0.1, double eps = 1e-5);

// ---- softmax and losses (autograd/ops/loss.cpp) ----
Tensor softmax(const Tensor& x, int64_t dim = -1);
Tensor log_softmax(const Tensor& x, int64_t dim = -1);
// Mean cross-entropy of logits (N, C) against int64 labels (N) with label smoothing.
Tensor cross_entropy(const Tensor& logits, const Tensor& labels, double label_smoothing = 0.0);
// Mean of -sum_c target_c log softmax(logits)_c, for soft targets (N, C) as mixup makes.
Tensor soft_target_cross_entropy(const Tensor& logits, const Tensor& target);

// ---- joining and splitting (autograd/ops/shape.cpp) ----
Tensor concat(const std::vector<Tensor>& tensors, int64_t dim);
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim);

// ---- attention (autograd/ops/attention.cpp) ----
// q, k, v (B, H, N, d); the 2-d rotary tables for a grid_h x grid_w token grid (N = grid_h *
// grid_w) are built inside. NALAFORMER.md section 1; derivation in docs/nala_backward.md.
enum class AttentionKind { Nala, Softmax, Relu };
Tensor attention(AttentionKind kind, const Tensor& q, const Tensor& k, const Tensor& v,
                 int64_t grid_h, int64_t grid_w);
Tensor nala_attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t grid_h,
                      int64_t grid_w);
// The same functions composed from primitive ops (autograd through every step; materialises
// the features, and for softmax the N x N scores): the reference the fused ops are tested
// against and benchmarked with.
Tensor attention_composed(AttentionKind kind, const Tensor& q, const Tensor& k, const Tensor& v,
                          int64_t grid_h, int64_t grid_w);
// The rotary tables (sin, cos), each (grid_h * grid_w, d), NALAFORMER.md section 3.
std::pair<Tensor, Tensor> rotary_tables(int64_t grid_h, int64_t grid_w, int64_t d, DType dtype,
                                        Device device);

}  // namespace nala
