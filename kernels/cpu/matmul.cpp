// General matrix multiply on the CPU: C_b = alpha op(A_b) op(B_b) + beta C_b.
//
// The blocked algorithm of Goto & van de Geijn (as in BLIS and OpenBLAS), in three levels:
//
// 1. Tiles. C is cut into tiles of at most kTileM x kTileN; the (batch, tile) pairs are the
//    units of work that OpenMP hands to threads. Tiles never overlap, so threads never race.
// 2. Packing. For each tile, k is walked in blocks of kKc. The block of op(A) (tile rows x kc)
//    and the block of op(B) (kc x tile cols) are copied into a thread's buffer in exactly the
//    order the micro-kernel reads them: op(A) as panels of kMr rows, each step p holding the
//    kMr values op(A)[i, p] side by side; op(B) as panels of kNr columns, each step p holding
//    the kNr values op(B)[p, j]. Panels past the matrix edge are zero-padded, so the
//    micro-kernel never tests bounds, and the transposes are handled here and nowhere else.
// 3. The micro-kernel. A kMr x kNr block of C lives in registers (kMr x 2 vectors of 512 bits:
//    24 of the 32 AVX-512 registers) while it sums kc rank-1 updates
//        acc[i][j] += op(A)[i, p] * op(B)[p, j],
//    each one a broadcast of op(A)[i, p] times two vectors of op(B)[p, :], i.e. 2 kMr fused
//    multiply-adds per 2 vector loads and kMr scalar loads.
//
// Cache use (float; double halves kKc so the bytes stay the same): one op(A) panel
// (kMr x kKc = 18 KiB) stays in L1 while the micro-kernel sweeps it across the packed op(B)
// block (kKc x kTileN = 768 KiB), which stays in the 1 MiB L2; the packed op(A) block streams
// through once per k block. Tall tiles (kTileM = 480) mean op(B) is packed fewer times.
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/scratch.h"
#include "kernels/kernels.h"

