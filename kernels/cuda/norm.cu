// Layer norm (a warp or block per row) and batch norm (a block per channel). Each pass is one
// fused kernel; layer norm's dgamma / dbeta are column sums over the rows (reduce_middle_axis).
#include <cmath>

#include "kernels/cuda/common.h"
#include "kernels/kernels.h"

namespace nala::kernels::cuda {

namespace {

// gamma[c], or 1 when there is no gamma; beta[c], or 0 when there is no beta.
template <typename T>
__device__ T scale_at(const T* gamma, int64_t c) {
  return gamma != nullptr ? gamma[c] : T(1);
}

template <typename T>
__device__ T shift_at(const T* beta, int64_t c) {
  return beta != nullptr ? beta[c] : T(0);
}

// ---- layer norm ----

// Per row: mean = sum(x) / cols, var = sum((x - mean)^2) / cols (two passes, no cancellation),
// rstd = 1 / sqrt(var + eps), y = (x - mean) rstd gamma + beta.
template <typename T, typename Team>
__global__ void layer_norm_forward_kernel(Team team, int64_t rows, int64_t cols, const T* x,
                                          const T* gamma, const T* beta, T eps, T* y, T* mean,
                                          T* rstd) {
  for (int64_t row = team.first_row(); row < rows; row += team.row_stride()) {
    const T* x_row = x + row * cols;
    T* y_row = y + row * cols;
    T sum = T(0);
    for (int64_t c = team.rank(); c < cols; c += team.size()) sum += x_row[c];
    const T row_mean = team_reduce<SumOp<T>>(team, sum) / T(cols);
    T squares = T(0);
    for (int64_t c = team.rank(); c < cols; c += team.size()) {
      const T centered = x_row[c] - row_mean;
      squares += centered * centered;
    }
    const T var = team_reduce<SumOp<T>>(team, squares) / T(cols);
    const T row_rstd = T(1) / sqrt(var + eps);
    for (int64_t c = team.rank(); c < cols; c += team.size())
      y_row[c] = (x_row[c] - row_mean) * row_rstd * scale_at(gamma, c) + shift_at(beta, c);
    if (team.rank() == 0) {
      mean[row] = row_mean;
      rstd[row] = row_rstd;
    }
  }
}

// Per row, with xhat = (x - mean) rstd and g = dy gamma:
//   dx = rstd (g - mean_cols(g) - xhat mean_cols(g xhat)).
template <typename T, typename Team>
__global__ void layer_norm_backward_dx_kernel(Team team, int64_t rows, int64_t cols, const T* x,
                                              const T* dy, const T* gamma, const T* mean,
                                              const T* rstd, T* dx) {
  for (int64_t row = team.first_row(); row < rows; row += team.row_stride()) {
    const T* x_row = x + row * cols;
    const T* dy_row = dy + row * cols;
    T* dx_row = dx + row * cols;
    const T row_mean = mean[row], row_rstd = rstd[row];
    T sum_g = T(0), sum_g_xhat = T(0);
    for (int64_t c = team.rank(); c < cols; c += team.size()) {
      const T xhat = (x_row[c] - row_mean) * row_rstd;
      const T g = dy_row[c] * scale_at(gamma, c);
      sum_g += g;
      sum_g_xhat += g * xhat;
    }
    const T mean_g = team_reduce<SumOp<T>>(team, sum_g) / T(cols);
    const T mean_g_xhat = team_reduce<SumOp<T>>(team, sum_g_xhat) / T(cols);
    for (int64_t c = team.rank(); c < cols; c += team.size()) {
      const T xhat = (x_row[c] - row_mean) * row_rstd;
      const T g = dy_row[c] * scale_at(gamma, c);
      dx_row[c] = row_rstd * (g - mean_g - xhat * mean_g_xhat);
    }
  }
}

// dy[row, col] xhat[row, col], the terms of dgamma[col], as a (1, rows, cols) value for
// reduce_middle_axis.
template <typename T>
struct DyTimesXhat {
  const T* x;
  const T* dy;
  const T* mean;
  const T* rstd;
  int64_t cols;
  __device__ T operator()(int64_t, int64_t row, int64_t col) const {
    const int64_t i = row * cols + col;
    return dy[i] * (x[i] - mean[row]) * rstd[row];
  }
};

// ---- batch norm ----

constexpr int kChannelBlockThreads = 512;

// Element i < batch * spatial of channel c in x (batch, channels, spatial).
__device__ int64_t channel_element(int64_t i, int64_t c, int64_t channels, int64_t spatial) {
  return (i / spatial * channels + c) * spatial + i % spatial;
}

// One block per channel c, over its count = batch * spatial elements:
//   mean = sum(x) / count, var = sum((x - mean)^2) / count, invstd = 1 / sqrt(var + eps),
//   y = (x - mean) invstd gamma + beta, and the running statistics' update.
template <typename T>
__global__ void batch_norm_forward_train_kernel(int64_t batch, int64_t channels, int64_t spatial,
                                                const T* x, const T* gamma, const T* beta, T eps,
                                                T momentum, T* running_mean, T* running_var, T* y,
                                                T* mean, T* invstd) {
  const int64_t count = batch * spatial;
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    T sum = T(0);
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x)
      sum += x[channel_element(i, c, channels, spatial)];
    const T channel_mean = block_reduce<SumOp<T>>(sum) / T(count);
    T squares = T(0);
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
      const T centered = x[channel_element(i, c, channels, spatial)] - channel_mean;
      squares += centered * centered;
    }
    const T var = block_reduce<SumOp<T>>(squares) / T(count);
    const T channel_invstd = T(1) / sqrt(var + eps);
    const T scale = scale_at(gamma, c) * channel_invstd, shift = shift_at(beta, c);
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
      const int64_t e = channel_element(i, c, channels, spatial);
      y[e] = (x[e] - channel_mean) * scale + shift;
    }
    if (threadIdx.x == 0) {
      mean[c] = channel_mean;
      invstd[c] = channel_invstd;
      if (running_mean != nullptr) {
        const T unbiased_var = var * T(count) / T(count - 1);
        running_mean[c] = (T(1) - momentum) * running_mean[c] + momentum * channel_mean;
        running_var[c] = (T(1) - momentum) * running_var[c] + momentum * unbiased_var;
      }
    }
  }
}

