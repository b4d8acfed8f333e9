// Helpers shared by the test suites.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <iostream>
#include <vector>

#include "autograd/ops.h"
#include "tensor/tensor.h"
#ifdef NALA_WITH_CUDA
#include "kernels/kernels.h"
#endif

namespace nala::test {

// True when CUDA tests can run; otherwise prints (once per suite) why they are skipped.
inline bool cuda_available() {
#ifdef NALA_WITH_CUDA
  static const bool available = kernels::cuda::is_available();
  if (!available) {
    static bool said = false;
    if (!said) std::cout << "[skip] no CUDA device found: CUDA tests of this suite are skipped\n";
    said = true;
  }
  return available;
#else
  static bool said = false;
  if (!said) std::cout << "[skip] built without CUDA: CUDA tests of this suite are skipped\n";
  said = true;
  return false;
#endif
}

// The devices to run a test on: CPU, plus CUDA when available.
inline std::vector<Device> devices() {
  std::vector<Device> d{Device::CPU};
  if (cuda_available()) d.push_back(Device::CUDA);
  return d;
}

// Full float32 GEMMs and attention products on CUDA for its scope (TF32 tensor cores, on by
// default, round operands to 10 mantissa bits: within 2^-11 = 5e-4 relative, too coarse for
// comparisons with the CPU at 1e-4).
class FullFloat32Guard {
 public:
  FullFloat32Guard() {}  // user-provided: a guard variable is not "unused"
#ifdef NALA_WITH_CUDA
 private:
  kernels::cuda::Tf32Scope full_float32_{false};
#endif
};

// Max |a - b| / max(|b|, 1) over all elements; shapes must match.
inline double max_rel_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    double d = std::abs(x[i] - y[i]) / std::max(std::abs(y[i]), 1.0);
    if (!(d <= worst)) worst = std::isnan(d) ? INFINITY : d;
  }
  return worst;
}

// max |a - b| / max |b|: the error relative to the result's largest magnitude.
inline double scaled_max_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double largest = 0, worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    largest = std::max(largest, std::abs(y[i]));
    const double d = std::abs(x[i] - y[i]);
    if (!(d <= worst)) worst = std::isnan(d) ? INFINITY : d;  // a NaN is the worst difference
  }
  return worst / largest;
}

// Random float tensor with a fixed seed.
inline Tensor random_tensor(const Shape& shape, uint64_t seed, DType dtype = DType::Float32,
                            Device device = Device::CPU, double low = -1, double high = 1) {
  GeneratorState saved = generator_state();
  manual_seed(seed);
  Tensor t = uniform(shape, low, high, TensorOptions{dtype, device});
  set_generator_state(saved);
  return t;
}

}  // namespace nala::test
