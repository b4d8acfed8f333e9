// Forward values of the ops against direct loops written here from the definitions, and the
// error messages for bad input.
#include <algorithm>
#include <cmath>
#include <tuple>
#include <utility>

#include "autograd/gradcheck.h"
#include "test_util.h"

using namespace nala;
using test::max_rel_diff;
using test::random_tensor;

TEST_CASE("matmul matches a triple loop, batched and broadcast") {
  for (auto [m, k, n] : {std::tuple{1, 1, 1}, {3, 17, 5}, {33, 64, 31}, {130, 70, 129}}) {
    Tensor a = random_tensor({2, m, k}, 1, DType::Float64),
           b = random_tensor({k, n}, 2, DType::Float64);
    std::vector<double> av = a.to_vector<double>(), bv = b.to_vector<double>(), ref(2 * m * n, 0.0);
    for (int bt = 0; bt < 2; ++bt)
      for (int i = 0; i < m; ++i)
        for (int j = 0; j < n; ++j)
          for (int p = 0; p < k; ++p)
            ref[(bt * m + i) * n + j] += av[(bt * m + i) * k + p] * bv[p * n + j];
    CHECK(max_rel_diff(matmul(a, b), from_vector(ref, {2, m, n}, TensorOptions{DType::Float64})) <
          1e-12);
    CHECK(max_rel_diff(matmul(a.to(DType::Float32), b.to(DType::Float32)),
                       from_vector(ref, {2, m, n}, TensorOptions{DType::Float32})) < 1e-5);
  }
}

TEST_CASE("matmul over several k blocks, with transposed operands, matches a triple loop") {
  // k = 1000 passes the CPU GEMM's k block (384 floats, 192 doubles) several times; m = 37 and
  // n = 45 end in partial register panels (12 rows; 32 columns in float, 16 in double);
  // transposed views (.t()) reach the GEMM as transposed operands, read in place.
  const int64_t m = 37, k = 1000, n = 45;
  for (DType dtype : {DType::Float64, DType::Float32})
    for (bool trans_a : {false, true})
      for (bool trans_b : {false, true}) {
        CAPTURE(int(dtype));
        CAPTURE(trans_a);
        CAPTURE(trans_b);
        Tensor a = trans_a ? random_tensor({k, m}, 7, dtype).t() : random_tensor({m, k}, 7, dtype);
        Tensor b = trans_b ? random_tensor({n, k}, 8, dtype).t() : random_tensor({k, n}, 8, dtype);
        std::vector<double> av = a.contiguous().to(DType::Float64).to_vector<double>(),
                            bv = b.contiguous().to(DType::Float64).to_vector<double>(),
                            cv = matmul(a, b).to(DType::Float64).to_vector<double>();
        // Each element against the bound of a k-term dot product in precision u, whatever the
        // order of its sums: |fl(a . b) - a . b| <= gamma_k sum_p |a_p b_p|, gamma_k =
        // k u / (1 - k u) (Higham, Accuracy and Stability of Numerical Algorithms, section 3.1),
        // twice over for float64, whose reference rounds as much (float32's reference, summed in
        // double, rounds 2^29 times finer). An indexing bug is off by whole products, far past it.
        const double u = dtype == DType::Float64 ? 0x1p-53 : 0x1p-24;
        const double gamma = (dtype == DType::Float64 ? 2 : 1) * k * u / (1 - k * u);
        double worst = 0;  // the largest error as a fraction of the bound
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < n; ++j) {
            double ref = 0, magnitude = 0;
            for (int64_t p = 0; p < k; ++p) {
              ref += av[i * k + p] * bv[p * n + j];
              magnitude += std::abs(av[i * k + p] * bv[p * n + j]);
            }
            worst = std::max(worst, std::abs(cv[i * n + j] - ref) / (gamma * magnitude));
          }
        CHECK(worst <= 1);
      }
}

