// CPU elementwise kernels: strided copies, fills, random numbers, unary and binary functions.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <type_traits>

#include "kernels/cpu/vector_math.h"
#include "kernels/kernels.h"
#include "kernels/random.h"
#include "kernels/unary_ops.h"

namespace nala::kernels::cpu {

// Work below this many elements runs on one thread (OpenMP start-up costs more).
constexpr int64_t kParallelGrain = 1 << 15;

// The offsets in two operands of row `row` of a loop over `outer_dims` dims (its index split
// by divisions), then of each next row by carries (next()): a thread that walks a range of rows
// divides only for its first. (Dividing for every row, once per dim and operand, cost more than
// copying a short row: copies of attention's heads walk rows of 16-32 elements.)
struct RowOffsets {
  static constexpr int kOperands = 2;
  int ndim;
  const int64_t* sizes;
  const int64_t* strides[kOperands];
  int64_t index[kMaxDims] = {};
  int64_t offset[kOperands] = {};
  RowOffsets(int64_t row, int outer_dims, const int64_t* dim_sizes, const int64_t* strides_a,
             const int64_t* strides_b)
      : ndim(outer_dims), sizes(dim_sizes), strides{strides_a, strides_b} {
    for (int d = ndim - 1; d >= 0; --d) {
      index[d] = row % sizes[d];
      row /= sizes[d];
      for (int k = 0; k < kOperands; ++k) offset[k] += index[d] * strides[k][d];
    }
  }
  void next() {
    for (int d = ndim - 1; d >= 0; --d) {
      ++index[d];
      for (int k = 0; k < kOperands; ++k) offset[k] += strides[k][d];
      if (index[d] < sizes[d]) return;
      index[d] = 0;
      for (int k = 0; k < kOperands; ++k) offset[k] -= strides[k][d] * sizes[d];
    }
  }
};

// body(offsets, row) for every row < rows: the outer dims' offsets of both operands, the rows
// dealt to the threads in contiguous ranges (on one thread unless `parallel`).
template <typename Body>
static void for_each_row(int64_t rows, bool parallel, int outer_dims, const int64_t* sizes,
                         const int64_t* strides_a, const int64_t* strides_b, Body body) {
#pragma omp parallel if (parallel)
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t begin = rows * t / threads, end = rows * (t + 1) / threads;
    if (begin < end) {  // (with no rows, a size may be 0: no division by it)
      RowOffsets offsets(begin, outer_dims, sizes, strides_a, strides_b);
      for (int64_t r = begin; r < end; ++r, offsets.next()) body(offsets, r);
    }
  }
}

static int64_t layout_numel(const Layout& l) {
  int64_t n = 1;
  for (int d = 0; d < l.ndim; ++d) n *= l.sizes[d];
  return n;
}

// Side of the square tiles of a transposing copy: a 16 x 16 float tile reads 16 cache lines
// and writes 16, which all stay in L1 while the tile is copied.
constexpr int64_t kTransposeTile = 16;