// y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta, one thread per element.
template <typename T>
struct BatchNormEval {
  int64_t channels, spatial;
  const T* x;
  const T* gamma;
  const T* beta;
  const T* running_mean;
  const T* running_var;
  T eps;
  T* y;
  __device__ void operator()(int64_t i) const {
    const int64_t c = i / spatial % channels;
    y[i] = (x[i] - running_mean[c]) / sqrt(running_var[c] + eps) * scale_at(gamma, c) +
           shift_at(beta, c);
  }
};

// One block per channel, over its count elements, with xhat = (x - mean) invstd:
//   dgamma = sum(dy xhat), dbeta = sum(dy),
//   dx = gamma invstd (dy - dbeta / count - xhat dgamma / count).
template <typename T>
__global__ void batch_norm_backward_kernel(int64_t batch, int64_t channels, int64_t spatial,
                                           const T* x, const T* dy, const T* gamma, const T* mean,
                                           const T* invstd, T* dx, T* dgamma, T* dbeta) {
  const int64_t count = batch * spatial;
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    const T channel_mean = mean[c], channel_invstd = invstd[c];
    T sum_dy = T(0), sum_dy_xhat = T(0);
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
      const int64_t e = channel_element(i, c, channels, spatial);
      sum_dy += dy[e];
      sum_dy_xhat += dy[e] * (x[e] - channel_mean) * channel_invstd;
    }
    sum_dy = block_reduce<SumOp<T>>(sum_dy);
    sum_dy_xhat = block_reduce<SumOp<T>>(sum_dy_xhat);
    const T mean_dy = sum_dy / T(count), mean_dy_xhat = sum_dy_xhat / T(count);
    const T scale = scale_at(gamma, c) * channel_invstd;
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
      const int64_t e = channel_element(i, c, channels, spatial);
      const T xhat = (x[e] - channel_mean) * channel_invstd;
      dx[e] = scale * (dy[e] - mean_dy - xhat * mean_dy_xhat);
    }
    if (threadIdx.x == 0) {
      if (dgamma != nullptr) dgamma[c] = sum_dy_xhat;
      if (dbeta != nullptr) dbeta[c] = sum_dy;
    }
  }
}

}  // namespace

