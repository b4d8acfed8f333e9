// Reductions over the middle axis of x viewed as (outer, r, inner): reduce_middle_axis
// (common.h). inner == 1 reduces rows of length r, a warp or a block per row, each thread
// combining a strided slice of the row and the team finishing with shuffles; inner > 1 reduces
// columns, coalesced over inner. Long reductions are split over several blocks, then combined.
#include <stdexcept>

#include "kernels/cuda/common.h"
#include "kernels/kernels.h"

namespace nala::kernels::cuda {

template <typename T>
void reduce(ReduceOp op, int64_t outer, int64_t r, int64_t inner, const T* x, T* y) {
  switch (op) {
    case ReduceOp::Sum:
      return reduce_middle_axis<SumOp<T>>(outer, r, inner, MiddleAxisElement<T>{x, r, inner}, y);
    case ReduceOp::Max:
      return reduce_middle_axis<MaxOp<T>>(outer, r, inner, MiddleAxisElement<T>{x, r, inner}, y);
  }
  throw std::invalid_argument("reduce: unknown ReduceOp");
}

template void reduce<float>(ReduceOp, int64_t, int64_t, int64_t, const float*, float*);
template void reduce<double>(ReduceOp, int64_t, int64_t, int64_t, const double*, double*);

}  // namespace nala::kernels::cuda
