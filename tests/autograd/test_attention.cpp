// The attention ops: NaLa, the ReLU-linear baseline and softmax attention, fused (one node,
// hand-written backward) against finite differences, against the same formula composed from
// primitive ops, and against direct O(N^2) loops written here from NALAFORMER.md section 1.
#include "autograd/gradcheck.h"
#include "test_util.h"

using namespace nala;
using test::max_rel_diff;

namespace {

std::vector<double> values(const Tensor& t) { return t.to_vector<double>(); }

// rho(x) for one d-wide block at token i.
std::vector<double> rho(const std::vector<double>& x, const std::vector<double>& s,
                        const std::vector<double>& c, int64_t i, int64_t d) {
  std::vector<double> y(x.size());
  for (size_t b = 0; b < x.size(); b += d)
    for (int64_t t = 0; t < d; t += 2) {
      double x0 = x[b + t], x1 = x[b + t + 1];
      y[b + t] = x0 * c[i * d + t] - x1 * s[i * d + t];
      y[b + t + 1] = x1 * c[i * d + t + 1] + x0 * s[i * d + t + 1];
    }
  return y;
}

// Direct O(N^2) NaLa for one head: o_i = sum_j w_ij v_j, w_ij = z_i Q'_i . K'_j / N.
Tensor nala_reference(const Tensor& q, const Tensor& k, const Tensor& v, int64_t gh, int64_t gw) {
  int64_t N = q.size(2), d = q.size(3), bh = q.size(0) * q.size(1);
  auto [sin_t, cos_t] = rotary_tables(gh, gw, d, DType::Float64, Device::CPU);
  std::vector<double> Q = values(q), K = values(k), V = values(v), s = values(sin_t),
                      c = values(cos_t);
  std::vector<double> out(bh * N * d, 0.0);
  for (int64_t h = 0; h < bh; ++h) {
    std::vector<std::vector<double>> phiQ(N), phiK(N);
    for (int64_t i = 0; i < N; ++i) {
      const double* qi = &Q[(h * N + i) * d];
      const double* ki = &K[(h * N + i) * d];
      double n = 0;
      for (int64_t t = 0; t < d; ++t) n += qi[t] * qi[t];
      n = std::sqrt(n);
      double p = 3 * (0.5 + std::tanh(n));
      phiQ[i].assign(2 * d, 0.0);
      phiK[i].assign(2 * d, 0.0);
      for (int64_t t = 0; t < d; ++t) {
        if (n > 0) {
          phiQ[i][t] = qi[t] > 0 ? std::pow(qi[t] / n, p) : 0;
          phiQ[i][d + t] = qi[t] < 0 ? std::pow(-qi[t] / n, p) : 0;
        }
        double k3 = ki[t] * ki[t] * ki[t];
        phiK[i][t] = k3 > 0 ? k3 : 0;
        phiK[i][d + t] = k3 < 0 ? -k3 : 0;
      }
    }
    std::vector<double> kbar(2 * d, 0.0);
    for (int64_t j = 0; j < N; ++j)
      for (int64_t t = 0; t < 2 * d; ++t) kbar[t] += phiK[j][t] / N;
    for (int64_t i = 0; i < N; ++i) {
      double dot = 0;
      for (int64_t t = 0; t < 2 * d; ++t) dot += phiQ[i][t] * kbar[t];
      double z = 1 / (dot + 1e-6);
      std::vector<double> qr = rho(phiQ[i], s, c, i, d);
      for (int64_t j = 0; j < N; ++j) {
        std::vector<double> kr = rho(phiK[j], s, c, j, d);
        double w = 0;
        for (int64_t t = 0; t < 2 * d; ++t) w += qr[t] * kr[t];
        w *= z / N;
        for (int64_t t = 0; t < d; ++t) out[(h * N + i) * d + t] += w * V[(h * N + j) * d + t];
      }
    }
  }
  return from_vector(out, q.shape(), TensorOptions{DType::Float64});
}

// Direct softmax attention: o_i = sum_j softmax_j(rho(q_i) . rho(k_j) / sqrt d) v_j.
Tensor softmax_reference(const Tensor& q, const Tensor& k, const Tensor& v, int64_t gh,
                         int64_t gw) {
  int64_t N = q.size(2), d = q.size(3), bh = q.size(0) * q.size(1);
  auto [sin_t, cos_t] = rotary_tables(gh, gw, d, DType::Float64, Device::CPU);
  std::vector<double> Q = values(q), K = values(k), V = values(v), s = values(sin_t),
                      c = values(cos_t);
  std::vector<double> out(bh * N * d, 0.0);
  for (int64_t h = 0; h < bh; ++h)
    for (int64_t i = 0; i < N; ++i) {
      std::vector<double> qi(&Q[(h * N + i) * d], &Q[(h * N + i) * d] + d), scores(N);
      std::vector<double> qr = rho(qi, s, c, i, d);
      double m = -INFINITY, total = 0;
      for (int64_t j = 0; j < N; ++j) {
        std::vector<double> kj(&K[(h * N + j) * d], &K[(h * N + j) * d] + d),
            kr = rho(kj, s, c, j, d);
        double dot = 0;
        for (int64_t t = 0; t < d; ++t) dot += qr[t] * kr[t];
        scores[j] = dot / std::sqrt(double(d));
        m = std::max(m, scores[j]);
      }
      for (double& x : scores) total += (x = std::exp(x - m));
      for (int64_t j = 0; j < N; ++j)
        for (int64_t t = 0; t < d; ++t)
          out[(h * N + i) * d + t] += scores[j] / total * V[(h * N + j) * d + t];
    }
  return from_vector(out, q.shape(), TensorOptions{DType::Float64});
}

Tensor qkv(const Shape& shape, uint64_t seed, Device device = Device::CPU, double scale = 1.0) {
  return mul(test::random_tensor(shape, seed, DType::Float64, device), scale)
      .detach()
      .requires_grad_();
}

}  // namespace

