// Attention on the GPU: linear attention with the NaLa or the ReLU feature map (NALAFORMER.md
// section 1) and softmax attention, forward and backward. The passes mirror
// kernels/cpu/attention.cpp; docs/nala_backward.md derives the gradients.
//
// Linear attention, per head (a block per chunk of chunk_tokens(bh, n, d) tokens and head):
//   forward   1. linear_feature_sums_kernel<Key>: per key chunk, sum_j K'_j^T v_j and
//                sum_j phiK_j;
//             2. SumPartials: S and kbar = (sum over the chunks) / N, in a fixed order;
//             3. linear_output_kernel: per query, z_i and o_i = z_i Q'_i S.
//   backward  1a. linear_query_backward_kernel: dq, and per query chunk the partial sum
//                 dkbar = sum_i dden_i phiQ_i;
//             1b. linear_feature_sums_kernel<Query>: per query chunk, the partial sum
//                 dS = sum_i z_i Q'_i^T do_i (the same pass as forward 1, on the queries);
//             2. SumPartials: dS / N and dkbar / N;
//             3. linear_key_backward_kernel: dk and dv.
// Reading q, k, v and writing o once each is the forward's memory floor; both forward passes
// stream one pair of them. The backward reads q and do twice (1a, 1b): splitting dS off the
// query backward leaves each pass one product and room for four blocks per SM.
//
// Softmax attention follows FlashAttention-2: a block per tile of queries runs an online softmax
// over the tiles of keys; the backward recomputes the probabilities from the saved lse, once in
// a kernel per key tile (dk, dv) and once in a kernel per query tile (dq), so that every
// gradient has one writer (no atomics, deterministic).
//
// How the linear-attention kernels work on a tile of tokens. Every pass runs a team of lanes per
// token, a lane per pair of columns (pair_lanes; the output pass a lane per four pairs, the
// feature-sums pass at d > 32 per two): the lanes read q, k, v, sin, cos straight from
// global memory (consecutive lanes, consecutive pairs: coalesced; a batch of tokens' loads in
// flight at once), sum over a row by shuffles within the team, and write the features (Q', K')
// token-major into shared memory (the query backward stages do with asynchronous copies; S and
// dS / N are staged once a block, stage_operand_matrix).
// The D x d products then read the feature arrays in either orientation (Operand), on the tensor
// cores for float32 (ProductTiling: one TF32 product while allow_tf32(), the default, else
// 3xTF32) and on the FP units in 4 x 4 register blocks for float64; a running sum over the tiles
// (S, dS) stays in registers (ProductSum). Leading dims are padded so that the tensor cores'
// fragment loads are free of bank conflicts (k_rows_ld, i_rows_ld). The softmax kernels stage rows
// with an odd row stride (d + 1), which puts the elements that a warp reads at one time in distinct
// banks. Linear attention takes head dims up to 64 on CUDA (check_linear_head_dim); pointers must
// be 16-byte aligned.
#include <cuda_pipeline.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda/common.h"
#include "kernels/kernels.h"

namespace nala::kernels::cuda {
namespace {

constexpr int kThreads = 128;  // threads per block of every kernel below but one:
// the linear-attention output kernel's 256 threads share one copy of S in shared memory (at
// d = 64, S takes 36 KiB of a block's 53: 128-thread blocks would leave an SM 16 warps).
constexpr int kOutputThreads = 256;
// Each thread holds at most kHeld blocks of 16 values of a product (ProductTiling below), so a
// block of kThreads threads computes products of at most kMaxProduct elements (the output
// kernel's kOutputThreads, twice that).
constexpr int kHeld = 4;
constexpr int kMaxProduct = kHeld * 16 * kThreads;
// Linear attention: tokens per block (each block writes one partial sum of its chunk). Chunks
// are small enough that the bh heads give about 512 blocks (a few per SM, so short sequences
// still fill the GPU), and at most max(1024, 32 d) tokens long (a power of two, at least 64).
// The cap keeps more blocks in long sequences while the partial sums, (d + 1) D values a chunk
// (D = 2d for NaLa) against 2d values of k and v a token, are (d + 1) / chunk of what the pass
// reads, about 3% at the cap; written once and read once more, at d = 64 they cost 2% of the
// forward at 1024 tokens a chunk (docs/benchmarks.md).
int64_t chunk_tokens(int64_t bh, int64_t n, int64_t d) {
  const int64_t chunks_wanted = std::max<int64_t>(1, 512 / std::max<int64_t>(bh, 1));
  const int64_t longest = std::max<int64_t>(1024, 32 * d);
  int64_t chunk = 64;
  while (chunk < longest && chunk * chunks_wanted < n) chunk *= 2;
  return chunk;
}
// Added to the normaliser's denominator: z_i = 1 / (phiQ_i . kbar + eps).
constexpr double kDenominatorEps = 1e-6;
// The largest tile of tokens a block works on (tiles are powers of two, at least 4; linear
// attention's also a multiple of the teams per warp: linear_tile).
constexpr int kMaxTile = 64;

int64_t num_chunks(int64_t bh, int64_t n, int64_t d) {
  const int64_t chunk = chunk_tokens(bh, n, d);
  return (n + chunk - 1) / chunk;
}

void check_head_dim(const char* kernel, int64_t d) {
  if (d <= 0 || d % 4 != 0)
    throw std::invalid_argument(std::string(kernel) + ": head dim " + std::to_string(d) +
                                " is not a positive multiple of 4");
}

// The linear-attention kernels take head dims up to kMaxLinearHeadDim: a token's team of lanes
// (a lane per pair of columns) fits in a warp, and the block's products, D x d at most, fit in
// the registers of ProductSum.
constexpr int kMaxLinearHeadDim = 64;
static_assert(2 * kMaxLinearHeadDim * kMaxLinearHeadDim <= kMaxProduct);
void check_linear_head_dim(const char* kernel, int64_t d) {
  check_head_dim(kernel, d);
  if (d > kMaxLinearHeadDim)
    throw std::invalid_argument(std::string(kernel) + ": head dim " + std::to_string(d) +
                                " is larger than the CUDA kernels' " +
                                std::to_string(kMaxLinearHeadDim));
}

// The kernels move rows with 16-byte vector accesses.
void check_aligned(const char* kernel, std::initializer_list<const void*> pointers) {
  if (!aligned16(pointers))
    throw std::invalid_argument(std::string(kernel) + ": pointers must be 16-byte aligned");
}

// ---- shared memory ----

// Offsets (in elements) of arrays placed one after another in a block's dynamic shared memory.
// Each array starts at a multiple of 4 elements, so 4-element vector accesses stay aligned.
struct SharedLayout {
  int size = 0;
  __host__ __device__ int take(int count) {
    const int at = size;
    size += (count + 3) / 4 * 4;
    return at;
  }
};

// The most dynamic shared memory a block may ask for on this device.
size_t max_shared_bytes() {
  static const auto bytes =
      static_cast<size_t>(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin));
  return bytes;
}

// The tile (kMaxTile, kMaxTile / 2, ..., smallest) for a kernel whose block needs bytes(tile) of
// shared memory: the largest whose shared memory lets four blocks share an SM, failing that two,
// failing that one. Several blocks per SM keep it busy while one waits at a barrier. Tiles of at
// least `preferred` tokens are tried first for four and two blocks: the linear-attention kernels
// prefer 16, which keeps their products on the tensor cores (m16 fragments).
template <typename Bytes>
int choose_tile(const char* kernel, int preferred, Bytes bytes, int smallest = 4) {
  const size_t limit = max_shared_bytes();
  for (const size_t budget : {limit / 4, limit / 2})
    for (int tile = kMaxTile; tile >= std::max(preferred, smallest); tile /= 2)
      if (bytes(tile) <= budget) return tile;
  for (const size_t budget : {limit / 4, limit / 2, limit})
    for (int tile = kMaxTile; tile >= smallest; tile /= 2)
      if (bytes(tile) <= budget) return tile;
  throw std::invalid_argument(std::string(kernel) +
                              ": head dim too large for the GPU's shared memory");
}

// launch_kernel<kPlacement>(kernel, grid, kBlockThreads, bytes, args...) for a kernel whose
// dynamic shared memory may pass 48 KiB: past it a kernel must opt in, once per kernel, to the
// device's limit (a driver call, not one per launch).
template <auto kernel, Placement kPlacement, int kBlockThreads = kThreads, typename... Args>
void launch_large_shared(dim3 grid, size_t bytes, const Args&... args) {
  static const bool allowed = [] {
    NALA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(max_shared_bytes())));
    return true;
  }();
  (void)allowed;
  launch_kernel<kPlacement>(kernel, grid, kBlockThreads, bytes, args...);
}

// The linear-attention grids are one wave of long, equal blocks (about 512: chunk_tokens), so
// they are placed at once when the kernel before has finished (common.h; overlapped, NaLa
// fwd+bwd at d = 32, N = 16384 ran 5% slower: docs/benchmarks.md). The softmax attention grids
// (a block per tile of queries or keys and head) run in many waves and overlap as usual.
constexpr Placement kLinearPlacement = Placement::Spread;

// ---- vector access ----

// Two consecutive elements at an address aligned to their size.
__device__ inline void store2(float* p, float x0, float x1) {
  *reinterpret_cast<float2*>(p) = make_float2(x0, x1);
}
__device__ inline void store2(double* p, double x0, double x1) {
  *reinterpret_cast<double2*>(p) = make_double2(x0, x1);
}

__device__ inline void load2(const float* p, float& x0, float& x1) {
  const float2 v = *reinterpret_cast<const float2*>(p);
  x0 = v.x;
  x1 = v.y;
}
__device__ inline void load2(const double* p, double& x0, double& x1) {
  const double2 v = *reinterpret_cast<const double2*>(p);
  x0 = v.x;
  x1 = v.y;
}

// Four consecutive elements at a 16-byte aligned address.
__device__ inline void load4(const float* p, float (&x)[4]) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  x[0] = v.x;
  x[1] = v.y;
  x[2] = v.z;
  x[3] = v.w;
}
__device__ inline void load4(const double* p, double (&x)[4]) {
  const double2 a = reinterpret_cast<const double2*>(p)[0];
  const double2 b = reinterpret_cast<const double2*>(p)[1];
  x[0] = a.x;
  x[1] = a.y;
  x[2] = b.x;
  x[3] = b.y;
}
__device__ inline void store4(float* p, const float (&x)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(x[0], x[1], x[2], x[3]);
}
__device__ inline void store4(double* p, const double (&x)[4]) {
  store2(p, x[0], x[1]);
  store2(p + 2, x[2], x[3]);
}

// ---- products of staged operands ----

// acc[r][c] += sum_{k < depth} p[k * ldp + r] q[k * ldq + c]  (r, c < 4): a 4 x 4 block of
// P^T Q, the summed index running down the rows of both shared-memory operands (the softmax
// kernels' products).
template <typename T>
__device__ void accumulate_block(int depth, const T* p, int ldp, const T* q, int ldq,
                                 T (&acc)[4][4]) {
#pragma unroll 4
  for (int k = 0; k < depth; ++k) {
    T a[4], b[4];
    load4(p + k * ldp, a);
    load4(q + k * ldq, b);
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[r][c] += a[r] * b[c];
  }
}

// m[r][c] += acc[r][c] for the 4 x 4 block at m (leading dim ld).
template <typename T>
__device__ void add_block(T* m, int ld, const T (&acc)[4][4]) {
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    T row[4];
    load4(m + r * ld, row);
#pragma unroll
    for (int c = 0; c < 4; ++c) row[c] += acc[r][c];
    store4(m + r * ld, row);
  }
}

// The linear-attention kernels' products are C = A B with A (M x K) and B (K x N) in shared
// memory. An Operand names where element (i, k) of one lies, i its own index (a row of A, a
// column of B) and k the summed one, so that a product reads a staged array in whichever
// orientation it was written, with no transposed copy.
template <typename T>
struct Operand {
  const T* p;
  int i_step, k_step;
  __device__ T operator()(int i, int k) const { return p[i * i_step + k * k_step]; }
};
// x[k][i] (leading dim ld) and x[i][k].
template <typename T>
__device__ Operand<T> k_rows(const T* x, int ld) {
  return {x, 1, ld};
}
template <typename T>
__device__ Operand<T> i_rows(const T* x, int ld) {
  return {x, ld, 1};
}

// Leading dims of staged operands, chosen so that the tensor cores' fragment loads are free of
// bank conflicts (see ProductTiling): a lane (g, t) of a load reads element (i0 + g, k0 + t),
// so rows of k (k_rows) need a leading dim of 8 or 24 mod 32 words, rows of i (i_rows) one of
// 4 mod 8. Counts that are not multiples of 8 never reach the tensor cores.
__host__ __device__ inline int k_rows_ld(int count) { return count % 16 == 0 ? count + 8 : count; }
__host__ __device__ inline int i_rows_ld(int count) { return count % 8 == 0 ? count + 4 : count; }