TEST_CASE("linear is x W^T + b") {
  Tensor x = random_tensor({4, 3}, 3, DType::Float64), w = random_tensor({2, 3}, 4, DType::Float64);
  Tensor b = random_tensor({2}, 5, DType::Float64);
  std::vector<double> xv = x.to_vector<double>(), wv = w.to_vector<double>(),
                      bv = b.to_vector<double>(), ref;
  for (int i = 0; i < 4; ++i)
    for (int o = 0; o < 2; ++o) {
      double s = bv[o];
      for (int c = 0; c < 3; ++c) s += xv[i * 3 + c] * wv[o * 3 + c];
      ref.push_back(s);
    }
  CHECK(max_rel_diff(linear(x, w, b), from_vector(ref, {4, 2}, TensorOptions{DType::Float64})) <
        1e-12);
}

// Direct convolution from the definition, zero padding.
static Tensor conv_reference(const Tensor& x, const Tensor& w, int64_t stride, int64_t pad,
                             int64_t groups) {
  int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), Co = w.size(0),
          kh = w.size(2), kw = w.size(3);
  int64_t Ho = (H + 2 * pad - kh) / stride + 1, Wo = (W + 2 * pad - kw) / stride + 1,
          Cg = C / groups, Cog = Co / groups;
  std::vector<double> xv = x.to_vector<double>(), wv = w.to_vector<double>(),
                      y(N * Co * Ho * Wo, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < Co; ++o)
      for (int64_t i = 0; i < Ho; ++i)
        for (int64_t j = 0; j < Wo; ++j) {
          double s = 0;
          int64_t g = o / Cog;
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t a = 0; a < kh; ++a)
              for (int64_t b = 0; b < kw; ++b) {
                int64_t h = i * stride - pad + a, v = j * stride - pad + b;
                if (h < 0 || h >= H || v < 0 || v >= W) continue;
                s += xv[((n * C + g * Cg + c) * H + h) * W + v] *
                     wv[((o * Cg + c) * kh + a) * kw + b];
              }
          y[((n * Co + o) * Ho + i) * Wo + j] = s;
        }
  return from_vector(y, {N, Co, Ho, Wo}, TensorOptions{DType::Float64});
}

TEST_CASE("conv2d matches the direct definition: general, grouped, depthwise") {
  struct Case {
    Shape x, w;
    int64_t stride, pad, groups;
  };
  for (const Case& c :
       {Case{{2, 3, 7, 6}, {4, 3, 3, 3}, 1, 1, 1}, Case{{1, 4, 8, 8}, {6, 2, 3, 2}, 2, 1, 2},
        Case{{2, 5, 6, 7}, {5, 1, 3, 3}, 1, 1, 5}, Case{{1, 3, 9, 9}, {3, 1, 5, 5}, 2, 2, 3},
        Case{{2, 2, 4, 4}, {3, 2, 1, 1}, 1, 0, 1}}) {
    Tensor x = random_tensor(c.x, 6, DType::Float64), w = random_tensor(c.w, 7, DType::Float64);
    CHECK(max_rel_diff(conv2d(x, w, Tensor(), c.stride, c.pad, c.groups),
                       conv_reference(x, w, c.stride, c.pad, c.groups)) < 1e-12);
  }
}

