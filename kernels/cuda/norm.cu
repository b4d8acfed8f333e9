// Layer norm (a group of lanes or a block per row) and batch norm (split reductions per channel,
// then an elementwise pass). Layer norm's dgamma / dbeta are column sums over the rows: fused into
// the dx kernel for rows up to 256 wide, else column reductions (reduce_middle_axis).
#include <algorithm>
#include <climits>
#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>

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
// Rows of at most kHeldColumnsPerLane * lanes columns are read once: a team of lanes per row,
// each lane holding its columns in registers (kHeld = kHeldColumnsPerLane) in groups of kWidth
// (group_column); longer rows (kHeld = 0) read x again for each pass.
constexpr int kHeldColumnsPerLane = 8;

// The first column of a lane's j-th group of kWidth columns: groups of kWidth lanes apart, so
// that a team reads a row's consecutive columns. kWidth is 1 (columns r, r + lanes, ... of lane
// r), or a 16-byte piece when the rows are whole pieces (one load a group; Elements).
template <int kWidth>
__device__ int group_column(int rank, int lanes, int j) {
  return kWidth * (rank + j * lanes);
}

// (At most 64 registers a thread, so that 1024 threads share an SM: short rows, measured at
// (65536, 32), are latency-bound, and more rows in flight hide it; the bound applies to the
// long-row instantiations too, which were not measured.)
template <int kHeld, int kWidth, typename T, typename Team>
__global__ void __launch_bounds__(Team::kBlockThreads, 1024 / Team::kBlockThreads)
    layer_norm_forward_kernel(Team team, int64_t rows, int64_t cols, const T* x, const T* gamma,
                              const T* beta, T eps, T* y, T* mean, T* rstd) {
  after_previous_kernel();
  static_assert(kHeld % kWidth == 0 && (kHeld > 0 || kWidth == 1));
  constexpr int kGroups = kHeld / kWidth;
  const int rank = team.rank(), lanes = team.size();
  for (TeamRows r(team, rows); r.more(); r.advance()) {
    const int64_t row = r.row;
    const T* x_row = x + row * cols;
    T* y_row = y + row * cols;
    Elements<T, kWidth> held[kGroups > 0 ? kGroups : 1];
    T sum = T(0);
    if constexpr (kHeld > 0) {
#pragma unroll
      for (int j = 0; j < kGroups; ++j) {
        const int c = group_column<kWidth>(rank, lanes, j);
        held[j] = c < cols ? load_elements<kWidth>(x_row + c) : Elements<T, kWidth>{};
#pragma unroll
        for (int w = 0; w < kWidth; ++w) sum += held[j].v[w];
      }
    } else {
      for (int64_t c = rank; c < cols; c += lanes) sum += x_row[c];
    }
    const T row_mean = team_reduce<SumOp<T>>(team, sum) / T(cols);
    T squares = T(0);
    if constexpr (kHeld > 0) {
#pragma unroll
      for (int j = 0; j < kGroups; ++j)
        if (group_column<kWidth>(rank, lanes, j) < cols)
#pragma unroll
          for (int w = 0; w < kWidth; ++w) {
            const T centered = held[j].v[w] - row_mean;
            squares += centered * centered;
          }
    } else {
      for (int64_t c = rank; c < cols; c += lanes) {
        const T centered = x_row[c] - row_mean;
        squares += centered * centered;
      }
    }
    const T var = team_reduce<SumOp<T>>(team, squares) / T(cols);
    const T row_rstd = T(1) / sqrt(var + eps);
    if (!r.active) continue;
    if constexpr (kHeld > 0) {
#pragma unroll
      for (int j = 0; j < kGroups; ++j) {
        const int c = group_column<kWidth>(rank, lanes, j);
        if (c >= cols) continue;
        Elements<T, kWidth> out;
#pragma unroll
        for (int w = 0; w < kWidth; ++w)
          out.v[w] =
              (held[j].v[w] - row_mean) * row_rstd * scale_at(gamma, c + w) + shift_at(beta, c + w);
        store_elements<kWidth>(y_row + c, out);
      }
    } else {
      for (int64_t c = rank; c < cols; c += lanes)
        y_row[c] = (x_row[c] - row_mean) * row_rstd * scale_at(gamma, c) + shift_at(beta, c);
    }
    if (rank == 0) {
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
  after_previous_kernel();
  for (TeamRows r(team, rows); r.more(); r.advance()) {
    const int64_t row = r.row;
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
    if (!r.active) continue;
    for (int64_t c = team.rank(); c < cols; c += team.size()) {
      const T xhat = (x_row[c] - row_mean) * row_rstd;
      const T g = dy_row[c] * scale_at(gamma, c);
      dx_row[c] = row_rstd * (g - mean_g - xhat * mean_g_xhat);
    }
  }
}

// The same dx with dgamma = sum_rows dy xhat and dbeta = sum_rows dy fused in, for rows of at
// most kHeldColumnsPerLane * lanes columns (a LanesPerRow team per row, its lanes holding groups
// of kWidth columns as the forward's do). Each lane keeps its columns' running sums in registers
// over the rows its team visits; the block adds its teams' sums in team order and writes one
// partial row per block,
//   partials[(0 * blocks + block) * cols + c] (dgamma), partials[(1 * blocks + block) * cols + c]
//   (dbeta),
// which a second pass sums over the blocks (in a fixed order: deterministic). Without it, dgamma
// and dbeta were two more column reductions reading x and dy again, in 4 launches: two thirds of
// the backward's GPU time at (65536, 32).
constexpr int kFusedThreads = LanesPerRow::kBlockThreads;
constexpr int64_t kFusedMaxBlocks = 1024;

template <typename T, int kWidth>
__global__ void __launch_bounds__(kFusedThreads, 1024 / kFusedThreads)
    layer_norm_backward_fused_kernel(LanesPerRow team, int64_t rows, int cols, const T* x,
                                     const T* dy, const T* gamma, const T* mean, const T* rstd,
                                     T* dx, T* partials) {
  after_previous_kernel();
  constexpr int kGroups = kHeldColumnsPerLane / kWidth;
  // [which][team in block][column]: kFusedThreads / lanes teams of at most
  // kHeldColumnsPerLane * lanes columns.
  __shared__ T team_sums[2][kFusedThreads * kHeldColumnsPerLane];
  const int rank = team.rank(), lanes = team.size();
  Elements<T, kWidth> dgamma[kGroups] = {}, dbeta[kGroups] = {};
  for (TeamRows r(team, rows); r.more(); r.advance()) {
    const int64_t row = r.row;
    const T row_mean = mean[row], row_rstd = rstd[row];
    Elements<T, kWidth> xhat[kGroups], g[kGroups];
    T sum_g = T(0), sum_g_xhat = T(0);
#pragma unroll
    for (int j = 0; j < kGroups; ++j) {
      const int c = group_column<kWidth>(rank, lanes, j);
      if (c >= cols) break;
      const Elements<T, kWidth> grad = load_elements<kWidth>(dy + row * cols + c),
                                in = load_elements<kWidth>(x + row * cols + c);
#pragma unroll
      for (int w = 0; w < kWidth; ++w) {
        xhat[j].v[w] = (in.v[w] - row_mean) * row_rstd;
        g[j].v[w] = grad.v[w] * scale_at(gamma, c + w);
        sum_g += g[j].v[w];
        sum_g_xhat += g[j].v[w] * xhat[j].v[w];
        if (r.active) {  // a team past the last row must not count it twice
          dgamma[j].v[w] += grad.v[w] * xhat[j].v[w];
          dbeta[j].v[w] += grad.v[w];
        }
      }
    }
    const T mean_g = team_reduce<SumOp<T>>(team, sum_g) / T(cols);
    const T mean_g_xhat = team_reduce<SumOp<T>>(team, sum_g_xhat) / T(cols);
    if (!r.active) continue;
#pragma unroll
    for (int j = 0; j < kGroups; ++j) {
      const int c = group_column<kWidth>(rank, lanes, j);
      if (c >= cols) break;
      Elements<T, kWidth> out;
#pragma unroll
      for (int w = 0; w < kWidth; ++w)
        out.v[w] = row_rstd * (g[j].v[w] - mean_g - xhat[j].v[w] * mean_g_xhat);
      store_elements<kWidth>(dx + row * cols + c, out);
    }
  }
  const int team_index = threadIdx.x / lanes, teams = blockDim.x / lanes;
#pragma unroll
  for (int j = 0; j < kGroups; ++j) {
    const int c = group_column<kWidth>(rank, lanes, j);
    if (c >= cols) break;
#pragma unroll
    for (int w = 0; w < kWidth; ++w) {
      team_sums[0][team_index * cols + c + w] = dgamma[j].v[w];
      team_sums[1][team_index * cols + c + w] = dbeta[j].v[w];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < 2 * cols; i += blockDim.x) {
    const int which = i / cols, c = i - which * cols;
    T sum = T(0);
    for (int t = 0; t < teams; ++t) sum += team_sums[which][t * cols + c];
    partials[(static_cast<int64_t>(which) * gridDim.x + blockIdx.x) * cols + c] = sum;
  }
}

// Result (which, c) of the second pass over the fused kernel's partial rows: dgamma[c] (which 0)
// or dbeta[c] (1), when wanted.
template <typename T>
struct StoreParamGrads {
  T *dgamma, *dbeta;
  int64_t cols;
  __device__ void operator()(int64_t index, T v) const {
    T* out = index < cols ? dgamma : dbeta;
    if (out != nullptr) out[index < cols ? index : index - cols] = v;
  }
};

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
//
// x is (batch, channels, spatial) and channel c has count = batch * spatial elements. A network's
// stem has few channels with many elements each (16 channels of 256 x 32 x 32), so one block per
// channel would leave most of the GPU idle: the statistics are reduced in splits instead. Block
// (c, s) reduces channel c over the images of split s into partial results in split_scratch,
// and one thread per channel then combines its splits in a fixed order (no atomics, so every
// run gives the same bits). A last elementwise pass writes y or dx.

constexpr int kBatchNormThreads = 256;

// How the images are cut into splits: enough blocks to fill the GPU, each over at least
// kMinSplitElements elements, and the partials within split_scratch.
struct BatchNormSplits {
  int64_t splits, images_per_split;
};

constexpr int64_t kTargetBlocks = 1024;
constexpr int64_t kMinSplitElements = 4096;

BatchNormSplits batch_norm_splits(const char* op, int64_t batch, int64_t channels,
                                  int64_t spatial) {
  // The scratch holds 2 partials per (channel, split) and 2 combined sums per channel.
  if (4 * channels > kSplitScratchElements || spatial > INT_MAX)
    throw std::invalid_argument(std::string(op) + ": at most " +
                                std::to_string(kSplitScratchElements / 4) +
                                " channels and 2^31 - 1 elements per plane on CUDA, got " +
                                std::to_string(channels) + " and " + std::to_string(spatial));
  int64_t splits = std::min((kTargetBlocks + channels - 1) / channels,
                            (batch * spatial + kMinSplitElements - 1) / kMinSplitElements);
  splits =
      std::clamp<int64_t>(splits, 1, std::min(batch, kSplitScratchElements / (2 * channels) - 1));
  const int64_t images = (batch + splits - 1) / splits;
  return {(batch + images - 1) / images, images};
}

// The elements of channel c in images [first, last) of a (batch, channels, spatial) array, dealt
// to the block's threads in turn: a GridWalk over (image, position) cells, for
//   for (ImageWalk e = channel_walk(first, spatial); e.row < last; e.next())
//     ... x[channel_offset(e, c, channels, spatial)] ...
using ImageWalk = GridWalk<int64_t>;
__device__ inline ImageWalk channel_walk(int64_t first_image, int spatial) {
  return ImageWalk(first_image * spatial + threadIdx.x, spatial, static_cast<int>(blockDim.x));
}
__device__ inline int64_t channel_offset(const ImageWalk& e, int64_t c, int64_t channels,
                                         int spatial) {
  return (e.row * channels + c) * spatial + e.col;
}

// Images [s * images_per_split, ...) of split s.
__device__ inline int64_t split_first_image(BatchNormSplits sp, int64_t s) {
  return s * sp.images_per_split;
}
__device__ inline int64_t split_last_image(BatchNormSplits sp, int64_t s, int64_t batch) {
  return min((s + 1) * sp.images_per_split, batch);
}

// Block (c, s): the mean and the sum of squared deviations M2 of channel c over split s (two
// passes over the split, the second from cache: no cancellation), into
// partials[2 (c splits + s) + {0, 1}].
template <typename T>
__global__ void batch_norm_partial_moments_kernel(int64_t batch, int64_t channels, int spatial,
                                                  BatchNormSplits sp, const T* x,
                                                  double* partials) {
  after_previous_kernel();
  const int64_t c = blockIdx.x, s = blockIdx.y;
  const int64_t first = split_first_image(sp, s), last = split_last_image(sp, s, batch);
  const T count = T((last - first) * spatial);
  T sum = T(0);
  for (ImageWalk e = channel_walk(first, spatial); e.row < last; e.next())
    sum += x[channel_offset(e, c, channels, spatial)];
  const T split_mean = block_reduce<SumOp<T>>(sum) / count;
  T squares = T(0);
  for (ImageWalk e = channel_walk(first, spatial); e.row < last; e.next()) {
    const T centered = x[channel_offset(e, c, channels, spatial)] - split_mean;
    squares += centered * centered;
  }
  squares = block_reduce<SumOp<T>>(squares);
  if (threadIdx.x == 0) {
    partials[2 * (c * sp.splits + s)] = split_mean;
    partials[2 * (c * sp.splits + s) + 1] = squares;
  }
}

// One thread per channel combines its splits' (count, mean, M2) in order (Chan et al.):
//   delta = mean_b - mean_a, n = n_a + n_b, mean = mean_a + delta n_b / n,
//   M2 = M2_a + M2_b + delta^2 n_a n_b / n;
// then var = M2 / count, invstd = 1 / sqrt(var + eps), and the running statistics' update
// (with the unbiased variance M2 / (count - 1), as PyTorch does).
template <typename T>
__global__ void batch_norm_combine_moments_kernel(int64_t batch, int64_t channels, int spatial,
                                                  BatchNormSplits sp, const double* partials, T eps,
                                                  T momentum, T* running_mean, T* running_var,
                                                  T* mean, T* invstd) {
  after_previous_kernel();
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  double n = 0, m = 0, m2 = 0;
  for (int64_t s = 0; s < sp.splits; ++s) {
    const double n_b =
        double((split_last_image(sp, s, batch) - split_first_image(sp, s)) * spatial);
    const double m_b = partials[2 * (c * sp.splits + s)],
                 m2_b = partials[2 * (c * sp.splits + s) + 1];
    const double delta = m_b - m, total = n + n_b;
    m += delta * n_b / total;
    m2 += m2_b + delta * delta * n * n_b / total;
    n = total;
  }
  const T var = T(m2 / n);
  mean[c] = T(m);
  invstd[c] = T(1) / sqrt(var + eps);
  if (running_mean != nullptr) {
    const T unbiased_var = T(m2 / (n - 1));
    running_mean[c] = (T(1) - momentum) * running_mean[c] + momentum * T(m);
    running_var[c] = (T(1) - momentum) * running_var[c] + momentum * unbiased_var;
  }
}

// y = (x - mean[c]) invstd[c] gamma[c] + beta[c], one thread per element. In training, invstd
// is the batch's (from the moments kernels); in eval, spread is the running variance and
// invstd[c] = 1 / sqrt(running_var[c] + eps).
template <typename T, bool kFromVariance>
struct BatchNormNormalize {
  int64_t channels, spatial;
  const T* x;
  const T* gamma;
  const T* beta;
  const T* mean;
  const T* spread;  // invstd, or the running variance when kFromVariance
  T eps;
  T* y;
  __device__ void operator()(int64_t i) const {
    const int64_t c = i / spatial % channels;
    const T invstd = kFromVariance ? T(1) / sqrt(spread[c] + eps) : spread[c];
    y[i] = (x[i] - mean[c]) * invstd * scale_at(gamma, c) + shift_at(beta, c);
  }
};

// Backward, with xhat = (x - mean) invstd:
//   dgamma = sum(dy xhat), dbeta = sum(dy),
//   dx = gamma invstd (dy - dbeta / count - xhat dgamma / count).
// Block (c, s): partial sums of dy and dy xhat over split s into partials.
template <typename T>
__global__ void batch_norm_partial_grad_sums_kernel(int64_t batch, int64_t channels, int spatial,
                                                    BatchNormSplits sp, const T* x, const T* dy,
                                                    const T* mean, const T* invstd,
                                                    double* partials) {
  after_previous_kernel();
  const int64_t c = blockIdx.x, s = blockIdx.y;
  const T channel_mean = mean[c], channel_invstd = invstd[c];
  T sum_dy = T(0), sum_dy_xhat = T(0);
  const int64_t last = split_last_image(sp, s, batch);
  for (ImageWalk e = channel_walk(split_first_image(sp, s), spatial); e.row < last; e.next()) {
    const int64_t i = channel_offset(e, c, channels, spatial);
    const T g = dy[i];
    sum_dy += g;
    sum_dy_xhat += g * (x[i] - channel_mean) * channel_invstd;
  }
  const T sums[2] = {sum_dy, sum_dy_xhat};
  block_sum_each<kBatchNormThreads>(
      sums, [&](int i, T total) { partials[2 * (c * sp.splits + s) + i] = total; });
}

// One thread per channel: the sums over its splits, in order, into sums[2 c + {0, 1}] and
// dbeta / dgamma.
template <typename T>
__global__ void batch_norm_combine_grad_sums_kernel(int64_t channels, int64_t splits,
                                                    const double* partials, double* sums, T* dgamma,
                                                    T* dbeta) {
  after_previous_kernel();
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  double sum_dy = 0, sum_dy_xhat = 0;
  for (int64_t s = 0; s < splits; ++s) {
    sum_dy += partials[2 * (c * splits + s)];
    sum_dy_xhat += partials[2 * (c * splits + s) + 1];
  }
  sums[2 * c] = sum_dy;
  sums[2 * c + 1] = sum_dy_xhat;
  if (dbeta != nullptr) dbeta[c] = T(sum_dy);
  if (dgamma != nullptr) dgamma[c] = T(sum_dy_xhat);
}

template <typename T>
struct BatchNormInputGrad {
  int64_t channels, spatial;
  T count;
  const T* x;
  const T* dy;
  const T* gamma;
  const T* mean;
  const T* invstd;
  const double* sums;
  T* dx;
  __device__ void operator()(int64_t i) const {
    const int64_t c = i / spatial % channels;
    const T xhat = (x[i] - mean[c]) * invstd[c];
    const T mean_dy = T(sums[2 * c]) / count, mean_dy_xhat = T(sums[2 * c + 1]) / count;
    dx[i] = scale_at(gamma, c) * invstd[c] * (dy[i] - mean_dy - xhat * mean_dy_xhat);
  }
};

}  // namespace

template <typename T>
void layer_norm_forward(int64_t rows, int64_t cols, const T* x, const T* gamma, const T* beta,
                        T eps, T* y, T* mean, T* rstd) {
  launch_per_row(rows, cols, [&](auto team, unsigned blocks, int threads) {
    if constexpr (std::is_same_v<decltype(team), LanesPerRow>) {
      if (cols <= kHeldColumnsPerLane * team.lanes) {
        with_width<T>(contiguous_pieces<T>(cols, {x, y}), [&](auto w) {
          launch_kernel(layer_norm_forward_kernel<kHeldColumnsPerLane, w, T, LanesPerRow>, blocks,
                        threads, 0, team, rows, cols, x, gamma, beta, eps, y, mean, rstd);
        });
        return;
      }
    }
    launch_kernel(layer_norm_forward_kernel<0, 1, T, decltype(team)>, blocks, threads, 0, team,
                  rows, cols, x, gamma, beta, eps, y, mean, rstd);
  });
}

template <typename T>
void layer_norm_backward(int64_t rows, int64_t cols, const T* x, const T* dy, const T* gamma,
                         const T* mean, const T* rstd, T* dx, T* dgamma, T* dbeta) {
  if (rows <= 0) return;
  // Blocks enough to fill the GPU, their partial rows within split_scratch.
  const int lanes = lanes_per_row(cols);
  const int64_t rows_per_block = kFusedThreads / lanes;
  const int64_t fused_blocks =
      std::min({kFusedMaxBlocks, (rows + rows_per_block - 1) / rows_per_block,
                kSplitScratchElements / std::max<int64_t>(2 * cols, 1)});
  if ((dgamma != nullptr || dbeta != nullptr) && cols <= kHeldColumnsPerLane * lanes &&
      fused_blocks > 0) {
    T* partials = reinterpret_cast<T*>(split_scratch_address());
    with_width<T>(contiguous_pieces<T>(cols, {x, dy, dx}), [&](auto w) {
      launch_kernel(layer_norm_backward_fused_kernel<T, w>, static_cast<unsigned>(fused_blocks),
                    kFusedThreads, 0, LanesPerRow(lanes), rows, static_cast<int>(cols), x, dy,
                    gamma, mean, rstd, dx, partials);
    });
    // dgamma and dbeta: the partial rows (2, fused_blocks, cols) summed over the middle axis.
    reduce_middle_axis_pass<SumOp<T>>(2, fused_blocks, cols, fused_blocks, 1,
                                      MiddleAxisElement<T>{partials, fused_blocks, cols},
                                      StoreParamGrads<T>{dgamma, dbeta, cols});
    return;
  }
  launch_per_row(rows, cols, [&](auto team, unsigned blocks, int threads) {
    launch_kernel(layer_norm_backward_dx_kernel<T, decltype(team)>, blocks, threads, 0, team, rows,
                  cols, x, dy, gamma, mean, rstd, dx);
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
  if (channels <= 0 || batch * spatial <= 0) return;
  const BatchNormSplits sp = batch_norm_splits("batch_norm", batch, channels, spatial);
  double* partials = split_scratch_address();
  launch_kernel(batch_norm_partial_moments_kernel<T>, dim3(channels, sp.splits), kBatchNormThreads,
                0, batch, channels, static_cast<int>(spatial), sp, x, partials);
  launch_kernel(batch_norm_combine_moments_kernel<T>, num_blocks(channels, kBatchNormThreads),
                kBatchNormThreads, 0, batch, channels, static_cast<int>(spatial), sp, partials, eps,
                momentum, running_mean, running_var, mean, invstd);
  for_each_index(
      batch * channels * spatial,
      BatchNormNormalize<T, false>{channels, spatial, x, gamma, beta, mean, invstd, eps, y});
}

template <typename T>
void batch_norm_forward_eval(int64_t batch, int64_t channels, int64_t spatial, const T* x,
                             const T* gamma, const T* beta, const T* running_mean,
                             const T* running_var, T eps, T* y) {
  for_each_index(batch * channels * spatial,
                 BatchNormNormalize<T, true>{channels, spatial, x, gamma, beta, running_mean,
                                             running_var, eps, y});
}

template <typename T>
void batch_norm_backward(int64_t batch, int64_t channels, int64_t spatial, const T* x, const T* dy,
                         const T* gamma, const T* mean, const T* invstd, T* dx, T* dgamma,
                         T* dbeta) {
  if (channels <= 0 || batch * spatial <= 0) return;
  const BatchNormSplits sp = batch_norm_splits("batch_norm backward", batch, channels, spatial);
  double* partials = split_scratch_address();
  double* sums = partials + 2 * channels * sp.splits;
  launch_kernel(batch_norm_partial_grad_sums_kernel<T>, dim3(channels, sp.splits),
                kBatchNormThreads, 0, batch, channels, static_cast<int>(spatial), sp, x, dy, mean,
                invstd, partials);
  launch_kernel(batch_norm_combine_grad_sums_kernel<T>, num_blocks(channels, kBatchNormThreads),
                kBatchNormThreads, 0, channels, sp.splits, partials, sums, dgamma, dbeta);
  for_each_index(batch * channels * spatial,
                 BatchNormInputGrad<T>{channels, spatial, T(batch * spatial), x, dy, gamma, mean,
                                       invstd, sums, dx});
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