// The block's threads share the M x N values of C (M N <= kMaxProduct), each holding some blocks
// of 16 values in registers; each pair (C(m, n), C(m, n + 1)) then goes to an epilogue(m, n, c0,
// c1) that stores or adds it, and reaches exactly one thread.
//
// float32 runs on the tensor cores when the shape allows (M % 16, N % 8, K % 8 all 0, sm_80 or
// later): mma.sync m16n8k8 in TF32, which reads the top 19 bits of each operand (10 of float32's
// 23 mantissa bits). Each operand is split as x = big + small: big is x cut to those bits and
// small = x - big is exact; C accumulates small_a big_b + big_a small_b + big_a big_b ("3xTF32",
// kPasses = 3). The dropped small_a small_b and the bits the tensor cores cut from small are each
// at most 2^-20 of the product, against float32's 2^-24 rounding per operation. (The cut is one
// AND; cvt.rna.tf32.f32, rounding instead, compiles to about five instructions on sm_90.) With
// allow_tf32() (on by default, like the GEMMs') C accumulates one TF32 product (kPasses = 1): the
// kernels store each operand already rounded to TF32 (operand_value, once per element where a
// fragment load would round it at every use; the query backward's do, staged by cp.async, in a
// pass of its own), so the fragments take its bits as they are; each
// operand is within 2^-11 of its value and each term within 2^-10 of the exact product, with
// no bias (a cut would shrink every term).
// Fragments of one m16n8k8 (lane = 4 g + t, g < 8, t < 4; PTX ISA, "Matrix fragments for
// mma.m16n8k8", .tf32): A register r holds A(g + 8 (r % 2), t + 4 (r / 2)), B register r holds
// B(t + 4 r, g), C register r holds C(g + 8 (r / 2), 2 t + r % 2). A warp holds 16 x 32 blocks
// of C (four m16n8 tiles sharing A's fragments) when N % 32 is 0, else 16 x 8 blocks: warp w
// the blocks w, w + kWarps, ...
// Otherwise (float64, or other shapes) thread x holds the 4 x 4 blocks x, x + kBlockThreads, ...
// and multiplies on the FP units. Either way a thread holds at most blocks_held blocks of 16
// values (kHeld, or ProductSum's kBlocks).

// x rounded to the nearest TF32 value (ties away from zero): half of the last kept bit is added,
// carrying into it, and the 13 bits below are cleared. That carry would turn a NaN whose
// mantissa is all ones into zero, so x * 0 is added: 0 for a finite x, NaN for a NaN or an
// infinity (which the products would turn into NaN or infinity anyway).
__device__ inline float round_tf32(float x) {
  const float rounded = __uint_as_float((__float_as_uint(x) + 0x1000u) & 0xffffe000u);
  return fmaf(x, 0.0f, rounded);
}

// A value as the kernels store it into a product's operand array: rounded to TF32 for one pass
// on the tensor cores (float, kPasses = 1), as it is for 3xTF32 (split at the product) and float64.
template <int kPasses, typename T>
constexpr bool kRoundsOperands = kPasses == 1 && std::is_same_v<T, float>;
template <int kPasses, typename T>
__device__ T operand_value(T x) {
  if constexpr (kRoundsOperands<kPasses, T>) return round_tf32(x);
  return x;
}
template <int kPasses, typename T>
__device__ void store_operand2(T* p, T x0, T x1) {
  store2(p, operand_value<kPasses>(x0), operand_value<kPasses>(x1));
}

// An operand's TF32 parts in fragment registers: its big part, x cut to TF32 for 3xTF32 and x's
// bits as stored for one pass (operand_value has rounded them), and for 3xTF32 the exact rest.
template <int kPasses>
__device__ uint32_t tf32_big(float x) {
  return kPasses == 3 ? __float_as_uint(x) & 0xffffe000u : __float_as_uint(x);
}
__device__ inline uint32_t tf32_small(float x, uint32_t big) {
  return __float_as_uint(x - __uint_as_float(big));
}

// c[0..3] += A B for one m16n8k8 tile.
__device__ inline void mma_tf32(float* c, const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if __CUDA_ARCH__ >= 800  // ProductTiling calls it only there
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// One step over k (k0 .. k0 + 7) of a 16 x 8 kTiles block of C on the tensor cores: the B
// fragments of its kTiles m16n8 tiles (columns n0 ...), split once, then multiplied with the A
// fragment of rows m0 ... m0 + 15 (split in turn): in 3xTF32 (kPasses 3: parts [0] big and [1]
// small), or one TF32 product (kPasses 1: part [0] only).
template <int kTiles, int kPasses>
struct Fragments {
  static_assert(kPasses == 1 || kPasses == 3);
  static constexpr int kParts = kPasses == 3 ? 2 : 1;
  uint32_t b[kParts][kTiles][2];

  __device__ Fragments(Operand<float> b_op, int n0, int k0) {
    const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
#pragma unroll
    for (int tile = 0; tile < kTiles; ++tile)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float x = b_op(n0 + 8 * tile + g, k0 + t + 4 * r);
        b[0][tile][r] = tf32_big<kPasses>(x);
        if constexpr (kPasses == 3) b[1][tile][r] = tf32_small(x, b[0][tile][r]);
      }
  }

  __device__ void multiply(Operand<float> a_op, int m0, int k0, float (&acc)[16]) const {
    const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
    uint32_t a[kParts][4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const float x = a_op(m0 + g + 8 * (r % 2), k0 + t + 4 * (r / 2));
      a[0][r] = tf32_big<kPasses>(x);
      if constexpr (kPasses == 3) a[1][r] = tf32_small(x, a[0][r]);
    }
    if constexpr (kPasses == 3) {
      // Three sweeps over the tiles, so that consecutive mma's add to different accumulators.
#pragma unroll
      for (int tile = 0; tile < kTiles; ++tile) mma_tf32(acc + 4 * tile, a[1], b[0][tile]);
#pragma unroll
      for (int tile = 0; tile < kTiles; ++tile) mma_tf32(acc + 4 * tile, a[0], b[1][tile]);
    }
#pragma unroll
    for (int tile = 0; tile < kTiles; ++tile) mma_tf32(acc + 4 * tile, a[0], b[0][tile]);
  }
};

// Which blocks of C a thread holds and how it computes one (see above). A block has room for 16
// values: on the tensor cores its m16n8 tiles (four, or one when N % 32 != 0), acc[4 tile + r]
// their C registers; on the FP units a 4 x 4 block, acc[4 r + c].
template <typename T, int kPasses, int kBlockThreads = kThreads>
struct ProductTiling {
  static constexpr int kWarps = kBlockThreads / 32;
  int M, N, K;
  bool tensor_cores;
  int tiles;  // m16n8 tiles per block on the tensor cores: 4, or 1 when N % 32 != 0

  // blocks_held: how many blocks a thread may hold (ProductSum's registers).
  __device__ ProductTiling(int m, int n, int k, int blocks_held = kHeld)
      : M(m), N(n), K(k), tensor_cores(false), tiles(n % 32 == 0 ? 4 : 1) {
#if __CUDA_ARCH__ >= 800
    tensor_cores = std::is_same_v<T, float> && M % 16 == 0 && N % 8 == 0 && K % 8 == 0 &&
                   (M >> 4) * (N >> (tiles == 4 ? 5 : 3)) <= blocks_held * kWarps;
#endif
  }
  // Rows and columns of blocks, as shifts: M and N are multiples of the blocks' sides (16 x 8
  // tiles, or 4 x 4), and a block's row and column by unsigned division (no sign fix-ups).
  __device__ int row_blocks() const { return tensor_cores ? M >> 4 : M >> 2; }
  __device__ int column_blocks() const { return tensor_cores ? N >> (tiles == 4 ? 5 : 3) : N >> 2; }
  __device__ int block_row(int block) const {
    return static_cast<int>(static_cast<unsigned>(block) / static_cast<unsigned>(column_blocks()));
  }
  __device__ int block_column(int block) const {
    return static_cast<int>(static_cast<unsigned>(block) % static_cast<unsigned>(column_blocks()));
  }
  // The h-th block this thread holds (h < blocks_held), or -1.
  __device__ int held(int h) const {
    const int blocks = row_blocks() * column_blocks();
    const int block = tensor_cores ? static_cast<int>(threadIdx.x / 32 + h * kWarps)
                                   : static_cast<int>(threadIdx.x + h * kBlockThreads);
    return block < blocks ? block : -1;
  }

  // acc += block `block` of A B.
  __device__ void accumulate(int block, Operand<T> a, Operand<T> b, T (&acc)[16]) const {
    if constexpr (std::is_same_v<T, float>)
      if (tensor_cores)
        return tiles == 4 ? accumulate_tf32<4>(block, a, b, acc)
                          : accumulate_tf32<1>(block, a, b, acc);
    const int m0 = 4 * block_row(block), n0 = 4 * block_column(block);
#pragma unroll 4
    for (int k = 0; k < K; ++k) {
      T x[4], y[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        x[r] = a(m0 + r, k);
        y[r] = b(n0 + r, k);
      }
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[4 * r + c] += x[r] * y[c];
    }
  }

  template <int kTiles>
  __device__ void accumulate_tf32(int block, Operand<float> a, Operand<float> b,
                                  float (&acc)[16]) const {
    const int m0 = 16 * block_row(block), n0 = 8 * kTiles * block_column(block);
#pragma unroll 2
    for (int k0 = 0; k0 < K; k0 += 8) {
      const Fragments<kTiles, kPasses> f(b, n0, k0);
      f.multiply(a, m0, k0, acc);
    }
  }

  // The blocks a warp holds (w, w + kWarps, ...) lie in one column of blocks when column_blocks()
  // divides the warps per block; when it holds more than one, acc[h] += held block h of A B
  // then loads and splits that column's B fragments once per step over k for all of them.
  __device__ bool held_share_columns() const {
    return tensor_cores && kWarps % column_blocks() == 0 && row_blocks() * column_blocks() > kWarps;
  }
  template <int kTiles, int kBlocks>
  __device__ void accumulate_held_tf32(Operand<float> a, Operand<float> b,
                                       float (&acc)[kBlocks][16]) const {
    int m0[kBlocks];
#pragma unroll
    for (int h = 0; h < kBlocks; ++h) {
      const int block = held(h);
      m0[h] = block < 0 ? -1 : 16 * block_row(block);
    }
    const int n0 = 8 * kTiles * block_column(static_cast<int>(threadIdx.x / 32));
#pragma unroll 2
    for (int k0 = 0; k0 < K; k0 += 8) {
      const Fragments<kTiles, kPasses> f(b, n0, k0);
#pragma unroll
      for (int h = 0; h < kBlocks; ++h)
        if (m0[h] >= 0) f.multiply(a, m0[h], k0, acc[h]);
    }
  }

  // epilogue(m, n, C(m, n), C(m, n + 1)) for each pair of block `block`.
  template <typename Epilogue>
  __device__ void hand_out(int block, const T (&acc)[16], Epilogue epilogue) const {
    if (tensor_cores) {
      const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
      const int m0 = 16 * block_row(block), n0 = 8 * tiles * block_column(block);
#pragma unroll
      for (int tile = 0; tile < 4; ++tile) {
        if (tile >= tiles) break;
        const int n = n0 + 8 * tile + 2 * t;
        epilogue(m0 + g, n, acc[4 * tile], acc[4 * tile + 1]);
        epilogue(m0 + g + 8, n, acc[4 * tile + 2], acc[4 * tile + 3]);
      }
      return;
    }
    const int m0 = 4 * block_row(block), n0 = 4 * block_column(block);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      epilogue(m0 + r, n0, acc[4 * r], acc[4 * r + 1]);
      epilogue(m0 + r, n0 + 2, acc[4 * r + 2], acc[4 * r + 3]);
    }
  }
};

// C = A B handed to an epilogue, one held block at a time (a product used once).
template <typename T, int kPasses, int kBlockThreads = kThreads, typename Epilogue>
__device__ void block_product(int M, int N, int K, Operand<T> a, Operand<T> b, Epilogue epilogue) {
  const ProductTiling<T, kPasses, kBlockThreads> tiling(M, N, K);
  for (int h = 0; h < kHeld; ++h) {
    const int block = tiling.held(h);
    if (block < 0) break;
    T acc[16] = {};
    tiling.accumulate(block, a, b, acc);
    tiling.hand_out(block, acc, epilogue);
  }
}

// A running sum C += A B over tiles of the summed index (the same M x N each time), its blocks
// held in registers from one tile to the next: kBlocks per thread, so M N <= kBlocks 16 kThreads
// (feature_sums picks kBlocks).
template <typename T, int kBlocks, int kPasses>
struct ProductSum {
  T acc[kBlocks][16] = {};

