// Building blocks shared by the CUDA kernels:
// - for_each_index: run a functor once per index of a flat range (the elementwise kernels);
// - warp_reduce / block_reduce: tree reductions with warp shuffles;
// - launch_per_row: one warp (short rows) or one block (long rows) per row of a matrix;
// - reduce_columns: a reduction over the middle axis of an (outer, r, inner) array.
// Device code only uses functors (structs with a __device__ operator()), never lambdas.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/cuda_check.h"

namespace nala::kernels::cuda {

constexpr int kWarpSize = 32;
// Grid-stride kernels launch at most this many blocks; beyond it each thread loops.
constexpr int64_t kMaxBlocks = 65535;

// Blocks needed to cover `work` items at `items_per_block` per block, capped at kMaxBlocks.
inline unsigned num_blocks(int64_t work, int64_t items_per_block) {
  return static_cast<unsigned>(
      std::clamp<int64_t>((work + items_per_block - 1) / items_per_block, 1, kMaxBlocks));
}

// f(i) for every i < n, in a grid-stride loop.
template <typename F>
__global__ void for_each_index_kernel(int64_t n, F f) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step)
    f(i);
}

template <typename F>
void for_each_index(int64_t n, F f) {
  if (n <= 0) return;
  constexpr int kThreads = 256;
  for_each_index_kernel<<<num_blocks(n, kThreads), kThreads, 0, stream()>>>(n, f);
  NALA_CUDA_CHECK_LAUNCH();
}

// ---- reductions ----

// A reduction is an identity and an associative combine.
template <typename T>
struct SumOp {
  __device__ static T identity() { return T(0); }
  __device__ static T combine(T a, T b) { return a + b; }
};

// max, propagating NaN (like torch.max).
template <typename T>
struct MaxOp {
  __device__ static T identity() { return T(-INFINITY); }
  __device__ static T combine(T a, T b) { return (a > b || a != a) ? a : b; }
};

