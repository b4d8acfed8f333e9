// Convolution kernels: im2col / col2im (a convolution is then a GEMM, matmul.cu) and the direct
// depthwise convolution. Tap (i, j) of output pixel (oh, ow) reads input pixel
//   (oh * stride_h - pad_h + i, ow * stride_w - pad_w + j),  zero outside the image.
// The adjoints (col2im, depthwise backward input) gather: one thread per input pixel sums over
// the outputs whose taps read it (outputs_reading), so no two threads write the same element and
// no atomics are needed.
//
// Coordinates inside one (height, width) plane are 32-bit ints, which is much cheaper on the GPU
// than 64-bit division; only offsets of whole planes are 64-bit.
#include <cuda_pipeline.h>

#include <algorithm>
#include <climits>
#include <initializer_list>
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
// (Strides other than 1 and filters other than 3 x 3, 5 x 5, 7 x 7; the streamed kernels below do
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

// ---- depthwise convolution at stride 1: planes streamed through shared memory ----
// At stride 1 the forward and the input gradient are one operation, a per-channel correlation
// with zero padding:
//   out[n, c, y, x] = bias[c] + sum_{i, j} f_c[i, j] in[n, c, y - pad_h + i, x - pad_w + j].
// Forward: in = x, f = w, pad = (pad_h, pad_w). Input gradient: in = dy, f = w turned by 180
// degrees (f[i, j] = w[K-1-i, K-1-j]), pad = (K-1-pad_h, K-1-pad_w), no bias; then
//   dx[h, w] = sum_{oh, ow} w[h + pad_h - oh, w + pad_w - ow] dy[oh, ow]
// with oh = h - (K-1-pad_h) + i. The weight gradient sums the same products the other way:
//   dw[c, i, j] = sum over n, y, x of dy[n, c, y, x] x[n, c, y - pad_h + i, x - pad_w + j].
// For square K x K filters, K = 3, 5 or 7 (a template parameter, so the taps unroll).
//
// All three read each element K^2 times and do 2 K^2 flops per output: they are memory-bound,
// so each element should come from DRAM once and DRAM should never wait for the kernel. A
// block streams groups of planes through shared memory: a group is group_planes planes when
// whole planes fit in kStagedBytes, else a band of band_h output rows of one plane with the
// input rows their windows read. The correlation deals the groups of all planes to its blocks
// in turn; the backward (depthwise_backward_kernel: dw, and dx with "same" padding), whose block
// sums one channel's dw, deals each channel's groups (of its images' planes) to a row of blocks.
// The copies are asynchronous (cp.async, 16-byte pieces where the rows allow) into kStages buffers
// in a ring: the next kStages - 1 groups' copies are in flight while the block computes one
// (stream_groups). In a group each plane has kStreamThreads / group_planes threads; a thread takes
// `rows` (up to kRowsPerThread) vertically adjacent outputs of one column at a time, its filter in
// registers, and sweeps the rows + K - 1 staged input rows they read once each (each input row
// feeds every output whose window covers it): (rows + K - 1) K shared-memory loads for rows K^2
// taps. (The kernels before these read global memory straight through L1, a thread's own outputs
// its only loads in flight: at (256, 32, 16, 16) with a 5 x 5 filter they reached 39% of the copy
// bandwidth with 30-43% of warps active; docs/benchmarks.md.)
constexpr int kStreamThreads = 256;
constexpr int kStreamBlocksPerSM = 4;  // at most 64 registers a thread
constexpr int kRowsPerThread = 4;
constexpr int kStages = 2;
constexpr int kStagedBytes = 22 * 1024;  // a buffer
// The buffers leave room for block_sum_each's static shared memory (a value per warp for each of
// at most 7 x 7 taps, in double at most) within the 48 KiB a launch gets without opting in.
static_assert(kStages * kStagedBytes + kStreamThreads / kWarpSize * 7 * 7 * sizeof(double) <=
              48 * 1024);

