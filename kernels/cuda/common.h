// Building blocks shared by the CUDA kernels:
// - for_each_index: run a functor once per index of a flat range (the elementwise kernels);
// - warp_reduce / block_reduce / block_sum_each: tree reductions with warp shuffles;
//   sum_in_last_block: a grid's sum in one launch;
// - launch_per_row: a group of a warp's lanes (short rows) or a block (long rows) per row, its
//   rows walked by TeamRows and combined by team_reduce;
// - reduce_middle_axis: a reduction over the middle axis of an (outer, r, inner) array, its
//   results handed to a store functor (StoreAt);
// - GridWalk: a thread's cells of a 2-d grid, without a division per step;
// - Elements: kWidth consecutive elements, a 16-byte piece at kPiece<T> (with_width);
// - multiprocessor_count, aligned16: host-side facts about the device (device_attribute, in
//   cuda_check.h) and the pointers a launch gets.
// What a kernel is handed from the host is a functor (a struct with a __device__ operator()),
// never a lambda; lambdas appear only inside device code (a kernel's loop bodies).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "kernels/cuda/cuda_check.h"
#include "kernels/kernels.h"

namespace nala::kernels::cuda {

constexpr int kWarpSize = 32;
// Grid-stride kernels launch at most this many blocks; beyond it each thread loops.
constexpr int64_t kMaxBlocks = 65535;

// The current device's multiprocessor count, asked of the driver once.
inline int multiprocessor_count() {
  static const int count = device_attribute(cudaDevAttrMultiProcessorCount);
  return count;
}

// Whether every pointer is 16-byte aligned (the kernels' 16-byte vector accesses need it).
inline bool aligned16(std::initializer_list<const void*> pointers) {
  for (const void* p : pointers)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// ---- launching: a kernel starts while the one before it ends ----
// Programmatic dependent launch (GPUs of compute capability 9.0 on): a kernel launched by
// launch_kernel may be scheduled while the kernel before it in the stream still runs. Every
// kernel's first statement is after_previous_kernel(), which waits until the kernel before has
// finished and its writes are visible, then lets the next kernel be scheduled in turn. So what
// overlaps is only the launch and the blocks' start-up with the previous kernel's last blocks:
// a few microseconds a kernel, which is much of what a kernel over a few MiB takes
// (docs/benchmarks.md). A kernel launched the usual way passes through both instructions.
__device__ __forceinline__ void after_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// Where a launch's blocks go on the multiprocessors:
// - Overlapped: as slots free up under the kernel before (above);
// - Spread: all at once when the kernel before has finished, spread evenly. For grids of one
//   wave sized to the GPU, whose blocks each carry a long, equal share of the work: placed as
//   slots free up, such blocks crowd onto the multiprocessors that the kernel before left first,
//   and the most crowded one sets the time (docs/benchmarks.md).
enum class Placement { Overlapped, Spread };

// kernel<<<grid, block, shared_bytes, stream()>>>(args...), its blocks placed as kPlacement says,
// the launch checked. The kernel's first statement must be after_previous_kernel(): it may start
// while the kernel before it still runs.
template <Placement kPlacement = Placement::Overlapped, typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                   const Args&... args) {
  cudaLaunchAttribute overlap = {};
  overlap.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  overlap.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream();
  config.attrs = &overlap;
  config.numAttrs = kPlacement == Placement::Overlapped && kernels_may_overlap() ? 1 : 0;
  // (cudaLaunchKernelEx converts each argument to its parameter's type, as <<<>>> does.)
  NALA_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, args...));
}

// Blocks needed to cover `work` items at `items_per_block` per block, capped at kMaxBlocks.
inline unsigned num_blocks(int64_t work, int64_t items_per_block) {
  return static_cast<unsigned>(
      std::clamp<int64_t>((work + items_per_block - 1) / items_per_block, 1, kMaxBlocks));
}

// f(i) for every i < n, in a grid-stride loop.
template <typename F>
__global__ void for_each_index_kernel(int64_t n, F f) {
  after_previous_kernel();
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step)
    f(i);
}