  __device__ void add(int M, int N, int K, Operand<T> a, Operand<T> b) {
    const ProductTiling<T, kPasses> tiling(M, N, K, kBlocks);
    if constexpr (std::is_same_v<T, float> && kBlocks > 1)  // one block: nothing to share
      if (tiling.held_share_columns())
        return tiling.tiles == 4 ? tiling.template accumulate_held_tf32<4>(a, b, acc)
                                 : tiling.template accumulate_held_tf32<1>(a, b, acc);
#pragma unroll
    for (int h = 0; h < kBlocks; ++h) {
      const int block = tiling.held(h);
      if (block < 0) break;
      tiling.accumulate(block, a, b, acc[h]);
    }
  }

  template <typename Epilogue>
  __device__ void hand_out(int M, int N, int K, Epilogue epilogue) const {
    const ProductTiling<T, kPasses> tiling(M, N, K, kBlocks);
#pragma unroll
    for (int h = 0; h < kBlocks; ++h) {
      const int block = tiling.held(h);
      if (block < 0) break;
      tiling.hand_out(block, acc[h], epilogue);
    }
  }
};

// ---- staging a matrix ----

// Copies the rows x cols matrix at `from` (row-major, cols a multiple of 4, 16-byte aligned) into
// shared memory at `to` (leading dim ld, a multiple of 4), each element as a product operand
// (operand_value): the linear-attention kernels' S, or dS / N, before their first tile. A thread
// issues kBatch loads of four elements before its first store: a loop of one load and one store
// waits out the memory's latency at every step (the output kernel's S at d = 64 was 32 such steps
// a thread, all of a block's threads waiting before any token).
template <int kPasses, typename T>
__device__ void stage_operand_matrix(const T* from, int rows, int cols, T* to, int ld) {
  constexpr int kBatch = 4;
  const int quads = rows * cols / 4, row_quads = cols / 4;
  for (int q0 = threadIdx.x; q0 < quads; q0 += kBatch * blockDim.x) {
    T v[kBatch][4];
#pragma unroll
    for (int b = 0; b < kBatch; ++b)
      if (q0 + b * blockDim.x < quads) load4(from + 4 * (q0 + b * blockDim.x), v[b]);
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int q = q0 + b * blockDim.x;
      if (q < quads) {
        const int r = q / row_quads, c = 4 * (q - r * row_quads);
        for (int e = 0; e < 4; ++e) v[b][e] = operand_value<kPasses>(v[b][e]);
        store4(to + r * ld + c, v[b]);
      }
    }
  }
}

// ---- staging rows ----

// Starts copying the first `rows` rows of x (rows of d) into staged[j][c] (token-major, row
// stride ld) and zeroes the rows below them, up to `tile`. The copies are asynchronous: call
// finish_staging() and then __syncthreads() before reading. Rows that stay 16-byte aligned
// (ld a multiple of 16 bytes) move in 16-byte pieces, others element by element.
template <typename T>
__device__ void stage_rows(int tile, int rows, int d, const T* x, T* staged, int ld) {
  const int piece = ld % kPiece<T> == 0 ? kPiece<T> : 1;  // elements per copy
  for (GridWalk w(d / piece); w.row < tile; w.next()) {
    const int c = piece * w.col;
    T* to = staged + w.row * ld + c;
    if (w.row < rows)
      __pipeline_memcpy_async(to, x + static_cast<int64_t>(w.row) * d + c, piece * sizeof(T));
    else
      for (int e = 0; e < piece; ++e) to[e] = 0;
  }
}

// Waits for this thread's stage_rows copies.
__device__ inline void finish_staging() {
  __pipeline_commit();
  __pipeline_wait_prior(0);
}

// ---- the rotary (NALAFORMER.md sections 1 and 3) ----

// rho on columns (c, c + 1) of one row, c even, with sin and cos pointing at column c:
//   y0 = x0 cos_c - x1 sin_c,  y1 = x1 cos_{c+1} + x0 sin_{c+1}.
template <typename T>
__device__ void rotary_pair(T x0, T x1, const T* sin, const T* cos, T& y0, T& y1) {
  y0 = x0 * cos[0] - x1 * sin[0];
  y1 = x1 * cos[1] + x0 * sin[1];
}

// rho^T on the pair: the transpose, which carries a gradient back through rho.
template <typename T>
__device__ void rotary_pair_transposed(T g0, T g1, const T* sin, const T* cos, T& y0, T& y1) {
  y0 = g0 * cos[0] + g1 * sin[1];
  y1 = g1 * cos[1] - g0 * sin[0];
}

// ---- the feature maps (as in kernels/cpu/attention.cpp) ----
// Both maps are phi = split(x) of a signed feature x of length d:
//   split(x) = [relu(x), relu(-x)] (NaLa, width 2d) or relu(x) (ReLU, width d).
// The key's signed feature is kappa = k^3 (NaLa) or k (ReLU); the query's is
// sigma_c = sign(q_c) (|q_c| / n)^p (NaLa) or q_c (ReLU).

template <FeatureMap fm>
constexpr int kHalves = fm == FeatureMap::Nala ? 2 : 1;

// Half `half` of split(x) for one element: relu(x) or relu(-x). A NaN stays NaN in both halves,
// as on the CPU (fmax would drop it, and a NaN input would give a finite, wrong output).
template <typename T>
__device__ T split_sign(int half, T x) {
  const T signed_x = half == 0 ? x : -x;
  return signed_x < 0 ? T(0) : signed_x;
}

// dx from the gradients of the element's halves: [x > 0] dpos - [x < 0] dneg.
template <FeatureMap fm, typename T>
__device__ T split_signs_backward(T x, T dpos, T dneg) {
  if (x > 0) return dpos;
  if (fm == FeatureMap::Nala && x < 0) return -dneg;
  return T(0);
}

template <FeatureMap fm, typename T>
__device__ T key_signed(T k) {
  if constexpr (fm == FeatureMap::Nala) return k * k * k;
  return k;
}

template <FeatureMap fm, typename T>
__device__ T key_signed_backward(T k, T dkappa) {
  if constexpr (fm == FeatureMap::Nala) return 3 * k * k * dkappa;
  return dkappa;
}

// The maps' arithmetic. In float, the MUFU unit's approximations, an instruction or two each
// where the accurate functions take 8 to 25 with branches for rare inputs; in double (which the
// gradient checks run) the accurate ones.
//   map_log2, map_exp2: lg2 / ex2.approx.ftz, within 2^-22 of log2 m for m in [0.5, 2] and 2
//     ulp elsewhere; subnormal inputs and results flush to 0. The error e in log2 m becomes a
//     relative error p ln2 e in m^p (p <= 4.5): below 8e-7 for m >= 0.5, 1.5e-6 at m = 1/8 (a
//     d = 64 row of equal elements), growing with |log2 m| only where m^p is small. An m below
//     2^-126 (|q_c| that far below the row's norm) has m^p below float's normal range anyway.
//   map_rsqrt: rsqrtf, 2 ulp (1 / n from the sum of squares, without a square root and a
//     division).
//   map_divide: __fdividef, 2 ulp, for z = 1 / (phiQ . kbar + eps) and sigma / q; it gives 0
//     where |b| > 2^126, which z's denominator reaches only when kbar is near float's range
//     (z is then below it anyway) and q only in a row whose sum of squares has overflowed
//     (NaN, query_scale).
// The float32 test against float64 (1e-5 of the largest value) covers them.
__device__ inline float map_log2(float m) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(m));
  return y;
}
__device__ inline double map_log2(double m) { return log2(m); }
__device__ inline float map_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ inline double map_exp2(double x) { return exp2(x); }
__device__ inline float map_rsqrt(float x) { return rsqrtf(x); }
__device__ inline double map_rsqrt(double x) { return 1 / sqrt(x); }
__device__ inline float map_divide(float a, float b) { return __fdividef(a, b); }
__device__ inline double map_divide(double a, double b) { return a / b; }

// What the NaLa query map needs of a whole row: n = ||q||, 1/n (0 for an all-zero row, whose
// direction is taken as 0) and the power p = 3 (0.5 + tanh n). In float a row whose sum of
// squares overflows (||q|| past 1.8e19) gets n = inf * 0 = NaN, and so a NaN output, not a
// finite wrong one.
template <typename T>
struct QueryScale {
  T norm, inv_norm, power;
};

// The scale of a query row from its sum of squares.
template <FeatureMap fm, typename T>
__device__ QueryScale<T> query_scale(T sum_of_squares) {
  QueryScale<T> s{T(0), T(0), T(1)};
  if constexpr (fm == FeatureMap::Nala) {
    s.inv_norm = sum_of_squares > 0 ? map_rsqrt(sum_of_squares) : T(0);
    s.norm = sum_of_squares * s.inv_norm;
    s.power = 3 * (T(0.5) + tanh(s.norm));
  }
  return s;
}

// sigma_c = sign(q_c) m_c^p with m_c = |q_c| / n, and log2 m_c, which the backward's ln m_c
// reuses (0 for the ReLU map, whose sigma is q). m^p is 2^(p log2 m): a few instructions where
// pow takes dozens; m = 0 gives 2^-inf = 0.
template <typename T>
struct QuerySigned {
  T sigma, log2_m;
};

template <FeatureMap fm, typename T>
__device__ QuerySigned<T> query_signed_parts(T q, const QueryScale<T>& s) {
  if constexpr (fm == FeatureMap::Nala) {
    const T log2_m = map_log2(fabs(q) * s.inv_norm);
    return {copysign(map_exp2(s.power * log2_m), q), log2_m};
  }
  return {q, T(0)};
}

template <FeatureMap fm, typename T>
__device__ T query_signed(T q, const QueryScale<T>& s) {
  return query_signed_parts<fm>(q, s).sigma;
}

// The NaLa query backward (docs/nala_backward.md, step 6), with m_c = |q_c| / n:
//   A = sum_c dsigma_c sigma_c ln m_c,  B = sum_c dsigma_c sigma_c,
//   dn = 3 sech^2(n) A - (p / n) B,
//   dq_c = p dsigma_c sigma_c / q_c + dn q_c / n   (its first term 0 where sigma_c = 0).
// One element's term of A, with ln m_c = ln 2 log2 m_c.
template <typename T>
__device__ T norm_power_term(const QuerySigned<T>& f, T dsigma) {
  return f.sigma != 0 ? dsigma * f.sigma * (T(0.69314718055994530942) * f.log2_m) : T(0);
}

// dn of a row from its A and B.
template <typename T>
__device__ T query_norm_grad(const QueryScale<T>& s, T power_sum, T scale_sum) {
  const T sech = 1 / cosh(s.norm);
  return 3 * sech * sech * power_sum - s.power * s.inv_norm * scale_sum;
}

template <FeatureMap fm, typename T>
__device__ T query_signed_backward(T q, T sigma, T dsigma, const QueryScale<T>& s, T dnorm) {
  if constexpr (fm == FeatureMap::Nala) {
    // sigma = 0 where q = 0, and where m^p flushed to 0 (a q so small that 1 / q is infinite).
    const T direct = sigma != 0 ? s.power * map_divide(dsigma * sigma, q) : T(0);
    return direct + dnorm * q * s.inv_norm;
  }
  return dsigma;
}

// ---- a team of lanes per token ----
// The element-wise passes over a tile run a thread per (token, pair of columns c = 2 pair,
// c + 1), the lanes of a token side by side in one warp: pair_lanes(d), the power of two at or
// above d / 2 (d <= 64: at most a warp; lanes past d / 2 idle), so that sums over a token's row
// are shuffles within the team (team_reduce) and a thread keeps the same pair from one token to
// the next. Consecutive lanes read consecutive pairs of a row: global rows load coalesced. (The
// output pass takes a quarter of the team, the feature-sums pass at d > 32 half: a lane holds
// kPairs pairs, at c, c + s, ... with s = 2 team.lanes, PairRow's kPairs.)
__host__ __device__ inline int pair_lanes(int d) {
  return static_cast<int>(pow2_at_least(d / 2, kWarpSize));
}

// The pairs of columns a lane takes, so that fewer lanes repeat a token's per-token work (the
// norm, tanh, z, the team sums):
// - the output pass: four (two at d = 4, where a token has two), a quarter of pair_lanes(d);
// - the feature-sums pass: two where a whole warp would hold one token (d > 32), else one. Four
//   there ran slower (d = 32, N = 65536 forward 0.70 -> 0.84 ms: its batch of loads shrinks to
//   one token and its registers spill; docs/benchmarks.md).
inline int output_lane_pairs(int d) { return std::min(4, pair_lanes(d)); }
inline int feature_sums_lane_pairs(int d) { return pair_lanes(d) == kWarpSize ? 2 : 1; }

