// Reductions over the middle axis of x viewed as (outer, r, inner).
//
// inner == 1 reduces rows of length r: a warp or a block per row (launch_per_row), each thread
// combining a strided slice of the row and the team finishing with shuffles.
// inner > 1 reduces columns: reduce_columns (common.h), coalesced over inner.
#include <stdexcept>

#include "kernels/cuda/common.h"
#include "kernels/kernels.h"

namespace nala::kernels::cuda {

namespace {

// y[row] = Op over k < cols of x[row, k].
template <typename Op, typename T, typename Team>
__global__ void reduce_rows_kernel(Team team, int64_t rows, int64_t cols, const T* x, T* y) {
  for (int64_t row = team.first_row(); row < rows; row += team.row_stride()) {
    const T* x_row = x + row * cols;
    T acc = Op::identity();
    for (int64_t k = team.rank(); k < cols; k += team.size()) acc = Op::combine(acc, x_row[k]);
    acc = team_reduce<Op>(team, acc);
    if (team.rank() == 0) y[row] = acc;
  }
}

template <typename Op, typename T>
void reduce_middle_axis(int64_t outer, int64_t r, int64_t inner, const T* x, T* y) {
  if (inner == 1) {
    launch_per_row(outer, r, [&](auto team, unsigned blocks, int threads) {
      reduce_rows_kernel<Op><<<blocks, threads, 0, stream()>>>(team, outer, r, x, y);
    });
  } else {
    reduce_columns<Op>(outer, r, inner, MiddleAxisElement<T>{x, r, inner}, y);
  }
}

}  // namespace

template <typename T>
void reduce(ReduceOp op, int64_t outer, int64_t r, int64_t inner, const T* x, T* y) {
  switch (op) {
    case ReduceOp::Sum:
      return reduce_middle_axis<SumOp<T>>(outer, r, inner, x, y);
    case ReduceOp::Max:
      return reduce_middle_axis<MaxOp<T>>(outer, r, inner, x, y);
  }
  throw std::invalid_argument("reduce: unknown ReduceOp");
}

template void reduce<float>(ReduceOp, int64_t, int64_t, int64_t, const float*, float*);
template void reduce<double>(ReduceOp, int64_t, int64_t, int64_t, const double*, double*);

}  // namespace nala::kernels::cuda
