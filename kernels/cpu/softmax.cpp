// Softmax, log-softmax and cross-entropy over the last axis on the CPU, one thread per row.
//
// Every exponential is taken of x - max(x) <= 0, so nothing overflows:
//   softmax(x)_c = e^(x_c - max) / sum_j e^(x_j - max),
//   log_softmax(x)_c = (x_c - max) - log sum_j e^(x_j - max),
// and the sums are accumulated in double.
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/scratch.h"
#include "kernels/kernels.h"

namespace nala::kernels::cpu {
namespace {

// Work below this many elements stays on one thread.
constexpr int64_t kParallelWork = 1 << 15;

template <typename T>
T row_max(const T* x, int64_t cols) {
  T max = -std::numeric_limits<T>::infinity();
  for (int64_t c = 0; c < cols; ++c) max = std::max(max, x[c]);
  return max;
}

// log sum_c e^(x_c - shift), the sum in double.
template <typename T>
T log_sum_exp_shifted(const T* x, int64_t cols, T shift) {
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < cols; ++c) sum += std::exp(x[c] - shift);
  return static_cast<T>(std::log(sum));
}

// log sum_c e^(x_c): the log-sum-exp of a row, max + log sum e^(x_c - max).
template <typename T>
T log_sum_exp(const T* x, int64_t cols) {
  const T max = row_max(x, cols);
  return max + log_sum_exp_shifted(x, cols, max);
}

}  // namespace

template <typename T>
void softmax_forward(int64_t rows, int64_t cols, const T* x, T* y, bool log) {
#pragma omp parallel for if (rows * cols >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const T* x_row = x + r * cols;
    T* y_row = y + r * cols;
    const T max = row_max(x_row, cols);
    if (log) {
      const T log_sum = log_sum_exp_shifted(x_row, cols, max);
      for (int64_t c = 0; c < cols; ++c) y_row[c] = (x_row[c] - max) - log_sum;
    } else {
      double sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t c = 0; c < cols; ++c) {
        y_row[c] = std::exp(x_row[c] - max);
        sum += y_row[c];
      }
      const T inverse_sum = static_cast<T>(1 / sum);
      for (int64_t c = 0; c < cols; ++c) y_row[c] *= inverse_sum;
    }
  }
}

// softmax: dx = y (dy - sum(dy y));  log_softmax: dx = dy - e^y sum(dy).
template <typename T>
void softmax_backward(int64_t rows, int64_t cols, const T* y, const T* dy, T* dx, bool log) {
#pragma omp parallel for if (rows * cols >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const T* y_row = y + r * cols;
    const T* dy_row = dy + r * cols;
    T* dx_row = dx + r * cols;
    double sum = 0;  // sum(dy) for log_softmax, sum(dy y) for softmax
    if (log) {
#pragma omp simd reduction(+ : sum)
      for (int64_t c = 0; c < cols; ++c) sum += dy_row[c];
      const T sum_dy = static_cast<T>(sum);
      for (int64_t c = 0; c < cols; ++c) dx_row[c] = dy_row[c] - std::exp(y_row[c]) * sum_dy;
    } else {
#pragma omp simd reduction(+ : sum)
      for (int64_t c = 0; c < cols; ++c) sum += static_cast<double>(dy_row[c]) * y_row[c];
      const T sum_dy_y = static_cast<T>(sum);
      for (int64_t c = 0; c < cols; ++c) dx_row[c] = y_row[c] * (dy_row[c] - sum_dy_y);
    }
  }
}

struct RowLosses {};  // thread_scratch's tag

// loss_r = lse_r - sum_c q_c x_c with q = (1 - eps) onehot(label) + eps / classes, so
// sum_c q_c x_c = (1 - eps) x_label + eps mean_c(x_c); loss = mean_r loss_r, summed in row order
// (the same result for any number of threads).
template <typename T>
void cross_entropy_forward(int64_t rows, int64_t classes, const T* logits, const int64_t* labels,
                           T smoothing, T* loss, T* lse) {
  double* row_loss = thread_scratch<RowLosses, double>(rows);
#pragma omp parallel for if (rows * classes >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const T* x_row = logits + r * classes;
    const int64_t label = labels[r];
    lse[r] = log_sum_exp(x_row, classes);
    if (label < 0 || label >= classes) {
      row_loss[r] = std::numeric_limits<double>::quiet_NaN();
      continue;
    }
    double sum_x = 0;
#pragma omp simd reduction(+ : sum_x)
    for (int64_t c = 0; c < classes; ++c) sum_x += x_row[c];
    const double target_dot_x = (1 - smoothing) * x_row[label] + smoothing * sum_x / classes;
    row_loss[r] = lse[r] - target_dot_x;
  }
  double sum = 0;
  for (int64_t r = 0; r < rows; ++r) sum += row_loss[r];
  *loss = static_cast<T>(sum / static_cast<double>(rows));
}

// dlogits_rc = (dloss / rows) (e^(x_rc - lse_r) - q_rc). A row with a label outside
// [0, classes) had a NaN loss, and gets a NaN gradient.
template <typename T>
void cross_entropy_backward(int64_t rows, int64_t classes, const T* logits, const int64_t* labels,
                            T smoothing, const T* lse, const T* dloss, T* dlogits) {
  const T smoothing_per_class = smoothing / static_cast<T>(classes);
  const T row_dloss = *dloss / static_cast<T>(rows);
#pragma omp parallel for if (rows * classes >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const T* x_row = logits + r * classes;
    T* dx_row = dlogits + r * classes;
    const int64_t label = labels[r];
    if (label < 0 || label >= classes) {
      std::fill(dx_row, dx_row + classes, std::numeric_limits<T>::quiet_NaN());
      continue;
    }
    for (int64_t c = 0; c < classes; ++c) {
      dx_row[c] = row_dloss * (std::exp(x_row[c] - lse[r]) - smoothing_per_class);
    }
    dx_row[label] -= row_dloss * (1 - smoothing);
  }
}

#define NALA_INSTANTIATE_SOFTMAX(T)                                                                \
  template void softmax_forward<T>(int64_t, int64_t, const T*, T*, bool);                          \
  template void softmax_backward<T>(int64_t, int64_t, const T*, const T*, T*, bool);               \
  template void cross_entropy_forward<T>(int64_t, int64_t, const T*, const int64_t*, T, T*, T*);   \
  template void cross_entropy_backward<T>(int64_t, int64_t, const T*, const int64_t*, T, const T*, \
                                          const T*, T*);
NALA_INSTANTIATE_SOFTMAX(float)
NALA_INSTANTIATE_SOFTMAX(double)
#undef NALA_INSTANTIATE_SOFTMAX

}  // namespace nala::kernels::cpu
