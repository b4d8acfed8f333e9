// CPU reduction: y[o, i] = reduce_j x[o, j, i] over a contiguous (outer, r, inner) array.
#include <algorithm>
#include <limits>
#include <vector>

#include "kernels/kernels.h"

namespace nala::kernels::cpu {

// max that propagates NaN (a NaN anywhere in the row makes the result NaN).
static inline double max_nan(double acc, double v) { return (v > acc || v != v) ? v : acc; }

template <typename T>
void reduce(ReduceOp op, int64_t outer, int64_t r, int64_t inner, const T* x, T* y) {
  // Sums accumulate in double (float rows of 10^6 elements keep full float accuracy).
  using Acc = double;
  const Acc init = op == ReduceOp::Sum ? Acc(0) : -std::numeric_limits<Acc>::infinity();
  if (inner == 1) {
#pragma omp parallel for if (outer * r > (1 << 15))
    for (int64_t o = 0; o < outer; ++o) {
      const T* row = x + o * r;
      Acc acc = init;
      if (op == ReduceOp::Sum)
        for (int64_t j = 0; j < r; ++j) acc += row[j];
      else
        for (int64_t j = 0; j < r; ++j) acc = max_nan(acc, row[j]);
      y[o] = static_cast<T>(acc);
    }
    return;
  }
  // inner > 1: walk each (o, j) row of `inner` contiguous elements, accumulating into y.
#pragma omp parallel for if (outer * r * inner > (1 << 15))
  for (int64_t o = 0; o < outer; ++o) {
    std::vector<Acc> acc(inner, init);
    for (int64_t j = 0; j < r; ++j) {
      const T* row = x + (o * r + j) * inner;
      if (op == ReduceOp::Sum)
        for (int64_t i = 0; i < inner; ++i) acc[i] += row[i];
      else
        for (int64_t i = 0; i < inner; ++i) acc[i] = max_nan(acc[i], row[i]);
    }
    for (int64_t i = 0; i < inner; ++i) y[o * inner + i] = static_cast<T>(acc[i]);
  }
}

template void reduce<float>(ReduceOp, int64_t, int64_t, int64_t, const float*, float*);
template void reduce<double>(ReduceOp, int64_t, int64_t, int64_t, const double*, double*);

}  // namespace nala::kernels::cpu