// How many of a lane's kPairs pairs of columns, at 2 rank, 2 rank + 2 team.lanes, ..., lie inside
// a row of d columns (d = 48, two pairs: 16 lanes, the second pair only for the first 8).
template <int kPairs>
__device__ int pairs_inside(LanesPerRow team, int d) {
  int inside = 0;
  for (int p = 0; p < kPairs; ++p) inside += p * team.lanes + team.rank() < d / 2;
  return inside;
}

// The sum of x over a token's team: team_reduce, whose shuffles name the whole warp
// (for_team_tokens keeps every lane of a warp in step).
template <typename T>
__device__ T team_sum(LanesPerRow team, T x) {
  return team_reduce<SumOp<T>>(team, x);
}

// Tokens per batch of loads in the element-wise passes, at a pair of columns a lane (a lane with
// kPairs pairs takes kPairBatch / kPairs tokens a batch: the same loads in flight).
constexpr int kPairBatch = 4;

// One token's values at a lane's kPairs pairs of columns (c, c + 1), (c + stride, c + stride +
// 1), ...: a row of x (q or k), optionally the same row of y (do or v), and
// the token's sin and cos, pair p at [2 p] and [2 p + 1]; zeros past the pairs that load() is asked
// for (past the chunk's rows, or past the row's pairs).
template <typename T, int kPairs = 1>
struct PairRow {
  T x[2 * kPairs] = {}, y[2 * kPairs] = {}, sin[2 * kPairs] = {}, cos[2 * kPairs] = {};
};

// The rows of a tile (first row row0 of x and y, first token t0 of sin and cos) at a lane's
// pairs, c and then every `stride` columns: pointers set once per tile, so that a token's loads
// cost a 32-bit offset j d each. y is read only with kWithY (a compile-time choice: no test of
// the pointer per token).
template <typename T, bool kWithY, int kPairs = 1>
struct PairRows {
  const T *x, *y, *sin, *cos;
  int d, stride;  // stride: columns between a lane's pairs (unused with one pair a lane)
  __device__ PairRows(int d, int c, int64_t row0, int64_t t0, const T* x, const T* y, const T* sin,
                      const T* cos, int stride = 0)
      : x(x + row0 * d + c),
        y(kWithY ? y + row0 * d + c : nullptr),
        sin(sin + t0 * d + c),
        cos(cos + t0 * d + c),
        d(d),
        stride(stride) {}
  // Row j of the tile at the lane's first `pairs` pairs (0 past the chunk's rows: zeros).
  __device__ PairRow<T, kPairs> load(int pairs, int j) const {
    PairRow<T, kPairs> r;
#pragma unroll
    for (int p = 0; p < kPairs; ++p)
      if (p < pairs) {
        const int at = j * d + p * stride;
        load2(x + at, r.x[2 * p], r.x[2 * p + 1]);
        if constexpr (kWithY) load2(y + at, r.y[2 * p], r.y[2 * p + 1]);
        load2(sin + at, r.sin[2 * p], r.sin[2 * p + 1]);
        load2(cos + at, r.cos[2 * p], r.cos[2 * p + 1]);
      }
    return r;
  }
};

// Runs load(j, b) then body(j, b) for this thread's tokens j < tile, kBatch tokens at a time (b <
// kBatch): a batch's loads are all issued before the first body waits on them. A team's lanes
// share j, so body may shuffle within the team; with tile a multiple of the teams per warp
// (linear_tile), a warp's teams hold consecutive j from a multiple of that count, so they all
// run the same steps and the shuffles span whole warps.
template <int kBatch, int kBlockThreads = kThreads, typename Load, typename Body>
__device__ void for_team_tokens(LanesPerRow team, int tile, Load load, Body body) {
  const int teams = kBlockThreads / team.lanes;
  for (int j0 = threadIdx.x / team.lanes; j0 < tile; j0 += kBatch * teams) {
#pragma unroll
    for (int b = 0; b < kBatch; ++b)
      if (j0 + b * teams < tile) load(j0 + b * teams, b);
#pragma unroll
    for (int b = 0; b < kBatch; ++b)
      if (j0 + b * teams < tile) body(j0 + b * teams, b);
  }
}

// The tile of a linear-attention kernel: tiles of 16 tokens preferred (choose_tile), and a
// multiple of the teams per warp (for_team_tokens), with `pairs` pairs of columns a lane.
template <typename Bytes>
int linear_tile(const char* kernel, int d, Bytes bytes, int pairs = 1) {
  return choose_tile(kernel, 16, bytes, std::max(4, kWarpSize * pairs / pair_lanes(d)));
}

// ---- linear attention, forward ----

// Pass 2 (and backward pass 2): element i of head h's sum over the chunks of the partial sums,
// times scale. A partial is a matrix of matrix_size elements then a vector of vector_size; the
// sums go to matrix (bh, matrix_size) and vector (bh, vector_size).
template <typename T>
struct SumPartials {
  const T* partials;
  int64_t chunks, matrix_size, vector_size;
  T scale;
  T* matrix;
  T* vector;
  __device__ void operator()(int64_t index) const {
    const int64_t partial_size = matrix_size + vector_size;
    const int64_t h = index / partial_size, i = index % partial_size;
    const T* p = partials + h * chunks * partial_size + i;
    T sum = 0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += p[chunk * partial_size];
    if (i < matrix_size)
      matrix[h * matrix_size + i] = scale * sum;
    else
      vector[h * vector_size + i - matrix_size] = scale * sum;
  }
};

// The NaLa scale of a token's row, summed over its team (all of the team's lanes call it); the
// ReLU map needs none.
template <FeatureMap fm, typename T, int kPairs>
__device__ QueryScale<T> team_query_scale(LanesPerRow team, const PairRow<T, kPairs>& r) {
  if constexpr (fm == FeatureMap::Nala) {
    T squares = 0;
#pragma unroll
    for (int e = 0; e < 2 * kPairs; ++e) squares += r.x[e] * r.x[e];
    return query_scale<fm>(team_sum(team, squares));
  }
  return query_scale<fm>(T(0));
}

// Sums of split features over a chunk's tokens, sum_j w_j phi_j (a D vector), are spread over
// the block's teams: each lane keeps its pairs' columns, sums[half][2 p + e] at column
// half d + c + e of its pair p, c = 2 rank + p stride (stride = 2 team.lanes; one pair a lane:
// c = 2 rank). Once every token is done, the teams' sums meet in shared memory (team_sums,
// kThreads / team.lanes rows of D) and the block writes their total to out.
template <typename T, int kColumns>
__device__ void write_team_sums(LanesPerRow team, int d, int width, const T (&sums)[2][kColumns],
                                T* team_sums, T* out) {
  constexpr int kPairs = kColumns / 2;
  const int teams = kThreads / team.lanes;
#pragma unroll
  for (int p = 0; p < kPairs; ++p) {
    const int c = 2 * team.rank() + p * 2 * team.lanes;
    if (c < d)
      for (int half = 0; half < width / d; ++half)
        store2(team_sums + threadIdx.x / team.lanes * width + half * d + c, sums[half][2 * p],
               sums[half][2 * p + 1]);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    T sum = 0;
    for (int t = 0; t < teams; ++t) sum += team_sums[t * width + i];
    out[i] = sum;
  }
}

// Which features a sums pass builds: the keys' K' from kappa (forward pass 1) or the queries' Q'
// from sigma (backward pass 1b).
enum class Side { Key, Query };

struct FeatureSumsLayout {
  int rotated, values, team_sums, size;
  __host__ __device__ FeatureSumsLayout(Side side, int tile, int d, int width, int pairs) {
    SharedLayout s;
    rotated = s.take(tile * k_rows_ld(width));  // F_j, token-major
    values = s.take(tile * k_rows_ld(d));       // y_j, token-major
    // write_team_sums (keys only), a row a team of pair_lanes(d) / pairs lanes
    team_sums = s.take(side == Side::Key ? kThreads * pairs / pair_lanes(d) * width : 0);
    size = s.size;
  }
};

// Block (chunk, head) writes its chunk's sum_j F_j^T y_j (D x d) to partials (bh, chunks, D d + D):
//   keys    (forward pass 1):     F = K', y_j = v_j, and after it sum_j phiK_j (D);
//   queries (backward pass 1b):   F = Q', y_j = z_j do_j (the chunk's share of dS; the D after
//                                 it, dkbar, is the query backward's).
// Per tile, a team of lanes per token reads x (k or q), y (v or do), sin, cos from global memory
// one or two pairs a lane (kPairs, feature_sums_lane_pairs), builds F_j (and, for
// queries, the row's NaLa scale by a team sum) and writes F_j and y_j token-major into shared
// memory; the block adds F^T Y to its running sum (held in registers, ProductSum), and each lane
// adds its pairs' phiK_j to its own sums.
template <typename T, FeatureMap fm, int kPasses, Side side, int kBlocks, int kPairs>
__global__ void __launch_bounds__(kThreads, kBlocks == 1 ? 6 : 4)
    linear_feature_sums_kernel(int64_t n, int64_t chunk, int d, int tile, const T* x, const T* y,
                               const T* sin, const T* cos, const T* z, T* partials) {
  after_previous_kernel();
  const int width = kHalves<fm> * d;
  const int rotated_ld = k_rows_ld(width), values_ld = k_rows_ld(d);
  const FeatureSumsLayout layout(side, tile, d, width, kPairs);
  T* shared = shared_memory<T>();
  T* rotated = shared + layout.rotated;
  T* values = shared + layout.values;
  const LanesPerRow team{pair_lanes(d) / kPairs};
  const int rank = team.rank(), stride = 2 * team.lanes;  // pairs at 2 rank, 2 rank + stride, ...
  const int live_pairs = pairs_inside<kPairs>(team, d);
  ProductSum<T, kBlocks, kPasses> sums;
  T phi_sums[2][2 * kPairs] = {};  // keys: this lane's share of sum_j phiK_j

  const int64_t head = blockIdx.y;
  const int64_t first = blockIdx.x * chunk, last = min(n, first + chunk);
  for (int64_t t0 = first; t0 < last; t0 += tile) {
    const int rows = min(tile, static_cast<int>(last - t0));  // last - t0 <= chunk
    const int64_t row0 = head * n + t0;
    const PairRows<T, true, kPairs> tile_rows(d, 2 * rank, row0, t0, x, y, sin, cos, stride);
    static_assert(kPairBatch % kPairs == 0);
    constexpr int kBatch = kPairBatch / kPairs;  // the same loads in flight
    PairRow<T, kPairs> in[kBatch];
    T row_scale[kBatch];  // 1 (keys) or z_j (queries)
    const auto load = [&](int j, int b) {
      in[b] = tile_rows.load(j < rows ? live_pairs : 0, j);
      row_scale[b] = side == Side::Key ? T(1) : j < rows ? z[row0 + j] : T(0);
    };
    for_team_tokens<kBatch>(team, tile, load, [&](int j, int b) {
      const PairRow<T, kPairs>& r = in[b];
      QueryScale<T> scale{};  // queries: the row's NaLa scale, a team sum every lane joins
      if constexpr (side == Side::Query) scale = team_query_scale<fm>(team, r);
#pragma unroll
      for (int p = 0; p < kPairs; ++p)
        if (p < live_pairs) {
          const int c = 2 * rank + p * stride;
          T s[2];  // kappa or sigma at this pair
          for (int e = 0; e < 2; ++e) {
            if constexpr (side == Side::Key)
              s[e] = key_signed<fm>(r.x[2 * p + e]);
            else
              s[e] = query_signed<fm>(r.x[2 * p + e], scale);
          }
          store_operand2<kPasses>(values + j * values_ld + c, row_scale[b] * r.y[2 * p],
                                  row_scale[b] * r.y[2 * p + 1]);
          for (int half = 0; half < kHalves<fm>; ++half) {
            const T f0 = split_sign(half, s[0]), f1 = split_sign(half, s[1]);
            if constexpr (side == Side::Key) {
              phi_sums[half][2 * p] += f0;
              phi_sums[half][2 * p + 1] += f1;
            }
            T y0, y1;
            rotary_pair(f0, f1, r.sin + 2 * p, r.cos + 2 * p, y0, y1);
            store_operand2<kPasses>(rotated + j * rotated_ld + half * d + c, y0, y1);
          }
        }
    });
    __syncthreads();
    sums.add(width, d, tile, k_rows(rotated, rotated_ld), k_rows(values, values_ld));
    __syncthreads();
  }
  T* out = partials + (head * gridDim.x + blockIdx.x) * (width * d + width);
  sums.hand_out(width, d, tile, [&](int i, int e, T x0, T x1) { store2(out + i * d + e, x0, x1); });
  if constexpr (side == Side::Key)
    write_team_sums(team, d, width, phi_sums, shared + layout.team_sums, out + width * d);
}

