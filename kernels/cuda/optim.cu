// CUDA multi-tensor optimizer kernels: one launch covers up to TensorList::kMaxTensors
// parameters (grid.y picks the tensor, grid.x strides over its elements), so an optimizer step
// costs a few launches instead of a dozen per parameter.
#include <algorithm>

#include "kernels/cuda/common.h"
#include "kernels/kernels.h"

namespace nala::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// Each tensor's elements are shared by up to kBlocksPerTensor blocks (grid.x), so that a few
// large tensors among many small ones still spread over the whole GPU; blocks of a small tensor
// that find no element exit at once.
constexpr int kBlocksPerTensor = 64;

unsigned blocks_per_tensor(const int64_t* sizes, int count) {
  int64_t largest = 0;
  for (int t = 0; t < count; ++t) largest = std::max(largest, sizes[t]);
  return std::min<unsigned>(num_blocks(largest, kThreads), kBlocksPerTensor);
}

// How many blocks of tensor_square_sums_kernel have handed in their partial sum.
__device__ unsigned int square_sums_blocks_done = 0;

// Block (b, t): the sum of the squares of its grid-stride share of arrays[0][t], in double; the
// blocks' sums, in split_scratch, are added in block order by the last block
// (sum_in_last_block: the result is the same on every run), which adds the total to *out.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    tensor_square_sums_kernel(TensorList<T> list, double* partials, T* out) {
  after_previous_kernel();
  const int t = blockIdx.y;
  const T* x = list.arrays[0][t];
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  double s = 0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < list.sizes[t];
       i += step)
    s += double(x[i]) * double(x[i]);
  sum_in_last_block(block_reduce<SumOp<double>>(s), partials, square_sums_blocks_done,
                    [&](double total) { *out += static_cast<T>(total); });
}

// grid.y = tensor, grid-stride over its elements along grid.x.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    adamw_kernel(TensorList<T> list, AdamWStep s, const T* grad_scale) {
  after_previous_kernel();
  const int t = blockIdx.y;
  T* p = list.arrays[0][t];
  const T* g = list.arrays[1][t];
  T* m = list.arrays[2][t];
  T* v = list.arrays[3][t];
  const T scale = grad_scale ? *grad_scale : T(1);
  const T lr = T(s.lr), b1 = T(s.beta1), b2 = T(s.beta2), eps = T(s.eps);
  const T inv_bc1 = T(1 / s.bias_correction1), inv_bc2 = T(1 / s.bias_correction2);
  const T decay = T(1) - lr * list.weight_decay[t];
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < list.sizes[t];
       i += step) {
    const T gi = g[i] * scale;
    const T mi = b1 * m[i] + (T(1) - b1) * gi;
    const T vi = b2 * v[i] + (T(1) - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - lr * (mi * inv_bc1) / (sqrt(vi * inv_bc2) + eps);
  }
}

}  // namespace

template <typename T>
void sum_of_squares(const TensorList<T>& list, T* out) {
  if (list.count == 0) return;
  const dim3 grid(blocks_per_tensor(list.sizes, list.count), list.count);
  static_assert(TensorList<T>::kMaxTensors * kBlocksPerTensor <= kSplitScratchElements);
  double* partials = split_scratch_address();
  launch_kernel(tensor_square_sums_kernel<T>, grid, kThreads, 0, list, partials, out);
}

template <typename T>
void adamw_update(const TensorList<T>& list, const AdamWStep& step, const T* grad_scale) {
  if (list.count == 0) return;
  const dim3 grid(blocks_per_tensor(list.sizes, list.count), list.count);
  launch_kernel(adamw_kernel<T>, grid, kThreads, 0, list, step, grad_scale);
}

template void sum_of_squares<float>(const TensorList<float>&, float*);
template void sum_of_squares<double>(const TensorList<double>&, double*);
template void adamw_update<float>(const TensorList<float>&, const AdamWStep&, const float*);
template void adamw_update<double>(const TensorList<double>&, const AdamWStep&, const double*);

}  // namespace nala::kernels::cuda