TEST_CASE("depthwise conv2d at stride 1 (padded planes on the CPU): values and gradients") {
  // The CPU's stride-1 path: valid padding, 5 x 5 and 7 x 7, a non-square filter, and padding
  // past the filter (whose input gradient takes the general path).
  struct Case {
    Shape x, w;
    int64_t pad;
  };
  for (const Case& c : {Case{{2, 3, 6, 5}, {3, 1, 3, 3}, 0}, Case{{1, 2, 7, 9}, {2, 1, 5, 5}, 2},
                        Case{{2, 2, 5, 6}, {2, 1, 7, 7}, 3}, Case{{1, 3, 4, 5}, {3, 1, 3, 3}, 3},
                        Case{{1, 2, 5, 4}, {2, 1, 2, 3}, 1}}) {
    CAPTURE(c.pad);
    const int64_t channels = c.x[1];
    Tensor x = random_tensor(c.x, 31, DType::Float64).requires_grad_();
    Tensor w = random_tensor(c.w, 32, DType::Float64).requires_grad_();
    Tensor b = random_tensor({channels}, 33, DType::Float64).requires_grad_();
    Tensor reference = add(conv_reference(x.detach(), w.detach(), 1, c.pad, channels),
                           b.detach().reshape({1, channels, 1, 1}));
    CHECK(max_rel_diff(conv2d(x, w, b, 1, c.pad, channels), reference) < 1e-12);
    const GradcheckResult r = gradcheck(
        [&](const std::vector<Tensor>& t) { return conv2d(t[0], t[1], t[2], 1, c.pad, channels); },
        {x, w, b});
    INFO(r.worst);
    CHECK(r.passed);
  }
  // float32: each vector lane of the weight gradient's dot products sums a share of a plane in
  // float, the images' sums are added in double: within float32 rounding of the float64 result
  // (1e-5 of the largest value: ~20 products per lane here, each rounding by 6e-8).
  Tensor x = random_tensor({64, 4, 16, 16}, 34, DType::Float64).requires_grad_();
  Tensor w = random_tensor({4, 1, 5, 5}, 35, DType::Float64).requires_grad_();
  Tensor x32 = x.detach().to(DType::Float32).requires_grad_();
  Tensor w32 = w.detach().to(DType::Float32).requires_grad_();
  sum(mul(conv2d(x, w, Tensor(), 1, 2, 4), conv2d(x, w, Tensor(), 1, 2, 4))).backward();
  sum(mul(conv2d(x32, w32, Tensor(), 1, 2, 4), conv2d(x32, w32, Tensor(), 1, 2, 4))).backward();
  CHECK(test::scaled_max_diff(w32.grad(), w.grad()) < 1e-5);
  CHECK(test::scaled_max_diff(x32.grad(), x.grad()) < 1e-5);
  // An infinite input reached by one tap only, (0, 2) at the top-right corner of a 4 x 4 plane
  // under a 3 x 3 filter without padding: that tap's gradient is infinite, every other is finite.
  std::vector<double> corner(2 * 16, 0.5);
  corner[3] = INFINITY;  // channel 0, row 0, column 3
  Tensor xi = from_vector(corner, {1, 2, 4, 4}, TensorOptions{DType::Float64});
  Tensor wi = random_tensor({2, 1, 3, 3}, 36, DType::Float64).requires_grad_();
  Tensor upstream = random_tensor({1, 2, 2, 2}, 37, DType::Float64, Device::CPU, 0.5, 1.5);
  sum(mul(conv2d(xi, wi, Tensor(), 1, 0, 2), upstream)).backward();
  const std::vector<double> dw = wi.grad().to_vector<double>();
  for (int tap = 0; tap < 9; ++tap) {
    CAPTURE(tap);
    CHECK(std::isfinite(dw[9 + tap]));  // channel 1
    if (tap == 2)
      CHECK(std::isinf(dw[tap]));
    else
      CHECK(std::isfinite(dw[tap]));
  }
}