struct OutputLayout {
  int state, kbar, z, rotated, size;
  __host__ __device__ OutputLayout(int tile, int d, int width) {
    SharedLayout s;
    state = s.take(width * k_rows_ld(d));       // S
    kbar = s.take(width);                       // mean of phiK
    z = s.take(tile);                           // the tile's z_i
    rotated = s.take(tile * i_rows_ld(width));  // Q', token-major
    size = s.size;
  }
};

// Pass 3: o_i = z_i Q'_i S and z_i = 1 / (phiQ_i . kbar + eps) for a chunk of queries of one
// head. Per tile: a team of lanes per token reads q, sin, cos from global memory, four pairs a
// lane (kPairs, output_lane_pairs), sums the row's squares (the NaLa scale) and its terms of phiQ .
// kbar (z) across the team, and writes Q' token-major; the block multiplies Q' S (block_product)
// and writes o. Four float32 blocks share an SM (64 registers a thread); float64, which only the
// gradient checks run, takes the registers of two, where at 64 it would spill.
template <typename T, FeatureMap fm, int kPasses, int kPairs>
__global__ void __launch_bounds__(kOutputThreads, sizeof(T) == 4 ? 4 : 2)
    linear_output_kernel(int64_t n, int64_t chunk, int d, int tile, const T* q, const T* sin,
                         const T* cos, const T* state, const T* kbar, T* o, T* z) {
  after_previous_kernel();
  const int width = kHalves<fm> * d;
  const int state_ld = k_rows_ld(d), rotated_ld = i_rows_ld(width);
  const OutputLayout layout(tile, d, width);
  T* shared = shared_memory<T>();
  T* state_s = shared + layout.state;
  T* kbar_s = shared + layout.kbar;
  T* z_s = shared + layout.z;
  T* rotated = shared + layout.rotated;
  const LanesPerRow team{pair_lanes(d) / kPairs};
  const int rank = team.rank(), stride = 2 * team.lanes;  // pairs at 2 rank, 2 rank + stride, ...
  const int live_pairs = pairs_inside<kPairs>(team, d);

  const int64_t head = blockIdx.y;
  stage_operand_matrix<kPasses>(state + head * width * d, width, d, state_s, state_ld);
  for (int i = threadIdx.x; i < width; i += blockDim.x) kbar_s[i] = kbar[head * width + i];
  __syncthreads();

  const int64_t first = blockIdx.x * chunk, last = min(n, first + chunk);
  for (int64_t t0 = first; t0 < last; t0 += tile) {
    const int rows = min(tile, static_cast<int>(last - t0));  // last - t0 <= chunk
    const int64_t row0 = head * n + t0;
    const PairRows<T, false, kPairs> tile_rows(d, 2 * rank, row0, t0, q, nullptr, sin, cos, stride);
    static_assert(kPairBatch % kPairs == 0);
    constexpr int kBatch = kPairBatch / kPairs;  // the same loads in flight
    PairRow<T, kPairs> in[kBatch];
    const auto load = [&](int j, int b) { in[b] = tile_rows.load(j < rows ? live_pairs : 0, j); };
    for_team_tokens<kBatch, kOutputThreads>(team, tile, load, [&](int j, int b) {
      const PairRow<T, kPairs>& r = in[b];
      const QueryScale<T> scale = team_query_scale<fm>(team, r);
      T den = 0;
#pragma unroll
      for (int p = 0; p < kPairs; ++p)
        if (p < live_pairs) {
          const int c = 2 * rank + p * stride;
          const T s0 = query_signed<fm>(r.x[2 * p], scale),
                  s1 = query_signed<fm>(r.x[2 * p + 1], scale);
          for (int half = 0; half < kHalves<fm>; ++half) {
            const T f0 = split_sign(half, s0), f1 = split_sign(half, s1);
            den += f0 * kbar_s[half * d + c] + f1 * kbar_s[half * d + c + 1];
            T y0, y1;
            rotary_pair(f0, f1, r.sin + 2 * p, r.cos + 2 * p, y0, y1);
            store_operand2<kPasses>(rotated + j * rotated_ld + half * d + c, y0, y1);
          }
        }
      den = team_sum(team, den);
      if (rank == 0) {
        z_s[j] = map_divide(T(1), den + T(kDenominatorEps));
        if (j < rows) z[row0 + j] = z_s[j];
      }
    });
    __syncthreads();
    block_product<T, kPasses, kOutputThreads>(
        tile, d, width, i_rows(rotated, rotated_ld), k_rows(state_s, state_ld),
        [&](int j, int e, T x0, T x1) {
          if (j < rows) store2(o + (row0 + j) * d + e, z_s[j] * x0, z_s[j] * x1);
        });
    __syncthreads();
  }
}

// ---- linear attention, backward ----

struct QueryBackwardLayout {
  int state, kbar, z, dout, drotated, team_sums, size;
  __host__ __device__ QueryBackwardLayout(int tile, int d, int width) {
    SharedLayout s;
    state = s.take(width * i_rows_ld(d));                  // S
    kbar = s.take(width);                                  // mean of phiK
    z = s.take(tile);                                      // the tile's z_i
    dout = s.take(tile * i_rows_ld(d));                    // do_i, token-major (staged)
    drotated = s.take(tile * k_rows_ld(width));            // dQ', token-major
    team_sums = s.take(kThreads / pair_lanes(d) * width);  // write_team_sums
    size = s.size;
  }
};

// Backward pass 1a for a chunk of queries of one head: dq, and the chunk's share of
// dkbar = sum_i dden_i phiQ_i into its partial (after the D x d of dS, which pass 1b adds). Per
// tile: stage do; the block multiplies dQ' = (z do) S^T (z applied as the product is written
// out); then a team of lanes per token reads q, sin, cos from global memory, rebuilds the row's
// NaLa scale, sigma and Q'_i at its pair, and with row sums as shuffles within the team:
//   dden_i = -z_i Q'_i . dQ'_i,  dphiQ_i = rho^T(dQ'_i) + dden_i kbar,  dsigma = split^T(dphiQ),
//   dq through the power, the norm and the direction,
// each lane adding its pair's dden_i phiQ_i to its share of dkbar. Without dS (pass 1b) the block
// holds no running sum: its registers and shared memory leave room for four blocks per SM at
// d = 64, five at d <= 32 (at most 102 registers).
template <typename T, FeatureMap fm, int kPasses>
__global__ void __launch_bounds__(kThreads, 5)
    linear_query_backward_kernel(int64_t n, int64_t chunk, int d, int tile, const T* q,
                                 const T* sin, const T* cos, const T* state, const T* kbar,
                                 const T* z, const T* dout, T* dq, T* partials) {
  after_previous_kernel();
  const int width = kHalves<fm> * d, half_d = d / 2;
  const int state_ld = i_rows_ld(d), dout_ld = i_rows_ld(d), drotated_ld = k_rows_ld(width);
  const QueryBackwardLayout layout(tile, d, width);
  T* shared = shared_memory<T>();
  T* state_s = shared + layout.state;
  T* kbar_s = shared + layout.kbar;
  T* z_s = shared + layout.z;
  T* dout_s = shared + layout.dout;
  T* drotated = shared + layout.drotated;
  const LanesPerRow team{pair_lanes(d)};
  const int pair = team.rank(), c = 2 * pair;
  const bool live = pair < half_d;

  const int64_t head = blockIdx.y;
  stage_operand_matrix<kPasses>(state + head * width * d, width, d, state_s, state_ld);
  for (int i = threadIdx.x; i < width; i += blockDim.x) kbar_s[i] = kbar[head * width + i];
  T dkbar[2][2] = {};  // this lane's share of dkbar at columns half d + c + e

  const int64_t first = blockIdx.x * chunk, last = min(n, first + chunk);
  for (int64_t t0 = first; t0 < last; t0 += tile) {
    const int rows = min(tile, static_cast<int>(last - t0));  // last - t0 <= chunk
    const int64_t row0 = head * n + t0;
    stage_rows(tile, rows, d, dout + row0 * d, dout_s, dout_ld);
    for (int j = threadIdx.x; j < tile; j += blockDim.x) z_s[j] = j < rows ? z[row0 + j] : T(0);
    finish_staging();
    __syncthreads();
    if constexpr (kRoundsOperands<kPasses, T>) {  // do as a product operand
      for (GridWalk w(d); w.row < tile; w.next())
        dout_s[w.row * dout_ld + w.col] = operand_value<kPasses>(dout_s[w.row * dout_ld + w.col]);
      __syncthreads();
    }
    // dQ' = (z do) S^T for the tile.
    block_product<T, kPasses>(tile, width, d, i_rows(dout_s, dout_ld), i_rows(state_s, state_ld),
                              [&](int j, int i, T x0, T x1) {
                                store2(drotated + j * drotated_ld + i, z_s[j] * x0, z_s[j] * x1);
                              });
    __syncthreads();
    const PairRows<T, false> tile_rows(d, c, row0, t0, q, nullptr, sin, cos);
    PairRow<T> in[kPairBatch];
    const auto load = [&](int j, int b) { in[b] = tile_rows.load(live && j < rows, j); };
    for_team_tokens<kPairBatch>(team, tile, load, [&](int j, int b) {
      const PairRow<T>& r = in[b];
      const QueryScale<T> scale = team_query_scale<fm>(team, r);
      const QuerySigned<T> f[2] = {query_signed_parts<fm>(r.x[0], scale),
                                   query_signed_parts<fm>(r.x[1], scale)};
      T dphi[2][2] = {}, dot = 0;
      if (live)
        for (int half = 0; half < kHalves<fm>; ++half) {
          T y0, y1, g0, g1;  // Q' and dQ' at the pair
          rotary_pair(split_sign(half, f[0].sigma), split_sign(half, f[1].sigma), r.sin, r.cos, y0,
                      y1);
          load2(drotated + j * drotated_ld + half * d + c, g0, g1);
          dot += y0 * g0 + y1 * g1;
          rotary_pair_transposed(g0, g1, r.sin, r.cos, dphi[half][0], dphi[half][1]);
        }
      const T dden = -z_s[j] * team_sum(team, dot);
      T dsigma[2];
      for (int e = 0; e < 2; ++e) {
        if (live)
          for (int half = 0; half < kHalves<fm>; ++half) {
            dphi[half][e] += dden * kbar_s[half * d + c + e];
            dkbar[half][e] += dden * split_sign(half, f[e].sigma);
          }
        dsigma[e] = split_signs_backward<fm>(f[e].sigma, dphi[0][e], dphi[1][e]);
      }
      T dnorm = 0;
      if constexpr (fm == FeatureMap::Nala) {
        T power_sum = 0, scale_sum = 0;
        for (int e = 0; e < 2; ++e) {
          power_sum += norm_power_term(f[e], dsigma[e]);
          scale_sum += dsigma[e] * f[e].sigma;
        }
        dnorm = query_norm_grad(scale, team_sum(team, power_sum), team_sum(team, scale_sum));
      }
      if (live && j < rows)
        store2(dq + (row0 + j) * d + c,
               query_signed_backward<fm>(r.x[0], f[0].sigma, dsigma[0], scale, dnorm),
               query_signed_backward<fm>(r.x[1], f[1].sigma, dsigma[1], scale, dnorm));
    });
    __syncthreads();
  }
  T* out = partials + (head * gridDim.x + blockIdx.x) * (width * d + width);
  write_team_sums(team, d, width, dkbar, shared + layout.team_sums, out + width * d);
}

struct KeyBackwardLayout {
  int dstate, dkbar, values, rotated, drotated, size;
  __host__ __device__ KeyBackwardLayout(int tile, int d, int width) {
    SharedLayout s;
    dstate = s.take(width * i_rows_ld(d));       // dS / N
    dkbar = s.take(width);                       // dkbar / N
    values = s.take(tile * i_rows_ld(d));        // v, token-major
    rotated = s.take(tile * i_rows_ld(width));   // K', token-major
    drotated = s.take(tile * i_rows_ld(width));  // dK', token-major
    size = s.size;
  }
};

