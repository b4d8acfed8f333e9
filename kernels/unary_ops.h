// The unary ops, each written once for both backends (PyTorch's derivatives.yaml in miniature):
// a functor with the value f(x) and the derivative f'(x) given x and y = f(x) side by side.
// visit_unary_op chooses one per call, so that each op's loop is its own (it vectorises on the
// CPU where the function allows). The elementary functions are std's, which CUDA provides in
// device code too; GELU's Phi and phi come from the backend's Math:
//   Math::gelu_cdf(x) = Phi(x) = (1 + erf(x / sqrt 2)) / 2,
//   Math::gelu_density(x) = phi(x) = e^(-x^2/2) / sqrt(2 pi),
// StdMath's (below) on CUDA and for double on the CPU, which computes them in float by
// branch-free series that vectorise (CpuMath, kernels/cpu/elementwise.cpp).
#pragma once

#include <cmath>
#include <stdexcept>

#include "kernels/host_device.h"
#include "kernels/kernels.h"

namespace nala::kernels::unary {

constexpr double kSqrt2OverPi = 0.79788456080286535588;  // sqrt(2 / pi)
constexpr double kInvSqrt2 = 0.70710678118654752440;     // 1 / sqrt(2)
constexpr double kInvSqrt2Pi = 0.39894228040143267794;   // 1 / sqrt(2 pi)
constexpr double kGeluCubic = 0.044715;                  // GELU's tanh approximation

// Phi and phi by std's erf and exp.
struct StdMath {
  template <typename T>
  NALA_HOST_DEVICE static T gelu_cdf(T x) {
    return T(0.5) * (T(1) + std::erf(x * T(kInvSqrt2)));
  }
  template <typename T>
  NALA_HOST_DEVICE static T gelu_density(T x) {
    return T(kInvSqrt2Pi) * std::exp(T(-0.5) * x * x);
  }
};

// 1 / (1 + e^-x)
template <typename T>
NALA_HOST_DEVICE T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

template <typename T>
struct Neg {
  NALA_HOST_DEVICE static T value(T x) { return -x; }
  NALA_HOST_DEVICE static T derivative(T, T) { return T(-1); }
};

// (e^x)' = e^x
template <typename T>
struct Exp {
  NALA_HOST_DEVICE static T value(T x) { return std::exp(x); }
  NALA_HOST_DEVICE static T derivative(T, T y) { return y; }
};

template <typename T>
struct Log {
  NALA_HOST_DEVICE static T value(T x) { return std::log(x); }
  NALA_HOST_DEVICE static T derivative(T x, T) { return T(1) / x; }
};

// (sqrt x)' = 1 / (2 sqrt x)
template <typename T>
struct Sqrt {
  NALA_HOST_DEVICE static T value(T x) { return std::sqrt(x); }
  NALA_HOST_DEVICE static T derivative(T, T y) { return T(0.5) / y; }
};

// |x|' = sign(x), 0 at 0
template <typename T>
struct Abs {
  NALA_HOST_DEVICE static T value(T x) { return std::abs(x); }
  NALA_HOST_DEVICE static T derivative(T x, T) { return T((x > T(0)) - (x < T(0))); }
};

template <typename T>
struct Tanh {
  NALA_HOST_DEVICE static T value(T x) { return std::tanh(x); }
  NALA_HOST_DEVICE static T derivative(T, T y) { return T(1) - y * y; }
};

// s' = s (1 - s)
template <typename T>
struct Sigmoid {
  NALA_HOST_DEVICE static T value(T x) { return sigmoid(x); }
  NALA_HOST_DEVICE static T derivative(T, T y) { return y * (T(1) - y); }
};

// max(x, 0) written x < 0 ? 0 : x so that NaN passes through; the derivative is 0 at 0.
template <typename T>
struct Relu {
  NALA_HOST_DEVICE static T value(T x) { return x < T(0) ? T(0) : x; }
  NALA_HOST_DEVICE static T derivative(T x, T) { return x > T(0) ? T(1) : T(0); }
};

// f = x/2 (1 + t),  t = tanh u,  u = sqrt(2/pi) (x + 0.044715 x^3)
// f' = (1 + t)/2 + x/2 (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
template <typename T>
struct GeluTanh {
  NALA_HOST_DEVICE static T tanh_u(T x) {
    return std::tanh(T(kSqrt2OverPi) * (x + T(kGeluCubic) * x * x * x));
  }
  NALA_HOST_DEVICE static T value(T x) { return T(0.5) * x * (T(1) + tanh_u(x)); }
  NALA_HOST_DEVICE static T derivative(T x, T) {
    const T t = tanh_u(x);
    const T du_dx = T(kSqrt2OverPi) * (T(1) + T(3 * kGeluCubic) * x * x);
    return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du_dx;
  }
};

// f = x Phi(x),  f' = Phi(x) + x phi(x)
template <typename T, typename Math>
struct GeluErf {
  NALA_HOST_DEVICE static T value(T x) { return x * Math::gelu_cdf(x); }
  NALA_HOST_DEVICE static T derivative(T x, T) {
    return Math::gelu_cdf(x) + x * Math::gelu_density(x);
  }
};

// f = x s = x / (1 + e^-x),  s = sigmoid(x);  f' = s (1 + x (1 - s))
template <typename T>
struct Silu {
  NALA_HOST_DEVICE static T value(T x) { return x / (T(1) + std::exp(-x)); }
  NALA_HOST_DEVICE static T derivative(T x, T) {
    const T s = sigmoid(x);
    return s * (T(1) + x * (T(1) - s));
  }
};

// Calls visit(Op<T>{}) with the functor of `op` (GeluErf<T, Math>, which needs the backend's
// Phi and phi), on the host.
template <typename T, typename Math, typename Visit>
void visit_unary_op(UnaryOp op, Visit visit) {
  switch (op) {
    case UnaryOp::Neg:
      return visit(Neg<T>{});
    case UnaryOp::Exp:
      return visit(Exp<T>{});
    case UnaryOp::Log:
      return visit(Log<T>{});
    case UnaryOp::Sqrt:
      return visit(Sqrt<T>{});
    case UnaryOp::Abs:
      return visit(Abs<T>{});
    case UnaryOp::Tanh:
      return visit(Tanh<T>{});
    case UnaryOp::Sigmoid:
      return visit(Sigmoid<T>{});
    case UnaryOp::Relu:
      return visit(Relu<T>{});
    case UnaryOp::GeluTanh:
      return visit(GeluTanh<T>{});
    case UnaryOp::GeluErf:
      return visit(GeluErf<T, Math>{});
    case UnaryOp::Silu:
      return visit(Silu<T>{});
  }
  throw std::invalid_argument("unary op: unknown UnaryOp");
}

}  // namespace nala::kernels::unary