TEST_CASE("rotary tables follow section 3") {
  auto [s, c] = rotary_tables(2, 3, 8, DType::Float64, Device::CPU);  // d/4 = 2: f = 1, 1/10000
  std::vector<double> sv = values(s), cv = values(c);
  int64_t token = 1 * 3 + 2;  // h = 1, w = 2
  CHECK(sv[token * 8 + 0] == doctest::Approx(std::sin(1.0)));
  CHECK(sv[token * 8 + 3] == doctest::Approx(std::sin(1e-4)));
  CHECK(cv[token * 8 + 4] == doctest::Approx(std::cos(2.0)));
  CHECK(sv[token * 8 + 7] == doctest::Approx(std::sin(2e-4)));
  auto [s4, c4] = rotary_tables(1, 2, 4, DType::Float64, Device::CPU);  // d/4 = 1: f = 1
  CHECK(values(s4)[4 + 2] == doctest::Approx(std::sin(1.0)));
}

TEST_CASE("fused NaLa and softmax attention match direct O(N^2) references") {
  // (20, 30): 600 tokens, two full 256-token chunks of the CPU passes and a partial third.
  for (auto [gh, gw, d] : {std::tuple{2, 3, 8}, {4, 4, 4}, {1, 1, 8}, {3, 5, 16}, {20, 30, 8}}) {
    Tensor q = qkv({2, 2, gh * gw, d}, 1), k = qkv({2, 2, gh * gw, d}, 2),
           v = qkv({2, 2, gh * gw, d}, 3);
    CHECK(max_rel_diff(nala_attention(q, k, v, gh, gw), nala_reference(q, k, v, gh, gw)) < 1e-10);
    CHECK(max_rel_diff(attention(AttentionKind::Softmax, q, k, v, gh, gw),
                       softmax_reference(q, k, v, gh, gw)) < 1e-12);
  }
}

// The edge cases section 1 calls out: (name, q, finite-difference step). k and v are random.
// The step for q shrinks with its scale (with |q| ~ 1e-3 a step of 1e-6 is not small).
struct EdgeCase {
  std::string name;
  Tensor q;
  double step;
};
static std::vector<EdgeCase> edge_queries(Device device) {
  return {{"random", qkv({1, 2, 6, 8}, 5, device), 1e-6},
          {"large query norms", qkv({1, 2, 6, 8}, 6, device, 30.0), 1e-6},
          {"small query norms", qkv({1, 2, 6, 8}, 7, device, 1e-3), 1e-8}};
}