template <typename F>
void for_each_index(int64_t n, F f) {
  if (n <= 0) return;
  constexpr int kThreads = 256;
  launch_kernel(for_each_index_kernel<F>, num_blocks(n, kThreads), kThreads, 0, n, f);
}

// ---- elements in 16-byte pieces ----
// Memory-bound kernels take kWidth consecutive elements a thread: one, or a 16-byte piece of
// each contiguous operand (kPiece<T> elements) when the pointers are 16-byte aligned and the
// pieces tile the elements exactly. For float32 that is a quarter of the load and store
// instructions and index arithmetic, which bound such kernels one element at a time (the copy
// went from 2.2-2.3 to 3.6-3.7 TB/s on the H200, docs/benchmarks.md).
// Aligned as one access of the whole, up to 16 bytes (the widest a thread loads at once; wider
// groups would demand an alignment the tensors' allocations do not promise).
template <typename T, int kWidth>
struct alignas(sizeof(T) * kWidth < 16 ? sizeof(T) * kWidth : 16) Elements {
  T v[kWidth];
};

template <int kWidth, typename T>
__device__ Elements<T, kWidth> load_elements(const T* p) {
  return *reinterpret_cast<const Elements<T, kWidth>*>(p);
}

template <int kWidth, typename T>
__device__ void store_elements(T* p, const Elements<T, kWidth>& e) {
  *reinterpret_cast<Elements<T, kWidth>*>(p) = e;
}

template <typename T>
constexpr int kPiece = 16 / sizeof(T);

// Contiguous arrays (or rows) of n elements go in pieces when n is whole pieces and each
// pointer is 16-byte aligned.
template <typename T>
bool contiguous_pieces(int64_t n, std::initializer_list<const void*> pointers) {
  return n % kPiece<T> == 0 && aligned16(pointers);
}

// f(std::integral_constant<int, kWidth>{}): pieces when `pieces` is true, else one element.
template <typename T, typename F>
void with_width(bool pieces, F f) {
  if (pieces) return f(std::integral_constant<int, kPiece<T>>{});
  f(std::integral_constant<int, 1>{});
}

// The block's dynamic shared memory (the launch's third parameter), 16-byte aligned, as T.
template <typename T>
__device__ T* shared_memory() {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  return reinterpret_cast<T*>(shared_bytes);
}

// ---- dividing a grid of cells among a block's threads ----

// The cells (row, col) of a grid with `cols` columns, in row-major order, that this thread
// visits: flat cell `first`, then every `step`-th; by default cell threadIdx.x, then every
// blockDim.x-th (the block's threads dealt the cells in turn). One division at the start, none
// per step. Loops read
//   for (GridWalk w(cols); w.row < rows; w.next()) ...
// Row is int, or int64_t where rows run past 32 bits (images of a batch).
template <typename Row = int>
struct GridWalk {
  Row row;
  int col;
  const int cols;
  const Row row_step;
  const int col_step;
  __device__ explicit GridWalk(int num_cols)
      : GridWalk(static_cast<Row>(threadIdx.x), num_cols, static_cast<int>(blockDim.x)) {}
  __device__ GridWalk(Row first, int num_cols, int step)
      : row(first / num_cols),
        col(static_cast<int>(first % num_cols)),
        cols(num_cols),
        row_step(step / num_cols),
        col_step(step % num_cols) {}
  __device__ void next() {
    row += row_step;
    col += col_step;
    if (col >= cols) {
      col -= cols;
      ++row;
    }
  }
};

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

// The sums over a 1-d block of kThreads threads (a multiple of 32) of each of kCount values a
// thread holds, v[i]; store(i, total) for each i, called once, by thread i % kThreads. Each warp
// sums its lanes' values by shuffles, then the warps' partials are added in warp order: one
// barrier for all kCount values, where kCount block_reduce calls would take two each. All
// threads of the block must call it.
template <int kThreads, int kCount, typename T, typename Store>
__device__ void block_sum_each(const T (&v)[kCount], Store store) {
  constexpr int kWarps = kThreads / kWarpSize;
  __shared__ T warp_sums[kWarps][kCount];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
#pragma unroll
  for (int i = 0; i < kCount; ++i) {
    const T warp_sum = warp_reduce<SumOp<T>>(v[i]);
    if (lane == 0) warp_sums[warp][i] = warp_sum;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kCount; i += kThreads) {
    T total = T(0);
    for (int w = 0; w < kWarps; ++w) total += warp_sums[w][i];
    store(i, total);
  }
}