template <typename T>
void layer_norm_forward(int64_t rows, int64_t cols, const T* x, const T* gamma, const T* beta,
                        T eps, T* y, T* mean, T* rstd) {
  launch_per_row(rows, cols, [&](auto team, unsigned blocks, int threads) {
    layer_norm_forward_kernel<<<blocks, threads, 0, stream()>>>(team, rows, cols, x, gamma, beta,
                                                                eps, y, mean, rstd);
  });
}

template <typename T>
void layer_norm_backward(int64_t rows, int64_t cols, const T* x, const T* dy, const T* gamma,
                         const T* mean, const T* rstd, T* dx, T* dgamma, T* dbeta) {
  launch_per_row(rows, cols, [&](auto team, unsigned blocks, int threads) {
    layer_norm_backward_dx_kernel<<<blocks, threads, 0, stream()>>>(team, rows, cols, x, dy, gamma,
                                                                    mean, rstd, dx);
  });
  if (dgamma != nullptr)
    reduce_middle_axis<SumOp<T>>(1, rows, cols, DyTimesXhat<T>{x, dy, mean, rstd, cols}, dgamma);
  if (dbeta != nullptr)
    reduce_middle_axis<SumOp<T>>(1, rows, cols, MiddleAxisElement<T>{dy, rows, cols}, dbeta);
}

template <typename T>
void batch_norm_forward_train(int64_t batch, int64_t channels, int64_t spatial, const T* x,
                              const T* gamma, const T* beta, T eps, T momentum, T* running_mean,
                              T* running_var, T* y, T* mean, T* invstd) {
  if (channels <= 0) return;
  batch_norm_forward_train_kernel<<<num_blocks(channels, 1), kChannelBlockThreads, 0, stream()>>>(
      batch, channels, spatial, x, gamma, beta, eps, momentum, running_mean, running_var, y, mean,
      invstd);
  NALA_CUDA_CHECK_LAUNCH();
}

template <typename T>
void batch_norm_forward_eval(int64_t batch, int64_t channels, int64_t spatial, const T* x,
                             const T* gamma, const T* beta, const T* running_mean,
                             const T* running_var, T eps, T* y) {
  for_each_index(batch * channels * spatial, BatchNormEval<T>{channels, spatial, x, gamma, beta,
                                                              running_mean, running_var, eps, y});
}

template <typename T>
void batch_norm_backward(int64_t batch, int64_t channels, int64_t spatial, const T* x, const T* dy,
                         const T* gamma, const T* mean, const T* invstd, T* dx, T* dgamma,
                         T* dbeta) {
  if (channels <= 0) return;
  batch_norm_backward_kernel<<<num_blocks(channels, 1), kChannelBlockThreads, 0, stream()>>>(
      batch, channels, spatial, x, dy, gamma, mean, invstd, dx, dgamma, dbeta);
  NALA_CUDA_CHECK_LAUNCH();
}

#define NALA_INSTANTIATE(T)                                                                      \
  template void layer_norm_forward<T>(int64_t, int64_t, const T*, const T*, const T*, T, T*, T*, \
                                      T*);                                                       \
  template void layer_norm_backward<T>(int64_t, int64_t, const T*, const T*, const T*, const T*, \
                                       const T*, T*, T*, T*);                                    \
  template void batch_norm_forward_train<T>(int64_t, int64_t, int64_t, const T*, const T*,       \
                                            const T*, T, T, T*, T*, T*, T*, T*);                 \
  template void batch_norm_forward_eval<T>(int64_t, int64_t, int64_t, const T*, const T*,        \
                                           const T*, const T*, const T*, T, T*);                 \
  template void batch_norm_backward<T>(int64_t, int64_t, int64_t, const T*, const T*, const T*,  \
                                       const T*, const T*, T*, T*, T*);
NALA_INSTANTIATE(float)
NALA_INSTANTIATE(double)
#undef NALA_INSTANTIATE

}  // namespace nala::kernels::cuda
