// 2-d convolution helpers on the CPU: im2col / col2im (which turn a dense convolution into a
// gemm) and the direct depthwise convolution.
//
// Every kernel here walks the same index map: output pixel (oh, ow) and window offset (ki, kj)
// read input pixel
//   ih = oh * stride_h - pad_h + ki,   iw = ow * stride_w - pad_w + kj,
// and zero padding means that pixels outside the input contribute 0. for_each_tap_pixel walks
// that map for one window tap; rather than testing every pixel, it first computes the run of
// output indices whose input index is inside the image, so its innermost loop has no branches.
#include <algorithm>

#include "kernels/cpu/scratch.h"
#include "kernels/kernels.h"

namespace nala::kernels::cpu {
namespace {

// Work below this many multiply-adds stays on one thread.
constexpr int64_t kParallelWork = 1 << 15;

// The output indices o in [begin, end) for which i = o * stride - pad + offset lies in
// [0, in_size), i.e. ceil((pad - offset) / stride) <= o <= floor((in_size - 1 + pad - offset)
// / stride), clipped to [0, out_size).
struct Range {
  int64_t begin, end;
};
Range valid_range(int64_t out_size, int64_t in_size, int64_t stride, int64_t pad, int64_t offset) {
  // floor division for a possibly negative numerator and a positive denominator
  auto floor_div = [](int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); };
  const int64_t begin = std::max<int64_t>(0, -floor_div(offset - pad, stride));
  const int64_t end = std::min(out_size, floor_div(in_size - 1 + pad - offset, stride) + 1);
  return {begin, std::max(begin, end)};
}

// Calls f(o, i) for every output pixel o = oh * out_w + ow of one plane and the input pixel
// i = ih * width + iw that window tap (ki, kj) reads for it, skipping the padding.
template <typename F>
void for_each_tap_pixel(const Conv2dShape& s, int64_t ki, int64_t kj, F&& f) {
  const Range rows = valid_range(s.out_h, s.height, s.stride_h, s.pad_h, ki);
  const Range cols = valid_range(s.out_w, s.width, s.stride_w, s.pad_w, kj);
  for (int64_t oh = rows.begin; oh < rows.end; ++oh) {
    const int64_t o_row = oh * s.out_w;
    const int64_t i_row = (oh * s.stride_h - s.pad_h + ki) * s.width + kj - s.pad_w;
    if (s.stride_w == 1)  // both runs contiguous: the compiler vectorises this loop
      for (int64_t ow = cols.begin; ow < cols.end; ++ow) f(o_row + ow, i_row + ow);
    else
      for (int64_t ow = cols.begin; ow < cols.end; ++ow) f(o_row + ow, i_row + ow * s.stride_w);
  }
}

// ---- stride 1: a padded copy of each plane, then one run of multiply-adds per tap ----
// At stride 1 the depthwise forward and input gradient are one correlation (as in
// kernels/cuda/conv.cu):
//   out[y, x] = bias + sum_{i < kh, j < kw} f[i, j] in[y - pad_h + i, x - pad_w + j]
// (forward: in = x, f = w, pad = (pad_h, pad_w); input gradient: in = dy, f = w turned by 180
// degrees, pad = (kh - 1 - pad_h, kw - 1 - pad_w)), and the weight gradient reads the same
// windows. A thread copies a plane into its scratch with the padding written as zeros, rows of
// cols = out_w + kw - 1. In that layout tap (i, j) of every output is one shift,
//   acc[y * cols + x] += f[i, j] padded[(y + i) * cols + x + j],
// so each tap is a single run of out_h * cols multiply-adds over the whole plane (the kw - 1
// extra columns per row are computed and dropped), which the compiler vectorises; short rows
// cost no per-row loop overhead. (Taps walked row by row, with their valid ranges, ran 5-14x
// slower than a copy of the same bytes at 16 x 16 planes.)
struct PaddedPlaneScratch {};  // thread_scratch's tags
struct PaddedOutputScratch {};

struct Padding {
  int64_t in_h, in_w, pad_h, pad_w, rows, cols;  // rows x cols: the padded plane
  // The scratch a padded plane takes: the last tap's run reads kw - 1 elements past it.
  int64_t elements(int64_t kw) const { return rows * cols + kw - 1; }
};

// The padding of the input planes x for the forward correlation and the weight gradient.
Padding input_padding(const Conv2dShape& s) {
  return {s.height, s.width, s.pad_h, s.pad_w, s.out_h + s.kernel_h - 1, s.out_w + s.kernel_w - 1};
}

// Writes the in_h x in_w plane `in` at offset (pad_h, pad_w) of `padded`. A thread zeroes its
// padded scratch once per call; the planes it then copies in all have the same layout, so each
// writes only its interior and the border stays zero.
template <typename T>
void copy_interior(const Padding& p, const T* in, T* padded) {
  for (int64_t y = 0; y < p.in_h; ++y)
    std::copy(in + y * p.in_w, in + (y + 1) * p.in_w, padded + (y + p.pad_h) * p.cols + p.pad_w);
}

// The depthwise correlation of every plane of `in` (batch * channels planes of in_h x in_w) at
// stride 1, as above, into out (planes of out_h x out_w). One thread per plane (b, c).
template <typename T>
void depthwise_correlate(const Conv2dShape& s, const Padding& p, const T* in, const T* w,
                         const T* bias, bool turn, int64_t out_h, int64_t out_w, T* out) {
  const int64_t planes = s.batch * s.channels, kh = s.kernel_h, kw = s.kernel_w, taps = kh * kw;
  const int64_t run = out_h * p.cols;
#pragma omp parallel if (planes * taps * out_h * out_w >= kParallelWork)
  {
    T* __restrict padded = thread_scratch<PaddedPlaneScratch, T>(p.elements(kw));
    T* __restrict acc = thread_scratch<PaddedOutputScratch, T>(run);
    std::fill(padded, padded + p.elements(kw), T(0));
#pragma omp for
    for (int64_t plane = 0; plane < planes; ++plane) {
      const int64_t c = plane % s.channels;
      copy_interior(p, in + plane * p.in_h * p.in_w, padded);
      std::fill(acc, acc + run, bias ? bias[c] : T(0));
      for (int64_t i = 0; i < kh; ++i)
        for (int64_t j = 0; j < kw; ++j) {
          const T tap = w[c * taps + (turn ? (kh - 1 - i) * kw + kw - 1 - j : i * kw + j)];
          const T* __restrict shifted = padded + i * p.cols + j;
          for (int64_t t = 0; t < run; ++t) acc[t] += tap * shifted[t];
        }
      T* out_plane = out + plane * out_h * out_w;
      for (int64_t y = 0; y < out_h; ++y)
        std::copy(acc + y * p.cols, acc + y * p.cols + out_w, out_plane + y * out_w);
    }
  }
}

}  // namespace

