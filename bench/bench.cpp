#include "bench/bench.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <iomanip>
#include <map>
#include <ostream>
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
  struct Case { const char* name; Shape w; int64_t groups; };
  for (const Case& c : {Case{"3x3 32->32", {32, 32, 3, 3}, 1}, Case{"3x3 depthwise 32", {32, 1, 3, 3}, 32}}) {
    Tensor w = randn(c.w, opt), b = zeros({c.w[0]}, opt);
    double s = median_seconds([&] { conv2d(x, w, b, 1, 1, c.groups); }, o.repeats, device);
    double flops = 2.0 * 64 * c.w[0] * 32 * 32 * c.w[1] * 9;
    os << std::setw(22) << c.name << std::setw(12) << std::fixed << std::setprecision(2) << s * 1e3
       << std::setw(12) << flops / s / 1e9 << "\n";
  }
  return 0;
}

int run_benchmark(const std::string& name, const BenchOptions& options, std::ostream& os) {
  static const std::map<std::string, std::function<int(const BenchOptions&, std::ostream&)>> benches = {
      {"matmul", bench_matmul},
      {"conv2d", bench_conv2d},
  };
  auto it = benches.find(name);
  if (it == benches.end()) {
    os << "unknown benchmark '" << name << "'; known:";
    for (const auto& [n, f] : benches) os << " " << n;
    os << "\n";
    return 2;
  }
  return it->second(options, os);
}

}  // namespace nala
