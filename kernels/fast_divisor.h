// Division by a divisor known before a kernel runs, as a multiply-high, an add and a shift
// instead of the ~25 instructions of a GPU integer division (Granlund and Montgomery, 1994).
// For 0 <= n < 2^31 and d >= 1:
//   shift = ceil(log2 d),  multiplier = floor(2^32 (2^shift - d) / d) + 1,
//   n / d = (umulhi(n, multiplier) + n) >> shift,
// where the sum stays below 2^32 because umulhi(n, multiplier) < n < 2^31. The CUDA kernels set
// it up on the host and divide on the device; the host path is what the tests check against /.
#pragma once

#include <cstdint>

#include "kernels/host_device.h"

namespace nala::kernels {

struct FastDivisor {
  int divisor = 1;
  uint32_t multiplier = 1, shift = 0;
  FastDivisor() = default;
  explicit FastDivisor(int d) : divisor(d) {
    while ((uint64_t(1) << shift) < static_cast<uint64_t>(d)) ++shift;
    multiplier = static_cast<uint32_t>((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d) / d + 1);
  }
  // n / divisor, for 0 <= n < 2^31.
  NALA_HOST_DEVICE int divide(int n) const {
    const uint32_t u = static_cast<uint32_t>(n);
#ifdef __CUDA_ARCH__
    const uint32_t high = __umulhi(u, multiplier);
#else
    const uint32_t high = static_cast<uint32_t>((static_cast<uint64_t>(u) * multiplier) >> 32);
#endif
    return static_cast<int>((high + u) >> shift);
  }
};

}  // namespace nala::kernels
