// Branch-free elementary functions for the CPU kernels' float paths. They are evaluated in double
// with no calls and no branches, so that a loop over them vectorises (a libm call per element
// does not), and they stay within about an ulp of float (attention's query power) or two (GELU).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace nala::kernels::cpu {

// 2^y, for y clamped to [-1000, 1000] (a NaN counts as -1000: callers whose result must stay NaN
// carry the NaN in another factor):
//   2^y = 2^i e^(r ln 2),  i = round(y),  |r ln 2| <= 0.35,  e^x by its Taylor series to x^9/9!
// (the first term left out is below 2e-11 of the sum).
inline double exp2_branchless(double unclamped) {
  const double y = unclamped > -1000.0 ? std::min(unclamped, 1000.0) : -1000.0;
  // Round to the nearest integer without a call: adding 1.5 * 2^52 leaves no fraction bits.
  const double i = (y + 6755399441055744.0) - 6755399441055744.0;
  const double x = (y - i) * 0.6931471805599453;
  double expx = 1 / 362880.0;  // e^x = sum_k x^k / k!, k <= 9, by Horner's rule
  for (const double c :
       {1 / 40320.0, 1 / 5040.0, 1 / 720.0, 1 / 120.0, 1 / 24.0, 1 / 6.0, 0.5, 1.0, 1.0})
    expx = expx * x + c;
  const uint64_t scale_bits = static_cast<uint64_t>(static_cast<int64_t>(i) + 1023) << 52;
  double scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  return expx * scale;
}

// e^y = 2^(y log2 e), as above (y log2 e clamped to [-1000, 1000]).
inline double exp_branchless(double y) { return exp2_branchless(y * 1.4426950408889634); }

// erfc(z) for z >= 0 within 1.2e-7 of its value (relative), from the Chebyshev fit of Numerical
// Recipes (2nd ed., section 6.2, erfcc):
//   t = 1 / (1 + z / 2),  erfc(z) = t exp(-z^2 - 1.26551223 + t (1.00002368 + t (0.37409196 +
//   ...))).
inline double erfc_nonnegative(double z) {
  const double t = 1 / (1 + 0.5 * z);
  double poly = 0.17087277;
  for (const double c : {-0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418,
                         0.37409196, 1.00002368, -1.26551223})
    poly = poly * t + c;
  return t * exp_branchless(poly - z * z);
}

}  // namespace nala::kernels::cpu