// Backward pass 3 for a chunk of keys of one head, from dstate_token = dS / N and
// dkbar_token = dkbar / N (the gradients each key's terms receive):
//   dv_j = dstate_token^T K'_j,  dK'_j = dstate_token v_j,
//   dphiK_j = rho^T(dK'_j) + dkbar_token,  dkappa = split^T(dphiK),  dk = 3 k^2 dkappa (NaLa).
// Per tile, a team of lanes per token (pair_lanes) builds K' and stages v from k, v, sin, cos
// read from global memory; the block multiplies dv = K' dstate_token (written out) and
// dK' = v dstate_token^T; the teams then take dK' back through the rotary, the sign split and
// the cube, and write dk.
template <typename T, FeatureMap fm, int kPasses>
__global__ void __launch_bounds__(kThreads)
    linear_key_backward_kernel(int64_t n, int64_t chunk, int d, int tile, const T* k, const T* v,
                               const T* sin, const T* cos, const T* token_grads, T* dk, T* dv) {
  after_previous_kernel();
  const int width = kHalves<fm> * d, half_d = d / 2;
  const int dstate_ld = i_rows_ld(d), values_ld = i_rows_ld(d), rotated_ld = i_rows_ld(width);
  const KeyBackwardLayout layout(tile, d, width);
  T* shared = shared_memory<T>();
  T* dstate = shared + layout.dstate;
  T* dkbar = shared + layout.dkbar;
  T* values = shared + layout.values;
  T* rotated = shared + layout.rotated;
  T* drotated = shared + layout.drotated;
  const LanesPerRow team{pair_lanes(d)};
  const int pair = team.rank(), c = 2 * pair;
  const bool live = pair < half_d;

  const int64_t head = blockIdx.y;
  const T* grads = token_grads + head * (width * d + width);
  stage_operand_matrix<kPasses>(grads, width, d, dstate, dstate_ld);
  for (int i = threadIdx.x; i < width; i += blockDim.x) dkbar[i] = grads[width * d + i];
  __syncthreads();

  const int64_t first = blockIdx.x * chunk, last = min(n, first + chunk);
  for (int64_t t0 = first; t0 < last; t0 += tile) {
    const int rows = min(tile, static_cast<int>(last - t0));  // last - t0 <= chunk
    const int64_t row0 = head * n + t0;
    // k, sin, cos (and v in the first sweep) of this thread's tokens, a batch at a time.
    const PairRows<T, true> with_values(d, c, row0, t0, k, v, sin, cos);
    const PairRows<T, false> keys_only(d, c, row0, t0, k, nullptr, sin, cos);
    PairRow<T> in[kPairBatch];
    const auto load = [&](const auto& tile_rows) {
      return [&](int j, int b) { in[b] = tile_rows.load(live && j < rows, j); };
    };
    for_team_tokens<kPairBatch>(team, tile, load(with_values), [&](int j, int b) {
      const PairRow<T>& r = in[b];
      if (!live) return;
      store_operand2<kPasses>(values + j * values_ld + c, r.y[0], r.y[1]);
      const T kappa0 = key_signed<fm>(r.x[0]), kappa1 = key_signed<fm>(r.x[1]);
      for (int half = 0; half < kHalves<fm>; ++half) {
        T y0, y1;
        rotary_pair(split_sign(half, kappa0), split_sign(half, kappa1), r.sin, r.cos, y0, y1);
        store_operand2<kPasses>(rotated + j * rotated_ld + half * d + c, y0, y1);
      }
    });
    __syncthreads();
    block_product<T, kPasses>(tile, d, width, i_rows(rotated, rotated_ld),
                              k_rows(dstate, dstate_ld), [&](int j, int e, T x0, T x1) {
                                if (j < rows) store2(dv + (row0 + j) * d + e, x0, x1);
                              });
    block_product<T, kPasses>(
        tile, width, d, i_rows(values, values_ld), i_rows(dstate, dstate_ld),
        [&](int j, int i, T x0, T x1) { store2(drotated + j * rotated_ld + i, x0, x1); });
    __syncthreads();
    for_team_tokens<kPairBatch>(team, tile, load(keys_only), [&](int j, int b) {
      const PairRow<T>& r = in[b];
      if (!live || j >= rows) return;
      T dphi[2][2] = {};
      for (int half = 0; half < kHalves<fm>; ++half) {
        const int at = j * rotated_ld + half * d + c;
        T g0, g1;
        rotary_pair_transposed(drotated[at], drotated[at + 1], r.sin, r.cos, g0, g1);
        dphi[half][0] = g0 + dkbar[half * d + c];
        dphi[half][1] = g1 + dkbar[half * d + c + 1];
      }
      T grad[2];
      for (int e = 0; e < 2; ++e) {
        const T dkappa = split_signs_backward<fm>(key_signed<fm>(r.x[e]), dphi[0][e], dphi[1][e]);
        grad[e] = key_signed_backward<fm>(r.x[e], dkappa);
      }
      store2(dk + (row0 + j) * d + c, grad[0], grad[1]);
    });
    __syncthreads();
  }
}

// ---- linear attention: host side ----

// The feature-sums pass (forward pass 1, backward pass 1b) over x (k or q) and y (v or do), z
// for queries. Its running sum takes one block of 16 values per thread when D d <= 16 kThreads
// (d <= 32 for NaLa, 44 for ReLU): a quarter of the registers of four held blocks, so that six
// blocks share an SM instead of four (the kernel's launch bounds).
template <typename T, FeatureMap fm, int kPasses, Side side>
void feature_sums(const char* name, int64_t bh, int64_t n, int d, const T* x, const T* y,
                  const T* sin, const T* cos, const T* z, T* partials) {
  const int width = kHalves<fm> * d;
  const dim3 grid(static_cast<unsigned>(num_chunks(bh, n, d)), static_cast<unsigned>(bh));
  const int pairs = feature_sums_lane_pairs(d);
  const auto bytes = [&](int tile) {
    return FeatureSumsLayout(side, tile, d, width, pairs).size * sizeof(T);
  };
  const int tile = linear_tile(name, d, bytes, pairs);
  const int64_t chunk = chunk_tokens(bh, n, d);
  const auto run = [&](auto blocks, auto pairs_a_lane) {
    launch_large_shared<
        linear_feature_sums_kernel<T, fm, kPasses, side, blocks.value, pairs_a_lane.value>,
        kLinearPlacement>(grid, bytes(tile), n, chunk, d, tile, x, y, sin, cos, z, partials);
  };
  using One = std::integral_constant<int, 1>;
  using Two = std::integral_constant<int, 2>;
  using Held = std::integral_constant<int, kHeld>;
  // One pair a lane means d <= 32, where D d <= 2048 always fits one block a thread. Two pairs
  // (d > 32) fit one block only for ReLU up to d = 44; NaLa's D d = 2 d^2 is past 2048 there.
  if (pairs == 1) return run(One{}, One{});
  if constexpr (fm == FeatureMap::Relu)
    if (width * d <= 16 * kThreads) return run(One{}, Two{});
  run(Held{}, Two{});
}

template <typename T, FeatureMap fm, int kPasses>
void linear_forward(int64_t bh, int64_t n, int d, const T* q, const T* k, const T* v, const T* sin,
                    const T* cos, T* o, T* state, T* kbar, T* z, T* workspace) {
  const int width = kHalves<fm> * d;
  const int64_t chunks = num_chunks(bh, n, d), chunk = chunk_tokens(bh, n, d);
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(bh));
  const char* name = "linear_attention_forward";

  feature_sums<T, fm, kPasses, Side::Key>(name, bh, n, d, k, v, sin, cos, nullptr, workspace);

  const int64_t matrix_size = int64_t(width) * d;
  for_each_index(bh * (matrix_size + width),
                 SumPartials<T>{workspace, chunks, matrix_size, width, T(1) / T(n), state, kbar});

  const auto out_bytes = [&](int tile) { return OutputLayout(tile, d, width).size * sizeof(T); };
  const int pairs = output_lane_pairs(d);
  const int out_tile = linear_tile(name, d, out_bytes, pairs);
  const auto output = [&](auto pairs_a_lane) {
    launch_large_shared<linear_output_kernel<T, fm, kPasses, pairs_a_lane.value>, kLinearPlacement,
                        kOutputThreads>(grid, out_bytes(out_tile), n, chunk, d, out_tile, q, sin,
                                        cos, state, kbar, o, z);
  };
  // Four pairs of columns a lane; two only at d = 4, which never takes one TF32 pass (d % 8 != 0:
  // with_map_and_passes).
  if (pairs == 4) return output(std::integral_constant<int, 4>{});
  if constexpr (kPasses != 1) return output(std::integral_constant<int, 2>{});
  throw std::logic_error(std::string(name) + ": one TF32 pass at head dim " + std::to_string(d));
}

template <typename T, FeatureMap fm, int kPasses>
void linear_backward(int64_t bh, int64_t n, int d, const T* q, const T* k, const T* v, const T* sin,
                     const T* cos, const T* state, const T* kbar, const T* z, const T* dout, T* dq,
                     T* dk, T* dv, T* workspace) {
  const int width = kHalves<fm> * d;
  const int64_t chunks = num_chunks(bh, n, d), chunk = chunk_tokens(bh, n, d);
  const int64_t matrix_size = int64_t(width) * d, partial_size = matrix_size + width;
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(bh));
  const char* name = "linear_attention_backward";
  T* token_grads = workspace + bh * chunks * partial_size;  // dS / N and dkbar / N per head

  const auto query_bytes = [&](int tile) {
    return QueryBackwardLayout(tile, d, width).size * sizeof(T);
  };
  const int query_tile = linear_tile(name, d, query_bytes);
  launch_large_shared<linear_query_backward_kernel<T, fm, kPasses>, kLinearPlacement>(
      grid, query_bytes(query_tile), n, chunk, d, query_tile, q, sin, cos, state, kbar, z, dout, dq,
      workspace);
  feature_sums<T, fm, kPasses, Side::Query>(name, bh, n, d, q, dout, sin, cos, z, workspace);

  // token_grads holds, per head, the D x d matrix dS / N then the D vector dkbar / N.
  for_each_index(bh * partial_size, SumPartials<T>{workspace, chunks, partial_size, 0, T(1) / T(n),
                                                   token_grads, nullptr});

  const auto key_bytes = [&](int tile) {
    return KeyBackwardLayout(tile, d, width).size * sizeof(T);
  };
  const int key_tile = linear_tile(name, d, key_bytes);
  launch_large_shared<linear_key_backward_kernel<T, fm, kPasses>, kLinearPlacement>(
      grid, key_bytes(key_tile), n, chunk, d, key_tile, k, v, sin, cos, token_grads, dk, dv);
}

// ---- softmax attention ----
// Scores are s_ij = d^-1/2 rho(q_i) . rho(k_j). The kernels stage rows of q / k with their sin
// and cos, then rotate them into feature-major arrays (the operands of the score products) or
// token-major ones (the operands of the products that sum over tokens).

// out[c][j] (leading dim tile) = scale rho(x_j)[c] from staged rows x, sin, cos; a thread per
// (token, pair), consecutive threads on consecutive tokens.
template <typename T>
__device__ void rotate_feature_major(int tile, int d, const T* x, const T* sin, const T* cos,
                                     T scale, T* out) {
  const int ld = d + 1;
  for (GridWalk w(tile); w.row < d / 2; w.next()) {
    const int j = w.col, c = 2 * w.row;
    T y0, y1;
    rotary_pair(x[j * ld + c], x[j * ld + c + 1], sin + j * ld + c, cos + j * ld + c, y0, y1);
    out[c * tile + j] = scale * y0;
    out[(c + 1) * tile + j] = scale * y1;
  }
}

// out[j][c] (leading dim d) = rho(x_j)[c]; consecutive threads on consecutive pairs.
template <typename T>
__device__ void rotate_token_major(int tile, int d, const T* x, const T* sin, const T* cos,
                                   T* out) {
  const int ld = d + 1;
  for (GridWalk w(d / 2); w.row < tile; w.next()) {
    const int j = w.row, c = 2 * w.col;
    T y0, y1;
    rotary_pair(x[j * ld + c], x[j * ld + c + 1], sin + j * ld + c, cos + j * ld + c, y0, y1);
    store2(out + j * d + c, y0, y1);
  }
}

// out[c][j] (leading dim tile) = x[j][c] from staged rows; consecutive threads on consecutive
// tokens.
template <typename T>
__device__ void transpose_staged(int tile, int d, const T* x, T* out) {
  for (GridWalk w(tile); w.row < d; w.next())
    out[w.row * tile + w.col] = x[w.col * (d + 1) + w.row];
}

// dx_j = rho^T(g_j) for the first `rows` rows of g (token-major, leading dim d), times scale,
// written to x (global rows of d) whose tables start at sin, cos.
template <typename T>
__device__ void write_rotary_transposed(int rows, int d, const T* g, const T* sin, const T* cos,
                                        T scale, T* x) {
  for (GridWalk w(d / 2); w.row < rows; w.next()) {
    const int j = w.row, c = 2 * w.col;
    T y0, y1;
    rotary_pair_transposed(g[j * d + c], g[j * d + c + 1], sin + j * d + c, cos + j * d + c, y0,
                           y1);
    store2(x + static_cast<int64_t>(j) * d + c, scale * y0, scale * y1);
  }
}