// A transpose: the source is contiguous along dim a while dst is contiguous along its last dim,
// which the source walks with a stride. Row by row, every element read would fetch a cache line
// of its own; tile by tile (kTransposeTile x kTransposeTile over dims a and last), each line is
// read and written whole. `planes` index the other dims.
template <typename Src, typename Dst>
static void copy_transposed(const Layout& src, const Src* x, const Layout& dst, Dst* y, int a) {
  const int last = dst.ndim - 1;
  Layout rest;  // the dims other than a and last, with dst's strides
  int64_t src_rest_strides[kMaxDims] = {};
  for (int d = 0; d < last; ++d) {
    if (d == a) continue;
    rest.sizes[rest.ndim] = dst.sizes[d];
    src_rest_strides[rest.ndim] = src.strides[d];
    rest.strides[rest.ndim++] = dst.strides[d];
  }
  const int64_t rows = dst.sizes[a], cols = dst.sizes[last];
  const int64_t src_col = src.strides[last], dst_row = dst.strides[a];
  const int64_t tile_rows = (rows + kTransposeTile - 1) / kTransposeTile;
  const int64_t tile_cols = (cols + kTransposeTile - 1) / kTransposeTile;
  const int64_t planes = layout_numel(rest), tiles = planes * tile_rows * tile_cols;
#pragma omp parallel for if (planes * rows * cols > kParallelGrain)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t plane = t / (tile_rows * tile_cols);
    const int64_t r0 = t / tile_cols % tile_rows * kTransposeTile;
    const int64_t c0 = t % tile_cols * kTransposeTile;
    const RowOffsets offsets(plane, rest.ndim, rest.sizes, src_rest_strides, rest.strides);
    const Src* xp = x + offsets.offset[0];
    Dst* yp = y + offsets.offset[1];
    const int64_t r1 = std::min(rows, r0 + kTransposeTile),
                  c1 = std::min(cols, c0 + kTransposeTile);
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = c0; c < c1; ++c) yp[r * dst_row + c] = static_cast<Dst>(xp[r + c * src_col]);
  }
}

// Walks the last dim in an inner loop (the offsets of the other dims by for_each_row), or goes
// tile by tile when the copy is a transpose.
template <typename Src, typename Dst>
void copy_strided(const Layout& src, const Src* x, const Layout& dst, Dst* y) {
  int64_t n = layout_numel(dst);
  if (n == 0) return;
  int last = dst.ndim - 1;
  int64_t inner = dst.ndim ? dst.sizes[last] : 1, rows = n / inner;
  int64_t sx = dst.ndim ? src.strides[last] : 0, sy = dst.ndim ? dst.strides[last] : 0;
  if (sy == 1 && sx != 1 && inner >= kTransposeTile)
    for (int a = 0; a < last; ++a)
      if (src.strides[a] == 1 && dst.sizes[a] >= kTransposeTile)
        return copy_transposed(src, x, dst, y, a);
  const int outer_dims = last > 0 ? last : 0;
  for_each_row(rows, n > kParallelGrain, outer_dims, dst.sizes, src.strides, dst.strides,
               [&](const RowOffsets& row, int64_t) {
                 const Src* xr = x + row.offset[0];
                 Dst* yr = y + row.offset[1];
                 if (sx == 1 && sy == 1)
                   for (int64_t i = 0; i < inner; ++i) yr[i] = static_cast<Dst>(xr[i]);
                 else
                   for (int64_t i = 0; i < inner; ++i) yr[i * sy] = static_cast<Dst>(xr[i * sx]);
               });
}

template <typename T>
void fill(int64_t n, T value, T* y) {
#pragma omp parallel for if (n > kParallelGrain)
  for (int64_t i = 0; i < n; ++i) y[i] = value;
}

template <typename T>
void random_uniform(int64_t n, uint64_t seed, uint64_t offset, T low, T high, T* y) {
#pragma omp parallel for if (n > kParallelGrain)
  for (int64_t i = 0; i < n; ++i) y[i] = random_uniform_at<T>(seed, offset + i, low, high);
}

template <typename T>
void random_normal(int64_t n, uint64_t seed, uint64_t offset, T mean, T std, T* y) {
#pragma omp parallel for if (n > kParallelGrain)
  for (int64_t i = 0; i < n; ++i) y[i] = random_normal_at<T>(seed, offset + i, mean, std);
}