// Combines v over the 32 lanes of a warp by butterfly shuffles; every lane gets the result.
template <typename Op, typename T>
__device__ T warp_reduce(T v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    v = Op::combine(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Combines v over a 1-d block whose size is a multiple of 32 (at most 1024): each warp reduces,
// then every warp reduces the per-warp partials. Every thread gets the result. All threads of
// the block must call it.
template <typename Op, typename T>
__device__ T block_reduce(T v) {
  __shared__ T partials[kWarpSize];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
  v = warp_reduce<Op>(v);
  __syncthreads();  // a previous call may still be reading partials
  if (lane == 0) partials[warp] = v;
  __syncthreads();
  return warp_reduce<Op>(lane < num_warps ? partials[lane] : Op::identity());
}

// ---- one team of threads per row ----
// A row kernel takes a team and loops
//   for (int64_t row = team.first_row(); row < rows; row += team.row_stride())
// with thread team.rank() of team.size() visiting columns rank, rank + size, ..., and combining
// across the team with team_reduce. The loop bounds are uniform across a team, so every thread
// of a team reaches the same team_reduce calls.

// A warp per row: for rows of up to a few hundred elements.
struct WarpPerRow {
  static constexpr int kBlockThreads = 256;
  __device__ int rank() const { return threadIdx.x % kWarpSize; }
  __device__ int size() const { return kWarpSize; }
  __device__ int64_t first_row() const {
    return static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  }
  __device__ int64_t row_stride() const {
    return static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarpSize);
  }
};

// A block per row: for long rows.
struct BlockPerRow {
  static constexpr int kBlockThreads = 512;
  __device__ int rank() const { return threadIdx.x; }
  __device__ int size() const { return blockDim.x; }
  __device__ int64_t first_row() const { return blockIdx.x; }
  __device__ int64_t row_stride() const { return gridDim.x; }
};

template <typename Op, typename T>
__device__ T team_reduce(WarpPerRow, T v) {
  return warp_reduce<Op>(v);
}

template <typename Op, typename T>
__device__ T team_reduce(BlockPerRow, T v) {
  return block_reduce<Op>(v);
}

// Calls launch(team, blocks, threads), which launches a row kernel on stream(), with a warp per
// row when rows have at most kWarpRowMaxCols columns and a block per row otherwise.
constexpr int64_t kWarpRowMaxCols = 1024;

template <typename Launch>
void launch_per_row(int64_t rows, int64_t cols, Launch launch) {
  if (rows <= 0) return;
  if (cols <= kWarpRowMaxCols) {
    constexpr int kThreads = WarpPerRow::kBlockThreads;
    launch(WarpPerRow{}, num_blocks(rows, kThreads / kWarpSize), kThreads);
  } else {
    launch(BlockPerRow{}, num_blocks(rows, 1), BlockPerRow::kBlockThreads);
  }
  NALA_CUDA_CHECK_LAUNCH();
}

// ---- reduction over the middle axis ----

// x viewed as (outer, r, inner), contiguous.
template <typename T>
struct MiddleAxisElement {
  const T* x;
  int64_t r, inner;
  __device__ T operator()(int64_t o, int64_t k, int64_t j) const {
    return x[(o * r + k) * inner + j];
  }
};

constexpr int kColumnBlockThreads = 512;

// y[o, j] = Op over k < r of value(o, k, j), for o < outer, j < inner.
// A block reduces a tile of blockDim.x consecutive columns j of one o: threadIdx.x walks the
// columns (so a warp reads whole 32-byte sectors), threadIdx.y strides over k, and a tree in
// shared memory combines the blockDim.y partials of each column (blockDim.y a power of two).
template <typename Op, typename T, typename Value>
__global__ void reduce_columns_kernel(int64_t outer, int64_t r, int64_t inner, Value value, T* y) {
  __shared__ T partials[kColumnBlockThreads];
  const unsigned tx = threadIdx.x, ty = threadIdx.y, width = blockDim.x;
  const int64_t tiles_per_outer = (inner + width - 1) / width;
  for (int64_t tile = blockIdx.x; tile < outer * tiles_per_outer; tile += gridDim.x) {
    const int64_t o = tile / tiles_per_outer;
    const int64_t j = (tile % tiles_per_outer) * width + tx;
    T acc = Op::identity();
    if (j < inner)
      for (int64_t k = ty; k < r; k += blockDim.y) acc = Op::combine(acc, value(o, k, j));
    partials[ty * width + tx] = acc;
    __syncthreads();
    for (unsigned half = blockDim.y / 2; half > 0; half /= 2) {
      if (ty < half)
        partials[ty * width + tx] =
            Op::combine(partials[ty * width + tx], partials[(ty + half) * width + tx]);
      __syncthreads();
    }
    if (ty == 0 && j < inner) y[o * inner + j] = partials[tx];
    __syncthreads();  // the next tile overwrites partials
  }
}

// The smallest power of two >= n (n >= 1), capped at `cap` (itself a power of two).
inline unsigned pow2_at_least(int64_t n, unsigned cap) {
  unsigned p = 1;
  while (p < cap && p < n) p *= 2;
  return p;
}

template <typename Op, typename T, typename Value>
void reduce_columns(int64_t outer, int64_t r, int64_t inner, Value value, T* y) {
  if (outer <= 0 || inner <= 0) return;
  // A tile row is one 32-byte sector of columns (8 floats, 4 doubles), fewer when inner is small.
  const unsigned width = pow2_at_least(inner, 32 / sizeof(T));
  const unsigned height = pow2_at_least(r, kColumnBlockThreads / width);
  const int64_t tiles = outer * ((inner + width - 1) / width);
  reduce_columns_kernel<Op>
      <<<num_blocks(tiles, 1), dim3(width, height), 0, stream()>>>(outer, r, inner, value, y);
  NALA_CUDA_CHECK_LAUNCH();
}

}  // namespace nala::kernels::cuda
