// The global counter-based generator (see tensor.h): state (seed, offset), draws by kernel.
#include <cmath>
#include <stdexcept>
#include <type_traits>

#include "kernels/kernels.h"
#include "tensor/tensor.h"

namespace nala {

static GeneratorState g_state{0x5eed, 0};

void manual_seed(uint64_t seed) { g_state = GeneratorState{seed, 0}; }
GeneratorState generator_state() { return g_state; }
void set_generator_state(const GeneratorState& state) { g_state = state; }

// Fills t with numbers from counters offset .. offset + numel - 1 and advances the offset.
template <typename F>
static Tensor draw(const Shape& shape, TensorOptions options, const char* op, F&& kernel) {
  if (!is_floating(options.dtype))
    throw std::invalid_argument(std::string(op) + ": dtype must be float32 or float64, got " +
                                dtype_name(options.dtype));
  bool requires_grad = options.requires_grad;
  options.requires_grad = false;
  Tensor t = empty(shape, options);
  uint64_t offset = g_state.offset;
  g_state.offset += static_cast<uint64_t>(t.numel());
  visit_dtype(t.dtype(), [&](auto zero) {
    using T = decltype(zero);
    if constexpr (std::is_floating_point_v<T>) kernel(t, offset, T{});
  });
  if (requires_grad) t.requires_grad_(true);
  return t;
}

Tensor uniform(const Shape& shape, double low, double high, TensorOptions options) {
  return draw(shape, options, "uniform", [&](Tensor& t, uint64_t offset, auto zero) {
    using T = decltype(zero);
    if (t.is_cuda()) {
#ifdef NALA_WITH_CUDA
      kernels::cuda::random_uniform<T>(t.numel(), g_state.seed, offset, T(low), T(high),
                                       t.data<T>());
#endif
    } else {
      kernels::cpu::random_uniform<T>(t.numel(), g_state.seed, offset, T(low), T(high),
                                      t.data<T>());
    }
  });
}

Tensor rand(const Shape& shape, TensorOptions options) { return uniform(shape, 0.0, 1.0, options); }

static Tensor normal(const Shape& shape, double std, TensorOptions options) {
  return draw(shape, options, "randn", [&](Tensor& t, uint64_t offset, auto zero) {
    using T = decltype(zero);
    if (t.is_cuda()) {
#ifdef NALA_WITH_CUDA
      kernels::cuda::random_normal<T>(t.numel(), g_state.seed, offset, T(0), T(std), t.data<T>());
#endif
    } else {
      kernels::cpu::random_normal<T>(t.numel(), g_state.seed, offset, T(0), T(std), t.data<T>());
    }
  });
}

Tensor randn(const Shape& shape, TensorOptions options) { return normal(shape, 1.0, options); }

Tensor trunc_normal(const Shape& shape, double std, double low, double high,
                    TensorOptions options) {
  // Draw on the host in double, redraw each value outside [low, high] from fresh counters.
  Tensor t = normal(shape, std, TensorOptions{DType::Float64, Device::CPU});
  double* p = t.data<double>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    while (p[i] < low || p[i] > high) p[i] = normal({1}, std, TensorOptions{DType::Float64}).item();
  }
  Tensor out = copy_tensor(t, options.device, options.dtype);
  if (options.requires_grad) out.requires_grad_(true);
  return out;
}

}  // namespace nala