// ---- unary ----
// The ops themselves are kernels/unary_ops.h; CpuMath gives them GELU's Phi and phi: in double
// std's (StdMath, gradcheck's precision), in float through vector_math.h.
struct CpuMath : unary::StdMath {
  using StdMath::gelu_cdf;
  using StdMath::gelu_density;
  // Phi(x) = (1 + erf(x / sqrt 2)) / 2: with z = |x| / sqrt 2,
  //   1 + erf(x / sqrt 2) = x >= 0 ? 2 - erfc(z) : erfc(z),
  // erfc taken at z >= 0 only, so neither branch cancels: within 1.2e-7 relative (the erfc
  // fit's bound, Numerical Recipes), about two float ulps, and the loop over the elements
  // vectorises (std::erf is a call per element, which made GELU the slowest CPU op).
  static float gelu_cdf(float x) {
    const double erfc_z = erfc_nonnegative(std::abs(static_cast<double>(x)) * unary::kInvSqrt2);
    return static_cast<float>(0.5 * (x >= 0 ? 2 - erfc_z : erfc_z));
  }
  // phi(x) = e^(-x^2 / 2) / sqrt(2 pi), the same way.
  static float gelu_density(float x) {
    const double xd = x;
    return static_cast<float>(unary::kInvSqrt2Pi * exp_branchless(-0.5 * xd * xd));
  }
};

template <typename T>
void unary_forward(UnaryOp op, int64_t n, const T* x, T* y) {
  unary::visit_unary_op<T, CpuMath>(op, [&](auto f) {
#pragma omp parallel for if (n > kParallelGrain)
    for (int64_t i = 0; i < n; ++i) y[i] = f.value(x[i]);
  });
}

template <typename T>
void unary_backward(UnaryOp op, int64_t n, const T* x, const T* y, const T* dy, T* dx) {
  unary::visit_unary_op<T, CpuMath>(op, [&](auto f) {
#pragma omp parallel for if (n > kParallelGrain)
    for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * f.derivative(x[i], y[i]);
  });
}

// ---- binary and scalar ----

// a^b with 0^b = 0 for b > 0 (std::pow agrees; kept explicit as the ops rely on it).
template <typename T>
static inline T power(T a, T b) {
  return a == T(0) && b > T(0) ? T(0) : std::pow(a, b);
}

// Whether an operand with these strides over `sizes` is laid out row-major contiguous (size-1
// dimensions may have any stride).
static bool row_major(int ndim, const int64_t* sizes, const int64_t* strides) {
  int64_t expected = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    if (sizes[d] != 1 && strides[d] != expected) return false;
    expected *= sizes[d];
  }
  return true;
}

// y = f(a, b) over the broadcast space. Both inputs contiguous: one flat loop. Otherwise a loop
// over the last dimension per row, the rows' offsets by for_each_row; the inner loop has
// unit or zero strides in the common cases (a bias broadcast along rows), so the compiler
// vectorises it.
template <typename T, typename F>
static void binary_apply(const Broadcast& bc, const T* a, const T* b, T* y, F f) {
  int64_t n = 1;
  for (int d = 0; d < bc.ndim; ++d) n *= bc.sizes[d];
  if (row_major(bc.ndim, bc.sizes, bc.a_strides) && row_major(bc.ndim, bc.sizes, bc.b_strides)) {
#pragma omp parallel for if (n > kParallelGrain)
    for (int64_t i = 0; i < n; ++i) y[i] = f(a[i], b[i]);
    return;
  }
  const int last = bc.ndim - 1;  // >= 0: a 0-d space is row-major
  const int64_t inner = bc.sizes[last], rows = inner ? n / inner : 0;
  const int64_t sa = bc.a_strides[last], sb = bc.b_strides[last];
  for_each_row(rows, n > kParallelGrain, last, bc.sizes, bc.a_strides, bc.b_strides,
               [&](const RowOffsets& row, int64_t r) {
                 const T* ar = a + row.offset[0];
                 const T* br = b + row.offset[1];
                 T* yr = y + r * inner;
                 if (sa == 1 && sb == 1) {
                   for (int64_t i = 0; i < inner; ++i) yr[i] = f(ar[i], br[i]);
                 } else if (sa == 1 && sb == 0) {
                   for (int64_t i = 0; i < inner; ++i) yr[i] = f(ar[i], br[0]);
                 } else if (sa == 0 && sb == 1) {
                   for (int64_t i = 0; i < inner; ++i) yr[i] = f(ar[0], br[i]);
                 } else {
                   for (int64_t i = 0; i < inner; ++i) yr[i] = f(ar[i * sa], br[i * sb]);
                 }
               });
}