// Where a group's rows of one tensor lie in a buffer: row r of the group's plane q at
// q * plane_ld + r * row_ld, at most max_rows rows a plane (staged_rows).
struct StagedRows {
  int width = 0, row_ld = 0, plane_ld = 0;
  FastDivisor by_row_pieces, by_plane_pieces;  // copies per row, per plane of max_rows rows
};

// Rows of `width` elements, a thread's column `rows_per_thread` of them. Shared memory has 32
// banks of 4 bytes, and a warp's lanes read neighbouring columns: of one row, or, in planes
// narrower than a warp, of rows rows_per_thread apart or of the next plane. So rows are padded
// to 16 bytes (the copies' alignment) and once more when rows_per_thread of them span a multiple
// of the 32 banks, and planes to 64 bytes past a multiple of 128: the half-warps of a 16-wide
// plane then read different banks.
template <typename T>
StagedRows staged_rows(int width, int max_rows, int rows_per_thread, int piece) {
  constexpr int kAlign = kPiece<T>;
  StagedRows s;
  s.width = width;
  s.row_ld = (width + kAlign - 1) / kAlign * kAlign;
  if (rows_per_thread * s.row_ld * sizeof(T) % 128 == 0) s.row_ld += kAlign;
  s.plane_ld = ((max_rows * s.row_ld * sizeof(T) + 127) / 128 * 128 + 64) / sizeof(T);
  s.by_row_pieces = FastDivisor(width / piece);
  s.by_plane_pieces = FastDivisor(max_rows * (width / piece));
  return s;
}

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
  int channels = 0;
  // The planes a row of blocks walks through, plane_step apart: all planes (the correlation,
  // plane_step 1) or one channel's, the row's, in each image (the backward).
  int walked = 0, plane_step = 1;
  int in_h, in_w, out_h, out_w, kernel = 0, pad_h, pad_w;
  bool flip;  // turn the filter by 180 degrees
  // The walk's groups: group_planes planes (a power of two) times a band of band_h output rows,
  // bands of them per plane; a thread's outputs `rows` at a time.
  int group_planes = 0, band_h = 0, bands = 0, rows = 0;
  int piece = 1;     // elements per asynchronous copy: 16 bytes' worth, or one
  StagedRows input;  // in's rows that the band's windows read
  // The backward's dy rows, after the group's inputs: the band's own, or, when it computes dx
  // too ("same" padding: dy's planes are x's size), the same rows as x's.
  StagedRows output;
  FastDivisor by_channels, by_bands, by_out_w;
  // The input rows that band_h output rows' windows read at most.
  int input_rows_of(int band_h) const { return std::min(in_h, band_h + kernel - 1); }
  __host__ __device__ int buffer_size() const {
    return group_planes * (input.plane_ld + output.plane_ld);
  }
  // The plane of the walk's i-th (the walk of row blockIdx.y of the grid).
  __device__ int64_t plane(int i) const { return int64_t(i) * plane_step + blockIdx.y; }
  __host__ __device__ int groups() const {  // below 2^31 (plan_correlation)
    return static_cast<int>((int64_t(walked) + group_planes - 1) / group_planes * bands);
  }
};

// Group g of the walk: its planes first ... first + planes - 1 of the walk, output rows y0 ...
// y_end - 1, and the input rows y_lo ... y_hi - 1 inside the image that their windows read.
struct Band {
  int first, planes, y0, y_end, y_lo, y_hi;
  __device__ Band(const Correlation& c, int g) {
    const int plane_group = c.by_bands.divide(g);
    first = plane_group * c.group_planes;
    planes = min(c.group_planes, c.walked - first);
    y0 = (g - plane_group * c.bands) * c.band_h;
    y_end = min(c.out_h, y0 + c.band_h);
    y_lo = max(0, y0 - c.pad_h);
    y_hi = min(c.in_h, y_end - 1 - c.pad_h + c.kernel);
  }
};