TEST_CASE("sum and max over dims that are not adjacent match direct loops") {
  // The reductions go one block of adjacent dims at a time (the last block first): {0, 2, 3}
  // is the bias gradient's sum over images and planes, {0, 2} and {1, 3} leave a kept dim between
  // two reduced ones.
  const int64_t n = 3, c = 4, h = 5, w = 6;
  Tensor x = random_tensor({n, c, h, w}, 40, DType::Float64);
  const std::vector<double> xv = x.to_vector<double>();
  const auto at = [&](int64_t i, int64_t j, int64_t k, int64_t l) {
    return xv[((i * c + j) * h + k) * w + l];
  };
  std::vector<double> sum_023(c, 0.0), sum_13(n * h, 0.0), max_02(c * w, -INFINITY);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < c; ++j)
      for (int64_t k = 0; k < h; ++k)
        for (int64_t l = 0; l < w; ++l) {
          sum_023[j] += at(i, j, k, l);
          sum_13[i * h + k] += at(i, j, k, l);
          max_02[j * w + l] = std::max(max_02[j * w + l], at(i, j, k, l));
        }
  const auto close = [](const std::vector<double>& a, const std::vector<double>& b) {
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i)
      if (std::abs(a[i] - b[i]) > 1e-12 * std::max(1.0, std::abs(b[i]))) return false;
    return true;
  };
  Tensor s = sum(x, {0, 2, 3});
  CHECK(s.shape() == Shape{c});
  CHECK(close(s.to_vector<double>(), sum_023));
  CHECK(sum(x, {0, 2, 3}, true).shape() == Shape{1, c, 1, 1});
  CHECK(close(sum(x, {1, 3}).to_vector<double>(), sum_13));
  Tensor m = max(x, {0, 2});
  CHECK(m.shape() == Shape{c, w});
  CHECK(m.to_vector<double>() == max_02);  // a maximum is one of the elements, exactly
  // An empty reduced dim: the sum is 0; the max is an error before any block runs, also when
  // the empty dim is in the first block, which goes last.
  const TensorOptions f64{DType::Float64};
  CHECK(sum(zeros({0, 3, 4}, f64), {0, 2}).to_vector<double>() == std::vector<double>(3, 0.0));
  CHECK_THROWS_WITH_AS(max(zeros({0, 3, 4}, f64), {0, 2}),
                       "max: cannot reduce over an empty dim of shape [0, 3, 4]",
                       std::invalid_argument);
}

TEST_CASE("sum and max over many rows and many columns: chunk edges, column blocks, a NaN") {
  // The CPU kernel cuts rows into chunks of 1024 and columns into blocks of 1024, spread over the
  // threads (36,000 elements: past the size where it goes parallel). Dim 1 of (2, 6000, 3): six
  // chunks, the last partial, with a NaN in the last chunk of one column, which must reach that
  // column's sum and max and no other; every element of the tensor (one column of 18,000 rows);
  // dim 0 of (3, 12000): 12 blocks of columns over 3 rows.
  const int64_t rows = 6000;
  std::vector<double> xv =
      random_tensor({2, rows, 3}, 41, DType::Float64, Device::CPU, -1, 1).to_vector<double>();
  const int64_t nan_at = (rows + rows - 7) * 3 + 1;  // outer row 1, row 5993, column 1
  xv[nan_at] = NAN;
  const TensorOptions f64{DType::Float64};
  const Tensor x = from_vector(xv, {2, rows, 3}, f64);
  std::vector<double> sums(6, 0.0), maxes(6, -INFINITY);
  for (int64_t o = 0; o < 2; ++o)
    for (int64_t j = 0; j < rows; ++j)
      for (int64_t i = 0; i < 3; ++i) {
        const double v = xv[(o * rows + j) * 3 + i];
        sums[o * 3 + i] += v;
        maxes[o * 3 + i] =
            std::isnan(maxes[o * 3 + i]) || std::isnan(v) ? NAN : std::max(maxes[o * 3 + i], v);
      }
  // The NaN column (outer 1, column 1: index 4) is NaN; the others are compared as numbers.
  const auto check = [&](const Tensor& got, const std::vector<double>& want, double tol) {
    std::vector<double> g = got.to_vector<double>(), w = want;
    REQUIRE(g.size() == 6);
    CHECK(std::isnan(g[4]));
    g[4] = w[4] = 0;
    CHECK(max_rel_diff(from_vector(g, {6}, f64), from_vector(w, {6}, f64)) <= tol);
  };
  check(sum(x, {1}), sums, 1e-12);
  check(max(x, {1}), maxes, 0);  // a maximum is one of the elements, exactly
  // Every element at once, without the NaN: one column of 18,000 rows, 18 chunks.
  xv[nan_at] = 0.5;
  double total = 0;
  for (double v : xv) total += v;
  CHECK(max_rel_diff(sum(from_vector(xv, {2, rows, 3}, f64), {0, 1, 2}),
                     from_vector(std::vector<double>{total}, {}, f64)) < 1e-12);
  // Many columns: dim 0 of (3, 12000), 12 blocks of 1024 columns.
  const Tensor wide = from_vector(xv, {3, 12000}, f64);
  std::vector<double> column_sums(12000, 0.0);
  for (int64_t j = 0; j < 3; ++j)
    for (int64_t i = 0; i < 12000; ++i) column_sums[i] += xv[j * 12000 + i];
  CHECK(max_rel_diff(sum(wide, {0}), from_vector(column_sums, {12000}, f64)) < 1e-12);
}