// col[b, (c, ki, kj), (oh, ow)] = x[b, c, ih, iw], or 0 when (ih, iw) is padding.
// One thread per row (b, c, ki, kj) of col.
template <typename T>
void im2col(const Conv2dShape& s, const T* x, T* col) {
  const int64_t window = s.kernel_h * s.kernel_w;
  const int64_t rows = s.batch * s.channels * window;
  const int64_t out_plane = s.out_h * s.out_w;
#pragma omp parallel for if (rows * out_plane >= kParallelWork)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t plane = row / window;  // b * channels + c
    const int64_t ki = row % window / s.kernel_w, kj = row % s.kernel_w;
    const T* x_plane = x + plane * s.height * s.width;
    T* col_row = col + row * out_plane;
    std::fill(col_row, col_row + out_plane, T(0));
    for_each_tap_pixel(s, ki, kj, [&](int64_t o, int64_t i) { col_row[o] = x_plane[i]; });
  }
}

// dx[b, c, ih, iw] = sum over the (ki, kj, oh, ow) that read (ih, iw) of col[b, (c, ki, kj),
// (oh, ow)]. One thread per input plane (b, c), which only the rows (c, *, *) of batch b touch,
// so there are no races.
template <typename T>
void col2im(const Conv2dShape& s, const T* col, T* dx) {
  const int64_t window = s.kernel_h * s.kernel_w;
  const int64_t planes = s.batch * s.channels;
  const int64_t out_plane = s.out_h * s.out_w;
#pragma omp parallel for if (planes * window * out_plane >= kParallelWork)
  for (int64_t plane = 0; plane < planes; ++plane) {
    T* dx_plane = dx + plane * s.height * s.width;
    std::fill(dx_plane, dx_plane + s.height * s.width, T(0));
    for (int64_t ki = 0; ki < s.kernel_h; ++ki) {
      for (int64_t kj = 0; kj < s.kernel_w; ++kj) {
        const T* col_row = col + (plane * window + ki * s.kernel_w + kj) * out_plane;
        for_each_tap_pixel(s, ki, kj, [&](int64_t o, int64_t i) { dx_plane[i] += col_row[o]; });
      }
    }
  }
}

