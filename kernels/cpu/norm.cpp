// Layer norm and batch norm on the CPU.
//
// Both normalise a set of values v (a row for layer norm; a channel's batch * spatial values for
// batch norm) to xhat = (v - mean) / sqrt(var + eps). Statistics are summed in double, and the
// variance takes a second pass over (v - mean)^2 rather than E[v^2] - mean^2, which loses every
// digit when the mean is large compared to the spread.
#include <algorithm>
#include <cmath>

#include "kernels/kernels.h"

namespace nala::kernels::cpu {
namespace {

// Work below this many elements stays on one thread.
constexpr int64_t kParallelWork = 1 << 15;

// Columns per thread in the column sums of layer_norm_backward.
constexpr int64_t kColumnBlock = 64;

// Mean and biased variance of the values v[p * stride + s] for p < planes, s < size (a row:
// planes = 1; a batch-norm channel: planes = batch, size = spatial, stride = channels *
// spatial), in two passes, summed in double.
struct Moments {
  double mean, var;
};
template <typename T>
Moments moments(const T* v, int64_t planes, int64_t size, int64_t stride) {
  const double count = static_cast<double>(planes * size);
  double sum = 0;
  for (int64_t p = 0; p < planes; ++p) {
    const T* plane = v + p * stride;
#pragma omp simd reduction(+ : sum)
    for (int64_t s = 0; s < size; ++s) sum += plane[s];
  }
  const double mean = sum / count;
  double squares = 0;
  for (int64_t p = 0; p < planes; ++p) {
    const T* plane = v + p * stride;
#pragma omp simd reduction(+ : squares)
    for (int64_t s = 0; s < size; ++s) {
      const double centred = plane[s] - mean;
      squares += centred * centred;
    }
  }
  return {mean, squares / count};
}

// The two sums of a normalisation backward over the same values, in double:
//   sum(g) and sum(g * xhat), xhat = (v - mean) * rstd, g = dy * scale.
struct GradientSums {
  double g, g_xhat;
};
template <typename T>
GradientSums gradient_sums(const T* v, const T* dy, const T* scale, int64_t planes, int64_t size,
                           int64_t stride, double mean, double rstd) {
  double sum_g = 0, sum_g_xhat = 0;
  for (int64_t p = 0; p < planes; ++p) {
    const T* v_plane = v + p * stride;
    const T* dy_plane = dy + p * stride;
#pragma omp simd reduction(+ : sum_g, sum_g_xhat)
    for (int64_t s = 0; s < size; ++s) {
      const double g = static_cast<double>(dy_plane[s]) * (scale ? scale[s] : T(1));
      sum_g += g;
      sum_g_xhat += g * (v_plane[s] - mean) * rstd;
    }
  }
  return {sum_g, sum_g_xhat};
}

}  // namespace

// Per row r: mean_r, rstd_r = 1 / sqrt(var_r + eps), y = (x - mean_r) rstd_r gamma + beta.
template <typename T>
void layer_norm_forward(int64_t rows, int64_t cols, const T* x, const T* gamma, const T* beta,
                        T eps, T* y, T* mean, T* rstd) {
#pragma omp parallel for if (rows * cols >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const T* x_row = x + r * cols;
    T* y_row = y + r * cols;
    const Moments m = moments(x_row, 1, cols, cols);
    const T row_mean = static_cast<T>(m.mean);
    const T row_rstd = static_cast<T>(1 / std::sqrt(m.var + eps));
    for (int64_t j = 0; j < cols; ++j) {
      y_row[j] =
          (x_row[j] - row_mean) * row_rstd * (gamma ? gamma[j] : T(1)) + (beta ? beta[j] : T(0));
    }
    mean[r] = row_mean;
    rstd[r] = row_rstd;
  }
}

// Per row, with xhat = (x - mean) rstd and g = dy gamma:
//   dx = rstd (g - mean_cols(g) - xhat mean_cols(g xhat)).
// Per column: dgamma = sum_rows(dy xhat), dbeta = sum_rows(dy), one thread per block of
// kColumnBlock columns so that no two threads write the same sum.
template <typename T>
void layer_norm_backward(int64_t rows, int64_t cols, const T* x, const T* dy, const T* gamma,
                         const T* mean, const T* rstd, T* dx, T* dgamma, T* dbeta) {
  const bool parallel = rows * cols >= kParallelWork;
#pragma omp parallel for if (parallel)
  for (int64_t r = 0; r < rows; ++r) {
    const T* x_row = x + r * cols;
    const T* dy_row = dy + r * cols;
    const GradientSums sums = gradient_sums(x_row, dy_row, gamma, 1, cols, cols, mean[r], rstd[r]);
    const T mean_g = static_cast<T>(sums.g / cols);
    const T mean_g_xhat = static_cast<T>(sums.g_xhat / cols);
    T* dx_row = dx + r * cols;
    for (int64_t j = 0; j < cols; ++j) {
      const T xhat = (x_row[j] - mean[r]) * rstd[r];
      const T g = dy_row[j] * (gamma ? gamma[j] : T(1));
      dx_row[j] = rstd[r] * (g - mean_g - xhat * mean_g_xhat);
    }
  }
  if (!dgamma && !dbeta) return;
  const int64_t blocks = (cols + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for if (parallel)
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t j0 = block * kColumnBlock;
    const int64_t width = std::min(kColumnBlock, cols - j0);
    double sum_dy_xhat[kColumnBlock] = {}, sum_dy[kColumnBlock] = {};
    for (int64_t r = 0; r < rows; ++r) {
      const T* x_row = x + r * cols + j0;
      const T* dy_row = dy + r * cols + j0;
      for (int64_t j = 0; j < width; ++j) {
        sum_dy_xhat[j] += static_cast<double>(dy_row[j]) * ((x_row[j] - mean[r]) * rstd[r]);
        sum_dy[j] += dy_row[j];
      }
    }
    for (int64_t j = 0; j < width; ++j) {
      if (dgamma) dgamma[j0 + j] = static_cast<T>(sum_dy_xhat[j]);
      if (dbeta) dbeta[j0 + j] = static_cast<T>(sum_dy[j]);
    }
  }
}

