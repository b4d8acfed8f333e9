// CPU reduction: y[o, i] = reduce_j x[o, j, i] over a contiguous (outer, r, inner) array.
#include <algorithm>
#include <limits>

#include "kernels/cpu/scratch.h"
#include "kernels/kernels.h"

namespace nala::kernels::cpu {

struct ChunkPartials {};  // thread_scratch's tag

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
      if (op == ReduceOp::Sum) {
        // Several running sums (vector lanes) instead of one chain of dependent adds.
#pragma omp simd reduction(+ : acc)
        for (int64_t j = 0; j < r; ++j) acc += row[j];
      } else {
        for (int64_t j = 0; j < r; ++j) acc = max_nan(acc, row[j]);
      }
      y[o] = static_cast<T>(acc);
    }
    return;
  }
  // inner > 1: each task, an o and a chunk of at most kChunkRows rows j, walks its rows in order,
  // adding each contiguous row of `inner` into a partial row (of doubles); the partials are then
  // combined in chunk order. Chunks let a sum over dim 0 (outer = 1: a bias gradient) spread over
  // the threads, and being of a fixed size, not one per thread, they keep the result independent
  // of the thread count.
  constexpr int64_t kChunkRows = 1024;
  const int64_t chunks = std::max<int64_t>(1, (r + kChunkRows - 1) / kChunkRows);  // r = 0: init
  // The partials, in the calling thread's scratch, shared by the loop's threads (scratch.h).
  Acc* partial = thread_scratch<ChunkPartials, Acc>(outer * chunks * inner);
  std::fill(partial, partial + outer * chunks * inner, init);
#pragma omp parallel for if (outer * r * inner > (1 << 15))
  for (int64_t task = 0; task < outer * chunks; ++task) {
    const int64_t o = task / chunks, j0 = task % chunks * kChunkRows;
    Acc* acc = partial + task * inner;
    for (int64_t j = j0; j < std::min(r, j0 + kChunkRows); ++j) {
      const T* row = x + (o * r + j) * inner;
      if (op == ReduceOp::Sum)
        for (int64_t i = 0; i < inner; ++i) acc[i] += row[i];
      else
        for (int64_t i = 0; i < inner; ++i) acc[i] = max_nan(acc[i], row[i]);
    }
  }
#pragma omp parallel for if (outer * chunks * inner > (1 << 15))
  for (int64_t o = 0; o < outer; ++o) {
    const Acc* first = partial + o * chunks * inner;
    for (int64_t i = 0; i < inner; ++i) {
      Acc total = first[i];
      for (int64_t c = 1; c < chunks; ++c)
        total = op == ReduceOp::Sum ? total + first[c * inner + i]
                                    : max_nan(total, first[c * inner + i]);
      y[o * inner + i] = static_cast<T>(total);
    }
  }
}

template void reduce<float>(ReduceOp, int64_t, int64_t, int64_t, const float*, float*);
template void reduce<double>(ReduceOp, int64_t, int64_t, int64_t, const double*, double*);

}  // namespace nala::kernels::cpu
