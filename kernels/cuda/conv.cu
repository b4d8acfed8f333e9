// Convolution kernels: im2col / col2im (a convolution is then a GEMM, matmul.cu) and the direct
// depthwise convolution. Tap (i, j) of output pixel (oh, ow) reads input pixel
//   (oh * stride_h - pad_h + i, ow * stride_w - pad_w + j),  zero outside the image.
// The adjoints (col2im, depthwise backward input) gather: one thread per input pixel sums over
// the outputs whose taps read it (outputs_reading), so no two threads write the same element and
// no atomics are needed.
//
// Coordinates inside one (height, width) plane are 32-bit ints, which is much cheaper on the GPU
// than 64-bit division; only offsets of whole planes are 64-bit.
#include <algorithm>
#include <climits>
#include <stdexcept>
#include <type_traits>

#include "kernels/cuda/common.h"
#include "kernels/fast_divisor.h"
#include "kernels/kernels.h"

namespace nala::kernels::cuda {

namespace {

// Conv2dShape with the in-plane sizes as int.
struct Geometry {
  int64_t batch, channels;
  int height, width, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, out_h, out_w;
  __device__ int in_pixels() const { return height * width; }
  __device__ int out_pixels() const { return out_h * out_w; }
  __device__ int taps() const { return kernel_h * kernel_w; }
};

Geometry geometry_of(const Conv2dShape& s) {
  const int64_t largest_plane =
      std::max({s.height * s.width, s.out_h * s.out_w, s.kernel_h * s.kernel_w,
                s.height + 2 * s.pad_h + s.kernel_h, s.width + 2 * s.pad_w + s.kernel_w});
  if (largest_plane > INT_MAX || s.stride_h > INT_MAX || s.stride_w > INT_MAX)
    throw std::invalid_argument("conv2d: a plane of the image is too large for 32-bit indexing");
  const auto i = [](int64_t v) { return static_cast<int>(v); };
  return {s.batch,       s.channels,    i(s.height), i(s.width), i(s.kernel_h), i(s.kernel_w),
          i(s.stride_h), i(s.stride_w), i(s.pad_h),  i(s.pad_w), i(s.out_h),    i(s.out_w)};
}

// Element `index` of a contiguous (batch, channels, plane_h, plane_w) array: its plane
// n * channels + c, its channel c and its coordinates (y, x) in the plane.
struct PlanePoint {
  int64_t plane, c;
  int y, x;
};

__device__ PlanePoint plane_point(int64_t index, int64_t channels, int plane_h, int plane_w) {
  const int plane_size = plane_h * plane_w;
  const int64_t plane = index / plane_size;
  const int offset = static_cast<int>(index - plane * plane_size);
  return {plane, plane % channels, offset / plane_w, offset % plane_w};
}

// The outputs whose taps read input coordinate `in` along one axis: in = out * stride - pad + tap
// with 0 <= tap < kernel, so out runs over [first, last] (empty when first > last),
//   first = max(0, ceil((in + pad - kernel + 1) / stride)),
//   last = min(out_size - 1, floor((in + pad) / stride)),
// and out's tap is in + pad - out * stride.
struct OutputRange {
  int first, last;
};

__device__ OutputRange outputs_reading(int in, int kernel, int stride, int pad, int out_size) {
  const int padded = in + pad;  // >= 0
  const int lowest = padded - kernel + 1;
  const int first = lowest <= 0 ? 0 : (lowest + stride - 1) / stride;
  const int last = min(padded / stride, out_size - 1);
  return {first, last};
}

// One thread per output pixel (n, c, oh, ow) writes its kernel_h * kernel_w column entries
//   col[n, (c, i, j), (oh, ow)] = x[n, c, oh * stride_h - pad_h + i, ow * stride_w - pad_w + j].
template <typename T>
struct Im2col {
  Geometry g;
  const T* x;
  T* col;
  __device__ void operator()(int64_t index) const {
    const PlanePoint out = plane_point(index, g.channels, g.out_h, g.out_w);
    const T* x_plane = x + out.plane * g.in_pixels();
    T* col_entry = col + out.plane * g.taps() * g.out_pixels() + out.y * g.out_w + out.x;
    for (int i = 0; i < g.kernel_h; ++i) {
      const int h = out.y * g.stride_h - g.pad_h + i;
      for (int j = 0; j < g.kernel_w; ++j) {
        const int w = out.x * g.stride_w - g.pad_w + j;
        const bool inside = h >= 0 && h < g.height && w >= 0 && w < g.width;
        col_entry[static_cast<int64_t>(i * g.kernel_w + j) * g.out_pixels()] =
            inside ? x_plane[h * g.width + w] : T(0);
      }
    }
  }
};

// One thread per input pixel (n, c, h, w): dx[n, c, h, w] = sum of col[n, (c, i, j), (oh, ow)]
// over the taps (i, j) and output pixels (oh, ow) that read it.
template <typename T>
struct Col2im {
  Geometry g;
  const T* col;
  T* dx;
  __device__ void operator()(int64_t index) const {
    const PlanePoint in = plane_point(index, g.channels, g.height, g.width);
    const T* col_plane = col + in.plane * g.taps() * g.out_pixels();
    const OutputRange rows = outputs_reading(in.y, g.kernel_h, g.stride_h, g.pad_h, g.out_h);
    const OutputRange cols = outputs_reading(in.x, g.kernel_w, g.stride_w, g.pad_w, g.out_w);
    T sum = T(0);
    for (int oh = rows.first; oh <= rows.last; ++oh) {
      const int i = in.y + g.pad_h - oh * g.stride_h;
      for (int ow = cols.first; ow <= cols.last; ++ow) {
        const int j = in.x + g.pad_w - ow * g.stride_w;
        sum += col_plane[static_cast<int64_t>(i * g.kernel_w + j) * g.out_pixels() + oh * g.out_w +
                         ow];
      }
    }
    dx[index] = sum;
  }
};

// One thread per output pixel: y[n, c, oh, ow] = bias[c] + sum_{i, j} w[c, i, j] x[n, c, .., ..].
// The threads of a warp share c, so their filter reads hit the same addresses (one broadcast).
// (Strides other than 1 and filters other than 3 x 3, 5 x 5, 7 x 7; the tiled kernel below does
// the rest.)
template <typename T>
struct DepthwiseForward {
  Geometry g;
  const T* x;
  const T* w;
  const T* bias;
  T* y;
  __device__ void operator()(int64_t index) const {
    const PlanePoint out = plane_point(index, g.channels, g.out_h, g.out_w);
    const T* x_plane = x + out.plane * g.in_pixels();
    const T* filter = w + out.c * g.taps();
    T sum = bias != nullptr ? bias[out.c] : T(0);
    for (int i = 0; i < g.kernel_h; ++i) {
      const int h = out.y * g.stride_h - g.pad_h + i;
      if (h < 0 || h >= g.height) continue;
      for (int j = 0; j < g.kernel_w; ++j) {
        const int w_in = out.x * g.stride_w - g.pad_w + j;
        if (w_in < 0 || w_in >= g.width) continue;
        sum += filter[i * g.kernel_w + j] * x_plane[h * g.width + w_in];
      }
    }
    y[index] = sum;
  }
};

// One thread per input pixel: dx[n, c, h, w] = sum of w[c, i, j] dy[n, c, oh, ow] over the taps
// (i, j) and output pixels (oh, ow) that read it.
template <typename T>
struct DepthwiseBackwardInput {
  Geometry g;
  const T* dy;
  const T* w;
  T* dx;
  __device__ void operator()(int64_t index) const {
    const PlanePoint in = plane_point(index, g.channels, g.height, g.width);
    const T* dy_plane = dy + in.plane * g.out_pixels();
    const T* filter = w + in.c * g.taps();
    const OutputRange rows = outputs_reading(in.y, g.kernel_h, g.stride_h, g.pad_h, g.out_h);
    const OutputRange cols = outputs_reading(in.x, g.kernel_w, g.stride_w, g.pad_w, g.out_w);
    T sum = T(0);
    for (int oh = rows.first; oh <= rows.last; ++oh) {
      const int i = in.y + g.pad_h - oh * g.stride_h;
      for (int ow = cols.first; ow <= cols.last; ++ow) {
        const int j = in.x + g.pad_w - ow * g.stride_w;
        sum += filter[i * g.kernel_w + j] * dy_plane[oh * g.out_w + ow];
      }
    }
    dx[index] = sum;
  }
};

// ---- depthwise forward and input gradient at stride 1: a sweep over rows per thread ----
// At stride 1 both are one operation, a per-channel correlation with zero padding:
//   out[p, y, x] = bias[c] + sum_{i, j} f_c[i, j] in[p, y - pad_h + i, x - pad_w + j].
// Forward: in = x, f = w, pad = (pad_h, pad_w). Input gradient: in = dy, f = w turned by 180
// degrees (f[i, j] = w[K-1-i, K-1-j]), pad = (K-1-pad_h, K-1-pad_w), no bias; then
//   dx[h, w] = sum_{oh, ow} w[h + pad_h - oh, w + pad_w - ow] dy[oh, ow]
// with oh = h - (K-1-pad_h) + i. For square K x K filters, K = 3, 5 or 7 (a template parameter,
// so the taps unroll). A block covers a tile_h x tile_w tile of outputs in each of
// planes_per_block planes (several small planes per block, so 2 x 2 planes still fill it). A
// thread takes `rows` (up to kRowsPerThread) vertically adjacent outputs of one column, its
// filter in registers, and sweeps the rows + K - 1 input rows they read once each (each input
// row feeds every output whose window covers it): (rows + K - 1) K loads for rows K^2 taps, all
// independent, so they are in flight together. The loads go through L1, where a warp's
// neighbouring columns and rows meet: DRAM is read about once. Bounds are checked once per
// column and once per row, not per tap, and index arithmetic uses no per-element divisions.
// (Staging the tile in shared memory first cost more instructions than the taps themselves,
// ~40 per staged element against ~30 per output: under ncu the staged 3 x 3 kernel issued
// 39.4 M warp instructions for (256, 112, 16, 16), this one 19.4 M. The per-output functors
// above, kept for other strides and filters, are instruction-bound too: one output per thread
// and 64-bit divisions.)
// The weight gradient at stride 1 uses the same tiling and sweep (depthwise_weight_kernel).
constexpr int kTiledThreads = 256;
constexpr int kTiledBlocksPerSM = 4;  // at most 64 registers a thread, for latency hiding
constexpr int kRowsPerThread = 4;

struct Correlation {
  // in (in_h x in_w planes) correlated into out (out_h x out_w) with padding (pad_h, pad_w);
  // plan_correlation sets the rest.
  Correlation(int in_height, int in_width, int out_height, int out_width, int pad_top, int pad_left,
              bool turn_filter)
      : in_h(in_height),
        in_w(in_width),
        out_h(out_height),
        out_w(out_width),
        pad_h(pad_top),
        pad_w(pad_left),
        flip(turn_filter) {}
  int planes = 0, channels = 0;  // planes = batch * channels
  int in_h, in_w, out_h, out_w, kernel = 0, pad_h, pad_w;
  bool flip;  // turn the filter by 180 degrees
  // The launch's tiling: tile_h a multiple of rows (outputs per thread), a block's threads
  // sweeping tile_h / rows x tile_w output columns (sweep_cells) in each of its planes.
  int tile_h = 0, tile_w = 0, tiles_w = 0, rows = 0, planes_per_block = 0;
  FastDivisor by_channels, by_tiles_w, by_tile_w, by_sweep_cells;
};

// The outputs a thread sweeps: (y0 + ty0 + k, x0 + tx) for k < rows of the block's plane p,
// where (y0, x0) is the block's tile.
struct SweepCell {
  int p, y0, x0, ty0, tx;
  __device__ explicit SweepCell(const Correlation& c) {
    const int tile_row = c.by_tiles_w.divide(static_cast<int>(blockIdx.y));
    y0 = tile_row * c.tile_h;
    x0 = (static_cast<int>(blockIdx.y) - tile_row * c.tiles_w) * c.tile_w;
    p = c.by_sweep_cells.divide(static_cast<int>(threadIdx.x));
    const int cell = static_cast<int>(threadIdx.x) - p * c.by_sweep_cells.divisor;
    const int row_group = c.by_tile_w.divide(cell);
    ty0 = row_group * c.rows;
    tx = cell - row_group * c.tile_w;
  }
  __device__ int x() const { return x0 + tx; }
  __device__ int first_y() const { return y0 + ty0; }
};

// Sweeps the thread's input window, its rows + K - 1 input rows read once each: row r holds
// in_row[j] = in[first_y - pad_h + r, x + j] for j < K (zero outside the image; x = the column
// - pad_w), and meets output row k at filter row i = r - k, for which it calls
// meet(k, i, in_row). The loops unroll, so i and k are constants in meet's body.
template <int K, typename T, typename Meet>
__device__ void sweep_window(const Correlation& c, const T* in_plane, int first_y, int x,
                             Meet meet) {
  bool column_inside[K];  // the same for every row
#pragma unroll
  for (int j = 0; j < K; ++j) column_inside[j] = x + j >= 0 && x + j < c.in_w;
#pragma unroll
  for (int r = 0; r < kRowsPerThread + K - 1; ++r) {
    if (r >= c.rows + K - 1) break;
    const int y = first_y - c.pad_h + r;
    const bool row_inside = y >= 0 && y < c.in_h;
    T in_row[K];
#pragma unroll
    for (int j = 0; j < K; ++j)
      in_row[j] = row_inside && column_inside[j] ? in_plane[y * c.in_w + x + j] : T(0);
#pragma unroll
    for (int k = 0; k < kRowsPerThread; ++k)
      if (r - k >= 0 && r - k < K) meet(k, r - k, in_row);
  }
}

template <int K, typename T>
__global__ void __launch_bounds__(kTiledThreads, kTiledBlocksPerSM)
    depthwise_correlation_kernel(Correlation c, const T* in, const T* w, const T* bias, T* out) {
  const SweepCell cell(c);
  const int plane = static_cast<int>(blockIdx.x) * c.planes_per_block + cell.p;
  if (plane >= c.planes || cell.x() >= c.out_w || cell.first_y() >= c.out_h) return;
  const int channel = plane - c.by_channels.divide(plane) * c.channels;
  T f[K][K];
#pragma unroll
  for (int i = 0; i < K; ++i)
#pragma unroll
    for (int j = 0; j < K; ++j)
      f[i][j] = w[channel * K * K + (c.flip ? (K - 1 - i) * K + K - 1 - j : i * K + j)];
  T acc[kRowsPerThread];
#pragma unroll
  for (int k = 0; k < kRowsPerThread; ++k) acc[k] = bias != nullptr ? bias[channel] : T(0);
  const T* in_plane = in + static_cast<int64_t>(plane) * c.in_h * c.in_w;
  sweep_window<K>(c, in_plane, cell.first_y(), cell.x() - c.pad_w,
                  [&](int k, int i, const T(&in_row)[K]) {
#pragma unroll
                    for (int j = 0; j < K; ++j) acc[k] += f[i][j] * in_row[j];
                  });
#pragma unroll
  for (int k = 0; k < kRowsPerThread; ++k) {
    const int y = cell.first_y() + k;
    if (k < c.rows && y < c.out_h)
      out[(static_cast<int64_t>(plane) * c.out_h + y) * c.out_w + cell.x()] = acc[k];
  }
}

// The correlation's tiling: tiles up to 32 wide, up to kRowsPerThread outputs per thread, as
// many small planes per block as fill its threads. False when the tiled kernels do not apply:
// filters other than 3 x 3, 5 x 5, 7 x 7, more tiles per plane than a grid dimension holds,
// planes past 32-bit indexing.
bool plan_correlation(Correlation& c, const Conv2dShape& s) {
  if (s.stride_h != 1 || s.stride_w != 1 || s.kernel_h != s.kernel_w ||
      (s.kernel_h != 3 && s.kernel_h != 5 && s.kernel_h != 7) || c.pad_h < 0 || c.pad_w < 0 ||
      c.out_h <= 0 || c.out_w <= 0 || s.batch <= 0 || s.channels <= 0 ||
      s.batch * s.channels > INT_MAX)
    return false;
  c.planes = static_cast<int>(s.batch * s.channels);
  c.channels = static_cast<int>(s.channels);
  c.kernel = static_cast<int>(s.kernel_h);
  c.tile_w = static_cast<int>(pow2_at_least(c.out_w, kWarpSize));
  c.tile_h = static_cast<int>(pow2_at_least(c.out_h, kTiledThreads * kRowsPerThread / c.tile_w));
  c.rows = std::min(kRowsPerThread, c.tile_h);
  // The sweep cells of a plane are a power of two, at most kTiledThreads: the planes fill the
  // block exactly, so each thread's SweepCell::p is one of them.
  c.planes_per_block = kTiledThreads / (c.tile_h / c.rows * c.tile_w);
  c.tiles_w = (c.out_w + c.tile_w - 1) / c.tile_w;
  c.by_channels = FastDivisor(c.channels);
  c.by_tiles_w = FastDivisor(c.tiles_w);
  c.by_tile_w = FastDivisor(c.tile_w);
  c.by_sweep_cells = FastDivisor(c.tile_h / c.rows * c.tile_w);
  return int64_t((c.out_h + c.tile_h - 1) / c.tile_h) * c.tiles_w <= 65535;
}

// Calls f(std::integral_constant<int, K>{}) for the tiled kernels' filter size K = k (3, 5, 7).
template <typename F>
void with_filter_size(int k, F f) {
  if (k == 3)
    f(std::integral_constant<int, 3>{});
  else if (k == 5)
    f(std::integral_constant<int, 5>{});
  else
    f(std::integral_constant<int, 7>{});
}

template <typename T>
void correlate(const Correlation& c, const T* in, const T* w, const T* bias, T* out) {
  const int tiles = (c.out_h + c.tile_h - 1) / c.tile_h * c.tiles_w;
  const dim3 grid(static_cast<unsigned>((c.planes + c.planes_per_block - 1) / c.planes_per_block),
                  static_cast<unsigned>(tiles));
  with_filter_size(c.kernel, [&](auto k) {
    depthwise_correlation_kernel<k.value>
        <<<grid, kTiledThreads, 0, stream()>>>(c, in, w, bias, out);
  });
  NALA_CUDA_CHECK_LAUNCH();
}

// ---- depthwise weight gradient ----
//   dw[c, i, j] = sum over n, oh, ow of dy[n, c, oh, ow] x[n, c, oh * stride_h - pad_h + i, ...]
// At stride 1 with a 3 x 3, 5 x 5 or 7 x 7 filter (depthwise_weight_kernel), block
// (c, tile, split) takes channel c, one output tile of the correlation's tiling (in = x) and the
// images of split `split`, planes_per_block images at a time, and each thread sweeps its
// window as the forward does, with its outputs' dy in registers: input row r meets output row k
// at filter row i = r - k, so
//   sum[i][j] += dy[k] in_row[j].
// Each thread keeps the K x K sums over all its images; the block then adds each tap's sums.
template <int K, typename T>
__global__ void __launch_bounds__(kTiledThreads, kTiledBlocksPerSM)
    depthwise_weight_kernel(Correlation c, int64_t images_per_split, const T* x, const T* dy,
                            T* partials) {
  const int channel = static_cast<int>(blockIdx.x);
  const int64_t images = c.by_channels.divide(c.planes);
  const int64_t end_image = min(images, (blockIdx.z + 1) * images_per_split);
  const SweepCell cell(c);
  // Outputs k < valid_rows of this thread's column are inside the image.
  const int valid_rows = cell.x() < c.out_w ? min(c.rows, c.out_h - cell.first_y()) : 0;
  const int in_x = cell.x() - c.pad_w;
  T sum[K][K] = {};
  for (int64_t n = blockIdx.z * images_per_split + cell.p; valid_rows > 0 && n < end_image;
       n += c.planes_per_block) {
    const int64_t plane = n * c.channels + channel;
    const T* dy_column = dy + plane * c.out_h * c.out_w + cell.x();
    T grad[kRowsPerThread];
#pragma unroll
    for (int k = 0; k < kRowsPerThread; ++k)
      grad[k] = k < valid_rows ? dy_column[(cell.first_y() + k) * c.out_w] : T(0);
    sweep_window<K>(c, x + plane * c.in_h * c.in_w, cell.first_y(), in_x,
                    [&](int k, int i, const T(&in_row)[K]) {
                      if (k >= valid_rows) return;
#pragma unroll
                      for (int j = 0; j < K; ++j) sum[i][j] += grad[k] * in_row[j];
                    });
  }
  // Each tap's sum over the block, to partials[c][tile][split][tap], or dw itself when there is
  // one tile and one split.
  T* out =
      partials +
      ((static_cast<int64_t>(channel) * gridDim.y + blockIdx.y) * gridDim.z + blockIdx.z) * K * K;
  block_sum_each<kTiledThreads>(reinterpret_cast<const T(&)[K * K]>(sum),
                                [&](int tap, T total) { out[tap] = total; });
}

// Other strides and filters (depthwise_backward_weight_kernel): block (c, tile, split) handles
// channel c, a kWindow x kWindow window of the filter's taps (kWindow = 3 for filters up to
// 3 x 3, else 5: one window covers filters up to 5 x 5, and the unrolled loops check no taps a
// 3 x 3 filter lacks) and split `split` of the flattened (n, oh, ow) positions. Each thread walks
// its positions reading dy once and the window's inputs (neighbours of its neighbours' reads, so
// mostly from L1), keeping one running sum per tap in registers; the block then reduces each
// tap's sums.
// Both kernels write their blocks' partial sums (per tile and split, or per split) to
// split_scratch when there is more than one block per tap, and a second pass adds them up in a
// fixed order (no atomics: deterministic).
constexpr int kWeightGradThreads = 256;
constexpr int64_t kWeightGradTargetBlocks = 1024;
constexpr int64_t kWeightGradMinPositions = 2048;

struct WeightGradSplits {
  int tiles_w;  // tap windows across the filter's width
  int64_t splits, positions_per_split;
};

template <int kWindow, typename T>
__global__ void __launch_bounds__(kWeightGradThreads)
    depthwise_backward_weight_kernel(Geometry g, WeightGradSplits sp, const T* x, const T* dy,
                                     T* out) {
  const int64_t c = blockIdx.x, split = blockIdx.z;
  const int i0 = static_cast<int>(blockIdx.y) / sp.tiles_w * kWindow;
  const int j0 = static_cast<int>(blockIdx.y) % sp.tiles_w * kWindow;
  const int64_t first = split * sp.positions_per_split + threadIdx.x;
  const int64_t end = min((split + 1) * sp.positions_per_split, g.batch * g.out_pixels());
  T sum[kWindow][kWindow] = {};
  // Position = image * out_pixels + pixel, walked as (image, pixel) cells.
  GridWalk<int64_t> cell(first, g.out_pixels(), static_cast<int>(blockDim.x));
  for (int64_t position = first; position < end; position += blockDim.x, cell.next()) {
    const int64_t plane = cell.row * g.channels + c;
    const int pixel = cell.col;
    const T grad = dy[plane * g.out_pixels() + pixel];
    const T* x_plane = x + plane * g.in_pixels();
    const int h0 = pixel / g.out_w * g.stride_h - g.pad_h + i0;
    const int w0 = pixel % g.out_w * g.stride_w - g.pad_w + j0;
#pragma unroll
    for (int a = 0; a < kWindow; ++a) {
      const int h = h0 + a;
      if (i0 + a >= g.kernel_h || h < 0 || h >= g.height) continue;
#pragma unroll
      for (int b = 0; b < kWindow; ++b) {
        const int w = w0 + b;
        if (j0 + b < g.kernel_w && w >= 0 && w < g.width)
          sum[a][b] += grad * x_plane[h * g.width + w];
      }
    }
  }
  // Each tap of the window inside the filter, to dw (one split) or the partials (c, split, tap).
  block_sum_each<kWeightGradThreads>(
      reinterpret_cast<const T(&)[kWindow * kWindow]>(sum), [&](int tap, T total) {
        const int a = tap / kWindow, b = tap % kWindow;
        if (i0 + a < g.kernel_h && j0 + b < g.kernel_w)
          out[(c * sp.splits + split) * g.taps() + (i0 + a) * g.kernel_w + j0 + b] = total;
      });
}

}  // namespace

template <typename T>
void im2col(const Conv2dShape& s, const T* x, T* col) {
  for_each_index(s.batch * s.channels * s.out_h * s.out_w, Im2col<T>{geometry_of(s), x, col});
}

template <typename T>
void col2im(const Conv2dShape& s, const T* col, T* dx) {
  for_each_index(s.batch * s.channels * s.height * s.width, Col2im<T>{geometry_of(s), col, dx});
}

template <typename T>
void depthwise_conv2d_forward(const Conv2dShape& s, const T* x, const T* w, const T* bias, T* y) {
  const Geometry g = geometry_of(s);
  Correlation c(g.height, g.width, g.out_h, g.out_w, g.pad_h, g.pad_w, false);
  if (plan_correlation(c, s)) return correlate(c, x, w, bias, y);
  for_each_index(s.batch * s.channels * s.out_h * s.out_w, DepthwiseForward<T>{g, x, w, bias, y});
}

template <typename T>
void depthwise_conv2d_backward_input(const Conv2dShape& s, const T* dy, const T* w, T* dx) {
  const Geometry g = geometry_of(s);
  // Correlation with the filter turned, padded by K - 1 - pad (see depthwise_correlation_kernel).
  Correlation c(g.out_h, g.out_w, g.height, g.width, g.kernel_h - 1 - g.pad_h,
                g.kernel_w - 1 - g.pad_w, true);
  if (plan_correlation(c, s)) return correlate(c, dy, w, static_cast<const T*>(nullptr), dx);
  for_each_index(s.batch * s.channels * s.height * s.width,
                 DepthwiseBackwardInput<T>{g, dy, w, dx});
}

// The tiled weight gradient (stride 1, 3 x 3, 5 x 5, 7 x 7); false when it does not apply.
// Enough blocks to fill the GPU: tiles x splits per channel, the partials within split_scratch.
template <typename T>
bool depthwise_weight_tiled(const Conv2dShape& s, const Geometry& g, const T* x, const T* dy,
                            T* dw) {
  Correlation c(g.height, g.width, g.out_h, g.out_w, g.pad_h, g.pad_w, false);
  if (!plan_correlation(c, s)) return false;
  const int64_t taps = s.kernel_h * s.kernel_w;
  const int64_t tiles = int64_t((c.out_h + c.tile_h - 1) / c.tile_h) * c.tiles_w;
  const int64_t groups = (s.batch + c.planes_per_block - 1) / c.planes_per_block;
  int64_t splits = std::clamp<int64_t>(
      (kWeightGradTargetBlocks + s.channels * tiles - 1) / (s.channels * tiles), 1, groups);
  if (tiles * splits > 1) {
    splits = std::min(splits, kSplitScratchElements / (s.channels * tiles * taps));
    if (splits < 1) return false;
  }
  const int64_t images_per_split = (groups + splits - 1) / splits * c.planes_per_block;
  splits = (s.batch + images_per_split - 1) / images_per_split;  // none empty
  T* out = tiles * splits == 1 ? dw : reinterpret_cast<T*>(split_scratch_address());
  const dim3 grid(static_cast<unsigned>(s.channels), static_cast<unsigned>(tiles),
                  static_cast<unsigned>(splits));
  with_filter_size(c.kernel, [&](auto k) {
    depthwise_weight_kernel<k.value>
        <<<grid, kTiledThreads, 0, stream()>>>(c, images_per_split, x, dy, out);
  });
  NALA_CUDA_CHECK_LAUNCH();
  if (tiles * splits > 1)
    reduce_middle_axis_pass<SumOp<T>>(s.channels, tiles * splits, taps, tiles * splits, 1,
                                      MiddleAxisElement<T>{out, tiles * splits, taps}, dw);
  return true;
}

template <typename T>
void depthwise_conv2d_backward_weight(const Conv2dShape& s, const T* x, const T* dy, T* dw) {
  const int64_t taps = s.kernel_h * s.kernel_w, positions = s.batch * s.out_h * s.out_w;
  if (s.channels * taps <= 0) return;
  const Geometry g = geometry_of(s);
  if (depthwise_weight_tiled(s, g, x, dy, dw)) return;
  const int window = s.kernel_h <= 3 && s.kernel_w <= 3 ? 3 : 5;
  WeightGradSplits sp;
  sp.tiles_w = static_cast<int>((s.kernel_w + window - 1) / window);
  const int64_t tiles = (s.kernel_h + window - 1) / window * sp.tiles_w;
  // Enough blocks to fill the GPU, each over at least kWeightGradMinPositions positions, the
  // partials within split_scratch.
  sp.splits = std::min((kWeightGradTargetBlocks + s.channels * tiles - 1) / (s.channels * tiles),
                       (positions + kWeightGradMinPositions - 1) / kWeightGradMinPositions);
  sp.splits = std::clamp<int64_t>(
      sp.splits, 1, std::max<int64_t>(1, kSplitScratchElements / (s.channels * taps)));
  sp.positions_per_split = (std::max<int64_t>(positions, 1) + sp.splits - 1) / sp.splits;
  sp.splits =
      (std::max<int64_t>(positions, 1) + sp.positions_per_split - 1) / sp.positions_per_split;
  if (tiles > 65535 || sp.splits > 65535)
    throw std::invalid_argument("depthwise conv2d weight gradient: filter too large for CUDA");
  const dim3 grid(static_cast<unsigned>(s.channels), static_cast<unsigned>(tiles),
                  static_cast<unsigned>(sp.splits));
  // out is dw itself (one split) or the partials (c, split, tap).
  T* out = sp.splits == 1 ? dw : reinterpret_cast<T*>(split_scratch_address());
  if (window == 3)
    depthwise_backward_weight_kernel<3>
        <<<grid, kWeightGradThreads, 0, stream()>>>(g, sp, x, dy, out);
  else
    depthwise_backward_weight_kernel<5>
        <<<grid, kWeightGradThreads, 0, stream()>>>(g, sp, x, dy, out);
  NALA_CUDA_CHECK_LAUNCH();
  if (sp.splits > 1)
    reduce_middle_axis_pass<SumOp<T>>(s.channels, sp.splits, taps, sp.splits, 1,
                                      MiddleAxisElement<T>{out, sp.splits, taps}, dw);
}

#define NALA_INSTANTIATE(T)                                                                        \
  template void im2col<T>(const Conv2dShape&, const T*, T*);                                       \
  template void col2im<T>(const Conv2dShape&, const T*, T*);                                       \
  template void depthwise_conv2d_forward<T>(const Conv2dShape&, const T*, const T*, const T*, T*); \
  template void depthwise_conv2d_backward_input<T>(const Conv2dShape&, const T*, const T*, T*);    \
  template void depthwise_conv2d_backward_weight<T>(const Conv2dShape&, const T*, const T*, T*);
NALA_INSTANTIATE(float)
NALA_INSTANTIATE(double)
#undef NALA_INSTANTIATE

}  // namespace nala::kernels::cuda