// Per channel c over its batch * spatial values: mean_c, var_c, invstd_c, then
// y = (x - mean_c) invstd_c gamma_c + beta_c and the running statistics (with the unbiased
// variance; a channel of a single value, which has none, uses the biased one).
// One thread per channel.
template <typename T>
void batch_norm_forward_train(int64_t batch, int64_t channels, int64_t spatial, const T* x,
                              const T* gamma, const T* beta, T eps, T momentum, T* running_mean,
                              T* running_var, T* y, T* mean, T* invstd) {
  const int64_t count = batch * spatial;
  const int64_t batch_stride = channels * spatial;
#pragma omp parallel for if (batch * channels * spatial >= kParallelWork)
  for (int64_t c = 0; c < channels; ++c) {
    const T* x_c = x + c * spatial;
    const Moments m = moments(x_c, batch, spatial, batch_stride);
    const T channel_mean = static_cast<T>(m.mean);
    const T channel_invstd = static_cast<T>(1 / std::sqrt(m.var + eps));
    const T scale = (gamma ? gamma[c] : T(1)) * channel_invstd;
    const T shift = beta ? beta[c] : T(0);
    for (int64_t b = 0; b < batch; ++b) {
      const T* x_plane = x_c + b * batch_stride;
      T* y_plane = y + b * batch_stride + c * spatial;
      for (int64_t s = 0; s < spatial; ++s) {
        y_plane[s] = (x_plane[s] - channel_mean) * scale + shift;
      }
    }
    mean[c] = channel_mean;
    invstd[c] = channel_invstd;
    if (running_mean) {
      const double unbiased_var = count > 1 ? m.var * count / (count - 1) : m.var;
      running_mean[c] = static_cast<T>((1 - momentum) * running_mean[c] + momentum * m.mean);
      running_var[c] = static_cast<T>((1 - momentum) * running_var[c] + momentum * unbiased_var);
    }
  }
}

// y = (x - running_mean_c) / sqrt(running_var_c + eps) gamma_c + beta_c. One thread per plane.
template <typename T>
void batch_norm_forward_eval(int64_t batch, int64_t channels, int64_t spatial, const T* x,
                             const T* gamma, const T* beta, const T* running_mean,
                             const T* running_var, T eps, T* y) {
#pragma omp parallel for if (batch * channels * spatial >= kParallelWork)
  for (int64_t plane = 0; plane < batch * channels; ++plane) {
    const int64_t c = plane % channels;
    const T scale = (gamma ? gamma[c] : T(1)) / std::sqrt(running_var[c] + eps);
    const T shift = (beta ? beta[c] : T(0)) - running_mean[c] * scale;
    const T* x_plane = x + plane * spatial;
    T* y_plane = y + plane * spatial;
    for (int64_t s = 0; s < spatial; ++s) y_plane[s] = x_plane[s] * scale + shift;
  }
}

// Per channel c, with xhat = (x - mean_c) invstd_c over the channel's count values:
//   dx = gamma_c invstd_c (dy - mean(dy) - xhat mean(dy xhat)),
//   dgamma_c = sum(dy xhat), dbeta_c = sum(dy).
// One thread per channel.
template <typename T>
void batch_norm_backward(int64_t batch, int64_t channels, int64_t spatial, const T* x, const T* dy,
                         const T* gamma, const T* mean, const T* invstd, T* dx, T* dgamma,
                         T* dbeta) {
  const int64_t count = batch * spatial;
  const int64_t batch_stride = channels * spatial;
#pragma omp parallel for if (batch * channels * spatial >= kParallelWork)
  for (int64_t c = 0; c < channels; ++c) {
    const int64_t offset = c * spatial;
    const GradientSums sums = gradient_sums<T>(x + offset, dy + offset, nullptr, batch, spatial,
                                               batch_stride, mean[c], invstd[c]);
    const T mean_dy = static_cast<T>(sums.g / count);
    const T mean_dy_xhat = static_cast<T>(sums.g_xhat / count);
    const T scale = (gamma ? gamma[c] : T(1)) * invstd[c];
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t plane = offset + b * batch_stride;
      for (int64_t s = 0; s < spatial; ++s) {
        const T xhat = (x[plane + s] - mean[c]) * invstd[c];
        dx[plane + s] = scale * (dy[plane + s] - mean_dy - xhat * mean_dy_xhat);
      }
    }
    if (dgamma) dgamma[c] = static_cast<T>(sums.g_xhat);
    if (dbeta) dbeta[c] = static_cast<T>(sums.g);
  }
}

#define NALA_INSTANTIATE_NORM(T)                                                                 \
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
NALA_INSTANTIATE_NORM(float)
NALA_INSTANTIATE_NORM(double)
#undef NALA_INSTANTIATE_NORM

}  // namespace nala::kernels::cpu
