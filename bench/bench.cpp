#include "bench/bench.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <iomanip>
#include <map>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/ops.h"
#include "kernels/kernels.h"

namespace nala {

// Median wall time in seconds of `repeats` calls of f (after one warm-up call); waits for the
// GPU before reading the clock.
static double median_seconds(const std::function<void()>& f, int repeats, Device device) {
  auto sync = [&] {
#ifdef NALA_WITH_CUDA
    if (device == Device::CUDA) kernels::cuda::synchronize();
#endif
    (void)device;
  };
  f();
  sync();
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    sync();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// Square float32 gemm C = A B at 512, 1024, 2048: 2 n^3 flops each.
static int bench_matmul(const BenchOptions& o, std::ostream& os) {
  Device device = parse_device(o.device);
  os << "matmul float32 on " << o.device << " (C = A B, square)\n";
  os << std::setw(8) << "n" << std::setw(12) << "ms" << std::setw(12) << "GFLOP/s\n";
  for (int64_t n : {512, 1024, 2048}) {
    Tensor a = randn({n, n}, TensorOptions{DType::Float32, device});
    Tensor b = randn({n, n}, TensorOptions{DType::Float32, device});
    double s = median_seconds([&] { matmul(a, b); }, o.repeats, device);
    os << std::setw(8) << n << std::setw(12) << std::fixed << std::setprecision(2) << s * 1e3
       << std::setw(12) << 2.0 * n * n * n / s / 1e9 << "\n";
  }
  return 0;
}

// conv2d forward on a 64 x 32 x 32 x 32 input: a 3x3 32 -> 32 convolution (im2col + gemm) and
// a 3x3 depthwise one (direct kernel).
static int bench_conv2d(const BenchOptions& o, std::ostream& os) {
  Device device = parse_device(o.device);
  TensorOptions opt{DType::Float32, device};
  Tensor x = randn({64, 32, 32, 32}, opt);
  os << "conv2d float32 forward on " << o.device << ", input [64, 32, 32, 32], padding 1\n";
  os << std::setw(22) << "conv" << std::setw(12) << "ms" << std::setw(12) << "GFLOP/s\n";
  struct Case {
    const char* name;
    Shape w;
    int64_t groups;
  };
  for (const Case& c :
       {Case{"3x3 32->32", {32, 32, 3, 3}, 1}, Case{"3x3 depthwise 32", {32, 1, 3, 3}, 32}}) {
    Tensor w = randn(c.w, opt), b = zeros({c.w[0]}, opt);
    double s = median_seconds([&] { conv2d(x, w, b, 1, 1, c.groups); }, o.repeats, device);
    double flops = 2.0 * 64 * c.w[0] * 32 * 32 * c.w[1] * 9;
    os << std::setw(22) << c.name << std::setw(12) << std::fixed << std::setprecision(2) << s * 1e3
       << std::setw(12) << flops / s / 1e9 << "\n";
  }
  return 0;
}

// Peak device memory (bytes) of f beyond what was in use before it, from the caching allocator.
static double peak_extra_bytes(const std::function<void()>& f, Device device) {
#ifdef NALA_WITH_CUDA
  if (device == Device::CUDA) {
    kernels::cuda::synchronize();
    size_t before = kernels::cuda::allocator_stats().bytes_in_use;
    kernels::cuda::reset_peak_stats();
    f();
    kernels::cuda::synchronize();
    return static_cast<double>(kernels::cuda::allocator_stats().peak_bytes_in_use - before);
  }
#endif
  (void)f;
  (void)device;
  return 0.0;
}

#ifdef NALA_WITH_CUDA
// Seconds per call of `launch` when `repeats` calls are queued back to back before one wait:
// what a group of kernels costs on the GPU alone, without autograd or host overhead in between.
static double queued_seconds(const std::function<void()>& launch, int repeats) {
  launch();
  kernels::cuda::synchronize();
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < repeats; ++i) launch();
  kernels::cuda::synchronize();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / repeats;
}
#endif

// The variants `nala bench attention` runs: "nala" with the default allow_tf32 (one TF32 product
// on the tensor cores, as the GEMMs take), "nala-fp32" with it off (3xTF32: float32's accuracy;
// CUDA only), NaLa composed from primitive ops, and softmax attention.
struct AttentionVariant {
  const char* name;
  AttentionKind kind;
  bool composed, full_float32;
};
static const AttentionVariant kAttentionVariants[] = {
    {"nala", AttentionKind::Nala, false, false},
    {"nala-fp32", AttentionKind::Nala, false, true},
    {"composed", AttentionKind::Nala, true, false},
    {"softmax", AttentionKind::Softmax, false, false}};

std::vector<std::string> attention_bench_kinds() {
  std::vector<std::string> names;
  for (const AttentionVariant& var : kAttentionVariants) names.push_back(var.name);
  return names;
}

// NaLa attention, fused and composed from primitive ops, forward and forward+backward, at
// B*H = 32 (B = 8, H = 4), d = 32 and 64, N = 1024 ... 65536 (square grids), float32. The floor
// of the forward is reading q, k, v and writing o once: 4 * B*H*N*d * 4 bytes.
static int bench_attention(const BenchOptions& o, std::ostream& os) {
  Device device = parse_device(o.device);
  TensorOptions opt{DType::Float32, device};
  std::vector<int64_t> sides = device == Device::CUDA ? std::vector<int64_t>{32, 64, 128, 256}
                                                      : std::vector<int64_t>{32, 64, 128};
  int64_t B = device == Device::CUDA ? 8 : 2, H = 4;
  os << "attention float32 on " << o.device << ", B = " << B << ", H = " << H
     << " (ms; peak MiB beyond inputs, CUDA only)\n";
  os << std::setw(10) << "kind" << std::setw(4) << "d" << std::setw(8) << "N" << std::setw(11)
     << "fwd ms" << std::setw(12) << "fwd queued" << std::setw(12) << "fwd+bwd ms" << std::setw(11)
     << "peak MiB"
     << "\n";
  std::vector<int64_t> dims =
      device == Device::CUDA ? std::vector<int64_t>{32, 64} : std::vector<int64_t>{32};
  for (int64_t d : dims)
    for (int64_t side : sides) {
      int64_t N = side * side;
      if ((o.head_dim && d != o.head_dim) || (o.tokens && N != o.tokens)) continue;
      Tensor q = randn({B, H, N, d}, opt).requires_grad_(),
             k = randn({B, H, N, d}, opt).requires_grad_();
      Tensor v = randn({B, H, N, d}, opt).requires_grad_(), g = randn({B, H, N, d}, opt);
      for (const AttentionVariant& var : kAttentionVariants) {
        if (!o.kind.empty() && o.kind != var.name) continue;
        if (var.full_float32 && device != Device::CUDA) continue;
        if (var.composed && N > 16384) continue;  // materialises 2d-wide features
        // O(N^2): seconds per call beyond these sizes.
        if (var.kind == AttentionKind::Softmax && N > (device == Device::CUDA ? 16384 : 4096))
          continue;
#ifdef NALA_WITH_CUDA
        const kernels::cuda::Tf32Scope tf32(kernels::cuda::allow_tf32() && !var.full_float32);
#endif
        auto run = [&](bool backward) {
          Tensor out = var.composed ? attention_composed(var.kind, q, k, v, side, side)
                                    : attention(var.kind, q, k, v, side, side);
          if (backward) {
            // A named loss, not `sum(mul(out, g)).backward()`: C++ keeps a temporary alive to the
            // end of the full expression, and the product would then sit in memory through the
            // whole backward (the PyTorch peer's `(out * g).sum().backward()` frees it first).
            Tensor loss = sum(mul(out, g));
            loss.backward();
            // Drop the gradients, as the PyTorch peer does (q.grad = None): each call then
            // measures one forward+backward, not also the accumulation into earlier gradients.
            q.zero_grad(), k.zero_grad(), v.zero_grad();
          }
        };
        double fwd = [&] {
          NoGradGuard ng;
          return median_seconds([&] { run(false); }, o.repeats, device);
        }();
        double both = median_seconds([&] { run(true); }, o.repeats, device);
        double peak = peak_extra_bytes([&] { run(true); }, device);
        // The forward's GPU time: calls queued back to back, one wait at the end (the host's
        // launches run ahead of the GPU, so its launch and wait latencies drop out). Measured
        // last, so that a profiler limited to the first launches (`ncu -c 12`, gpu_run.sh
        // kernels) still sees the forward+backward's kernels.
        std::ostringstream queued;
        queued << "-";
#ifdef NALA_WITH_CUDA
        if (device == Device::CUDA) {
          NoGradGuard ng;
          queued.str("");
          queued << std::fixed << std::setprecision(3)
                 << queued_seconds([&] { run(false); }, 20 * o.repeats) * 1e3;
        }
#endif
        os << std::setw(10) << var.name << std::setw(4) << d << std::setw(8) << N << std::fixed
           << std::setprecision(3) << std::setw(11) << fwd * 1e3 << std::setw(12) << queued.str()
           << std::setw(12) << both * 1e3 << std::setw(11) << std::setprecision(1)
           << peak / (1 << 20) << std::endl;
      }
    }
  os << "fwd queued: 20 x repeats forwards queued back to back, one wait at the end (the GPU's "
        "time; CUDA only)\nforward floor: 16 B*H*N*d bytes (q, k, v read, o written once) at "
        "`nala bench copy` GB/s\n";
  return 0;
}

// Device copy bandwidth (read + write) of a 1 GiB float32 tensor (256 MiB on the CPU).
static int bench_copy(const BenchOptions& o, std::ostream& os) {
  Device device = parse_device(o.device);
  int64_t n = device == Device::CUDA ? (int64_t(1) << 28) : (int64_t(1) << 26);
  Tensor x = randn({n}, TensorOptions{DType::Float32, device});
  double s = median_seconds([&] { x.clone(); }, o.repeats, device);
  os << "copy of " << n * 4 / (1 << 20) << " MiB on " << o.device << ": " << std::fixed
     << std::setprecision(1) << 2.0 * n * 4 / s / 1e9 << " GB/s (read + write)\n";
  return 0;
}

// Sums that gradients take, through sum(): the bias gradients of a linear layer (over dim 0 of
// (tokens, features): one block of rows, outer = 1 in the kernels' (outer, r, inner) view) and of
// a convolution (over dims 0, 2, 3 of an image batch), at xt-cifar's shapes at batch 256, wider
// rows, the batch's sum of a per-example tensor (256 rows of 65536) and a whole tensor's sum (a
// loss); GB/s of the input read once.
static int bench_reduce(const BenchOptions& o, std::ostream& os) {
  Device device = parse_device(o.device);
  struct Case {
    Shape shape;
    std::vector<int64_t> dims;
  };
  const Case cases[] = {{{65536, 64}, {0}},
                        {{65536, 256}, {0}},
                        {{16384, 512}, {0}},
                        {{256, 65536}, {0}},
                        {{256, 112, 16, 16}, {0, 2, 3}},
                        {{256, 112, 16, 16}, {0, 1, 2, 3}}};
  std::vector<Tensor> inputs;  // made first: a device this build lacks fails before any output
  for (const Case& c : cases)
    inputs.push_back(randn(c.shape, TensorOptions{DType::Float32, device}));
  os << "sum on " << o.device << ", float32\n"
     << std::left << std::setw(34) << "shape, dims" << std::right << std::setw(10) << "ms"
     << std::setw(10) << "GB/s\n";
  for (size_t i = 0; i < std::size(cases); ++i) {
    const Case& c = cases[i];
    const Tensor& x = inputs[i];
    const double s = median_seconds([&] { sum(x, c.dims); }, o.repeats, device);
    std::string dims;
    for (int64_t d : c.dims) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
    os << std::left << std::setw(34) << shape_str(c.shape) + ", {" + dims + "}" << std::right
       << std::fixed << std::setprecision(3) << std::setw(10) << s * 1e3 << std::setprecision(1)
       << std::setw(10) << x.numel() * 4 / s / 1e9 << "\n";
  }
  return 0;
}

// The memory-bound ops of xt-cifar at batch 256, forward+backward, two ways:
// - through autograd, sum(f(x)).backward(), as a user runs them (and as the PyTorch peer does);
// - on CUDA, the op's forward and backward kernels alone on preallocated buffers, queued back to
//   back: achieved GB/s (the bytes each must move at least, over the time) against the copy
//   bandwidth measured in the same run.
static int bench_ops(const BenchOptions& o, std::ostream& os) {
  Device device = parse_device(o.device);
  TensorOptions opt{DType::Float32, device};
  Tensor big = randn({int64_t(1) << 26}, opt);
  double copy_gbs =
      2.0 * big.numel() * 4 / median_seconds([&] { big.clone(); }, o.repeats, device) / 1e9;
  big = Tensor();
  struct Case {
    std::string name;
    Shape shape;       // of the input x
    double bytes_per;  // bytes per element of x that forward + backward must move at least
    std::function<Tensor(const Tensor&)> f;
    // Launches the forward and backward kernels on x, dy and buffers y, dx of x's shape.
    std::function<void(const float* x, const float* dy, float* y, float* dx)> kernels = {};
  };
  Tensor ln_w = ones({32}, opt).requires_grad_(), ln_b = zeros({32}, opt).requires_grad_();
  Tensor dw3 = randn({112, 1, 3, 3}, opt).requires_grad_(),
         db3 = zeros({112}, opt).requires_grad_();
  Tensor dw5 = randn({32, 1, 5, 5}, opt).requires_grad_(), db5 = zeros({32}, opt).requires_grad_();
  Tensor labels = from_data(std::vector<int64_t>(65536, 3), {65536}, device);
  // forward reads x, writes y; backward reads x (or y) and dy, writes dx: 5 passes of 4 bytes.
  // Only what the op needs counts: per-row statistics saved for the backward (layer norm's mean
  // and rstd, cross-entropy's lse) and an implementation's extra passes (the depthwise weight
  // gradient's second read of x and dy) do not.
  std::vector<Case> cases = {
      {"layer_norm (65536, 32)",
       {65536, 32},
       20,
       [&](const Tensor& x) { return layer_norm(x, ln_w, ln_b, 1e-6); }},
      {"gelu (256, 256, 112)", {256, 256, 112}, 20, [&](const Tensor& x) { return gelu(x); }},
      {"dwconv 3x3 (256,112,16,16)",
       {256, 112, 16, 16},
       20,
       [&](const Tensor& x) { return conv2d(x, dw3, db3, 1, 1, 112); }},
      {"dwconv 5x5 (256,32,16,16)",
       {256, 32, 16, 16},
       20,
       [&](const Tensor& x) { return conv2d(x, dw5, db5, 1, 2, 32); }},
      {"softmax+CE (65536, 10)",
       {65536, 10},
       13.6,  // read logits twice, write dlogits (12); the int64 label of each row of 10
              // classes read twice (16 / 10)
       [&](const Tensor& x) { return cross_entropy(x, labels, 0.1); }},
  };
#ifdef NALA_WITH_CUDA
  // The same ops' kernels, called directly. Per-row and per-filter results go to scratch tensors.
  namespace kc = kernels::cuda;
  Tensor rows_a = empty({65536}, opt), rows_b = empty({65536}, opt);
  Tensor params_a = empty({112 * 25}, opt), params_b = empty({112 * 25}, opt);
  cases[0].kernels = [&](const float* x, const float* dy, float* y, float* dx) {
    kc::layer_norm_forward<float>(65536, 32, x, ln_w.data<float>(), ln_b.data<float>(), 1e-6f, y,
                                  rows_a.data<float>(), rows_b.data<float>());
    kc::layer_norm_backward<float>(65536, 32, x, dy, ln_w.data<float>(), rows_a.data<float>(),
                                   rows_b.data<float>(), dx, params_a.data<float>(),
                                   params_b.data<float>());
  };
  cases[1].kernels = [&](const float* x, const float* dy, float* y, float* dx) {
    const int64_t n = 256 * 256 * 112;
    kc::unary_forward<float>(kernels::UnaryOp::GeluErf, n, x, y);
    kc::unary_backward<float>(kernels::UnaryOp::GeluErf, n, x, y, dy, dx);
  };
  const auto depthwise = [&](const Tensor& w, const Tensor& b) {
    const int64_t c = w.shape()[0], k = w.shape()[2];
    const kernels::Conv2dShape s{256, c, 16, 16, k, k, 1, 1, k / 2, k / 2, 16, 16};
    return [&, s](const float* x, const float* dy, float* y, float* dx) {
      kc::depthwise_conv2d_forward<float>(s, x, w.data<float>(), b.data<float>(), y);
      kc::depthwise_conv2d_backward<float>(s, x, w.data<float>(), dy, dx, params_a.data<float>());
    };
  };
  cases[2].kernels = depthwise(dw3, db3);
  cases[3].kernels = depthwise(dw5, db5);
  Tensor loss = empty({}, opt), dloss = ones({}, opt);  // the mean, and the backward's seed
  cases[4].kernels = [&](const float* x, const float*, float*, float* dx) {
    kc::cross_entropy_forward<float>(65536, 10, x, labels.data<int64_t>(), 0.1f, loss.data<float>(),
                                     rows_b.data<float>());
    kc::cross_entropy_backward<float>(65536, 10, x, labels.data<int64_t>(), 0.1f,
                                      rows_b.data<float>(), dloss.data<float>(), dx);
  };
#endif
  os << "memory-bound ops, float32 forward+backward on " << o.device << "; copy bandwidth "
     << std::fixed << std::setprecision(1) << copy_gbs << " GB/s\n";
  os << std::left << std::setw(30) << "op" << std::right << std::setw(14) << "autograd ms"
     << std::setw(14) << "kernels ms" << std::setw(10) << "GB/s" << std::setw(12) << "% of copy"
     << std::setw(13) << "copy@size" << std::setw(12) << "% of that" << std::endl;
  for (const Case& c : cases) {
    Tensor x = randn(c.shape, opt).requires_grad_();
    double s = median_seconds([&] { sum(c.f(x)).backward(); }, o.repeats, device);
    os << std::left << std::setw(30) << c.name << std::right << std::setw(14)
       << std::setprecision(3) << s * 1e3;
#ifdef NALA_WITH_CUDA
    if (device == Device::CUDA) {
      Tensor dy = randn(c.shape, opt), y = empty(c.shape, opt), dx = empty(c.shape, opt);
      double k = queued_seconds(
          [&] { c.kernels(x.data<float>(), dy.data<float>(), y.data<float>(), dx.data<float>()); },
          20 * o.repeats);
      double gbs = c.bytes_per * x.numel() / k / 1e9;
      // The copy's rate at this size: x into y, queued the same way (small tensors stay in L2
      // and launch gaps weigh more, so it differs from the 256 MiB copy's).
      const size_t x_bytes = x.numel() * sizeof(float);
      double same_size_copy_gbs =
          2.0 * x_bytes /
          queued_seconds(
              [&] { kc::copy_device_to_device(y.data<float>(), x.data<float>(), x_bytes); },
              20 * o.repeats) /
          1e9;
      os << std::setw(14) << k * 1e3 << std::setw(10) << std::setprecision(1) << gbs
         << std::setw(11) << 100 * gbs / copy_gbs << "%" << std::setw(13) << same_size_copy_gbs
         << std::setw(11) << 100 * gbs / same_size_copy_gbs << "%";
    }
#endif
    os << std::endl;
  }
  os << "(autograd ms: sum(f(x)).backward(), which adds the sum and its backward's fill, waiting\n"
        " for the GPU after each call; kernels ms: the op's own kernels alone, queued;\n"
        " copy@size: GB/s of a device copy of x, queued the same way)\n";
  return 0;
}

using Benchmarks = std::map<std::string, std::function<int(const BenchOptions&, std::ostream&)>>;
static const Benchmarks kBenchmarks = {
    {"matmul", bench_matmul}, {"conv2d", bench_conv2d}, {"attention", bench_attention},
    {"copy", bench_copy},     {"ops", bench_ops},       {"reduce", bench_reduce},
};

std::vector<std::string> benchmark_names() {
  std::vector<std::string> names;
  for (const auto& [name, run] : kBenchmarks) names.push_back(name);
  return names;
}

int run_benchmark(const std::string& name, const BenchOptions& options, std::ostream& os) {
  auto it = kBenchmarks.find(name);
  if (it == kBenchmarks.end()) {
    os << "unknown benchmark '" << name << "'; known:";
    for (const std::string& known : benchmark_names()) os << " " << known;
    os << "\n";
    return 2;
  }
  return it->second(options, os);
}

}  // namespace nala
