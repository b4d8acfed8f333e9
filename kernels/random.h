// Counter-based random numbers, shared by the CPU and the CUDA kernels so that both give the
// same values.
//
// Element i of the stream (seed, offset) depends on nothing but (seed, offset + i):
//   h = splitmix64(seed ^ splitmix64(offset + i))
// so every element can be computed on its own, in any order, on any device. A generator's whole
// state is the pair (seed, offset).
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/host_device.h"

namespace nala::kernels {

constexpr double kTwoPi = 6.283185307179586476925286766559;

// SplitMix64's output function: a bijection of 64-bit integers that mixes every input bit into
// every output bit.
NALA_HOST_DEVICE inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The 64 random bits of element `counter` (= offset + i) of the stream `seed`.
NALA_HOST_DEVICE inline uint64_t random_bits(uint64_t seed, uint64_t counter) {
  return splitmix64(seed ^ splitmix64(counter));
}

// The top 53 bits of h as u = (h >> 11) * 2^-53, exactly representable and in [0, 1).
NALA_HOST_DEVICE inline double unit_interval(uint64_t h) {
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

// Element `counter` of a uniform stream over [low, high): low + (high - low) u, in double. The
// explicit fma rounds once, the same way on every compiler (an implicit one, contracted by nvcc
// but not by the host compiler, would not).
template <typename T>
NALA_HOST_DEVICE inline T random_uniform_at(uint64_t seed, uint64_t counter, T low, T high) {
  const double u = unit_interval(random_bits(seed, counter));
  const double lo = static_cast<double>(low);
  return static_cast<T>(::fma(static_cast<double>(high) - lo, u, lo));
}

// Element `counter` of a normal stream, by Box-Muller from two uniforms of the one element:
// u1 from h and u2 from splitmix64(h),
//   z = sqrt(-2 ln(1 - u1)) cos(2 pi u2),   value = mean + stddev z.
// 1 - u1 is exact and lies in (0, 1], so the log is finite.
template <typename T>
NALA_HOST_DEVICE inline T random_normal_at(uint64_t seed, uint64_t counter, T mean, T stddev) {
  const uint64_t h = random_bits(seed, counter);
  const double u1 = unit_interval(h);
  const double u2 = unit_interval(splitmix64(h));
  const double z = ::sqrt(-2.0 * ::log(1.0 - u1)) * ::cos(kTwoPi * u2);
  return static_cast<T>(::fma(static_cast<double>(stddev), z, static_cast<double>(mean)));
}

}  // namespace nala::kernels