// Starts asynchronous copies of rows y_lo ... y_hi - 1 of the band's planes of t (planes of
// height x s.width) into staged, laid out as s says. Rows are whole pieces, so the piece `at`
// of a plane's rows lies `at` pieces past row y_lo in t: only its row in the buffer (rows there
// are padded) takes a division, and the plane's offset is the one 64-bit product. (Each piece's
// row and column from divisions, and its address from two 64-bit products, cost about 70
// instructions a piece: 5% of the 3x3 backward kernel's time.)
template <typename T>
__device__ void stage_band_rows(const Correlation& c, const StagedRows& s, const Band& band,
                                int y_lo, int y_hi, const T* t, int height, T* staged) {
  const int row_pieces = s.by_row_pieces.divisor, plane_pieces = s.by_plane_pieces.divisor;
  const int pieces = (y_hi - y_lo) * row_pieces;  // a plane's pieces to copy
  const T* rows = t + int64_t(y_lo) * s.width;
  const int64_t plane_size = int64_t(height) * s.width;
  for (int i = threadIdx.x; i < band.planes * plane_pieces; i += blockDim.x) {
    const int q = s.by_plane_pieces.divide(i), at = i - q * plane_pieces;  // at: the piece's index
    if (at >= pieces) continue;
    const int r = s.by_row_pieces.divide(at);
    const T* from = rows + c.plane(band.first + q) * plane_size + at * c.piece;
    T* to = staged + q * s.plane_ld + r * s.row_ld + (at - r * row_pieces) * c.piece;
    if (c.piece == 1)
      __pipeline_memcpy_async(to, from, sizeof(T));
    else
      __pipeline_memcpy_async(to, from, kPiece<T> * sizeof(T));
  }
}

// compute(g, buffer) for this block's groups of its walk, g = blockIdx.x, + gridDim.x, ...,
// after stage(g, buffer) has copied group g into buffer g's turn in the ring of kStages: the
// copies of the kStages - 1 groups after g are in flight while group g is computed. All threads
// of the block must call it.
template <typename Stage, typename Compute>
__device__ void stream_groups(int count, Stage stage, Compute compute) {
  const int64_t first = blockIdx.x, step = gridDim.x;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (first + s * step < count) stage(static_cast<int>(first + s * step), s);
    __pipeline_commit();
  }
  int turn = 0;
  for (int64_t g = first; g < count; g += step, turn = (turn + 1) % kStages) {
    const int64_t ahead = g + (kStages - 1) * step;
    if (ahead < count) stage(static_cast<int>(ahead), (turn + kStages - 1) % kStages);
    __pipeline_commit();
    __pipeline_wait_prior(kStages - 1);  // this thread's copies of group g have landed,
    __syncthreads();                     // and every thread's
    compute(static_cast<int>(g), turn);
    __syncthreads();  // group g's buffer is read before the next stage overwrites it
  }
}

// This thread's share of a group: the group's plane q, and its cells (output rows first_y ...
// first_y + rows - 1 of column x) cell = lane, lane + threads_per_plane, ..., ordered by rows
// then columns, so that a warp's lanes take neighbouring columns.
struct GroupThread {
  int q, lane, threads_per_plane;
  __device__ explicit GroupThread(const Correlation& c)
      : q(static_cast<int>(threadIdx.x) / (kStreamThreads / c.group_planes)),
        lane(static_cast<int>(threadIdx.x) % (kStreamThreads / c.group_planes)),
        threads_per_plane(kStreamThreads / c.group_planes) {}
  // body(first_y, x, valid_rows) for each of the thread's cells in the band: cells of a grid of
  // row groups (rows each) by out_w columns. (A division per cell, a multiply-high: GridWalk's
  // carried row and column held two more registers, which made the 5 x 5 kernel spill.)
  template <typename Body>
  __device__ void for_each_cell(const Correlation& c, const Band& band, Body body) const {
    const int cells = (c.band_h + c.rows - 1) / c.rows * c.out_w;
    for (int cell = lane; cell < cells; cell += threads_per_plane) {
      const int row_group = c.by_out_w.divide(cell);
      const int first_y = band.y0 + row_group * c.rows;
      if (first_y >= band.y_end) return;  // the cells after it lie lower still
      body(first_y, cell - row_group * c.out_w, min(c.rows, band.y_end - first_y));
    }
  }
};