TEST_CASE("attention gradients match finite differences (float64)") {
  for (Device device : test::devices()) {
    CAPTURE(std::string(device_name(device)));
    for (AttentionKind kind : {AttentionKind::Nala, AttentionKind::Relu, AttentionKind::Softmax}) {
      CAPTURE(int(kind));
      auto f = [kind = kind](const std::vector<Tensor>& x) {
        return attention(kind, x[0], x[1], x[2], 2, 3);
      };
      for (const EdgeCase& e : edge_queries(device)) {
        CAPTURE(e.name);
        Tensor k = qkv({1, 2, 6, 8}, 8, device), v = qkv({1, 2, 6, 8}, 9, device);
        GradcheckResult rq = gradcheck(f, {e.q, k.detach(), v.detach()}, e.step);
        GradcheckResult rkv = gradcheck(f, {e.q.detach(), k, v});
        INFO(rq.worst, " / ", rkv.worst);
        CHECK(rq.passed);
        CHECK(rkv.passed);
      }
      // An all-zero query row: the direction q / |q| jumps there, so no finite difference in q
      // exists; the output and every gradient must be finite, dq of that row 0, and the
      // gradients of k and v (smooth there) must pass.
      Tensor q0 = test::random_tensor({1, 2, 6, 8}, 4, DType::Float64, device);
      q0.select(2, 3).copy_(zeros({1, 2, 8}, TensorOptions{DType::Float64, device}));
      q0.requires_grad_();
      Tensor k0 = qkv({1, 2, 6, 8}, 8, device), v0 = qkv({1, 2, 6, 8}, 9, device);
      Tensor o0 = f({q0, k0, v0});
      sum(o0).backward();
      for (const Tensor& t : {o0, q0.grad(), k0.grad(), v0.grad()})
        for (double x : t.to_vector<double>()) REQUIRE(std::isfinite(x));
      if (kind == AttentionKind::Nala)
        for (double x : q0.grad().select(2, 3).to_vector<double>()) CHECK(x == 0.0);
      CHECK(gradcheck(f, {q0.detach(), k0, v0}).passed);
      // N = 1 and non-contiguous inputs (a permuted (B, N, H, d) layout).
      Tensor q1 = qkv({2, 1, 1, 4}, 10, device), k1 = qkv({2, 1, 1, 4}, 11, device),
             v1 = qkv({2, 1, 1, 4}, 12, device);
      CHECK(gradcheck(
                [kind = kind](const std::vector<Tensor>& x) {
                  return attention(kind, x[0], x[1], x[2], 1, 1);
                },
                {q1, k1, v1})
                .passed);
      Tensor qp = qkv({1, 4, 2, 8}, 13, device), kp = qkv({1, 4, 2, 8}, 14, device),
             vp = qkv({1, 4, 2, 8}, 15, device);
      GradcheckResult r = gradcheck(
          [kind = kind](const std::vector<Tensor>& x) {
            return attention(kind, x[0].transpose(1, 2), x[1].transpose(1, 2), x[2].transpose(1, 2),
                             2, 2);
          },
          {qp, kp, vp});
      INFO(r.worst);
      CHECK(r.passed);
    }
  }
}

TEST_CASE(
    "fused attention matches the composition of primitive ops (float32, forward and gradients)") {
  test::FullFloat32Guard full_float32;  // the composition's matmuls in full float32
  for (Device device : test::devices()) {
    CAPTURE(std::string(device_name(device)));
    for (AttentionKind kind : {AttentionKind::Nala, AttentionKind::Relu, AttentionKind::Softmax}) {
      CAPTURE(int(kind));
      std::vector<Tensor> fused_grads, composed_grads;
      Tensor outs[2];
      for (int composed = 0; composed < 2; ++composed) {
        Shape shape{2, 3, 64, 16};
        Tensor q = test::random_tensor(shape, 20, DType::Float32, device, -2, 2).requires_grad_();
        Tensor k = test::random_tensor(shape, 21, DType::Float32, device).requires_grad_();
        Tensor v = test::random_tensor(shape, 22, DType::Float32, device).requires_grad_();
        Tensor o =
            composed ? attention_composed(kind, q, k, v, 8, 8) : attention(kind, q, k, v, 8, 8);
        sum(mul(o, test::random_tensor(shape, 23, DType::Float32, device))).backward();
        outs[composed] = o;
        for (const Tensor& t : {q, k, v})
          (composed ? composed_grads : fused_grads).push_back(t.grad());
      }
      // float32 through sums of 64 tokens and powers up to 4.5: 1e-4 relative, with margin.
      CHECK(max_rel_diff(outs[0], outs[1]) < 1e-4);
      for (int i = 0; i < 3; ++i) {
        CAPTURE(i);
        CHECK(max_rel_diff(fused_grads[i], composed_grads[i]) < 1e-4);
      }
    }
  }
}