// y[b, c, oh, ow] = bias[c] + sum over (ki, kj) of w[c, ki, kj] x[b, c, ih, iw].
// One thread per plane (b, c).
template <typename T>
void depthwise_conv2d_forward(const Conv2dShape& s, const T* x, const T* w, const T* bias, T* y) {
  if (s.stride_h == 1 && s.stride_w == 1) {
    return depthwise_correlate(s, input_padding(s), x, w, bias, false, s.out_h, s.out_w, y);
  }
  const int64_t window = s.kernel_h * s.kernel_w;
  const int64_t planes = s.batch * s.channels;
  const int64_t out_plane = s.out_h * s.out_w;
#pragma omp parallel for if (planes * window * out_plane >= kParallelWork)
  for (int64_t plane = 0; plane < planes; ++plane) {
    const int64_t c = plane % s.channels;
    const T* x_plane = x + plane * s.height * s.width;
    T* y_plane = y + plane * out_plane;
    std::fill(y_plane, y_plane + out_plane, bias ? bias[c] : T(0));
    for (int64_t ki = 0; ki < s.kernel_h; ++ki) {
      for (int64_t kj = 0; kj < s.kernel_w; ++kj) {
        const T weight = w[(c * s.kernel_h + ki) * s.kernel_w + kj];
        for_each_tap_pixel(s, ki, kj,
                           [&](int64_t o, int64_t i) { y_plane[o] += weight * x_plane[i]; });
      }
    }
  }
}