TEST_CASE("layer_norm normalises each row, then scales and shifts") {
  Tensor x = random_tensor({3, 8}, 8, DType::Float64, Device::CPU, -3, 5);
  Tensor w = random_tensor({8}, 9, DType::Float64), b = random_tensor({8}, 10, DType::Float64);
  std::vector<double> xv = x.to_vector<double>(), wv = w.to_vector<double>(),
                      bv = b.to_vector<double>(), ref;
  for (int r = 0; r < 3; ++r) {
    double m = 0, v = 0;
    for (int c = 0; c < 8; ++c) m += xv[r * 8 + c] / 8;
    for (int c = 0; c < 8; ++c) v += (xv[r * 8 + c] - m) * (xv[r * 8 + c] - m) / 8;
    for (int c = 0; c < 8; ++c)
      ref.push_back((xv[r * 8 + c] - m) / std::sqrt(v + 1e-5) * wv[c] + bv[c]);
  }
  CHECK(max_rel_diff(layer_norm(x, w, b, 1e-5),
                     from_vector(ref, {3, 8}, TensorOptions{DType::Float64})) < 1e-12);
}

TEST_CASE("batch_norm uses batch statistics in training and updates the running buffers") {
  Tensor x = random_tensor({4, 2, 3, 3}, 11, DType::Float64, Device::CPU, 1, 3);
  Tensor rm = zeros({2}, TensorOptions{DType::Float64}),
         rv = ones({2}, TensorOptions{DType::Float64});
  Tensor y = batch_norm(x, Tensor(), Tensor(), rm, rv, true, 0.1, 1e-5);
  Tensor m = mean(x, {0, 2, 3}), v = var(x, {0, 2, 3}, 0), v1 = var(x, {0, 2, 3}, 1);
  CHECK(max_rel_diff(mean(y, {0, 2, 3}), zeros({2}, TensorOptions{DType::Float64})) < 1e-12);
  CHECK(max_rel_diff(var(y, {0, 2, 3}, 0), div(v, add(v, 1e-5))) < 1e-10);
  CHECK(max_rel_diff(rm, mul(m, 0.1)) < 1e-12);
  CHECK(max_rel_diff(rv, add(mul(v1, 0.1), 0.9)) < 1e-12);
  Tensor ye = batch_norm(x, Tensor(), Tensor(), rm, rv, false, 0.1, 1e-5);
  CHECK(max_rel_diff(ye, div(sub(x, rm.view({1, 2, 1, 1})),
                             sqrt(add(rv, 1e-5)).view({1, 2, 1, 1}))) < 1e-12);
}