// Sweeps a cell's input window in a staged plane (the band's rows y_lo ... y_hi - 1 of in,
// row_ld apart): its rows + K - 1 input rows read once each, row r holding
// in_row[j] = in[first_y - pad_h + r, x + j] for j < K (zero outside the image; x = the column -
// pad_w), which meets output row k < valid_rows at filter row i = r - k: meet(k, i, in_row).
// Outputs past the plane (k >= valid_rows) meet nothing: a weight gradient must not add them as
// 0 * x (an infinite x would make that NaN, where the CPU's dw is infinite). The loops unroll, so
// i and k are constants in meet's body. Every row inside the image that it reads is staged
// (plan_correlation: bands of whole cells, and the last band's rows reach the image's end), so
// checking the image's bounds is enough.
template <int K, typename T, typename Meet>
__device__ void sweep_window(const Correlation& c, const T* staged_plane, int row_ld,
                             const Band& band, int first_y, int x, int valid_rows, Meet meet) {
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
      in_row[j] =
          row_inside && column_inside[j] ? staged_plane[(y - band.y_lo) * row_ld + x + j] : T(0);
#pragma unroll
    for (int k = 0; k < kRowsPerThread; ++k)
      if (r - k >= 0 && r - k < K && k < valid_rows) meet(k, r - k, in_row);
  }
}

// f = channel's K x K filter, turned by 180 degrees when `turn`.
template <int K, typename T>
__device__ void load_filter(const T* w, int channel, bool turn, T (&f)[K][K]) {
#pragma unroll
  for (int i = 0; i < K; ++i)
#pragma unroll
    for (int j = 0; j < K; ++j)
      f[i][j] = w[channel * K * K + (turn ? (K - 1 - i) * K + K - 1 - j : i * K + j)];
}

// One cell of a correlation, its outputs k < valid_rows of column x:
//   out[first_y + k, x] = init + sum_{i, j} f[i][j] in[first_y + k - pad_h + i, x - pad_w + j],
// `in` staged as sweep_window reads it, out a plane out_w wide.
template <int K, typename T>
__device__ void correlate_cell(const Correlation& c, const T* staged_plane, int row_ld,
                               const Band& band, const T (&f)[K][K], T init, int first_y, int x,
                               int valid_rows, T* out_plane, int out_w) {
  T acc[kRowsPerThread];
#pragma unroll
  for (int k = 0; k < kRowsPerThread; ++k) acc[k] = init;
  sweep_window<K>(c, staged_plane, row_ld, band, first_y, x - c.pad_w, valid_rows,
                  [&](int k, int i, const T(&in_row)[K]) {
#pragma unroll
                    for (int j = 0; j < K; ++j) acc[k] += f[i][j] * in_row[j];
                  });
#pragma unroll
  for (int k = 0; k < kRowsPerThread; ++k)
    if (k < valid_rows) out_plane[(first_y + k) * out_w + x] = acc[k];
}

template <int K, typename T>
__global__ void __launch_bounds__(kStreamThreads, kStreamBlocksPerSM)
    depthwise_correlation_kernel(Correlation c, const T* in, const T* w, const T* bias, T* out) {
  after_previous_kernel();
  T* staged = shared_memory<T>();
  const GroupThread thread(c);
  const auto stage = [&](int g, int buffer) {
    const Band band(c, g);
    stage_band_rows(c, c.input, band, band.y_lo, band.y_hi, in, c.in_h,
                    staged + buffer * c.buffer_size());
  };
  const auto compute = [&](int g, int buffer) {
    const Band band(c, g);
    if (thread.q >= band.planes) return;
    const int plane = band.first + thread.q;
    const int channel = plane - c.by_channels.divide(plane) * c.channels;
    T f[K][K];
    load_filter(w, channel, c.flip, f);
    const T b = bias != nullptr ? bias[channel] : T(0);
    const T* staged_plane = staged + buffer * c.buffer_size() + thread.q * c.input.plane_ld;
    T* out_plane = out + int64_t(plane) * c.out_h * c.out_w;
    thread.for_each_cell(c, band, [&](int first_y, int x, int valid_rows) {
      correlate_cell(c, staged_plane, c.input.row_ld, band, f, b, first_y, x, valid_rows, out_plane,
                     c.out_w);
    });
  };
  stream_groups(c.groups(), stage, compute);
}