namespace {

// dx[b, c, ih, iw] = sum over the (ki, kj, oh, ow) that read (ih, iw) of
// w[c, ki, kj] dy[b, c, oh, ow]: the forward's map run backwards, scattering into dx.
// One thread per plane (b, c).
template <typename T>
void depthwise_conv2d_backward_input(const Conv2dShape& s, const T* dy, const T* w, T* dx) {
  if (s.stride_h == 1 && s.stride_w == 1 && s.pad_h < s.kernel_h && s.pad_w < s.kernel_w) {
    const Padding p{s.out_h,
                    s.out_w,
                    s.kernel_h - 1 - s.pad_h,
                    s.kernel_w - 1 - s.pad_w,
                    s.height + s.kernel_h - 1,
                    s.width + s.kernel_w - 1};
    return depthwise_correlate(s, p, dy, w, static_cast<const T*>(nullptr), true, s.height, s.width,
                               dx);
  }
  const int64_t window = s.kernel_h * s.kernel_w;
  const int64_t planes = s.batch * s.channels;
  const int64_t out_plane = s.out_h * s.out_w;
#pragma omp parallel for if (planes * window * out_plane >= kParallelWork)
  for (int64_t plane = 0; plane < planes; ++plane) {
    const int64_t c = plane % s.channels;
    const T* dy_plane = dy + plane * out_plane;
    T* dx_plane = dx + plane * s.height * s.width;
    std::fill(dx_plane, dx_plane + s.height * s.width, T(0));
    for (int64_t ki = 0; ki < s.kernel_h; ++ki) {
      for (int64_t kj = 0; kj < s.kernel_w; ++kj) {
        const T weight = w[(c * s.kernel_h + ki) * s.kernel_w + kj];
        for_each_tap_pixel(s, ki, kj,
                           [&](int64_t o, int64_t i) { dx_plane[i] += weight * dy_plane[o]; });
      }
    }
  }
}

// dw[c, ki, kj] = sum over b, oh, ow of dy[b, c, oh, ow] x[b, c, ih, iw], with double sums.
// One thread per channel, so no two threads write the same dw. At stride 1 the taps read the
// padded plane (above): per tap and image one dot product in T (vectorised, so each vector lane
// sums only a share of the plane), the images' dots summed in double. Otherwise the sum runs in one
// double per output pixel (by_pixel[o], over the batch), which the compiler vectorises along the
// row (one running sum would be a chain of dependent adds), and the pixels are added last. Both
// keep their sums in the thread's scratch (scratch.h), not an allocation per channel.
struct PixelSums {};  // thread_scratch's tags
struct TapSums {};
struct InsideColumns {};

template <typename T>
void depthwise_conv2d_backward_weight(const Conv2dShape& s, const T* x, const T* dy, T* dw) {
  const int64_t window = s.kernel_h * s.kernel_w;
  const int64_t out_plane = s.out_h * s.out_w;
  if (s.stride_h == 1 && s.stride_w == 1) {
    // dw[c, i, j] = sum over b of the dot product of dy (its rows spread to the padded plane's
    // width) with the padded x shifted by (i, j). The run's extra columns (x >= out_w) take 0 in
    // place of x, not just dy = 0 there: an infinite x that only they reach must not turn the
    // sum into 0 * inf = NaN.
    const Padding p = input_padding(s);
    const Padding spread{s.out_h, s.out_w, 0, 0, s.out_h, p.cols};
    const int64_t run = s.out_h * p.cols;
#pragma omp parallel if (s.batch * s.channels * window * out_plane >= kParallelWork)
    {
      T* __restrict padded = thread_scratch<PaddedPlaneScratch, T>(p.elements(s.kernel_w));
      T* __restrict dy_spread = thread_scratch<PaddedOutputScratch, T>(spread.elements(1));
      T* __restrict inside = thread_scratch<InsideColumns, T>(run);  // 1 for x < out_w, else 0
      double* sums = thread_scratch<TapSums, double>(window);
      std::fill(padded, padded + p.elements(s.kernel_w), T(0));
      std::fill(dy_spread, dy_spread + spread.elements(1), T(0));
      for (int64_t t = 0; t < run; ++t) inside[t] = t % p.cols < s.out_w ? T(1) : T(0);
#pragma omp for
      for (int64_t c = 0; c < s.channels; ++c) {
        std::fill(sums, sums + window, 0.0);
        for (int64_t b = 0; b < s.batch; ++b) {
          copy_interior(p, x + (b * s.channels + c) * s.height * s.width, padded);
          copy_interior(spread, dy + (b * s.channels + c) * out_plane, dy_spread);
          for (int64_t i = 0; i < s.kernel_h; ++i)
            for (int64_t j = 0; j < s.kernel_w; ++j) {
              const T* __restrict shifted = padded + i * p.cols + j;
              T dot = T(0);
#pragma omp simd reduction(+ : dot)
              for (int64_t t = 0; t < run; ++t) {
                const T x_value = shifted[t];
                dot += dy_spread[t] * (inside[t] != T(0) ? x_value : T(0));
              }
              sums[i * s.kernel_w + j] += dot;
            }
        }
        for (int64_t t = 0; t < window; ++t) dw[c * window + t] = static_cast<T>(sums[t]);
      }
    }
    return;
  }
#pragma omp parallel for if (s.batch * s.channels * window * out_plane >= kParallelWork)
  for (int64_t c = 0; c < s.channels; ++c) {
    double* by_pixel = thread_scratch<PixelSums, double>(out_plane);
    for (int64_t ki = 0; ki < s.kernel_h; ++ki) {
      for (int64_t kj = 0; kj < s.kernel_w; ++kj) {
        std::fill(by_pixel, by_pixel + out_plane, 0.0);
        for (int64_t b = 0; b < s.batch; ++b) {
          const T* x_plane = x + (b * s.channels + c) * s.height * s.width;
          const T* dy_plane = dy + (b * s.channels + c) * out_plane;
          for_each_tap_pixel(s, ki, kj, [&](int64_t o, int64_t i) {
            by_pixel[o] += static_cast<double>(dy_plane[o]) * x_plane[i];
          });
        }
        double sum = 0;
        for (int64_t o = 0; o < out_plane; ++o) sum += by_pixel[o];
        dw[(c * s.kernel_h + ki) * s.kernel_w + kj] = static_cast<T>(sum);
      }
    }
  }
}

}  // namespace

template <typename T>
void depthwise_conv2d_backward(const Conv2dShape& s, const T* x, const T* w, const T* dy, T* dx,
                               T* dw) {
  if (dx != nullptr) depthwise_conv2d_backward_input(s, dy, w, dx);
  if (dw != nullptr) depthwise_conv2d_backward_weight(s, x, dy, dw);
}

#define NALA_INSTANTIATE_CONV(T)                                                                   \
  template void im2col<T>(const Conv2dShape&, const T*, T*);                                       \
  template void col2im<T>(const Conv2dShape&, const T*, T*);                                       \
  template void depthwise_conv2d_forward<T>(const Conv2dShape&, const T*, const T*, const T*, T*); \
  template void depthwise_conv2d_backward<T>(const Conv2dShape&, const T*, const T*, const T*, T*, \
                                             T*);
NALA_INSTANTIATE_CONV(float)
NALA_INSTANTIATE_CONV(double)
#undef NALA_INSTANTIATE_CONV

}  // namespace nala::kernels::cpu
