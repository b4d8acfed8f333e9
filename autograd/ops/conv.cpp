// 2-d convolution (general grouped via im2col + gemm, depthwise via a direct kernel) and global
// average pooling.
//
// General path, per group g, with col = im2col(x) viewed as (N, C_in*kh*kw, L), L = H_out*W_out:
//   y[n, g]  = W_g (C_out/G x C_in/G*kh*kw) @ col[n, g]          (one batched gemm per group)
//   dcol[n,g] = W_g^T @ dy[n, g],   dx = col2im(dcol)
//   dW_g     = sum_n dy[n, g] @ col[n, g]^T                     (one gemm over (n, l) jointly)
//   db       = sum over n, l of dy
#include "autograd/dispatch.h"
#include "autograd/ops.h"

namespace nala {

static kernels::Conv2dShape conv_shape(const Tensor& x, const Tensor& w, int64_t stride,
                                       int64_t padding) {
  kernels::Conv2dShape s{};
  s.batch = x.size(0);
  s.channels = x.size(1);
  s.height = x.size(2);
  s.width = x.size(3);
  s.kernel_h = w.size(2);
  s.kernel_w = w.size(3);
  s.stride_h = s.stride_w = stride;
  s.pad_h = s.pad_w = padding;
  s.out_h = (s.height + 2 * padding - s.kernel_h) / stride + 1;
  s.out_w = (s.width + 2 * padding - s.kernel_w) / stride + 1;
  return s;
}

// y = bias broadcast over (N, C, H, W), or zeros.
static Tensor bias_planes(const Tensor& bias, const Shape& shape, const Tensor& like) {
  if (!bias.defined()) return zeros(shape, TensorOptions{like.dtype(), like.device()});
  return copy_tensor(bias.detach().view({1, -1, 1, 1}).expand(shape), like.device(), like.dtype());
}

static Tensor im2col_of(const Tensor& x, const kernels::Conv2dShape& s) {
  Tensor col = empty({s.batch, s.channels * s.kernel_h * s.kernel_w, s.out_h * s.out_w},
                     TensorOptions{x.dtype(), x.device()});
  NALA_KERNEL(x, im2col, s, x.data<T>(), col.data<T>());
  return col;
}

static bool is_depthwise(const Tensor& x, const Tensor& w, int64_t groups) {
  return groups == x.size(1) && w.size(0) == x.size(1) && w.size(1) == 1;
}

Tensor conv2d(const Tensor& x_in, const Tensor& w_in, const Tensor& bias, int64_t stride,
              int64_t padding, int64_t groups) {
  check_floating("conv2d", x_in);
  check_floating("conv2d", w_in);
  check_same("conv2d", {x_in, w_in, bias});
  check_dim("conv2d", x_in, 4, "input");
  check_dim("conv2d", w_in, 4, "weight");
  auto fail = [&](const std::string& why) {
    throw std::invalid_argument("conv2d: input " + shape_str(x_in.shape()) + ", weight " +
                                shape_str(w_in.shape()) + ", stride " + std::to_string(stride) +
                                ", padding " + std::to_string(padding) + ", groups " +
                                std::to_string(groups) + ": " + why);
  };
  if (stride < 1 || padding < 0 || groups < 1)
    fail("stride >= 1, padding >= 0, groups >= 1 needed");
  if (x_in.size(1) % groups || w_in.size(0) % groups)
    fail("groups must divide both channel counts");
  if (w_in.size(1) * groups != x_in.size(1)) fail("weight dim 1 must be in_channels / groups");
  if (bias.defined() && (bias.dim() != 1 || bias.size(0) != w_in.size(0)))
    fail("bias must be [out_channels]");
  kernels::Conv2dShape s = conv_shape(x_in, w_in, stride, padding);
  if (s.out_h <= 0 || s.out_w <= 0) fail("the kernel is larger than the padded input");

  Tensor x = x_in.detach().contiguous(), w = w_in.detach().contiguous();
  int64_t N = s.batch, C = s.channels, Co = w.size(0), L = s.out_h * s.out_w;
  int64_t kk = s.kernel_h * s.kernel_w, G = groups, Cg = C / G, Cog = Co / G;
  Shape y_shape{N, Co, s.out_h, s.out_w};

  if (is_depthwise(x, w, groups)) {
    Tensor y = empty(y_shape, TensorOptions{x.dtype(), x.device()});
    Tensor b = bias.defined() ? bias.detach().contiguous() : Tensor();
    NALA_KERNEL(x, depthwise_conv2d_forward, s, x.data<T>(), w.data<T>(),
                b.defined() ? b.data<T>() : nullptr, y.data<T>());
    // The backward keeps x only for dw and w only for dx (a frozen filter saves no activation).
    const bool need_x = needs_grad(x_in), need_w = needs_grad(w_in);
    record(y, "conv2d_depthwise", {x_in, w_in, bias},
           [s, x = need_w ? x : Tensor(), w = need_x ? w : Tensor(), x_shape = x.shape(),
            w_shape = w.shape(), need_x, need_w, need_b = needs_grad(bias)](const Tensor& dy_in) {
             Tensor dy = dy_in.contiguous();
             Tensor dx, dw;
             if (need_x || need_w) {
               const TensorOptions options{dy.dtype(), dy.device()};
               if (need_x) dx = empty(x_shape, options);
               if (need_w) dw = empty(w_shape, options);
               NALA_KERNEL(dy, depthwise_conv2d_backward, s, need_w ? x.data<T>() : nullptr,
                           need_x ? w.data<T>() : nullptr, dy.data<T>(),
                           need_x ? dx.data<T>() : nullptr, need_w ? dw.data<T>() : nullptr);
             }
             return std::vector<Tensor>{dx, dw, need_b ? sum(dy, {0, 2, 3}) : Tensor()};
           });
    return y;
  }

  Tensor col = im2col_of(x, s);
  Tensor y = bias_planes(bias, y_shape, x);
  for (int64_t g = 0; g < G; ++g)
    NALA_KERNEL(x, gemm, false, false, Cog, L, Cg * kk, T(1), w.data<T>() + g * Cog * Cg * kk,
                Cg * kk, 0, col.data<T>() + g * Cg * kk * L, L, C * kk * L, T(1),
                y.data<T>() + g * Cog * L, L, Co * L, N);
  col = Tensor();  // recomputed in the backward: kh*kw times the input is too much to keep
  record(y, "conv2d", {x_in, w_in, bias},
         [=, need_x = needs_grad(x_in), need_w = needs_grad(w_in),
          need_b = needs_grad(bias)](const Tensor& dy_in) {
           Tensor dy = dy_in.contiguous();
           Tensor dx, dw;
           if (need_x) {
             // dcol = W^T dy per image and group, then dx = col2im(dcol).
             Tensor dcol = empty({N, C * kk, L}, TensorOptions{x.dtype(), x.device()});
             for (int64_t g = 0; g < G; ++g)
               NALA_KERNEL(x, gemm, true, false, Cg * kk, L, Cog, T(1),
                           w.data<T>() + g * Cog * Cg * kk, Cg * kk, 0, dy.data<T>() + g * Cog * L,
                           L, Co * L, T(0), dcol.data<T>() + g * Cg * kk * L, L, C * kk * L, N);
             dx = empty_like(x);
             NALA_KERNEL(x, col2im, s, dcol.data<T>(), dx.data<T>());
           }
           if (need_w) {
             // dW = dy' col'^T with the (n, l) pairs as one contraction axis: move n next to l.
             Tensor dy_t = dy.view({N, Co, L}).permute({1, 0, 2}).contiguous();  // (Co, N, L)
             Tensor col_t = im2col_of(x, s).permute({1, 0, 2}).contiguous();     // (C*kk, N, L)
             dw = empty_like(w);
             for (int64_t g = 0; g < G; ++g)
               NALA_KERNEL(x, gemm, false, true, Cog, Cg * kk, N * L, T(1),
                           dy_t.data<T>() + g * Cog * N * L, N * L, 0,
                           col_t.data<T>() + g * Cg * kk * N * L, N * L, 0, T(0),
                           dw.data<T>() + g * Cog * Cg * kk, Cg * kk, 0, 1);
           }
           return std::vector<Tensor>{dx, dw, need_b ? sum(dy, {0, 2, 3}) : Tensor()};
         });
  return y;
}

Tensor global_avg_pool2d(const Tensor& x) {
  check_dim("global_avg_pool2d", x, 4, "input");
  return mean(x, {2, 3});
}

}  // namespace nala
