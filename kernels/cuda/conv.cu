// Convolution kernels: im2col / col2im (a convolution is then a GEMM, matmul.cu) and the direct
// depthwise convolution. Tap (i, j) of output pixel (oh, ow) reads input pixel
//   (oh * stride_h - pad_h + i, ow * stride_w - pad_w + j),  zero outside the image.
// The adjoints (col2im, depthwise backward input) gather: one thread per input pixel sums the
// outputs whose taps read it, so no two threads write the same element and no atomics are needed.
#include "kernels/cuda/common.h"
#include "kernels/kernels.h"

namespace nala::kernels::cuda {

namespace {

// The coordinates of element i of a contiguous (batch, channels, height, width) array.
struct Pixel {
  int64_t n, c, y, x;
};

__device__ Pixel pixel_at(int64_t i, int64_t channels, int64_t height, int64_t width) {
  Pixel p;
  p.x = i % width;
  i /= width;
  p.y = i % height;
  i /= height;
  p.c = i % channels;
  p.n = i / channels;
  return p;
}

// The output coordinate whose tap `tap` reads input coordinate `in` (in = out * stride - pad +
// tap), or -1 when there is none.
__device__ int64_t output_of_tap(int64_t in, int64_t tap, int64_t stride, int64_t pad,
                                 int64_t out_size) {
  const int64_t scaled = in + pad - tap;
  if (scaled < 0 || scaled % stride != 0) return -1;
  const int64_t out = scaled / stride;
  return out < out_size ? out : -1;
}

// One thread per output pixel (n, c, oh, ow) writes its kernel_h * kernel_w column entries
//   col[n, (c, i, j), (oh, ow)] = x[n, c, oh * stride_h - pad_h + i, ow * stride_w - pad_w + j].
template <typename T>
struct Im2col {
  Conv2dShape s;
  const T* x;
  T* col;
  __device__ void operator()(int64_t index) const {
    const Pixel out = pixel_at(index, s.channels, s.out_h, s.out_w);
    const int64_t out_pixels = s.out_h * s.out_w;
    const T* x_plane = x + (out.n * s.channels + out.c) * s.height * s.width;
    T* col_entry = col + (out.n * s.channels + out.c) * s.kernel_h * s.kernel_w * out_pixels +
                   out.y * s.out_w + out.x;
    for (int64_t i = 0; i < s.kernel_h; ++i) {
      const int64_t h = out.y * s.stride_h - s.pad_h + i;
      for (int64_t j = 0; j < s.kernel_w; ++j) {
        const int64_t w = out.x * s.stride_w - s.pad_w + j;
        const bool inside = h >= 0 && h < s.height && w >= 0 && w < s.width;
        col_entry[(i * s.kernel_w + j) * out_pixels] = inside ? x_plane[h * s.width + w] : T(0);
      }
    }
  }
};

// One thread per input pixel (n, c, h, w): dx[n, c, h, w] = sum of col[n, (c, i, j), (oh, ow)]
// over the taps (i, j) and output pixels (oh, ow) that read it.
template <typename T>
struct Col2im {
  Conv2dShape s;
  const T* col;
  T* dx;
  __device__ void operator()(int64_t index) const {
    const Pixel in = pixel_at(index, s.channels, s.height, s.width);
    const int64_t out_pixels = s.out_h * s.out_w;
    const T* col_plane = col + (in.n * s.channels + in.c) * s.kernel_h * s.kernel_w * out_pixels;
    T sum = T(0);
    for (int64_t i = 0; i < s.kernel_h; ++i) {
      const int64_t oh = output_of_tap(in.y, i, s.stride_h, s.pad_h, s.out_h);
      if (oh < 0) continue;
      for (int64_t j = 0; j < s.kernel_w; ++j) {
        const int64_t ow = output_of_tap(in.x, j, s.stride_w, s.pad_w, s.out_w);
        if (ow < 0) continue;
        sum += col_plane[(i * s.kernel_w + j) * out_pixels + oh * s.out_w + ow];
      }
    }
    dx[index] = sum;
  }
};

// One thread per output pixel: y[n, c, oh, ow] = bias[c] + sum_{i, j} w[c, i, j] x[n, c, .., ..].
// The threads of a warp share c, so their filter reads hit the same addresses (one broadcast).
template <typename T>
struct DepthwiseForward {
  Conv2dShape s;
  const T* x;
  const T* w;
  const T* bias;
  T* y;
  __device__ void operator()(int64_t index) const {
    const Pixel out = pixel_at(index, s.channels, s.out_h, s.out_w);
    const T* x_plane = x + (out.n * s.channels + out.c) * s.height * s.width;
    const T* filter = w + out.c * s.kernel_h * s.kernel_w;
    T sum = bias != nullptr ? bias[out.c] : T(0);
    for (int64_t i = 0; i < s.kernel_h; ++i) {
      const int64_t h = out.y * s.stride_h - s.pad_h + i;
      if (h < 0 || h >= s.height) continue;
      for (int64_t j = 0; j < s.kernel_w; ++j) {
        const int64_t w_in = out.x * s.stride_w - s.pad_w + j;
        if (w_in < 0 || w_in >= s.width) continue;
        sum += filter[i * s.kernel_w + j] * x_plane[h * s.width + w_in];
      }
    }
    y[index] = sum;
  }
};

// One thread per input pixel: dx[n, c, h, w] = sum of w[c, i, j] dy[n, c, oh, ow] over the taps
// (i, j) and output pixels (oh, ow) that read it.
template <typename T>
struct DepthwiseBackwardInput {
  Conv2dShape s;
  const T* dy;
  const T* w;
  T* dx;
  __device__ void operator()(int64_t index) const {
    const Pixel in = pixel_at(index, s.channels, s.height, s.width);
    const T* dy_plane = dy + (in.n * s.channels + in.c) * s.out_h * s.out_w;
    const T* filter = w + in.c * s.kernel_h * s.kernel_w;
    T sum = T(0);
    for (int64_t i = 0; i < s.kernel_h; ++i) {
      const int64_t oh = output_of_tap(in.y, i, s.stride_h, s.pad_h, s.out_h);
      if (oh < 0) continue;
      for (int64_t j = 0; j < s.kernel_w; ++j) {
        const int64_t ow = output_of_tap(in.x, j, s.stride_w, s.pad_w, s.out_w);
        if (ow < 0) continue;
        sum += filter[i * s.kernel_w + j] * dy_plane[oh * s.out_w + ow];
      }
    }
    dx[index] = sum;
  }
};

constexpr int kWeightGradThreads = 256;

// One block per filter tap (c, i, j):
//   dw[c, i, j] = sum over n, oh, ow of dy[n, c, oh, ow] x[n, c, oh * stride_h - pad_h + i, ...],
// each thread summing a strided slice of the batch * out_h * out_w terms, then block_reduce.
template <typename T>
__global__ void depthwise_backward_weight_kernel(Conv2dShape s, const T* x, const T* dy, T* dw) {
  const int64_t taps = s.kernel_h * s.kernel_w;
  const int64_t out_pixels = s.out_h * s.out_w;
  for (int64_t filter_tap = blockIdx.x; filter_tap < s.channels * taps; filter_tap += gridDim.x) {
    const int64_t c = filter_tap / taps;
    const int64_t i = filter_tap % taps / s.kernel_w;
    const int64_t j = filter_tap % s.kernel_w;
    T sum = T(0);
    for (int64_t term = threadIdx.x; term < s.batch * out_pixels; term += blockDim.x) {
      const int64_t n = term / out_pixels;
      const int64_t pixel = term % out_pixels;
      const int64_t h = pixel / s.out_w * s.stride_h - s.pad_h + i;
      const int64_t w = pixel % s.out_w * s.stride_w - s.pad_w + j;
      if (h < 0 || h >= s.height || w < 0 || w >= s.width) continue;
      const int64_t plane = n * s.channels + c;
      sum += dy[plane * out_pixels + pixel] * x[(plane * s.height + h) * s.width + w];
    }
    sum = block_reduce<SumOp<T>>(sum);
    if (threadIdx.x == 0) dw[filter_tap] = sum;
  }
}

}  // namespace

template <typename T>
void im2col(const Conv2dShape& s, const T* x, T* col) {
  for_each_index(s.batch * s.channels * s.out_h * s.out_w, Im2col<T>{s, x, col});
}

template <typename T>
void col2im(const Conv2dShape& s, const T* col, T* dx) {
  for_each_index(s.batch * s.channels * s.height * s.width, Col2im<T>{s, col, dx});
}

template <typename T>
void depthwise_conv2d_forward(const Conv2dShape& s, const T* x, const T* w, const T* bias, T* y) {
  for_each_index(s.batch * s.channels * s.out_h * s.out_w, DepthwiseForward<T>{s, x, w, bias, y});
}

template <typename T>
void depthwise_conv2d_backward_input(const Conv2dShape& s, const T* dy, const T* w, T* dx) {
  for_each_index(s.batch * s.channels * s.height * s.width,
                 DepthwiseBackwardInput<T>{s, dy, w, dx});
}

template <typename T>
void depthwise_conv2d_backward_weight(const Conv2dShape& s, const T* x, const T* dy, T* dw) {
  const int64_t filter_taps = s.channels * s.kernel_h * s.kernel_w;
  if (filter_taps <= 0) return;
  depthwise_backward_weight_kernel<<<num_blocks(filter_taps, 1), kWeightGradThreads, 0, stream()>>>(
      s, x, dy, dw);
  NALA_CUDA_CHECK_LAUNCH();
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
