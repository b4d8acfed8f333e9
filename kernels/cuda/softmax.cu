// Softmax, log-softmax and cross-entropy over the last axis: a group of lanes or a block per row
// (launch_per_row), with the row's max and sums combined across the team by shuffles.
#include <cmath>

#include "kernels/cuda/common.h"
#include "kernels/kernels.h"

namespace nala::kernels::cuda {

namespace {

// A row's max m and sum_c e^(x_c - m); shifting by m keeps e^x from overflowing.
template <typename T>
struct MaxAndSumExp {
  T max, sum_exp;
};

// Every thread of the team gets the row's MaxAndSumExp.
template <typename T, typename Team>
__device__ MaxAndSumExp<T> row_max_and_sum_exp(Team team, int64_t cols, const T* x_row) {
  T max = MaxOp<T>::identity();
  for (int64_t c = team.rank(); c < cols; c += team.size()) max = MaxOp<T>::combine(max, x_row[c]);
  max = team_reduce<MaxOp<T>>(team, max);
  T sum = T(0);
  for (int64_t c = team.rank(); c < cols; c += team.size()) sum += exp(x_row[c] - max);
  return {max, team_reduce<SumOp<T>>(team, sum)};
}

// softmax: y = e^(x - m) / s; log_softmax: y = (x - m) - log s, with m, s = row_max_and_sum_exp.
template <typename T, typename Team>
__global__ void softmax_forward_kernel(Team team, int64_t rows, int64_t cols, const T* x, T* y,
                                       bool log_softmax) {
  after_previous_kernel();
  for (TeamRows r(team, rows); r.more(); r.advance()) {
    const T* x_row = x + r.row * cols;
    T* y_row = y + r.row * cols;
    const MaxAndSumExp<T> stats = row_max_and_sum_exp(team, cols, x_row);
    const T log_sum = log(stats.sum_exp);
    if (r.active)
      for (int64_t c = team.rank(); c < cols; c += team.size())
        y_row[c] = log_softmax ? (x_row[c] - stats.max) - log_sum
                               : exp(x_row[c] - stats.max) / stats.sum_exp;
  }
}

// softmax:     dx = y (dy - sum(dy y))
// log_softmax: dx = dy - e^y sum(dy)
template <typename T, typename Team>
__global__ void softmax_backward_kernel(Team team, int64_t rows, int64_t cols, const T* y,
                                        const T* dy, T* dx, bool log_softmax) {
  after_previous_kernel();
  for (TeamRows r(team, rows); r.more(); r.advance()) {
    const T* y_row = y + r.row * cols;
    const T* dy_row = dy + r.row * cols;
    T* dx_row = dx + r.row * cols;
    T sum = T(0);
    for (int64_t c = team.rank(); c < cols; c += team.size())
      sum += log_softmax ? dy_row[c] : dy_row[c] * y_row[c];
    sum = team_reduce<SumOp<T>>(team, sum);
    if (r.active)
      for (int64_t c = team.rank(); c < cols; c += team.size())
        dx_row[c] = log_softmax ? dy_row[c] - exp(y_row[c]) * sum : y_row[c] * (dy_row[c] - sum);
  }
}

// The smoothed target q_c = (1 - eps) [c == label] + eps / classes.
template <typename T>
__device__ T smoothed_target(int64_t c, int64_t label, T smoothing, int64_t classes) {
  return (c == label ? T(1) - smoothing : T(0)) + smoothing / T(classes);
}

// How many blocks of cross_entropy_forward_kernel have handed in their partial sum
// (sum_in_last_block).
__device__ unsigned int cross_entropy_blocks_done = 0;

// Per row, lse = m + log s and
//   loss_r = lse - sum_c q_c x_c = lse - (1 - eps) x_label - (eps / classes) sum_c x_c,
// NaN when the label is outside [0, classes); loss = mean_r loss_r in the same launch: the sum
// over each block's rows, then over the blocks in the last one (sum_in_last_block), in double
// for float too, as the CPU sums it.
template <typename T, typename Team>
__global__ void cross_entropy_forward_kernel(Team team, int64_t rows, int64_t classes,
                                             const T* logits, const int64_t* labels, T smoothing,
                                             T* lse, double* partials, T* loss) {
  after_previous_kernel();
  double thread_loss = 0;  // the rows this thread stores (a team's rank 0)
  for (TeamRows r(team, rows); r.more(); r.advance()) {
    const T* x_row = logits + r.row * classes;
    const MaxAndSumExp<T> stats = row_max_and_sum_exp(team, classes, x_row);
    const T row_lse = stats.max + log(stats.sum_exp);
    T sum = T(0);
    for (int64_t c = team.rank(); c < classes; c += team.size()) sum += x_row[c];
    sum = team_reduce<SumOp<T>>(team, sum);
    if (r.active && team.rank() == 0) {
      const int64_t label = labels[r.row];
      const bool valid = label >= 0 && label < classes;
      lse[r.row] = row_lse;
      thread_loss +=
          valid ? row_lse - (T(1) - smoothing) * x_row[label] - smoothing / T(classes) * sum
                : T(NAN);
    }
  }
  sum_in_last_block(block_reduce<SumOp<double>>(thread_loss), partials, cross_entropy_blocks_done,
                    [&](double total) { *loss = static_cast<T>(total / double(rows)); });
}

// dlogits = (dloss / rows) (e^(x - lse) - q); NaN for a row whose label is outside [0, classes).
template <typename T, typename Team>
__global__ void cross_entropy_backward_kernel(Team team, int64_t rows, int64_t classes,
                                              const T* logits, const int64_t* labels, T smoothing,
                                              const T* lse, const T* dloss, T* dlogits) {
  after_previous_kernel();
  const T row_dloss = *dloss / T(rows);
  // No sums across the team: a plain walk over the rows (TeamRows is for team_reduce).
  for (int64_t row = team.first_row(); row < rows; row += team.row_stride()) {
    const T* x_row = logits + row * classes;
    T* dx_row = dlogits + row * classes;
    const int64_t label = labels[row];
    const bool valid = label >= 0 && label < classes;
    const T row_lse = lse[row];
    for (int64_t c = team.rank(); c < classes; c += team.size()) {
      const T q = smoothed_target(c, label, smoothing, classes);
      dx_row[c] = valid ? row_dloss * (exp(x_row[c] - row_lse) - q) : T(NAN);
    }
  }
}

}  // namespace

template <typename T>
void softmax_forward(int64_t rows, int64_t cols, const T* x, T* y, bool log_softmax) {
  launch_per_row(rows, cols, [&](auto team, unsigned blocks, int threads) {
    launch_kernel(softmax_forward_kernel<T, decltype(team)>, blocks, threads, 0, team, rows, cols,
                  x, y, log_softmax);
  });
}

template <typename T>
void softmax_backward(int64_t rows, int64_t cols, const T* y, const T* dy, T* dx,
                      bool log_softmax) {
  launch_per_row(rows, cols, [&](auto team, unsigned blocks, int threads) {
    launch_kernel(softmax_backward_kernel<T, decltype(team)>, blocks, threads, 0, team, rows, cols,
                  y, dy, dx, log_softmax);
  });
}

template <typename T>
void cross_entropy_forward(int64_t rows, int64_t classes, const T* logits, const int64_t* labels,
                           T smoothing, T* loss, T* lse) {
  // One partial per block (at most kMaxBlocks of them) in the split-reduction scratch.
  static_assert(kMaxBlocks <= kSplitScratchElements);
  double* partials = split_scratch_address();
  launch_per_row(rows, classes, [&](auto team, unsigned blocks, int threads) {
    launch_kernel(cross_entropy_forward_kernel<T, decltype(team)>, blocks, threads, 0, team, rows,
                  classes, logits, labels, smoothing, lse, partials, loss);
  });
}

template <typename T>
void cross_entropy_backward(int64_t rows, int64_t classes, const T* logits, const int64_t* labels,
                            T smoothing, const T* lse, const T* dloss, T* dlogits) {
  launch_per_row(rows, classes, [&](auto team, unsigned blocks, int threads) {
    launch_kernel(cross_entropy_backward_kernel<T, decltype(team)>, blocks, threads, 0, team, rows,
                  classes, logits, labels, smoothing, lse, dloss, dlogits);
  });
}

#define NALA_INSTANTIATE(T)                                                                        \
  template void softmax_forward<T>(int64_t, int64_t, const T*, T*, bool);                          \
  template void softmax_backward<T>(int64_t, int64_t, const T*, const T*, T*, bool);               \
  template void cross_entropy_forward<T>(int64_t, int64_t, const T*, const int64_t*, T, T*, T*);   \
  template void cross_entropy_backward<T>(int64_t, int64_t, const T*, const int64_t*, T, const T*, \
                                          const T*, T*);
NALA_INSTANTIATE(float)
NALA_INSTANTIATE(double)
#undef NALA_INSTANTIATE

}  // namespace nala::kernels::cuda
