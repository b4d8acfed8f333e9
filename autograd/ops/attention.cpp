// Attention ops for (B, H, N, d) inputs on an grid_h x grid_w token grid: NaLa (norm-aware
// linear attention), its ReLU-linear baseline, and softmax attention. Each is one fused node:
// the forward kernel saves only O(d^2) state and per-row scalars per head, and the hand-written
// backward kernel recomputes the feature maps from q and k (docs/nala_backward.md).
#include <cmath>
#include <cstdint>
#include <map>
#include <tuple>

#include "autograd/dispatch.h"
#include "autograd/ops.h"

namespace nala {

// NALAFORMER.md section 3: f_t = 10000^-(t / (d/4 - 1)), t < d/4, each repeated twice (d/2
// angles); token (h, w) gets sin = [sin(h f), sin(w f)], cos likewise.
std::pair<Tensor, Tensor> rotary_tables(int64_t grid_h, int64_t grid_w, int64_t d, DType dtype,
                                        Device device) {
  if (d % 4 != 0 || d <= 0)
    throw std::invalid_argument("rotary_tables: head dim " + std::to_string(d) +
                                " is not a positive multiple of 4");
  int64_t quarter = d / 4, n = grid_h * grid_w;
  std::vector<double> freq(d / 2);
  for (int64_t t = 0; t < quarter; ++t) {
    double exponent =
        quarter == 1 ? 0.0 : static_cast<double>(t) / static_cast<double>(quarter - 1);
    freq[2 * t] = freq[2 * t + 1] = std::pow(10000.0, -exponent);
  }
  std::vector<double> sin_v(n * d), cos_v(n * d);
  for (int64_t h = 0; h < grid_h; ++h)
    for (int64_t w = 0; w < grid_w; ++w)
      for (int64_t i = 0; i < d / 2; ++i) {
        int64_t row = (h * grid_w + w) * d;
        sin_v[row + i] = std::sin(h * freq[i]);
        cos_v[row + i] = std::cos(h * freq[i]);
        sin_v[row + d / 2 + i] = std::sin(w * freq[i]);
        cos_v[row + d / 2 + i] = std::cos(w * freq[i]);
      }
  TensorOptions options{dtype, device};
  return {from_vector(sin_v, {n, d}, options), from_vector(cos_v, {n, d}, options)};
}

// The rotary tables are the same for every call with the same grid, head dim, dtype and device:
// build them once.
static std::pair<Tensor, Tensor> cached_rotary_tables(int64_t gh, int64_t gw, int64_t d,
                                                      DType dtype, Device device) {
  // Never destroyed: device tensors must not be freed after the CUDA runtime shuts down at exit.
  static auto* cache =
      new std::map<std::tuple<int64_t, int64_t, int64_t, DType, Device>, std::pair<Tensor, Tensor>>;
  auto key = std::make_tuple(gh, gw, d, dtype, device);
  auto it = cache->find(key);
  if (it == cache->end()) it = cache->emplace(key, rotary_tables(gh, gw, d, dtype, device)).first;
  return it->second;
}

// Scratch elements the backward kernels need; the size depends on the backend.
static int64_t linear_workspace(Device device, kernels::FeatureMap fm, int64_t bh, int64_t n,
                                int64_t d) {
#ifdef NALA_WITH_CUDA
  if (device == Device::CUDA) return kernels::cuda::linear_attention_workspace_size(fm, bh, n, d);
#endif
  (void)device;
  return kernels::cpu::linear_attention_workspace_size(fm, bh, n, d);
}

static int64_t softmax_workspace(Device device, int64_t bh, int64_t n, int64_t d) {
#ifdef NALA_WITH_CUDA
  if (device == Device::CUDA) return kernels::cuda::softmax_attention_workspace_size(bh, n, d);
#endif
  (void)device;
  return kernels::cpu::softmax_attention_workspace_size(bh, n, d);
}

static const char* kind_name(AttentionKind kind) {
  switch (kind) {
    case AttentionKind::Nala:
      return "nala_attention";
    case AttentionKind::Softmax:
      return "softmax_attention";
    case AttentionKind::Relu:
      return "relu_attention";
  }
  return "attention";
}

Tensor attention(AttentionKind kind, const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                 int64_t grid_h, int64_t grid_w) {
  const char* name = kind_name(kind);
  check_floating(name, q_in);
  check_same(name, {q_in, k_in, v_in});
  if (q_in.dim() != 4 || k_in.shape() != q_in.shape() || v_in.shape() != q_in.shape())
    throw std::invalid_argument(
        std::string(name) + ": q, k, v must share one (B, H, N, d) shape, got " +
        shape_str(q_in.shape()) + ", " + shape_str(k_in.shape()) + ", " + shape_str(v_in.shape()));
  int64_t B = q_in.size(0), H = q_in.size(1), N = q_in.size(2), d = q_in.size(3), bh = B * H;
  if (d % 4 != 0 || d == 0)
    throw std::invalid_argument(std::string(name) + ": head dim d = " + std::to_string(d) +
                                " in shape " + shape_str(q_in.shape()) +
                                " must be a positive multiple of 4");
  if (grid_h * grid_w != N || grid_h <= 0)
    throw std::invalid_argument(
        std::string(name) + ": grid " + std::to_string(grid_h) + " x " + std::to_string(grid_w) +
        " does not match N = " + std::to_string(N) + " tokens in shape " + shape_str(q_in.shape()));
  // Contiguous and 16-byte aligned (the CUDA kernels load 4 floats at a time).
  auto prepare = [](const Tensor& t) {
    Tensor c = t.detach().contiguous();
    return reinterpret_cast<uintptr_t>(c.raw_data()) % 16 == 0 ? c : c.clone();
  };
  Tensor q = prepare(q_in), k = prepare(k_in), v = prepare(v_in);
  auto [sin_t, cos_t] = cached_rotary_tables(grid_h, grid_w, d, q.dtype(), q.device());
  TensorOptions options{q.dtype(), q.device()};
  Tensor o = empty(q.shape(), options);

  if (kind == AttentionKind::Softmax) {
    Tensor lse = empty({bh, N}, options);
    NALA_KERNEL(q, softmax_attention_forward, bh, N, d, q.data<T>(), k.data<T>(), v.data<T>(),
                sin_t.data<T>(), cos_t.data<T>(), o.data<T>(), lse.data<T>());
    record(o, name, {q_in, k_in, v_in}, [=, o = o.detach()](const Tensor& dout_in) {
      Tensor dout = dout_in.contiguous();
      Tensor dq = empty_like(q), dk = empty_like(q), dv = empty_like(q);
      Tensor workspace = empty({softmax_workspace(q.device(), bh, N, d)}, options);
      NALA_KERNEL(q, softmax_attention_backward, bh, N, d, q.data<T>(), k.data<T>(), v.data<T>(),
                  sin_t.data<T>(), cos_t.data<T>(), o.data<T>(), lse.data<T>(), dout.data<T>(),
                  dq.data<T>(), dk.data<T>(), dv.data<T>(), workspace.data<T>());
      return std::vector<Tensor>{dq, dk, dv};
    });
    return o;
  }

  kernels::FeatureMap fm =
      kind == AttentionKind::Nala ? kernels::FeatureMap::Nala : kernels::FeatureMap::Relu;
  int64_t D = kernels::feature_dim(fm, d);
  Tensor state = empty({bh, D, d}, options), kbar = empty({bh, D}, options),
         z = empty({bh, N}, options);
  Tensor workspace = empty({linear_workspace(q.device(), fm, bh, N, d)}, options);
  NALA_KERNEL(q, linear_attention_forward, fm, bh, N, d, q.data<T>(), k.data<T>(), v.data<T>(),
              sin_t.data<T>(), cos_t.data<T>(), o.data<T>(), state.data<T>(), kbar.data<T>(),
              z.data<T>(), workspace.data<T>());
  workspace = Tensor();
  record(o, name, {q_in, k_in, v_in}, [=](const Tensor& dout_in) {
    Tensor dout = dout_in.contiguous();
    Tensor dq = empty_like(q), dk = empty_like(q), dv = empty_like(q);
    Tensor workspace = empty({linear_workspace(q.device(), fm, bh, N, d)}, options);
    NALA_KERNEL(q, linear_attention_backward, fm, bh, N, d, q.data<T>(), k.data<T>(), v.data<T>(),
                sin_t.data<T>(), cos_t.data<T>(), state.data<T>(), kbar.data<T>(), z.data<T>(),
                dout.data<T>(), dq.data<T>(), dk.data<T>(), dv.data<T>(), workspace.data<T>());
    return std::vector<Tensor>{dq, dk, dv};
  });
  return o;
}

Tensor nala_attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t grid_h,
                      int64_t grid_w) {
  return attention(AttentionKind::Nala, q, k, v, grid_h, grid_w);
}

}  // namespace nala