TEST_CASE("linear attention gradients over several chunks match the composition (float64)") {
  // 600 tokens: the CPU passes' chunks of 256 tokens (two full, one partial) and their partial
  // sums of S, kbar, dS and dkbar; the composition of primitive ops has no chunks.
  for (Device device : test::devices())
    for (AttentionKind kind : {AttentionKind::Nala, AttentionKind::Relu}) {
      CAPTURE(std::string(device_name(device)));
      CAPTURE(int(kind));
      std::vector<Tensor> grads[2];
      Tensor outs[2];
      for (int composed = 0; composed < 2; ++composed) {
        std::vector<Tensor> x;
        for (uint64_t seed : {60, 61, 62}) x.push_back(qkv({1, 2, 600, 8}, seed, device));
        Tensor o = composed ? attention_composed(kind, x[0], x[1], x[2], 20, 30)
                            : attention(kind, x[0], x[1], x[2], 20, 30);
        sum(mul(o, qkv({1, 2, 600, 8}, 63, device))).backward();
        outs[composed] = o;
        for (const Tensor& t : x) grads[composed].push_back(t.grad());
      }
      CHECK(max_rel_diff(outs[0], outs[1]) < 1e-10);
      for (int i = 0; i < 3; ++i) {
        CAPTURE(i);
        CHECK(max_rel_diff(grads[0][i], grads[1][i]) < 1e-10);
      }
    }
}

// Output and gradients of linear attention in float32 on `device` against the CPU in float64 on
// the same inputs (2 x 2 heads, 200 tokens: a partial last tile), each as test::scaled_max_diff,
// relative to the largest magnitude of the result.
static std::vector<double> float32_against_float64(Device device, AttentionKind kind, int64_t d) {
  const Shape shape{2, 2, 200, d};
  std::vector<Tensor> results[2];  // float64 on the CPU, float32 on `device`
  for (int single = 0; single < 2; ++single) {
    const DType dtype = single ? DType::Float32 : DType::Float64;
    const Device on = single ? device : Device::CPU;
    std::vector<Tensor> x;
    for (uint64_t seed : {40, 41, 42})
      x.push_back(copy_tensor(test::random_tensor(shape, seed + d, DType::Float64), on, dtype)
                      .requires_grad_());
    Tensor o = attention(kind, x[0], x[1], x[2], 10, 20);
    sum(mul(o, copy_tensor(test::random_tensor(shape, 99, DType::Float64), on, dtype))).backward();
    for (const Tensor& t : {o, x[0].grad(), x[1].grad(), x[2].grad()})
      results[single].push_back(t.cpu().to(DType::Float64));
  }
  std::vector<double> diffs;
  for (size_t i = 0; i < results[0].size(); ++i)
    diffs.push_back(test::scaled_max_diff(results[1][i], results[0][i]));
  return diffs;
}

TEST_CASE("float32 linear attention stays within float32 rounding of float64") {
  // 1e-5 is float32-level for sums over 200 tokens: the float32 kernels' own shortcuts must stay
  // inside it (the CPU's power m^p as 2^(p log2 m) by series; CUDA's products on the tensor cores
  // in 3xTF32 where the shapes allow: d = 32 and 64, at d = 48 the output's product but not the
  // feature sums' (96 x 48 and 48 x 48 do not fit the held tiles), and on the FP32 units for
  // d = 12; at d = 48 the output and feature-sums passes' lanes hold two pairs of columns, the
  // second only on half the lanes), while one TF32 product alone (each operand rounded to 2^-11)
  // does not (next test).
  test::FullFloat32Guard full_float32;
  for (Device device : test::devices())
    for (AttentionKind kind : {AttentionKind::Nala, AttentionKind::Relu})
      for (int64_t d : {12, 32, 48, 64}) {
        CAPTURE(std::string(device_name(device)));
        CAPTURE(int(kind));
        CAPTURE(d);
        const std::vector<double> diffs = float32_against_float64(device, kind, d);
        for (size_t i = 0; i < diffs.size(); ++i) {
          CAPTURE(i);
          CHECK(diffs[i] < 1e-5);
        }
      }
}