template <typename T>
void binary_forward(BinaryOp op, const Broadcast& bc, const T* a, const T* b, T* y) {
  switch (op) {
    case BinaryOp::Add:
      return binary_apply(bc, a, b, y, [](T u, T v) { return u + v; });
    case BinaryOp::Sub:
      return binary_apply(bc, a, b, y, [](T u, T v) { return u - v; });
    case BinaryOp::Mul:
      return binary_apply(bc, a, b, y, [](T u, T v) { return u * v; });
    case BinaryOp::Div:
      return binary_apply(bc, a, b, y, [](T u, T v) { return u / v; });
    case BinaryOp::Pow:
      return binary_apply(bc, a, b, y, [](T u, T v) { return power(u, v); });
    case BinaryOp::Eq:
      return binary_apply(bc, a, b, y, [](T u, T v) { return u == v ? T(1) : T(0); });
    case BinaryOp::Gt:
      return binary_apply(bc, a, b, y, [](T u, T v) { return u > v ? T(1) : T(0); });
  }
  throw std::invalid_argument("binary op: unknown BinaryOp");
}

template <typename T>
void scalar_forward(ScalarOp op, int64_t n, const T* x, T s, T* y) {
#pragma omp parallel for if (n > kParallelGrain)
  for (int64_t i = 0; i < n; ++i) {
    switch (op) {
      case ScalarOp::Add:
        y[i] = x[i] + s;
        break;
      case ScalarOp::Mul:
        y[i] = x[i] * s;
        break;
      case ScalarOp::Pow:
        y[i] = power(x[i], s);
        break;
    }
  }
}

// ---- instantiations ----

#define NALA_COPY_TO(Src)                                                                       \
  template void copy_strided<Src, float>(const Layout&, const Src*, const Layout&, float*);     \
  template void copy_strided<Src, double>(const Layout&, const Src*, const Layout&, double*);   \
  template void copy_strided<Src, int32_t>(const Layout&, const Src*, const Layout&, int32_t*); \
  template void copy_strided<Src, int64_t>(const Layout&, const Src*, const Layout&, int64_t*); \
  template void copy_strided<Src, uint8_t>(const Layout&, const Src*, const Layout&, uint8_t*);
NALA_COPY_TO(float)
NALA_COPY_TO(double)
NALA_COPY_TO(int32_t)
NALA_COPY_TO(int64_t)
NALA_COPY_TO(uint8_t)
#undef NALA_COPY_TO

template void fill<float>(int64_t, float, float*);
template void fill<double>(int64_t, double, double*);
template void fill<int32_t>(int64_t, int32_t, int32_t*);
template void fill<int64_t>(int64_t, int64_t, int64_t*);
template void fill<uint8_t>(int64_t, uint8_t, uint8_t*);

#define NALA_INSTANTIATE(T)                                                            \
  template void random_uniform<T>(int64_t, uint64_t, uint64_t, T, T, T*);              \
  template void random_normal<T>(int64_t, uint64_t, uint64_t, T, T, T*);               \
  template void unary_forward<T>(UnaryOp, int64_t, const T*, T*);                      \
  template void unary_backward<T>(UnaryOp, int64_t, const T*, const T*, const T*, T*); \
  template void binary_forward<T>(BinaryOp, const Broadcast&, const T*, const T*, T*); \
  template void scalar_forward<T>(ScalarOp, int64_t, const T*, T, T*);
NALA_INSTANTIATE(float)
NALA_INSTANTIATE(double)
#undef NALA_INSTANTIATE

}  // namespace nala::kernels::cpu