struct SoftmaxForwardLayout {
  int x, sin, cos, q_t, k_t, values, probs_t, out, row_max, row_sum, rescale, size;
  __host__ __device__ SoftmaxForwardLayout(int tile, int d) {
    SharedLayout s;
    x = s.take(tile * (d + 1));     // staged q, then k rows
    sin = s.take(tile * (d + 1));   // staged rows
    cos = s.take(tile * (d + 1));   // staged rows
    q_t = s.take(d * tile);         // d^-1/2 rho(q)^T
    k_t = s.take(d * tile);         // rho(k)^T
    values = s.take(tile * d);      // v, token-major
    probs_t = s.take(tile * tile);  // [key][query]: scores, then e^(s - m)
    out = s.take(tile * d);         // the unnormalised output rows
    row_max = s.take(tile);
    row_sum = s.take(tile);
    rescale = s.take(tile);
    size = s.size;
  }
};

// Block (query tile, head): o and lse by an online softmax over the key tiles. Per query row,
// with m the running max and l the running sum, a key tile's scores s_j give
//   m' = max(m, max_j s_j),  l' = e^(m - m') l + sum_j e^(s_j - m'),
//   o' = e^(m - m') o + sum_j e^(s_j - m') v_j;   at the end o /= l, lse = m + ln l.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    softmax_forward_kernel(int64_t n, int d, int tile, const T* q, const T* k, const T* v,
                           const T* sin, const T* cos, T* o, T* lse) {
  after_previous_kernel();
  const SoftmaxForwardLayout layout(tile, d);
  T* shared = shared_memory<T>();
  T* x_s = shared + layout.x;
  T* sin_s = shared + layout.sin;
  T* cos_s = shared + layout.cos;
  T* q_t = shared + layout.q_t;
  T* k_t = shared + layout.k_t;
  T* values = shared + layout.values;
  T* probs_t = shared + layout.probs_t;
  T* out = shared + layout.out;
  T* row_max = shared + layout.row_max;
  T* row_sum = shared + layout.row_sum;
  T* rescale = shared + layout.rescale;

  const int64_t head = blockIdx.y, i0 = int64_t(blockIdx.x) * tile;
  const int queries = static_cast<int>(min(static_cast<int64_t>(tile), n - i0));
  const T* head_k = k + head * n * d;
  const T* head_v = v + head * n * d;
  const int ld = d + 1;
  stage_rows(tile, queries, d, q + (head * n + i0) * d, x_s, ld);
  stage_rows(tile, queries, d, sin + i0 * d, sin_s, ld);
  stage_rows(tile, queries, d, cos + i0 * d, cos_s, ld);
  for (int i = threadIdx.x; i < tile * d; i += blockDim.x) out[i] = 0;
  for (int i = threadIdx.x; i < tile; i += blockDim.x) {
    row_max[i] = -INFINITY;
    row_sum[i] = 0;
  }
  finish_staging();
  __syncthreads();
  rotate_feature_major(tile, d, x_s, sin_s, cos_s, 1 / sqrt(T(d)), q_t);
  for (int64_t j0 = 0; j0 < n; j0 += tile) {
    const int keys = static_cast<int>(min(static_cast<int64_t>(tile), n - j0));
    __syncthreads();  // x_s is free again, and the last tile's products are done
    stage_rows(tile, keys, d, head_k + j0 * d, x_s, ld);
    stage_rows(tile, keys, d, sin + j0 * d, sin_s, ld);
    stage_rows(tile, keys, d, cos + j0 * d, cos_s, ld);
    stage_rows(tile, keys, d, head_v + j0 * d, values, d);
    finish_staging();
    __syncthreads();
    rotate_feature_major(tile, d, x_s, sin_s, cos_s, T(1), k_t);
    __syncthreads();
    for (GridWalk w(tile / 4); w.row < tile / 4; w.next()) {
      const int j = 4 * w.row, i = 4 * w.col;  // 4 keys x 4 queries
      T acc[4][4] = {};
      accumulate_block(d, k_t + j, tile, q_t + i, tile, acc);
      for (int r = 0; r < 4; ++r) {
        if (j + r >= keys)
          for (int c = 0; c < 4; ++c) acc[r][c] = -INFINITY;
        store4(probs_t + (j + r) * tile + i, acc[r]);
      }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < tile; i += blockDim.x) {
      T m = row_max[i];
      for (int j = 0; j < keys; ++j) m = fmax(m, probs_t[j * tile + i]);
      T sum = 0;
      for (int j = 0; j < tile; ++j) {
        const T p = exp(probs_t[j * tile + i] - m);
        probs_t[j * tile + i] = p;
        sum += p;
      }
      rescale[i] = exp(row_max[i] - m);
      row_sum[i] = rescale[i] * row_sum[i] + sum;
      row_max[i] = m;
    }
    __syncthreads();
    for (GridWalk w(d / 4); w.row < tile / 4; w.next()) {
      const int i = 4 * w.row, e = 4 * w.col;
      T acc[4][4];
      for (int r = 0; r < 4; ++r) {
        T row[4];
        load4(out + (i + r) * d + e, row);
        for (int c = 0; c < 4; ++c) acc[r][c] = rescale[i + r] * row[c];
      }
      accumulate_block(tile, probs_t + i, tile, values + e, d, acc);
      for (int r = 0; r < 4; ++r) store4(out + (i + r) * d + e, acc[r]);
    }
  }
  __syncthreads();
  for (GridWalk w(d); w.row < queries; w.next())
    o[(head * n + i0 + w.row) * d + w.col] = out[w.row * d + w.col] / row_sum[w.row];
  for (int i = threadIdx.x; i < queries; i += blockDim.x)
    lse[head * n + i0 + i] = row_max[i] + log(row_sum[i]);
}

// D_i = do_i . o_i, a team of threads per row.
template <typename T, typename Team>
__global__ void row_dot_kernel(Team team, int64_t rows, int d, const T* a, const T* b, T* out) {
  after_previous_kernel();
  for (TeamRows r(team, rows); r.more(); r.advance()) {
    T sum = 0;
    for (int c = team.rank(); c < d; c += team.size()) sum += a[r.row * d + c] * b[r.row * d + c];
    sum = team_reduce<SumOp<T>>(team, sum);
    if (r.active && team.rank() == 0) out[r.row] = sum;
  }
}

struct SoftmaxKeyBackwardLayout {
  int x, sin, cos, y, k_t, values_t, q_t, dout_t, rotated_q, dout, lse, delta, probs, dscores, dk,
      dv, size;
  __host__ __device__ SoftmaxKeyBackwardLayout(int tile, int d) {
    SharedLayout s;
    x = s.take(tile * (d + 1));    // staged k, then q rows
    sin = s.take(tile * (d + 1));  // staged rows
    cos = s.take(tile * (d + 1));  // staged rows
    y = s.take(tile * (d + 1));    // staged v, then do rows
    k_t = s.take(d * tile);        // rho(k)^T
    values_t = s.take(d * tile);   // v^T
    q_t = s.take(d * tile);        // d^-1/2 rho(q)^T
    dout_t = s.take(d * tile);     // do^T
    rotated_q = s.take(tile * d);  // rho(q), token-major
    dout = s.take(tile * d);       // do, token-major
    lse = s.take(tile);
    delta = s.take(tile);
    probs = s.take(tile * tile);    // [query][key]
    dscores = s.take(tile * tile);  // [query][key]
    dk = s.take(tile * d);          // the gradient of rho(k), token-major
    dv = s.take(tile * d);
    size = s.size;
  }
};

// Block (key tile, head): dk and dv, summing over the query tiles. With P_ij = e^(s_ij - lse_i)
// recomputed, dP_ij = do_i . v_j and D_i = do_i . o_i:
//   dv_j = sum_i P_ij do_i,  ds_ij = P_ij (dP_ij - D_i),
//   drk_j = d^-1/2 sum_i ds_ij rho(q_i),  dk_j = rho^T(drk_j).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    softmax_key_backward_kernel(int64_t n, int d, int tile, const T* q, const T* k, const T* v,
                                const T* sin, const T* cos, const T* lse, const T* delta,
                                const T* dout, T* dk, T* dv) {
  after_previous_kernel();
  const SoftmaxKeyBackwardLayout layout(tile, d);
  T* shared = shared_memory<T>();
  T* x_s = shared + layout.x;
  T* sin_s = shared + layout.sin;
  T* cos_s = shared + layout.cos;
  T* y_s = shared + layout.y;
  T* k_t = shared + layout.k_t;
  T* values_t = shared + layout.values_t;
  T* q_t = shared + layout.q_t;
  T* dout_t = shared + layout.dout_t;
  T* rotated_q = shared + layout.rotated_q;
  T* dout_s = shared + layout.dout;
  T* lse_s = shared + layout.lse;
  T* delta_s = shared + layout.delta;
  T* probs = shared + layout.probs;
  T* dscores = shared + layout.dscores;
  T* dk_s = shared + layout.dk;
  T* dv_s = shared + layout.dv;

  const T scale = 1 / sqrt(T(d));
  const int64_t head = blockIdx.y, j0 = int64_t(blockIdx.x) * tile;
  const int keys = static_cast<int>(min(static_cast<int64_t>(tile), n - j0));
  const int64_t head_row = head * n;
  const int ld = d + 1;
  stage_rows(tile, keys, d, k + (head_row + j0) * d, x_s, ld);
  stage_rows(tile, keys, d, sin + j0 * d, sin_s, ld);
  stage_rows(tile, keys, d, cos + j0 * d, cos_s, ld);
  stage_rows(tile, keys, d, v + (head_row + j0) * d, y_s, ld);
  for (int i = threadIdx.x; i < tile * d; i += blockDim.x) dk_s[i] = dv_s[i] = 0;
  finish_staging();
  __syncthreads();
  rotate_feature_major(tile, d, x_s, sin_s, cos_s, T(1), k_t);
  transpose_staged(tile, d, y_s, values_t);
  for (int64_t i0 = 0; i0 < n; i0 += tile) {
    const int queries = static_cast<int>(min(static_cast<int64_t>(tile), n - i0));
    __syncthreads();
    stage_rows(tile, queries, d, q + (head_row + i0) * d, x_s, ld);
    stage_rows(tile, queries, d, sin + i0 * d, sin_s, ld);
    stage_rows(tile, queries, d, cos + i0 * d, cos_s, ld);
    stage_rows(tile, queries, d, dout + (head_row + i0) * d, y_s, ld);
    stage_rows(tile, queries, d, dout + (head_row + i0) * d, dout_s, d);
    for (int i = threadIdx.x; i < tile; i += blockDim.x) {
      lse_s[i] = i < queries ? lse[head_row + i0 + i] : T(INFINITY);  // P = 0 for padding rows
      delta_s[i] = i < queries ? delta[head_row + i0 + i] : T(0);
    }
    finish_staging();
    __syncthreads();
    rotate_feature_major(tile, d, x_s, sin_s, cos_s, scale, q_t);
    rotate_token_major(tile, d, x_s, sin_s, cos_s, rotated_q);
    transpose_staged(tile, d, y_s, dout_t);
    __syncthreads();
    for (GridWalk w(tile / 4); w.row < tile / 4; w.next()) {
      const int i = 4 * w.row, j = 4 * w.col;  // 4 queries x 4 keys
      T score[4][4] = {}, dprob[4][4] = {};
      accumulate_block(d, q_t + i, tile, k_t + j, tile, score);
      accumulate_block(d, dout_t + i, tile, values_t + j, tile, dprob);
      for (int r = 0; r < 4; ++r) {
        T p[4], ds[4];
        for (int c = 0; c < 4; ++c) {
          p[c] = j + c < keys ? exp(score[r][c] - lse_s[i + r]) : T(0);
          ds[c] = p[c] * (dprob[r][c] - delta_s[i + r]);
        }
        store4(probs + (i + r) * tile + j, p);
        store4(dscores + (i + r) * tile + j, ds);
      }
    }
    __syncthreads();
    for (GridWalk w(d / 4); w.row < tile / 4; w.next()) {
      const int j = 4 * w.row, c = 4 * w.col;  // 4 keys x 4 columns
      T acc_v[4][4] = {}, acc_k[4][4] = {};
      accumulate_block(tile, probs + j, tile, dout_s + c, d, acc_v);
      accumulate_block(tile, dscores + j, tile, rotated_q + c, d, acc_k);
      add_block(dv_s + j * d + c, d, acc_v);
      add_block(dk_s + j * d + c, d, acc_k);
    }
  }
  __syncthreads();
  for (GridWalk w(d); w.row < keys; w.next())
    dv[(head_row + j0 + w.row) * d + w.col] = dv_s[w.row * d + w.col];
  write_rotary_transposed(keys, d, dk_s, sin + j0 * d, cos + j0 * d, scale,
                          dk + (head_row + j0) * d);
}

