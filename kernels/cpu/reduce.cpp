// CPU reduction: y[o, i] = reduce_j x[o, j, i] over a contiguous (outer, r, inner) array.
#include <algorithm>
#include <limits>

#include "kernels/cpu/scratch.h"
#include "kernels/kernels.h"

namespace nala::kernels::cpu {

struct ChunkPartials {};  // thread_scratch's tags
struct BlockSums {};

// max that propagates NaN (a NaN anywhere in the row makes the result NaN).
static inline double max_nan(double acc, double v) { return (v > acc || v != v) ? v : acc; }

template <typename T>
void reduce(ReduceOp op, int64_t outer, int64_t r, int64_t inner, const T* x, T* y) {
  // Sums accumulate in double (float rows of 10^6 elements keep full float accuracy).
  using Acc = double;
  const bool sum = op == ReduceOp::Sum;
  const Acc init = sum ? Acc(0) : -std::numeric_limits<Acc>::infinity();
  if (outer * inner == 0) return;
  // Tasks: an o, a chunk of at most kChunkRows rows j and a block of at most kBlockColumns columns
  // i. A task walks its rows in order, adding them to running sums of its columns; with several
  // chunks the sums are partials (in the calling thread's scratch, shared by the loop's threads:
  // scratch.h), combined in chunk order after the loop, else they go straight to y. Chunks and
  // blocks spread any shape over the threads (outer = 1: a bias gradient over dim 0, or a whole
  // tensor's sum), and being of fixed sizes, not one per thread, they keep the result independent
  // of the thread count.
  constexpr int64_t kChunkRows = 1024, kBlockColumns = 1024;
  const int64_t chunks = std::max<int64_t>(1, (r + kChunkRows - 1) / kChunkRows);  // r = 0: init
  Acc* partial = chunks > 1 ? thread_scratch<ChunkPartials, Acc>(outer * chunks * inner) : nullptr;
  if (inner == 1) {
    // One column: a chunk's rows are contiguous, summed in vector lanes (several running sums,
    // not one chain of dependent adds).
#pragma omp parallel for if (outer * r > (1 << 15))
    for (int64_t task = 0; task < outer * chunks; ++task) {
      const int64_t o = chunks == 1 ? task : task / chunks, chunk = task - o * chunks;
      const int64_t j0 = chunk * kChunkRows, rows = std::min(r - j0, kChunkRows);
      const T* column = x + o * r + j0;
      Acc a = init;
      if (sum) {
#pragma omp simd reduction(+ : a)
        for (int64_t j = 0; j < rows; ++j) a += column[j];
      } else {
        for (int64_t j = 0; j < rows; ++j) a = max_nan(a, column[j]);
      }
      if (chunks == 1)
        y[o] = static_cast<T>(a);
      else
        partial[task] = a;  // (o * chunks + chunk) * inner
    }
  } else {
    const int64_t blocks = (inner + kBlockColumns - 1) / kBlockColumns;
#pragma omp parallel for if (outer * r * inner > (1 << 15))
    for (int64_t task = 0; task < outer * chunks * blocks; ++task) {
      const int64_t row_task = task / blocks, o = row_task / chunks, chunk = row_task - o * chunks;
      const int64_t i0 = (task - row_task * blocks) * kBlockColumns;
      const int64_t width = std::min(kBlockColumns, inner - i0);
      const int64_t j0 = chunk * kChunkRows, j1 = std::min(r, j0 + kChunkRows);
      Acc* __restrict acc = chunks > 1 ? partial + row_task * inner + i0
                                       : thread_scratch<BlockSums, Acc>(kBlockColumns);
      std::fill(acc, acc + width, init);
      for (int64_t j = j0; j < j1; ++j) {
        const T* row = x + (o * r + j) * inner + i0;
        if (sum)
          for (int64_t i = 0; i < width; ++i) acc[i] += row[i];
        else
          for (int64_t i = 0; i < width; ++i) acc[i] = max_nan(acc[i], row[i]);
      }
      if (chunks == 1)
        for (int64_t i = 0; i < width; ++i) y[o * inner + i0 + i] = static_cast<T>(acc[i]);
    }
  }
  if (chunks == 1) return;
#pragma omp parallel for if (outer * chunks * inner > (1 << 15))
  for (int64_t k = 0; k < outer * inner; ++k) {
    const Acc* first = partial + k / inner * chunks * inner + k % inner;
    Acc total = first[0];
    for (int64_t c = 1; c < chunks; ++c)
      total = sum ? total + first[c * inner] : max_nan(total, first[c * inner]);
    y[k] = static_cast<T>(total);
  }
}

template void reduce<float>(ReduceOp, int64_t, int64_t, int64_t, const float*, float*);
template void reduce<double>(ReduceOp, int64_t, int64_t, int64_t, const double*, double*);

}  // namespace nala::kernels::cpu