// A sum over a whole grid in one launch: every block hands in its partial sum (a value in
// thread 0), partials[block] holds it, and the block that finishes last adds the partials
// (each thread a strided share of them, then block_reduce: a fixed order, the same total
// whichever block is last, so results do not depend on timing) and calls finish(total) in its
// thread 0. `done` is the kernel's own __device__ count of finished blocks, bumped only after
// the block's partial is visible to every block (__threadfence); the last block sets it back
// to 0 for the next launch, which starts only after this one has finished (after_previous_kernel
// on the one stream: two launches of a kernel at once, on two streams, would share the count).
// All threads of every block must call it.
template <typename T, typename Finish>
__device__ void sum_in_last_block(T block_partial, T* partials, unsigned int& done, Finish finish) {
  const unsigned blocks = gridDim.x * gridDim.y, block = blockIdx.y * gridDim.x + blockIdx.x;
  __shared__ bool last;
  if (threadIdx.x == 0) {
    partials[block] = block_partial;
    __threadfence();
    last = atomicAdd(&done, 1u) == blocks - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();  // the other blocks' partials, seen through the count, before reading them
  T sum = T(0);
  for (unsigned b = threadIdx.x; b < blocks; b += blockDim.x) sum += __ldcg(partials + b);
  sum = block_reduce<SumOp<T>>(sum);
  if (threadIdx.x == 0) {
    finish(sum);
    done = 0;
  }
}

// ---- one team of threads per row ----
// A row kernel takes a team and loops over its rows with TeamRows (below),
//   for (TeamRows r(team, rows); r.more(); r.advance()) ... r.row ... if (r.active) store ...
// with thread team.rank() of team.size() visiting columns rank, rank + size, ..., and combining
// across the team with team_reduce. The loop runs in step across a whole warp, so every lane of
// a warp reaches the same team_reduce calls and the shuffles can name the full warp: with a
// mask known only at run time, each shuffle step compiled to a convergence check around it
// (about 12 instructions instead of 2; ncu, docs/benchmarks.md).

// A group of `lanes` consecutive lanes of a warp per row (lanes a power of two, at most 32): for
// rows of up to kWarpRowMaxCols elements. Short rows take fewer lanes, so that a warp works on
// several rows at once (32 columns: 8 lanes of 4 columns, 4 rows per warp) instead of leaving
// most lanes idle and waiting on one row's loads and shuffles at a time.
struct LanesPerRow {
  static constexpr int kBlockThreads = 256;
  int lanes, lanes_log2;  // thread / lanes as a shift: a 64-bit division costs ~100 instructions
  __host__ __device__ explicit LanesPerRow(int team_lanes) : lanes(team_lanes), lanes_log2(0) {
    while ((1 << lanes_log2) < lanes) ++lanes_log2;
  }
  __device__ int rank() const { return threadIdx.x & (lanes - 1); }
  __device__ int size() const { return lanes; }
  __device__ int64_t first_row() const {
    return (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> lanes_log2;
  }
  __device__ int64_t row_stride() const {
    return (static_cast<int64_t>(gridDim.x) * blockDim.x) >> lanes_log2;
  }
  // This team's row minus its warp's first team's row.
  __device__ int offset_in_warp() const { return (threadIdx.x % kWarpSize) >> lanes_log2; }
};

// A block per row: for long rows.
struct BlockPerRow {
  static constexpr int kBlockThreads = 512;
  __device__ int rank() const { return threadIdx.x; }
  __device__ int size() const { return blockDim.x; }
  __device__ int64_t first_row() const { return blockIdx.x; }
  __device__ int64_t row_stride() const { return gridDim.x; }
  __device__ int offset_in_warp() const { return 0; }
};

// A team's rows, first_row(), first_row() + row_stride(), ..., while its warp's first team has
// one: a team past the last row (rows not a multiple of the teams in a warp) runs the last row
// again with active false, computing but not storing, so that its warp stays in step.
template <typename Team>
struct TeamRows {
  int64_t next, rows, stride;
  int warp_offset;
  int64_t row;  // the row to work on: the team's own, or the last one when not active
  bool active;
  __device__ TeamRows(Team team, int64_t num_rows)
      : next(team.first_row()),
        rows(num_rows),
        stride(team.row_stride()),
        warp_offset(team.offset_in_warp()) {
    settle();
  }
  __device__ bool more() const { return next - warp_offset < rows; }
  __device__ void advance() {
    next += stride;
    settle();
  }
  __device__ void settle() {
    active = next < rows;
    row = active ? next : rows - 1;
  }
};

// Butterfly shuffles over the whole warp, which runs in step (TeamRows, or the attention
// kernels' for_team_tokens): the offsets below `lanes` never leave a team, so a team of
// `lanes` lanes takes log2(lanes) steps. Every lane of a warp has the same `lanes`, so each
// step's branch goes the same way for the whole warp and the shuffles can name all of it.
template <typename Op, typename T>
__device__ T team_reduce(LanesPerRow team, T v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    if (offset < team.lanes) v = Op::combine(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

template <typename Op, typename T>
__device__ T team_reduce(BlockPerRow, T v) {
  return block_reduce<Op>(v);
}

// Calls launch(team, blocks, threads), which launches a row kernel on stream(), with a group of
// lanes per row when rows have at most kWarpRowMaxCols columns (about a quarter as many lanes
// as columns, 4 to 32) and a block per row otherwise.
constexpr int64_t kWarpRowMaxCols = 1024;

// About a quarter as many lanes as columns, a power of two from 4 to 32.
inline int lanes_per_row(int64_t cols) {
  int lanes = 4;
  while (lanes < kWarpSize && 4 * lanes < cols) lanes *= 2;
  return lanes;
}

template <typename Launch>
void launch_per_row(int64_t rows, int64_t cols, Launch launch) {
  if (rows <= 0) return;
  if (cols <= kWarpRowMaxCols) {
    const int lanes = lanes_per_row(cols);
    constexpr int kThreads = LanesPerRow::kBlockThreads;
    launch(LanesPerRow(lanes), num_blocks(rows, kThreads / lanes), kThreads);
  } else {
    launch(BlockPerRow{}, num_blocks(rows, 1), BlockPerRow::kBlockThreads);
  }
}

// ---- reduction over the middle axis ----
//
// y[o, j] = Op over k < r of value(o, k, j), for o < outer, j < inner, where value reads an
// (outer, r, inner) array (MiddleAxisElement, or a product of arrays). The r axis may be cut into
// `splits` chunks of `chunk` elements, each reduced on its own into a partial result
//   partial[o, s, j] = Op over k in [s chunk, min(r, (s + 1) chunk)) of value(o, k, j),
// so that few but long reductions still fill the GPU; a second pass reduces the partials.
// With splits == 1 the first pass writes y itself. A pass hands each result to a store functor,
// store(index, value) with index (o * splits + s) * inner + j: StoreAt writes an array, and a
// caller may send the results elsewhere (layer norm's dgamma and dbeta in one pass).

template <typename T>
struct StoreAt {
  T* out;
  __device__ void operator()(int64_t index, T v) const { out[index] = v; }
};

template <typename T>
struct MiddleAxisElement {
  const T* x;
  int64_t r, inner;
  __device__ T operator()(int64_t o, int64_t k, int64_t j) const {
    return x[(o * r + k) * inner + j];
  }
};

// Row `row` = o * splits + s of the partial results reduces value(o, k, j) for k in [begin, end).
struct Chunk {
  int64_t o, begin, end;
};

__device__ inline Chunk chunk_of_row(int64_t row, int64_t r, int64_t chunk, int64_t splits) {
  const int64_t begin = row % splits * chunk;
  return {row / splits, begin, begin + chunk < r ? begin + chunk : r};
}

// One thread per output, combining its chunk serially. Neighbouring threads have neighbouring j,
// so their reads are coalesced when inner > 1.
template <typename Op, typename T, typename Value, typename Store>
struct ReduceChunkSerially {
  int64_t r, inner, chunk, splits;
  Value value;
  Store store;
  __device__ void operator()(int64_t index) const {
    const int64_t row = index / inner;
    const int64_t j = index - row * inner;
    const Chunk c = chunk_of_row(row, r, chunk, splits);
    T acc = Op::identity();
    for (int64_t k = c.begin; k < c.end; ++k) acc = Op::combine(acc, value(c.o, k, j));
    store(index, acc);
  }
};

// inner == 1: a team per row (o, s), result o * splits + s = Op over the chunk of
// value(o, k, 0).
template <typename Op, typename T, typename Team, typename Value, typename Store>
__global__ void reduce_rows_kernel(Team team, int64_t outer, int64_t r, int64_t chunk,
                                   int64_t splits, Value value, Store store) {
  after_previous_kernel();
  for (TeamRows rows(team, outer * splits); rows.more(); rows.advance()) {
    const Chunk c = chunk_of_row(rows.row, r, chunk, splits);
    T acc = Op::identity();
    for (int64_t k = c.begin + team.rank(); k < c.end; k += team.size())
      acc = Op::combine(acc, value(c.o, k, 0));
    acc = team_reduce<Op>(team, acc);
    if (rows.active && team.rank() == 0) store(rows.row, acc);
  }
}

constexpr int kColumnBlockThreads = 512;

// inner > 1: a block per tile of blockDim.x consecutive columns j of one row (o, s):
// result (o * splits + s) * inner + j = Op over the chunk of value(o, k, j). threadIdx.x walks the
// columns (so a warp reads whole 32-byte sectors), threadIdx.y strides over the chunk, and a tree
// in shared memory combines the blockDim.y partials of each column (blockDim.y a power of two).
template <typename Op, typename T, typename Value, typename Store>
__global__ void reduce_columns_kernel(int64_t outer, int64_t r, int64_t inner, int64_t chunk,
                                      int64_t splits, Value value, Store store) {
  after_previous_kernel();
  __shared__ T partials[kColumnBlockThreads];
  const unsigned tx = threadIdx.x, ty = threadIdx.y, width = blockDim.x;
  const int64_t tiles_per_row = (inner + width - 1) / width;
  for (int64_t tile = blockIdx.x; tile < outer * splits * tiles_per_row; tile += gridDim.x) {
    const int64_t row = tile / tiles_per_row;
    const Chunk c = chunk_of_row(row, r, chunk, splits);
    const int64_t j = tile % tiles_per_row * width + tx;
    T acc = Op::identity();
    if (j < inner)
      for (int64_t k = c.begin + ty; k < c.end; k += blockDim.y)
        acc = Op::combine(acc, value(c.o, k, j));
    partials[ty * width + tx] = acc;
    __syncthreads();
    for (unsigned half = blockDim.y / 2; half > 0; half /= 2) {
      if (ty < half)
        partials[ty * width + tx] =
            Op::combine(partials[ty * width + tx], partials[(ty + half) * width + tx]);
      __syncthreads();
    }
    if (ty == 0 && j < inner) store(row * inner + j, partials[tx]);
    __syncthreads();  // the next tile overwrites partials
  }
}

// The smallest power of two >= n, at least 1 and at most `cap` (itself a power of two).
__host__ __device__ inline unsigned pow2_at_least(int64_t n, unsigned cap) {
  unsigned p = 1;
  while (p < cap && p < n) p *= 2;
  return p;
}

// One thread per output when chunks are this short, or, for columns (inner > 1), when there are
// this many outputs: enough threads to fill the GPU, each reading coalesced with its neighbours.
constexpr int64_t kSerialMaxChunk = 32;
constexpr int64_t kSerialMinColumns = int64_t(1) << 17;

// One pass: results (outer, splits, inner) from value over (outer, r, inner), splits =
// ceil(r / chunk), each to store(index, result).
template <typename Op, typename Value, typename Store>
void reduce_middle_axis_pass(int64_t outer, int64_t r, int64_t inner, int64_t chunk, int64_t splits,
                             Value value, Store store) {
  using T = decltype(value(int64_t(0), int64_t(0), int64_t(0)));
  const int64_t outputs = outer * splits * inner;
  if (chunk <= kSerialMaxChunk || (inner > 1 && outputs >= kSerialMinColumns)) {
    for_each_index(outputs,
                   ReduceChunkSerially<Op, T, Value, Store>{r, inner, chunk, splits, value, store});
  } else if (inner == 1) {
    launch_per_row(outer * splits, chunk, [&](auto team, unsigned blocks, int threads) {
      launch_kernel(reduce_rows_kernel<Op, T, decltype(team), Value, Store>, blocks, threads, 0,
                    team, outer, r, chunk, splits, value, store);
    });
  } else {
    // A tile row is one 32-byte sector of columns (8 floats, 4 doubles), fewer when inner is
    // small; blockDim.y covers the rest of the block, or the whole chunk when it is shorter.
    // When such tiles would leave multiprocessors idle (few, long columns: layer norm's
    // parameter gradients), a block takes one column instead: more blocks, each reading a
    // strided column, which matters little at so few tiles.
    unsigned width = pow2_at_least(inner, 32 / sizeof(T));
    int64_t tiles = outer * splits * ((inner + width - 1) / width);
    if (tiles < multiprocessor_count()) {
      width = 1;
      tiles = outer * splits * inner;
    }
    const unsigned height = pow2_at_least(chunk, kColumnBlockThreads / width);
    launch_kernel(reduce_columns_kernel<Op, T, Value, Store>, num_blocks(tiles, 1),
                  dim3(width, height), 0, outer, r, inner, chunk, splits, value, store);
  }
}

// Partial results of split reductions live in this fixed device array (one per translation unit;
// static memory, not an allocation). Reusing it is safe because all work is ordered on the one
// stream and every kernel begins with after_previous_kernel(): a reduction's second pass has
// finished reading it before the next reduction's first pass writes, also when launches overlap.
constexpr int64_t kSplitScratchElements = int64_t(1) << 16;
static __device__ double split_scratch[kSplitScratchElements];

// Looked up once per translation unit, not at every launch that uses it.
static inline double* split_scratch_address() {
  static double* const address = [] {
    void* scratch = nullptr;
    NALA_CUDA_CHECK(cudaGetSymbolAddress(&scratch, split_scratch));
    return static_cast<double*>(scratch);
  }();
  return address;
}

// Splitting aims for about kTargetPartials partial results, each over at least kMinChunk elements.
constexpr int64_t kTargetPartials = int64_t(1) << 15;
constexpr int64_t kMinChunk = 1024;

template <typename Op, typename T, typename Value>
void reduce_middle_axis(int64_t outer, int64_t r, int64_t inner, Value value, T* y) {
  static_assert(sizeof(T) <= sizeof(double), "split_scratch keeps each T in a double's slot");
  if (outer <= 0 || inner <= 0) return;
  const int64_t outputs = outer * inner;
  const int64_t splits = std::max<int64_t>(
      1, std::min({(r + kMinChunk - 1) / kMinChunk, (kTargetPartials + outputs - 1) / outputs,
                   kSplitScratchElements / outputs}));
  if (splits == 1) return reduce_middle_axis_pass<Op>(outer, r, inner, r, 1, value, StoreAt<T>{y});
  T* partials = reinterpret_cast<T*>(split_scratch_address());
  const int64_t chunk = (r + splits - 1) / splits;
  const int64_t used_splits = (r + chunk - 1) / chunk;  // <= splits: no chunk is empty
  reduce_middle_axis_pass<Op>(outer, r, inner, chunk, used_splits, value, StoreAt<T>{partials});
  reduce_middle_axis_pass<Op>(outer, used_splits, inner, used_splits, 1,
                              MiddleAxisElement<T>{partials, used_splits, inner}, StoreAt<T>{y});
}

}  // namespace nala::kernels::cuda