TEST_CASE("with TF32 allowed, CUDA linear attention takes one TF32 product, within its rounding") {
  // allow_tf32 (on by default) lets the tensor cores' products (d = 32 and 64) take one TF32
  // pass: each operand rounded to 10 mantissa bits (within 2^-11 of its value), a product's terms
  // within 2^-10 of theirs. Every result passes through two products (S = K'^T v then Q' S; dS
  // then its uses): 2^-9 = 1.95e-3 of the terms' magnitudes. Taking that as 2e-3 of each
  // result's largest magnitude assumes the terms' rounding errors, independent and of either
  // sign, cancel in the sums about as much as the terms do: an assumption, not a bound, which the
  // measured errors bear out with a margin of 4 (2.8e-4 to 5.0e-4 on the H200:
  // docs/benchmarks.md). Above 1e-5, the 3xTF32 level of the test before: the switch does reach
  // the attention kernels.
  if (!test::cuda_available()) return;
#ifdef NALA_WITH_CUDA
  REQUIRE(kernels::cuda::allow_tf32());
#endif
  for (AttentionKind kind : {AttentionKind::Nala, AttentionKind::Relu})
    for (int64_t d : {32, 64}) {
      CAPTURE(int(kind));
      CAPTURE(d);
      const std::vector<double> diffs = float32_against_float64(Device::CUDA, kind, d);
      for (size_t i = 0; i < diffs.size(); ++i) {
        CAPTURE(i);
        CHECK(diffs[i] < 2e-3);
        CHECK(diffs[i] > 1e-5);
      }
    }
}

TEST_CASE("with TF32 allowed, head dims off the tensor cores keep full float32") {
  // At d % 8 != 0 every product of the linear-attention kernels runs on the FP32 units, so TF32
  // has nothing to speed up: the operands are not rounded to it (with_map_and_passes), and the
  // results stay within the float32 level of the first test (rounded operands would give errors
  // of the order of the test before's, 2.8e-4 to 5.0e-4).
  if (!test::cuda_available()) return;
#ifdef NALA_WITH_CUDA
  REQUIRE(kernels::cuda::allow_tf32());
#endif
  for (AttentionKind kind : {AttentionKind::Nala, AttentionKind::Relu}) {
    CAPTURE(int(kind));
    const std::vector<double> diffs = float32_against_float64(Device::CUDA, kind, 36);
    for (size_t i = 0; i < diffs.size(); ++i) {
      CAPTURE(i);
      CHECK(diffs[i] < 1e-5);
    }
  }
}

TEST_CASE("a NaN in a query reaches that token's output") {
  // Not a silent wrong result: the NaLa map turns a NaN query element into NaN features, so the
  // token's output is NaN, and the other tokens' outputs stay finite.
  for (Device device : test::devices())
    for (DType dtype : {DType::Float32, DType::Float64}) {
      CAPTURE(std::string(device_name(device)));
      std::vector<double> values = test::random_tensor({1, 2, 6, 8}, 50).to_vector<double>();
      values[3 * 8 + 5] = std::nan("");  // head 0, token 3, column 5
      Tensor q = from_vector(values, {1, 2, 6, 8}, TensorOptions{DType::Float64});
      Tensor o =
          nala_attention(copy_tensor(q, device, dtype),
                         copy_tensor(test::random_tensor({1, 2, 6, 8}, 51), device, dtype),
                         copy_tensor(test::random_tensor({1, 2, 6, 8}, 52), device, dtype), 2, 3)
              .cpu()
              .to(DType::Float64);
      for (int64_t h = 0; h < 2; ++h)
        for (int64_t i = 0; i < 6; ++i)
          for (double x : o.select(1, h).select(1, i).to_vector<double>())
            CHECK(std::isnan(x) == (h == 0 && i == 3));
    }
}

TEST_CASE("attention rejects bad shapes with clear errors") {
  Tensor q = zeros({1, 2, 6, 8});
  CHECK_THROWS_WITH_AS(nala_attention(q, q, q, 2, 2),
                       doctest::Contains("grid 2 x 2 does not match N = 6"), std::invalid_argument);
  Tensor q6 = zeros({1, 2, 6, 6});
  CHECK_THROWS_WITH_AS(nala_attention(q6, q6, q6, 2, 3),
                       doctest::Contains("must be a positive multiple of 4"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(nala_attention(q, zeros({1, 2, 6, 4}), q, 2, 3),
                       doctest::Contains("must share one (B, H, N, d) shape"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(nala_attention(zeros({2, 6, 8}), zeros({2, 6, 8}), zeros({2, 6, 8}), 2, 3),
                       doctest::Contains("[2, 6, 8]"), std::invalid_argument);
}