// The backward at stride 1 with a 3 x 3, 5 x 5 or 7 x 7 filter: block (split, c) streams channel
// c's groups of x's planes, the band's dy after them, as the correlation does, and each thread
// sweeps its cells' windows with their dy in registers: input row r meets output row k at filter
// row i = r - k, so
//   sum[i][j] += dy[k] in_row[j].
// Each thread keeps the K x K sums over all its cells; the block then adds each tap's sums, to
// partials[c][split][tap] (dw itself when there is one split).
// kInputGradient: with "same" padding (2 pad = K - 1, so dy's planes are x's size and dx's
// correlation pads dy as the forward pads x) the same pass computes dx too, from dy's staged
// windows (Staging::InputAndOutputWindows) and the turned filter, as the correlation would: dy is
// read once for both gradients, and dx costs no launch of its own.
template <int K, bool kInputGradient, typename T>
__global__ void __launch_bounds__(kStreamThreads, kStreamBlocksPerSM)
    depthwise_backward_kernel(Correlation c, const T* x, const T* dy, const T* w, T* dx,
                              T* partials) {
  after_previous_kernel();
  T* staged = shared_memory<T>();
  const GroupThread thread(c);
  const int outputs_at = c.group_planes * c.input.plane_ld;  // dy's place in a buffer
  // dy's first staged row of a band (the first row of dx's windows, or the band's first output).
  const auto dy_first_row = [&](const Band& band) { return kInputGradient ? band.y_lo : band.y0; };
  const auto stage = [&](int g, int buffer) {
    const Band band(c, g);
    T* to = staged + buffer * c.buffer_size();
    stage_band_rows(c, c.input, band, band.y_lo, band.y_hi, x, c.in_h, to);
    stage_band_rows(c, c.output, band, dy_first_row(band), kInputGradient ? band.y_hi : band.y_end,
                    dy, c.out_h, to + outputs_at);
  };
  T turned[K][K];  // dx's filter: the channel's, turned by 180 degrees
  if (kInputGradient) load_filter(w, static_cast<int>(blockIdx.y), true, turned);
  T sum[K][K] = {};
  const auto compute = [&](int g, int buffer) {
    const Band band(c, g);
    if (thread.q >= band.planes) return;
    const T* x_plane = staged + buffer * c.buffer_size() + thread.q * c.input.plane_ld;
    const T* dy_plane =
        staged + buffer * c.buffer_size() + outputs_at + thread.q * c.output.plane_ld;
    const int dy_first = dy_first_row(band);
    T* dx_plane = kInputGradient ? dx + c.plane(band.first + thread.q) * c.in_h * c.in_w : nullptr;
    thread.for_each_cell(c, band, [&](int first_y, int col, int valid_rows) {
      T grad[kRowsPerThread];
#pragma unroll
      for (int k = 0; k < kRowsPerThread; ++k)
        grad[k] =
            k < valid_rows ? dy_plane[(first_y + k - dy_first) * c.output.row_ld + col] : T(0);
      sweep_window<K>(c, x_plane, c.input.row_ld, band, first_y, col - c.pad_w, valid_rows,
                      [&](int k, int i, const T(&in_row)[K]) {
#pragma unroll
                        for (int j = 0; j < K; ++j) sum[i][j] += grad[k] * in_row[j];
                      });
      if (kInputGradient)
        correlate_cell(c, dy_plane, c.output.row_ld, band, turned, T(0), first_y, col, valid_rows,
                       dx_plane, c.in_w);
    });
  };
  stream_groups(c.groups(), stage, compute);
  T* to = partials + (int64_t(blockIdx.y) * gridDim.x + blockIdx.x) * K * K;
  block_sum_each<kStreamThreads>(reinterpret_cast<const T(&)[K * K]>(sum),
                                 [&](int tap, T total) { to[tap] = total; });
}