TEST_CASE("softmax, log_softmax and cross_entropy follow their definitions") {
  Tensor x = random_tensor({3, 5}, 12, DType::Float64, Device::CPU, -20, 20);
  Tensor e = exp(sub(x, max(x, {1}, true)));
  Tensor p = div(e, sum(e, {1}, true));
  CHECK(max_rel_diff(softmax(x), p) < 1e-12);
  CHECK(max_rel_diff(log_softmax(x), log(p)) < 1e-12);
  CHECK(max_rel_diff(softmax(x.t(), 0), p.t()) < 1e-12);
  Tensor labels = from_data(std::vector<int64_t>{4, 0, 2}, {3});
  std::vector<double> lp = log(p).to_vector<double>();
  double eps = 0.1, ref = 0;
  for (int r = 0; r < 3; ++r) {
    int64_t y = labels.to_vector<int64_t>()[r];
    for (int c = 0; c < 5; ++c) ref -= ((c == y ? 1 - eps : 0) + eps / 5) * lp[r * 5 + c] / 3;
  }
  CHECK(cross_entropy(x, labels, eps).item() == doctest::Approx(ref).epsilon(1e-12));
  CHECK(std::isnan(cross_entropy(x, from_data(std::vector<int64_t>{5, 0, 2}, {3})).item()));
}

// 4000 x 10 logits: enough work for the CPU kernel's threads, whose per-row losses meet in one
// scratch array summed in row order.
TEST_CASE(
    "cross_entropy over many rows matches its definition, and a bad label anywhere gives NaN") {
  const int64_t rows = 4000, classes = 10;
  Tensor x = random_tensor({rows, classes}, 31, DType::Float64, Device::CPU, -8, 8);
  std::vector<int64_t> y(rows);
  for (int64_t r = 0; r < rows; ++r) y[r] = (r * 7) % classes;
  std::vector<double> xs = x.to_vector<double>();
  const double eps = 0.1;
  double ref = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const double* row = xs.data() + r * classes;
    double m = row[0], s = 0;
    for (int64_t c = 1; c < classes; ++c) m = std::max(m, row[c]);
    for (int64_t c = 0; c < classes; ++c) s += std::exp(row[c] - m);
    for (int64_t c = 0; c < classes; ++c)
      ref -= ((c == y[r] ? 1 - eps : 0) + eps / classes) * (row[c] - m - std::log(s)) / rows;
  }
  CHECK(cross_entropy(x, from_data(y, {rows}), eps).item() == doctest::Approx(ref).epsilon(1e-12));
  y[2999] = -1;
  CHECK(std::isnan(cross_entropy(x, from_data(y, {rows}), eps).item()));
}

TEST_CASE("activations at known points") {
  Tensor x = from_vector({-1.0, 0.0, 1.0, 2.0}, {4}, TensorOptions{DType::Float64});
  std::vector<double> g = gelu(x).to_vector<double>();
  CHECK(g[2] == doctest::Approx(0.8413447460685429).epsilon(1e-14));  // Phi(1)
  CHECK(g[0] == doctest::Approx(-0.15865525393145707).epsilon(1e-14));
  CHECK(gelu(x, GeluApproximation::Tanh).to_vector<double>()[3] ==
        doctest::Approx(2 * 0.5 * (1 + std::tanh(std::sqrt(2 / M_PI) * (2 + 0.044715 * 8))))
            .epsilon(1e-14));
  CHECK(silu(x).to_vector<double>()[2] == doctest::Approx(1 / (1 + std::exp(-1.0))).epsilon(1e-14));
  CHECK(relu(x).to_vector<double>() == std::vector<double>{0, 0, 1, 2});
  CHECK(pow(x, 3.0).to_vector<double>() == std::vector<double>{-1, 0, 1, 8});
  CHECK(pow(zeros({1}), 0.5).item() == 0.0);
}