namespace nala::kernels::cpu {
namespace {

constexpr int64_t kVectorBytes = 64;  // one AVX-512 register

template <typename T>
struct Blocking {
  using Vector __attribute__((vector_size(kVectorBytes))) = T;
  static constexpr int64_t kLanes = kVectorBytes / sizeof(T);
  static constexpr int64_t kMr = 12;          // rows of C in registers
  static constexpr int64_t kNr = 2 * kLanes;  // columns of C in registers (two vectors)
  static constexpr int64_t kKc = 1536 / sizeof(T);
  static constexpr int64_t kTileM = 40 * kMr;
  static constexpr int64_t kTileN = 512;
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t multiple) { return ceil_div(a, multiple) * multiple; }

// A matrix operand seen through op(): element (r, c) is data[r * row_stride + c * col_stride].
template <typename T>
struct Operand {
  const T* data;
  int64_t row_stride, col_stride;
};

// Packs kWidth-wide panels of a block of an operand:
//   packed[panel][p][x] = src(panel * kWidth + x, p)   (0 where panel * kWidth + x >= extent)
// src(x, p) = data[x * x_stride + p * p_stride]: x walks m for op(A), n for op(B). The loops
// run along whichever of x and p is contiguous in memory, so each cache line of the source is
// read once (walking 12 rows in lockstep with a power-of-two stride would thrash L1).
template <typename T, int64_t kWidth>
void pack_panels(const T* data, int64_t x_stride, int64_t p_stride, int64_t extent, int64_t kc,
                 T* packed) {
  for (int64_t x0 = 0; x0 < extent; x0 += kWidth) {
    const int64_t width = std::min(kWidth, extent - x0);
    const T* src = data + x0 * x_stride;
    if (x_stride == 1) {
      for (int64_t p = 0; p < kc; ++p) {
        for (int64_t x = 0; x < width; ++x) packed[p * kWidth + x] = src[x + p * p_stride];
      }
    } else {
      for (int64_t x = 0; x < width; ++x) {
        for (int64_t p = 0; p < kc; ++p) packed[p * kWidth + x] = src[x * x_stride + p * p_stride];
      }
    }
    for (int64_t p = 0; p < kc; ++p) {
      for (int64_t x = width; x < kWidth; ++x) packed[p * kWidth + x] = T(0);
    }
    packed += kc * kWidth;
  }
}

// tile (kMr x kNr, row-major) = sum over p < kc of a[p][:] (outer product) b[p][:], from one
// packed panel of op(A) and one of op(B). The accumulators are GCC vector-extension values,
// which the compiler keeps in registers and turns into broadcast fused multiply-adds. Not inlined,
// so that no register of the caller competes with the accumulators.
template <typename T>
__attribute__((noinline)) void micro_kernel(int64_t kc, const T* a, const T* b, T* tile) {
  using B = Blocking<T>;
  using Vector = typename B::Vector;
  constexpr int64_t kVectors = B::kNr / B::kLanes;
  Vector acc[B::kMr][kVectors] = {};
  for (int64_t p = 0; p < kc; ++p) {
    Vector b_row[kVectors];
#pragma GCC unroll 4
    for (int64_t v = 0; v < kVectors; ++v) {
      std::memcpy(&b_row[v], b + p * B::kNr + v * B::kLanes, sizeof(Vector));
    }
#pragma GCC unroll 16
    for (int64_t i = 0; i < B::kMr; ++i) {
      const T a_ip = a[p * B::kMr + i];
#pragma GCC unroll 4
      for (int64_t v = 0; v < kVectors; ++v) acc[i][v] += a_ip * b_row[v];
    }
  }
  std::memcpy(tile, acc, sizeof(acc));
}

// c[i, j] = alpha tile[i, j] + beta c[i, j] for i < rows, j < cols; beta == 0 never reads c.
template <typename T>
void write_tile(const T* tile, int64_t rows, int64_t cols, T alpha, T beta, T* c, int64_t ldc) {
  constexpr int64_t kNr = Blocking<T>::kNr;
  for (int64_t i = 0; i < rows; ++i) {
    T* c_row = c + i * ldc;
    const T* tile_row = tile + i * kNr;
    if (beta == T(0)) {
      for (int64_t j = 0; j < cols; ++j) c_row[j] = alpha * tile_row[j];
    } else {
      for (int64_t j = 0; j < cols; ++j) c_row[j] = alpha * tile_row[j] + beta * c_row[j];
    }
  }
}

struct PackedPanels {};  // the tag of the GEMM's per-thread packing buffer (scratch.h)

// C[0:m, 0:n] = alpha op(A)[0:m, :] op(B)[:, 0:n] + beta C for one tile (m <= kTileM,
// n <= kTileN; the operands already point at the tile's first row / column).
template <typename T>
void gemm_tile(int64_t m, int64_t n, int64_t k, T alpha, Operand<T> a, Operand<T> b, T beta, T* c,
               int64_t ldc) {
  using B = Blocking<T>;
  const int64_t a_panel_rows = round_up(m, B::kMr);
  const int64_t b_panel_cols = round_up(n, B::kNr);
  T* packed_a = thread_scratch<PackedPanels, T>((a_panel_rows + b_panel_cols) * B::kKc);
  T* packed_b = packed_a + a_panel_rows * B::kKc;
  alignas(kVectorBytes) T tile[B::kMr * B::kNr];
  // One pass over k even when k == 0, so that C = beta C is still written.
  for (int64_t p0 = 0; p0 == 0 || p0 < k; p0 += B::kKc) {
    const int64_t kc = std::min(B::kKc, k - p0);
    pack_panels<T, B::kMr>(a.data + p0 * a.col_stride, a.row_stride, a.col_stride, m, kc, packed_a);
    pack_panels<T, B::kNr>(b.data + p0 * b.row_stride, b.col_stride, b.row_stride, n, kc, packed_b);
    const T beta_block = p0 == 0 ? beta : T(1);  // later k blocks accumulate
    for (int64_t i0 = 0; i0 < m; i0 += B::kMr) {
      for (int64_t j0 = 0; j0 < n; j0 += B::kNr) {
        micro_kernel(kc, packed_a + i0 * kc, packed_b + j0 * kc, tile);
        write_tile(tile, std::min(B::kMr, m - i0), std::min(B::kNr, n - j0), alpha, beta_block,
                   c + i0 * ldc + j0, ldc);
      }
    }
  }
}

// Splits `extent` into the fewest near-equal parts of at most `max_part` elements (or `parts`,
// if more), each a multiple of `multiple`; returns the part size.
int64_t part_size(int64_t extent, int64_t parts, int64_t max_part, int64_t multiple) {
  parts = std::max(parts, ceil_div(extent, max_part));
  return round_up(ceil_div(extent, parts), multiple);
}

}  // namespace

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, int64_t stride_a, const T* b, int64_t ldb, int64_t stride_b, T beta, T* c,
          int64_t ldc, int64_t stride_c, int64_t batch) {
  using B = Blocking<T>;
  if (m <= 0 || n <= 0 || batch <= 0) return;
  if (alpha == T(0)) k = 0;  // C = beta C; A and B are not read
  // Tiles: as large as the cache blocking allows, but enough of them to keep every thread busy.
  // Called from inside a parallel region (a kernel's per-chunk products), the GEMM runs on the
  // calling thread alone: more tiles would only pack the operands again for each.
  const int64_t threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  int64_t split_m = 1, split_n = 1;
  while (batch * split_m * split_n < threads && (m > split_m * B::kMr || n > split_n * B::kNr)) {
    (m * B::kNr >= n * B::kMr ? split_m : split_n) *= 2;  // the side with more register blocks
  }
  const int64_t tile_m = part_size(m, split_m, B::kTileM, B::kMr);
  const int64_t tile_n = part_size(n, split_n, B::kTileN, B::kNr);
  const int64_t tiles_m = ceil_div(m, tile_m), tiles_n = ceil_div(n, tile_n);
  const int64_t tasks = batch * tiles_m * tiles_n;
  const bool large = batch * m * n * k >= 64 * 64 * 64;
#pragma omp parallel for schedule(dynamic) if (large && tasks > 1 && threads > 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t bi = task / (tiles_m * tiles_n);
    const int64_t i0 = (task / tiles_n) % tiles_m * tile_m;
    const int64_t j0 = task % tiles_n * tile_n;
    // op(A)[i, p] and op(B)[p, j] as strided views starting at the tile.
    const Operand<T> tile_a = trans_a ? Operand<T>{a + bi * stride_a + i0, 1, lda}
                                      : Operand<T>{a + bi * stride_a + i0 * lda, lda, 1};
    const Operand<T> tile_b = trans_b ? Operand<T>{b + bi * stride_b + j0 * ldb, 1, ldb}
                                      : Operand<T>{b + bi * stride_b + j0, ldb, 1};
    gemm_tile(std::min(tile_m, m - i0), std::min(tile_n, n - j0), k, alpha, tile_a, tile_b, beta,
              c + bi * stride_c + i0 * ldc + j0, ldc);
  }
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          int64_t, const float*, int64_t, int64_t, float, float*, int64_t, int64_t,
                          int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                           int64_t, const double*, int64_t, int64_t, double, double*, int64_t,
                           int64_t, int64_t);

}  // namespace nala::kernels::cpu