// What a streamed kernel stages of a group: the correlation its input's rows that the band's
// windows read; the backward x's rows and dy's, the band's own (the weight gradient alone) or the
// same rows as x's (with dx: depthwise_backward_kernel<K, true, T>).
enum class Staging { Input, InputAndOutput, InputAndOutputWindows };

// The correlation's groups and staging for tensors at `pointers`. False when the streamed kernels
// do not apply: strides other than 1, filters other than 3 x 3, 5 x 5, 7 x 7, more channels than
// a grid's y dimension, rows too wide for a buffer, indices past 32 bits; with dy's windows,
// padding other than "same" (2 pad = K - 1).
template <typename T>
bool plan_correlation(Correlation& c, const Conv2dShape& s, Staging staging,
                      std::initializer_list<const void*> pointers) {
  // The backward (with_output) walks a channel's images, the correlation all planes.
  const bool with_output = staging != Staging::Input;
  const bool dy_windows = staging == Staging::InputAndOutputWindows;
  if (s.stride_h != 1 || s.stride_w != 1 || s.kernel_h != s.kernel_w ||
      (s.kernel_h != 3 && s.kernel_h != 5 && s.kernel_h != 7) || c.pad_h < 0 || c.pad_w < 0 ||
      c.out_h <= 0 || c.out_w <= 0 || s.batch <= 0 || s.channels <= 0 ||
      (with_output && s.channels > 65535) || s.batch * s.channels > INT_MAX ||
      (dy_windows && (2 * s.pad_h != s.kernel_h - 1 || 2 * s.pad_w != s.kernel_w - 1)))
    return false;
  c.channels = static_cast<int>(s.channels);
  c.walked = static_cast<int>(with_output ? s.batch : s.batch * s.channels);
  c.plane_step = with_output ? c.channels : 1;
  c.kernel = static_cast<int>(s.kernel_h);
  c.rows = std::min(kRowsPerThread, c.out_h);
  // 16-byte copies when every row starts on a 16-byte boundary.
  const bool aligned =
      contiguous_pieces<T>(c.in_w, pointers) && (!with_output || c.out_w % kPiece<T> == 0);
  c.piece = aligned ? kPiece<T> : 1;
  // A plane's bytes in a buffer with bands of band_h output rows.
  const auto plan_band = [&](int band_h) {
    c.band_h = band_h;
    c.input = staged_rows<T>(c.in_w, c.input_rows_of(band_h), c.rows, c.piece);
    if (with_output)
      c.output =
          staged_rows<T>(c.out_w, dy_windows ? c.input_rows_of(band_h) : band_h, c.rows, c.piece);
    return int64_t(c.input.plane_ld + c.output.plane_ld) * int64_t(sizeof(T));
  };
  // sweep_window reads every row of a cell's windows that lies inside the image, also for the
  // outputs of a last cell that run past the plane; those rows must be staged. So the outputs'
  // windows reach the image's last row (true of the forward and input-gradient correlations at
  // stride 1 with padding below K), and bands are whole cells: only the last band ends inside a
  // cell, and its staged rows run to the image's end.
  if (c.out_h - 1 - c.pad_h + c.kernel < c.in_h) return false;
  // Whole planes, as many as fit (a power of two, at most one per thread, and no larger than the
  // first power of two that covers the walk's planes); else one plane's bands, the tallest that
  // fit.
  const int64_t plane_bytes = plan_band(c.out_h);
  c.group_planes = 1;
  if (plane_bytes <= kStagedBytes) {
    while (2 * c.group_planes * plane_bytes <= kStagedBytes &&
           2 * c.group_planes <= kStreamThreads && c.group_planes < c.walked)
      c.group_planes *= 2;
  } else {
    int band_h = c.out_h;
    while (band_h > c.rows && plan_band(band_h) > kStagedBytes) band_h /= 2;
    band_h = std::max(c.rows, band_h / c.rows * c.rows);
    if (plan_band(band_h) > kStagedBytes) return false;
  }
  c.bands = (c.out_h + c.band_h - 1) / c.band_h;
  c.by_channels = FastDivisor(c.channels);
  c.by_bands = FastDivisor(c.bands);
  c.by_out_w = FastDivisor(c.out_w);
  return (int64_t(c.walked) + c.group_planes - 1) / c.group_planes * c.bands <= INT_MAX;
}