namespace nala {

// ---- the same functions composed from primitive ops ----
// Autograd differentiates these through every step; tests compare them with the fused kernels
// and `nala bench attention` measures what fusing saves. They materialise the 2d-wide features
// (and, for softmax, the N x N scores): a reference, not a path for training.

// rho(x) = x * cos + rot(x) * sin with rot(x)[2t] = -x[2t+1], rot(x)[2t+1] = x[2t], applied to
// each d-wide block of x's last dim with the same (N, d) tables.
static Tensor rotary(const Tensor& x, const Tensor& sin_t, const Tensor& cos_t) {
  int64_t width = x.size(-1), d = sin_t.size(-1);
  std::vector<Tensor> sins(width / d, sin_t), coss(width / d, cos_t);
  Shape pairs = x.shape();
  pairs.back() = width / 2;
  pairs.push_back(2);
  Tensor xp = x.reshape(pairs);
  Tensor rot = concat({neg(xp.select(-1, 1)).unsqueeze(-1), xp.select(-1, 0).unsqueeze(-1)}, -1)
                   .reshape(x.shape());
  return add(mul(x, concat(coss, -1)), mul(rot, concat(sins, -1)));
}

Tensor attention_composed(AttentionKind kind, const Tensor& q, const Tensor& k, const Tensor& v,
                          int64_t grid_h, int64_t grid_w) {
  int64_t N = q.size(2), d = q.size(3);
  if (grid_h * grid_w != N)
    throw std::invalid_argument("attention_composed: grid does not match N");
  auto [sin_t, cos_t] = cached_rotary_tables(grid_h, grid_w, d, q.dtype(), q.device());
  if (kind == AttentionKind::Softmax) {
    Tensor scores = mul(matmul(rotary(q, sin_t, cos_t), rotary(k, sin_t, cos_t).t()),
                        1.0 / std::sqrt(double(d)));
    return matmul(softmax(scores, -1), v);
  }
  Tensor phi_q, phi_k;
  if (kind == AttentionKind::Nala) {
    Tensor k3 = pow(k, 3.0);
    Tensor n = sqrt(sum(mul(q, q), {-1}, true));  // ||q_i||
    Tensor p = mul(add(tanh(n), 0.5), 3.0);       // 3 (0.5 + tanh n)
    Tensor safe_n = add(n, eq(n, zeros({}, TensorOptions{n.dtype(), n.device()})));  // n = 0 -> 1
    Tensor a = div(relu(q), safe_n), b = div(relu(neg(q)), safe_n);
    phi_q = concat({pow(a, p), pow(b, p)}, -1);
    phi_k = concat({relu(k3), relu(neg(k3))}, -1);
  } else {
    phi_q = relu(q);
    phi_k = relu(k);
  }
  Tensor kbar = mean(phi_k, {2}, true);  // (B, H, 1, D)
  Tensor z = div(ones({}, TensorOptions{q.dtype(), q.device()}),
                 add(sum(mul(phi_q, kbar), {-1}, true), 1e-6));
  Tensor S = mul(matmul(rotary(phi_k, sin_t, cos_t).t(), v), 1.0 / double(N));  // (B, H, D, d)
  return mul(z, matmul(rotary(phi_q, sin_t, cos_t), S));
}

}  // namespace nala