struct SoftmaxQueryBackwardLayout {
  int x, sin, cos, y, q_t, dout_t, k_t, values_t, rotated_k, lse, delta, dscores_t, dq, size;
  __host__ __device__ SoftmaxQueryBackwardLayout(int tile, int d) {
    SharedLayout s;
    x = s.take(tile * (d + 1));    // staged q, then k rows
    sin = s.take(tile * (d + 1));  // staged rows
    cos = s.take(tile * (d + 1));  // staged rows
    y = s.take(tile * (d + 1));    // staged do, then v rows
    q_t = s.take(d * tile);        // d^-1/2 rho(q)^T
    dout_t = s.take(d * tile);     // do^T
    k_t = s.take(d * tile);        // rho(k)^T
    values_t = s.take(d * tile);   // v^T
    rotated_k = s.take(tile * d);  // rho(k), token-major
    lse = s.take(tile);
    delta = s.take(tile);
    dscores_t = s.take(tile * tile);  // [key][query]
    dq = s.take(tile * d);            // the gradient of rho(q), token-major
    size = s.size;
  }
};

// Block (query tile, head): drq_i = d^-1/2 sum_j ds_ij rho(k_j) over the key tiles, then
// dq_i = rho^T(drq_i).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    softmax_query_backward_kernel(int64_t n, int d, int tile, const T* q, const T* k, const T* v,
                                  const T* sin, const T* cos, const T* lse, const T* delta,
                                  const T* dout, T* dq) {
  after_previous_kernel();
  const SoftmaxQueryBackwardLayout layout(tile, d);
  T* shared = shared_memory<T>();
  T* x_s = shared + layout.x;
  T* sin_s = shared + layout.sin;
  T* cos_s = shared + layout.cos;
  T* y_s = shared + layout.y;
  T* q_t = shared + layout.q_t;
  T* dout_t = shared + layout.dout_t;
  T* k_t = shared + layout.k_t;
  T* values_t = shared + layout.values_t;
  T* rotated_k = shared + layout.rotated_k;
  T* lse_s = shared + layout.lse;
  T* delta_s = shared + layout.delta;
  T* dscores_t = shared + layout.dscores_t;
  T* dq_s = shared + layout.dq;

  const T scale = 1 / sqrt(T(d));
  const int64_t head = blockIdx.y, i0 = int64_t(blockIdx.x) * tile;
  const int queries = static_cast<int>(min(static_cast<int64_t>(tile), n - i0));
  const int64_t head_row = head * n;
  const int ld = d + 1;
  stage_rows(tile, queries, d, q + (head_row + i0) * d, x_s, ld);
  stage_rows(tile, queries, d, sin + i0 * d, sin_s, ld);
  stage_rows(tile, queries, d, cos + i0 * d, cos_s, ld);
  stage_rows(tile, queries, d, dout + (head_row + i0) * d, y_s, ld);
  for (int i = threadIdx.x; i < tile; i += blockDim.x) {
    lse_s[i] = i < queries ? lse[head_row + i0 + i] : T(INFINITY);
    delta_s[i] = i < queries ? delta[head_row + i0 + i] : T(0);
  }
  for (int i = threadIdx.x; i < tile * d; i += blockDim.x) dq_s[i] = 0;
  finish_staging();
  __syncthreads();
  rotate_feature_major(tile, d, x_s, sin_s, cos_s, scale, q_t);
  transpose_staged(tile, d, y_s, dout_t);
  for (int64_t j0 = 0; j0 < n; j0 += tile) {
    const int keys = static_cast<int>(min(static_cast<int64_t>(tile), n - j0));
    __syncthreads();
    stage_rows(tile, keys, d, k + (head_row + j0) * d, x_s, ld);
    stage_rows(tile, keys, d, sin + j0 * d, sin_s, ld);
    stage_rows(tile, keys, d, cos + j0 * d, cos_s, ld);
    stage_rows(tile, keys, d, v + (head_row + j0) * d, y_s, ld);
    finish_staging();
    __syncthreads();
    rotate_feature_major(tile, d, x_s, sin_s, cos_s, T(1), k_t);
    rotate_token_major(tile, d, x_s, sin_s, cos_s, rotated_k);
    transpose_staged(tile, d, y_s, values_t);
    __syncthreads();
    for (GridWalk w(tile / 4); w.row < tile / 4; w.next()) {
      const int j = 4 * w.row, i = 4 * w.col;  // 4 keys x 4 queries
      T score[4][4] = {}, dprob[4][4] = {};
      accumulate_block(d, k_t + j, tile, q_t + i, tile, score);
      accumulate_block(d, values_t + j, tile, dout_t + i, tile, dprob);
      for (int r = 0; r < 4; ++r) {
        T ds[4];
        for (int c = 0; c < 4; ++c) {
          const T p = j + r < keys ? exp(score[r][c] - lse_s[i + c]) : T(0);
          ds[c] = p * (dprob[r][c] - delta_s[i + c]);
        }
        store4(dscores_t + (j + r) * tile + i, ds);
      }
    }
    __syncthreads();
    for (GridWalk w(d / 4); w.row < tile / 4; w.next()) {
      const int i = 4 * w.row, c = 4 * w.col;  // 4 queries x 4 columns
      T acc[4][4] = {};
      accumulate_block(tile, dscores_t + i, tile, rotated_k + c, d, acc);
      add_block(dq_s + i * d + c, d, acc);
    }
  }
  __syncthreads();
  write_rotary_transposed(queries, d, dq_s, sin + i0 * d, cos + i0 * d, scale,
                          dq + (head_row + i0) * d);
}

}  // namespace

// ---- the kernels of kernel_list.inc ----

int64_t linear_attention_workspace_size(FeatureMap fm, int64_t bh, int64_t n, int64_t d) {
  const int64_t width = feature_dim(fm, d);
  return bh * (num_chunks(bh, n, d) + 1) * (width * d + width);
}

// Calls run(map, passes) with the feature map and the tensor cores' passes as compile-time
// constants: one TF32 product for float32 while allow_tf32() (the default, as for the GEMMs),
// else 3xTF32 (kPasses = 3 also stands for "operands as they are": float64 never reaches the
// tensor cores, so it has that one instantiation). With a head dim that is not a multiple of 8,
// every product has d as one of its sides and runs on the FP32 units (ProductTiling): one pass
// would only round the operands to TF32 for nothing, so those keep full float32. Not yet mended:
// at some multiples of 8 a product still misses the tensor cores, as ProductTiling decides per
// product on the device (the feature sums at d = 24, 40, 48, 56: more blocks than its threads
// hold), and its operands are rounded all the same; the choice belongs with ProductTiling's, per
// kernel.
template <typename T, typename Run>
void with_map_and_passes(FeatureMap fm, int d, Run run) {
  using Nala = std::integral_constant<FeatureMap, FeatureMap::Nala>;
  using Relu = std::integral_constant<FeatureMap, FeatureMap::Relu>;
  const auto with_passes = [&](auto map) {
    if constexpr (std::is_same_v<T, float>)
      if (allow_tf32() && d % 8 == 0) return run(map, std::integral_constant<int, 1>{});
    run(map, std::integral_constant<int, 3>{});
  };
  if (fm == FeatureMap::Nala)
    with_passes(Nala{});
  else
    with_passes(Relu{});
}

template <typename T>
void linear_attention_forward(FeatureMap fm, int64_t bh, int64_t n, int64_t d, const T* q,
                              const T* k, const T* v, const T* sin, const T* cos, T* o, T* state,
                              T* kbar, T* z, T* workspace) {
  check_linear_head_dim("linear_attention_forward", d);
  check_aligned("linear_attention_forward", {q, k, v, sin, cos, o, state, kbar, z, workspace});
  if (bh == 0 || n == 0) return;
  const int dim = static_cast<int>(d);
  with_map_and_passes<T>(fm, dim, [&](auto map, auto passes) {
    linear_forward<T, decltype(map)::value, decltype(passes)::value>(bh, n, dim, q, k, v, sin, cos,
                                                                     o, state, kbar, z, workspace);
  });
}

template <typename T>
void linear_attention_backward(FeatureMap fm, int64_t bh, int64_t n, int64_t d, const T* q,
                               const T* k, const T* v, const T* sin, const T* cos, const T* state,
                               const T* kbar, const T* z, const T* dout, T* dq, T* dk, T* dv,
                               T* workspace) {
  check_linear_head_dim("linear_attention_backward", d);
  check_aligned("linear_attention_backward",
                {q, k, v, sin, cos, state, kbar, z, dout, dq, dk, dv, workspace});
  if (bh == 0 || n == 0) return;
  const int dim = static_cast<int>(d);
  with_map_and_passes<T>(fm, dim, [&](auto map, auto passes) {
    linear_backward<T, decltype(map)::value, decltype(passes)::value>(
        bh, n, dim, q, k, v, sin, cos, state, kbar, z, dout, dq, dk, dv, workspace);
  });
}

template <typename T>
void softmax_attention_forward(int64_t bh, int64_t n, int64_t d, const T* q, const T* k, const T* v,
                               const T* sin, const T* cos, T* o, T* lse) {
  check_head_dim("softmax_attention_forward", d);
  check_aligned("softmax_attention_forward", {q, k, v, sin, cos, o, lse});
  if (bh == 0 || n == 0) return;
  const int dim = static_cast<int>(d);
  const auto bytes = [&](int tile) { return SoftmaxForwardLayout(tile, dim).size * sizeof(T); };
  const int tile = choose_tile("softmax_attention_forward", 4, bytes);
  const dim3 grid(static_cast<unsigned>((n + tile - 1) / tile), static_cast<unsigned>(bh));
  launch_large_shared<softmax_forward_kernel<T>, Placement::Overlapped>(
      grid, bytes(tile), n, dim, tile, q, k, v, sin, cos, o, lse);
}

// The workspace holds D_i = do_i . o_i, (bh, n).
int64_t softmax_attention_workspace_size(int64_t bh, int64_t n, int64_t /*d*/) { return bh * n; }

template <typename T>
void softmax_attention_backward(int64_t bh, int64_t n, int64_t d, const T* q, const T* k,
                                const T* v, const T* sin, const T* cos, const T* o, const T* lse,
                                const T* dout, T* dq, T* dk, T* dv, T* workspace) {
  check_head_dim("softmax_attention_backward", d);
  check_aligned("softmax_attention_backward", {q, k, v, sin, cos, o, lse, dout, dq, dk, dv});
  if (bh == 0 || n == 0) return;
  const int dim = static_cast<int>(d);
  T* delta = workspace;
  launch_per_row(bh * n, d, [&](auto team, unsigned blocks, unsigned threads) {
    launch_kernel(row_dot_kernel<T, decltype(team)>, blocks, threads, 0, team, bh * n, dim, dout, o,
                  delta);
  });
  const char* name = "softmax_attention_backward";
  const auto key_bytes = [&](int tile) {
    return SoftmaxKeyBackwardLayout(tile, dim).size * sizeof(T);
  };
  const int key_tile = choose_tile(name, 4, key_bytes);
  const dim3 key_grid(static_cast<unsigned>((n + key_tile - 1) / key_tile),
                      static_cast<unsigned>(bh));
  launch_large_shared<softmax_key_backward_kernel<T>, Placement::Overlapped>(
      key_grid, key_bytes(key_tile), n, dim, key_tile, q, k, v, sin, cos, lse, delta, dout, dk, dv);
  const auto query_bytes = [&](int tile) {
    return SoftmaxQueryBackwardLayout(tile, dim).size * sizeof(T);
  };
  const int query_tile = choose_tile(name, 4, query_bytes);
  const dim3 query_grid(static_cast<unsigned>((n + query_tile - 1) / query_tile),
                        static_cast<unsigned>(bh));
  launch_large_shared<softmax_query_backward_kernel<T>, Placement::Overlapped>(
      query_grid, query_bytes(query_tile), n, dim, query_tile, q, k, v, sin, cos, lse, delta, dout,
      dq);
}

#define NALA_INSTANTIATE(T)                                                                     \
  template void linear_attention_forward<T>(FeatureMap, int64_t, int64_t, int64_t, const T*,    \
                                            const T*, const T*, const T*, const T*, T*, T*, T*, \
                                            T*, T*);                                            \
  template void linear_attention_backward<T>(FeatureMap, int64_t, int64_t, int64_t, const T*,   \
                                             const T*, const T*, const T*, const T*, const T*,  \
                                             const T*, const T*, const T*, T*, T*, T*, T*);     \
  template void softmax_attention_forward<T>(int64_t, int64_t, int64_t, const T*, const T*,     \
                                             const T*, const T*, const T*, T*, T*);             \
  template void softmax_attention_backward<T>(int64_t, int64_t, int64_t, const T*, const T*,    \
                                              const T*, const T*, const T*, const T*, const T*, \
                                              const T*, T*, T*, T*, T*);
NALA_INSTANTIATE(float)
NALA_INSTANTIATE(double)
#undef NALA_INSTANTIATE

}  // namespace nala::kernels::cuda