// Calls f(std::integral_constant<int, K>{}) for the streamed kernels' filter size K = k (3, 5, 7).
template <typename F>
void with_filter_size(int k, F f) {
  if (k == 3)
    f(std::integral_constant<int, 3>{});
  else if (k == 5)
    f(std::integral_constant<int, 5>{});
  else
    f(std::integral_constant<int, 7>{});
}

// The streamed kernels' blocks that the GPU holds at once (kStreamBlocksPerSM a multiprocessor).
int64_t resident_stream_blocks() { return int64_t(multiprocessor_count()) * kStreamBlocksPerSM; }

template <typename T>
size_t stream_shared_bytes(const Correlation& c) {
  return kStages * c.buffer_size() * sizeof(T);
}

template <typename T>
void correlate(const Correlation& c, const T* in, const T* w, const T* bias, T* out) {
  with_filter_size(c.kernel, [&](auto k) {
    launch_kernel<Placement::Spread>(depthwise_correlation_kernel<k.value, T>,
                                     std::min<int64_t>(c.groups(), resident_stream_blocks()),
                                     kStreamThreads, stream_shared_bytes<T>(c), c, in, w, bias,
                                     out);
  });
}

// ---- depthwise weight gradient ----

// Other strides and filters (depthwise_weight_by_positions_kernel): block (c, tile, split) handles
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
    depthwise_weight_by_positions_kernel(Geometry g, WeightGradSplits sp, const T* x, const T* dy,
                                         T* out) {
  after_previous_kernel();
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
  if (plan_correlation<T>(c, s, Staging::Input, {x})) return correlate(c, x, w, bias, y);
  for_each_index(s.batch * s.channels * s.out_h * s.out_w, DepthwiseForward<T>{g, x, w, bias, y});
}

// dx alone: by the correlation with the filter turned, padded by K - 1 - pad (see
// depthwise_correlation_kernel), or one thread per input pixel.
template <typename T>
void depthwise_backward_input(const Conv2dShape& s, const Geometry& g, const T* dy, const T* w,
                              T* dx) {
  Correlation c(g.out_h, g.out_w, g.height, g.width, g.kernel_h - 1 - g.pad_h,
                g.kernel_w - 1 - g.pad_w, true);
  if (plan_correlation<T>(c, s, Staging::Input, {dy}))
    return correlate(c, dy, w, static_cast<const T*>(nullptr), dx);
  for_each_index(s.batch * s.channels * s.height * s.width,
                 DepthwiseBackwardInput<T>{g, dy, w, dx});
}

// The weight gradient's partial sums, (channel, split, tap) when there are several splits a
// channel: dw itself for one split, else split_scratch, which a second pass adds up in a fixed
// order (depthwise_conv2d_backward).
template <typename T>
T* weight_partials(int64_t splits, T* dw) {
  return splits == 1 ? dw : reinterpret_cast<T*>(split_scratch_address());
}