TEST_CASE("float32 GELU on the CPU (branch-free erf) is within float rounding, with its gradient") {
  // Forward x Phi(x) and derivative Phi(x) + x phi(x) against the exact values in double, each
  // within 4e-7 of the size of its terms (the erfc fit is within 1.2e-7, float rounding 6e-8 per
  // operation); the derivative crosses zero near x = -0.75, so its error is measured against
  // Phi + |x| phi rather than against the derivative itself.
  std::vector<double> xs;
  for (int i = -20000; i <= 20000; ++i) xs.push_back(i * 5e-4);  // [-10, 10]
  for (double v : {1e-30, -1e-30, 1e-8, -1e-8, 37.5}) xs.push_back(v);
  Tensor x = from_vector(xs, {static_cast<int64_t>(xs.size())}).to(DType::Float32);
  x.requires_grad_();
  Tensor y = gelu(x);
  sum(y).backward();
  std::vector<double> yv = y.to_vector<double>(), gv = x.grad().to_vector<double>(),
                      x32 = x.detach().to_vector<double>();
  double worst_value = 0, worst_grad = 0, worst_value_x = 0, worst_grad_x = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const double v = x32[i], phi_cdf = 0.5 * std::erfc(-v / std::sqrt(2.0));
    const double density = std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI);
    const double value_error = std::abs(yv[i] - v * phi_cdf) / (std::abs(v) * phi_cdf);
    const double grad_error =
        std::abs(gv[i] - (phi_cdf + v * density)) / (phi_cdf + std::abs(v) * density);
    if (value_error > worst_value) std::tie(worst_value, worst_value_x) = std::pair(value_error, v);
    if (grad_error > worst_grad) std::tie(worst_grad, worst_grad_x) = std::pair(grad_error, v);
  }
  MESSAGE("float32 GELU: worst relative error "
          << worst_value << " (value, at x = " << worst_value_x << "), " << worst_grad
          << " (gradient, at x = " << worst_grad_x << ")");
  CHECK(worst_value < 4e-7);
  CHECK(worst_grad < 4e-7);
  Tensor special = gelu(from_vector({NAN, INFINITY}, {2}).to(DType::Float32));
  CHECK(std::isnan(special.to_vector<double>()[0]));
  CHECK(special.to_vector<double>()[1] == INFINITY);
}

TEST_CASE("bad input is an error that names the op and the shapes") {
  CHECK_THROWS_WITH_AS(matmul(zeros({2, 3}), zeros({4, 5})),
                       "matmul: shapes [2, 3] and [4, 5] are not aligned", std::invalid_argument);
  CHECK_THROWS_WITH_AS(add(zeros({2, 3}), zeros({4})),
                       "add: shapes [2, 3] and [4] cannot be broadcast together",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(add(zeros({2}), zeros({2}, TensorOptions{DType::Float64})),
                       "add: tensors of different dtypes: [2] float32 and [2] float64",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(exp(zeros({2}, TensorOptions{DType::Int64})),
                       "exp: expected a float32 or float64 tensor, got int64 of shape [2]",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(conv2d(zeros({1, 3, 5, 5}), zeros({4, 2, 3, 3}), Tensor()),
                       doctest::Contains("conv2d: input [1, 3, 5, 5], weight [4, 2, 3, 3]"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(layer_norm(zeros({2, 4}), zeros({3}), Tensor()),
                       doctest::Contains("layer_norm: weight/bias of shape [3] for input [2, 4]"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(cross_entropy(zeros({2, 3}), zeros({2})),
                       doctest::Contains("labels must be int64"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(sum(zeros({2, 3}), {2}), "sum: dim 2 out of range for a tensor with 2 dims",
                       std::out_of_range);
  CHECK_THROWS_WITH_AS(concat({zeros({2, 3}), zeros({3, 3})}, 1),
                       doctest::Contains("concat: shapes [2, 3] and [3, 3]"),
                       std::invalid_argument);
  // Sizes that add up but hold a negative one (a slice would wrap it around): an error.
  CHECK_THROWS_WITH_AS(split(zeros({5}), {-1, 6}, 0),
                       "split: sizes must not be negative, got -1 for shape [5]",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(split(zeros({5, 2}), {2, 2}, 0),
                       doctest::Contains("split: sizes add up to 4 but dim 0 of shape [5, 2] is 5"),
                       std::invalid_argument);
}