// The streamed backward (stride 1; 3 x 3, 5 x 5, 7 x 7 filters): dw, and dx in the same pass
// when dx is given and the padding is "same". Its splits a channel (0 when it does not apply)
// and whether it wrote dx.
struct StreamedBackward {
  int64_t splits = 0;
  bool wrote_dx = false;
};
template <typename T>
StreamedBackward depthwise_backward_streamed(const Conv2dShape& s, const Geometry& g, const T* x,
                                             const T* w, const T* dy, T* dx, T* dw) {
  Correlation c(g.height, g.width, g.out_h, g.out_w, g.pad_h, g.pad_w, false);
  const bool with_dx =
      dx != nullptr && plan_correlation<T>(c, s, Staging::InputAndOutputWindows, {x, dy});
  if (!with_dx && !plan_correlation<T>(c, s, Staging::InputAndOutput, {x, dy})) return {};
  const int64_t taps = s.kernel_h * s.kernel_w;
  // A row of blocks a channel, as many as fill the GPU once (but one group each at least), the
  // partials within split_scratch.
  const int64_t splits = std::clamp<int64_t>(
      resident_stream_blocks() / s.channels, 1,
      std::max<int64_t>(
          1, std::min<int64_t>(c.groups(), kSplitScratchElements / (s.channels * taps))));
  const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(s.channels));
  with_filter_size(c.kernel, [&](auto k) {
    launch_kernel<Placement::Spread>(with_dx ? depthwise_backward_kernel<k.value, true, T>
                                             : depthwise_backward_kernel<k.value, false, T>,
                                     grid, kStreamThreads, stream_shared_bytes<T>(c), c, x, dy, w,
                                     with_dx ? dx : nullptr, weight_partials(splits, dw));
  });
  return {splits, with_dx};
}

// Other strides and filters (depthwise_weight_by_positions_kernel): its splits a channel.
template <typename T>
int64_t depthwise_weight_by_positions(const Conv2dShape& s, const Geometry& g, const T* x,
                                      const T* dy, T* dw) {
  const int64_t taps = s.kernel_h * s.kernel_w, positions = s.batch * s.out_h * s.out_w;
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
  T* out = weight_partials(sp.splits, dw);
  launch_kernel(window == 3 ? depthwise_weight_by_positions_kernel<3, T>
                            : depthwise_weight_by_positions_kernel<5, T>,
                grid, kWeightGradThreads, 0, g, sp, x, dy, out);
  return sp.splits;
}

template <typename T>
void depthwise_conv2d_backward(const Conv2dShape& s, const T* x, const T* w, const T* dy, T* dx,
                               T* dw) {
  const Geometry g = geometry_of(s);
  const int64_t taps = s.kernel_h * s.kernel_w;
  bool dx_pending = dx != nullptr;
  if (dw != nullptr && s.channels * taps > 0) {
    const StreamedBackward streamed = depthwise_backward_streamed(s, g, x, w, dy, dx, dw);
    const int64_t splits =
        streamed.splits > 0 ? streamed.splits : depthwise_weight_by_positions(s, g, x, dy, dw);
    if (splits > 1)
      reduce_middle_axis_pass<SumOp<T>>(
          s.channels, splits, taps, splits, 1,
          MiddleAxisElement<T>{weight_partials(splits, dw), splits, taps}, StoreAt<T>{dw});
    dx_pending = dx_pending && !streamed.wrote_dx;
  }
  if (dx_pending) depthwise_backward_input(s, g, dy, w, dx);
}

#define NALA_INSTANTIATE(T)                                                                        \
  template void im2col<T>(const Conv2dShape&, const T*, T*);                                       \
  template void col2im<T>(const Conv2dShape&, const T*, T*);                                       \
  template void depthwise_conv2d_forward<T>(const Conv2dShape&, const T*, const T*, const T*, T*); \
  template void depthwise_conv2d_backward<T>(const Conv2dShape&, const T*, const T*, const T*, T*, \
                                             T*);
NALA_INSTANTIATE(float)
NALA_INSTANTIATE(double)
#undef NALA_INSTANTIATE

}  // namespace nala::kernels::cuda
