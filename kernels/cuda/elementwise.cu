// Memory and elementwise kernels: strided copies, fills, random numbers, and the unary, binary and
// scalar ops. Each is one functor run by for_each_index (common.h): one generic kernel family,
// one functor per op; only the copy that transposes has a kernel of its own, through shared
// memory (transposed_copy_kernel).
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <type_traits>

#include "kernels/cuda/common.h"
#include "kernels/fast_divisor.h"
#include "kernels/kernels.h"
#include "kernels/random.h"
#include "kernels/unary_ops.h"

namespace nala::kernels::cuda {

namespace {

// ---- n-d indexing ----

// An n-d iteration space and the strides of two operands over it: (src, dst) of a copy, (a, b) of
// a binary op.
constexpr int kOperands = 2;

struct StridedSpace {
  int ndim = 0;
  bool fits_32_bits = false;  // every row-major index fits in uint32_t (coalesce, transposed_copy)
  int64_t sizes[kMaxDims] = {};
  int64_t strides[kOperands][kMaxDims] = {};
};

int64_t num_elements(int ndim, const int64_t* sizes) {
  int64_t n = 1;
  for (int d = 0; d < ndim; ++d) n *= sizes[d];
  return n;
}

// The same space with size-1 dimensions dropped and each dimension merged into the one before it
// when every operand steps over the two as over one (stride[outer] == stride[inner] *
// size[inner]). Fewer dimensions mean fewer divisions per element; a contiguous copy ends up 1-d.
StridedSpace coalesce(const StridedSpace& in) {
  StridedSpace out;
  for (int d = 0; d < in.ndim; ++d) {
    if (in.sizes[d] == 1) continue;
    bool mergeable = out.ndim > 0;
    for (int op = 0; op < kOperands && mergeable; ++op)
      mergeable = out.strides[op][out.ndim - 1] == in.strides[op][d] * in.sizes[d];
    if (mergeable) {
      out.sizes[out.ndim - 1] *= in.sizes[d];
    } else {
      out.sizes[out.ndim] = in.sizes[d];
      ++out.ndim;
    }
    for (int op = 0; op < kOperands; ++op) out.strides[op][out.ndim - 1] = in.strides[op][d];
  }
  out.fits_32_bits = num_elements(out.ndim, out.sizes) <= int64_t(UINT32_MAX);
  return out;
}

// The offset in each operand of the element with row-major index i of the space: i is split
// into coordinates from the last dimension on, and coordinate c of dimension d adds
// c * strides[op][d]. The first dimension's coordinate is what is left of i, with no division.
// Index is the type the divisions run in: 32-bit division costs a fraction of 64-bit division,
// which would otherwise dominate a strided copy.
template <typename Index>
__device__ void offsets_in(const StridedSpace& space, Index i, int64_t (&offsets)[kOperands]) {
  for (int op = 0; op < kOperands; ++op) offsets[op] = 0;
  for (int d = space.ndim - 1; d > 0; --d) {
    const Index size = static_cast<Index>(space.sizes[d]);
    const Index coord = i % size;
    i /= size;
    for (int op = 0; op < kOperands; ++op) offsets[op] += coord * space.strides[op][d];
  }
  if (space.ndim > 0)
    for (int op = 0; op < kOperands; ++op) offsets[op] += i * space.strides[op][0];
}

__device__ void offsets_at(const StridedSpace& space, int64_t i, int64_t (&offsets)[kOperands]) {
  if (space.fits_32_bits)
    offsets_in<uint32_t>(space, static_cast<uint32_t>(i), offsets);
  else
    offsets_in<int64_t>(space, i, offsets);
}

// ---- memory ----

// y[dst offset] = Dst(x[src offset]) over a space whose operands are (src, dst).
template <typename Src, typename Dst>
struct CopyStrided {
  StridedSpace space;
  const Src* x;
  Dst* y;
  __device__ void operator()(int64_t i) const {
    int64_t offsets[kOperands];
    offsets_at(space, i, offsets);
    y[offsets[1]] = static_cast<Dst>(x[offsets[0]]);
  }
};

// A copy that transposes: y's last dimension (b) is contiguous in y but not in x, and another
// dimension (a) is contiguous in x, as in images going between (N, C, H, W) and (N, H, W, C).
// One element a thread (CopyStrided) would make each warp's loads touch 32 sectors of x, each
// for 4 of its bytes; instead a block moves 32 x 32 tiles of (a, b) through shared memory,
// reading rows along a and writing rows along b, for each coordinate of the other dimensions
// (`outer`, operands x then y).
constexpr int kTransposeTile = 32, kTransposeRows = 8;  // a block: 32 x 8 threads

struct TransposedCopy {
  StridedSpace outer;
  int64_t size_a, size_b, x_stride_b, y_stride_a;
  FastDivisor by_tiles_b, by_tiles;  // tiles along b; tiles per coordinate of outer
  int count;                         // tiles in all, below 2^31 (transposed_copy)
};

template <typename Src, typename Dst>
__global__ void transposed_copy_kernel(TransposedCopy t, const Src* x, Dst* y) {
  after_previous_kernel();
  __shared__ Dst tile[kTransposeTile][kTransposeTile + 1];  // [b - b0][a - a0]; +1: no conflicts
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int64_t i = blockIdx.x; i < t.count; i += gridDim.x) {
    const int block = static_cast<int>(i);
    const int o = t.by_tiles.divide(block), in_plane = block - o * t.by_tiles.divisor;
    const int tile_a = t.by_tiles_b.divide(in_plane);
    const int64_t a0 = int64_t(tile_a) * kTransposeTile;
    const int64_t b0 = int64_t(in_plane - tile_a * t.by_tiles_b.divisor) * kTransposeTile;
    int64_t offsets[kOperands];
    offsets_at(t.outer, o, offsets);
    for (int r = ty; r < kTransposeTile; r += kTransposeRows)
      if (a0 + tx < t.size_a && b0 + r < t.size_b)
        tile[r][tx] = static_cast<Dst>(x[offsets[0] + a0 + tx + (b0 + r) * t.x_stride_b]);
    __syncthreads();
    for (int r = ty; r < kTransposeTile; r += kTransposeRows)
      if (a0 + r < t.size_a && b0 + tx < t.size_b)
        y[offsets[1] + (a0 + r) * t.y_stride_a + b0 + tx] = tile[tx][r];
    __syncthreads();  // the tile is read before the next one overwrites it
  }
}

// The transposing copy of a coalesced space, when it is one: y's last dimension has unit stride
// in y only, some other dimension has unit stride in x, and both are at least half a tile long
// (shorter ones would leave most of a tile's threads idle); fewer than 2^31 tiles, so that a
// tile's coordinates come from 32-bit FastDivisor divisions.
bool transposed_copy(const StridedSpace& space, TransposedCopy& t) {
  const int b = space.ndim - 1;
  if (b < 1 || space.strides[1][b] != 1 || space.strides[0][b] == 1) return false;
  int a = -1;
  for (int d = 0; d < b; ++d)
    if (space.strides[0][d] == 1) a = d;
  if (a < 0 || space.sizes[a] < kTransposeTile / 2 || space.sizes[b] < kTransposeTile / 2)
    return false;
  t.size_a = space.sizes[a];
  t.size_b = space.sizes[b];
  t.x_stride_b = space.strides[0][b];
  t.y_stride_a = space.strides[1][a];
  for (int d = 0; d < b; ++d) {
    if (d == a) continue;
    t.outer.sizes[t.outer.ndim] = space.sizes[d];
    for (int op = 0; op < kOperands; ++op) t.outer.strides[op][t.outer.ndim] = space.strides[op][d];
    ++t.outer.ndim;
  }
  const int64_t outer_count = num_elements(t.outer.ndim, t.outer.sizes);
  const int64_t tiles_b = (t.size_b + kTransposeTile - 1) / kTransposeTile;
  const int64_t tiles = (t.size_a + kTransposeTile - 1) / kTransposeTile * tiles_b;
  if (tiles * outer_count > INT_MAX) return false;
  t.outer.fits_32_bits = true;  // outer_count <= tiles * outer_count < 2^31
  t.by_tiles_b = FastDivisor(static_cast<int>(tiles_b));
  t.by_tiles = FastDivisor(static_cast<int>(tiles));
  t.count = static_cast<int>(tiles * outer_count);
  return true;
}

// Whether operand `op` of a space whose last dimension is whole pieces of `per_piece` elements
// reads whole, aligned pieces: it is 16-byte aligned, steps through the last dimension by 1, and
// by whole pieces along every other.
bool operand_in_pieces(const StridedSpace& space, int op, int64_t per_piece, const void* p) {
  const int last = space.ndim - 1;
  if (space.strides[op][last] != 1 || !aligned16({p})) return false;
  for (int d = 0; d < last; ++d)
    if (space.strides[op][d] % per_piece != 0) return false;
  return true;
}

// A copy within one type whose rows (the last dimension) are whole 16-byte pieces that both
// operands read whole (operand_in_pieces) moves pieces: one 16-byte load and store, and one
// index's arithmetic, per 4 floats. The space is rewritten in pieces; false leaves it as it was.
using Piece = Elements<uint32_t, 4>;  // 16 bytes of any type

template <typename T>
bool in_pieces(StridedSpace& space, const T* x, const T* y) {
  const int last = space.ndim - 1;
  if (last < 0 || space.sizes[last] % kPiece<T> != 0 ||
      !operand_in_pieces(space, 0, kPiece<T>, x) || !operand_in_pieces(space, 1, kPiece<T>, y))
    return false;
  space.sizes[last] /= kPiece<T>;
  for (int op = 0; op < kOperands; ++op)
    for (int d = 0; d < last; ++d) space.strides[op][d] /= kPiece<T>;
  return true;
}

// ---- elements in 16-byte pieces (Elements, contiguous_pieces: common.h) ----

// Elements kWidth i ... kWidth i + kWidth - 1 of y, each `value`.
template <typename T, int kWidth>
struct Fill {
  T value;
  T* y;
  __device__ void operator()(int64_t i) const {
    Elements<T, kWidth> e;
#pragma unroll
    for (int k = 0; k < kWidth; ++k) e.v[k] = value;
    store_elements<kWidth>(y + kWidth * i, e);
  }
};

// y[i] = element offset + i of the stream seed (kernels/random.h).
template <typename T>
struct RandomUniform {
  uint64_t seed, offset;
  T low, high;
  T* y;
  __device__ void operator()(int64_t i) const {
    y[i] = random_uniform_at(seed, offset + static_cast<uint64_t>(i), low, high);
  }
};

template <typename T>
struct RandomNormal {
  uint64_t seed, offset;
  T mean, stddev;
  T* y;
  __device__ void operator()(int64_t i) const {
    y[i] = random_normal_at(seed, offset + static_cast<uint64_t>(i), mean, stddev);
  }
};

// ---- unary ops: kernels/unary_ops.h, with GELU's Phi and phi from the device library ----

template <typename T, typename Op, int kWidth>
struct UnaryForward {
  const T* x;
  T* y;
  __device__ void operator()(int64_t i) const {
    Elements<T, kWidth> e = load_elements<kWidth>(x + kWidth * i);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) e.v[k] = Op::value(e.v[k]);
    store_elements<kWidth>(y + kWidth * i, e);
  }
};

template <typename T, typename Op, int kWidth>
struct UnaryBackward {
  const T* x;
  const T* y;
  const T* dy;
  T* dx;
  __device__ void operator()(int64_t i) const {
    const Elements<T, kWidth> xs = load_elements<kWidth>(x + kWidth * i),
                              ys = load_elements<kWidth>(y + kWidth * i);
    Elements<T, kWidth> e = load_elements<kWidth>(dy + kWidth * i);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) e.v[k] *= Op::derivative(xs.v[k], ys.v[k]);
    store_elements<kWidth>(dx + kWidth * i, e);
  }
};

// ---- binary ops: apply(a, b) ----

template <typename T>
struct Add {
  __device__ static T apply(T a, T b) { return a + b; }
};

template <typename T>
struct Sub {
  __device__ static T apply(T a, T b) { return a - b; }
};

template <typename T>
struct Mul {
  __device__ static T apply(T a, T b) { return a * b; }
};

template <typename T>
struct Div {
  __device__ static T apply(T a, T b) { return a / b; }
};

// a ^ b, with 0 ^ b = 0 for b > 0
template <typename T>
struct Pow {
  __device__ static T apply(T a, T b) { return (a == T(0) && b > T(0)) ? T(0) : pow(a, b); }
};

template <typename T>
struct Eq {
  __device__ static T apply(T a, T b) { return a == b ? T(1) : T(0); }
};

template <typename T>
struct Gt {
  __device__ static T apply(T a, T b) { return a > b ? T(1) : T(0); }
};

template <typename T, typename Visit>
void visit_binary_op(BinaryOp op, Visit visit) {
  switch (op) {
    case BinaryOp::Add:
      return visit(Add<T>{});
    case BinaryOp::Sub:
      return visit(Sub<T>{});
    case BinaryOp::Mul:
      return visit(Mul<T>{});
    case BinaryOp::Div:
      return visit(Div<T>{});
    case BinaryOp::Pow:
      return visit(Pow<T>{});
    case BinaryOp::Eq:
      return visit(Eq<T>{});
    case BinaryOp::Gt:
      return visit(Gt<T>{});
  }
  throw std::invalid_argument("binary op: unknown BinaryOp");
}

// The scalar ops are the binary ops with b = s.
template <typename T, typename Visit>
void visit_scalar_op(ScalarOp op, Visit visit) {
  switch (op) {
    case ScalarOp::Add:
      return visit(Add<T>{});
    case ScalarOp::Mul:
      return visit(Mul<T>{});
    case ScalarOp::Pow:
      return visit(Pow<T>{});
  }
  throw std::invalid_argument("scalar op: unknown ScalarOp");
}

// y[i] = a[a offset] (op) b[b offset] over a space whose operands are (a, b); y is contiguous.
// In pieces (binary_in_pieces) elements kWidth i ... of the last dimension, which each operand
// steps through with stride 1 (a piece of it) or 0 (one element for the whole piece).
template <typename T, typename Op, int kWidth>
struct BinaryBroadcast {
  StridedSpace space;
  const T* a;
  const T* b;
  T* y;
  __device__ void operator()(int64_t i) const {
    int64_t offsets[kOperands];
    offsets_at(space, kWidth * i, offsets);
    const Elements<T, kWidth> x0 = operand(a + offsets[0], 0), x1 = operand(b + offsets[1], 1);
    Elements<T, kWidth> e;
#pragma unroll
    for (int k = 0; k < kWidth; ++k) e.v[k] = Op::apply(x0.v[k], x1.v[k]);
    store_elements<kWidth>(y + kWidth * i, e);
  }
  __device__ Elements<T, kWidth> operand(const T* p, int op) const {
    if constexpr (kWidth == 1) {
      return {p[0]};
    } else {
      if (space.strides[op][space.ndim - 1] == 1) return load_elements<kWidth>(p);
      Elements<T, kWidth> e;
#pragma unroll
      for (int k = 0; k < kWidth; ++k) e.v[k] = p[0];
      return e;
    }
  }
};

// Whether binary_forward's coalesced space goes in pieces: its last dimension is whole pieces
// (so there is one: BinaryBroadcast::operand reads its stride), y is 16-byte aligned, and each
// operand either stays put along the last dimension (stride 0) or reads whole pieces.
template <typename T>
bool binary_in_pieces(const StridedSpace& space, const T* a, const T* b, const T* y) {
  const int last = space.ndim - 1;
  if (last < 0 || space.sizes[last] % kPiece<T> != 0 || !aligned16({y})) return false;
  const T* operands[kOperands] = {a, b};
  for (int op = 0; op < kOperands; ++op)
    if (space.strides[op][last] != 0 && !operand_in_pieces(space, op, kPiece<T>, operands[op]))
      return false;
  return true;
}

template <typename T, typename Op, int kWidth>
struct ScalarRight {
  const T* x;
  T s;
  T* y;
  __device__ void operator()(int64_t i) const {
    Elements<T, kWidth> e = load_elements<kWidth>(x + kWidth * i);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) e.v[k] = Op::apply(e.v[k], s);
    store_elements<kWidth>(y + kWidth * i, e);
  }
};

}  // namespace

// ---- the kernels of kernel_list.inc ----

template <typename Src, typename Dst>
void copy_strided(const Layout& src, const Src* x, const Layout& dst, Dst* y) {
  StridedSpace space;
  space.ndim = src.ndim;
  for (int d = 0; d < src.ndim; ++d) {
    space.sizes[d] = src.sizes[d];
    space.strides[0][d] = src.strides[d];
    space.strides[1][d] = dst.strides[d];
  }
  const int64_t n = num_elements(src.ndim, src.sizes);
  StridedSpace coalesced = coalesce(space);
  TransposedCopy t;
  if (n > 0 && transposed_copy(coalesced, t))
    return launch_kernel(transposed_copy_kernel<Src, Dst>, num_blocks(t.count, 1),
                         dim3(kTransposeTile, kTransposeRows), 0, t, x, y);
  if constexpr (std::is_same_v<Src, Dst>)
    if (in_pieces(coalesced, x, y))
      return for_each_index(n / kPiece<Src>,
                            CopyStrided<Piece, Piece>{coalesced, reinterpret_cast<const Piece*>(x),
                                                      reinterpret_cast<Piece*>(y)});
  for_each_index(n, CopyStrided<Src, Dst>{coalesced, x, y});
}

template <typename T>
void fill(int64_t n, T value, T* y) {
  with_width<T>(contiguous_pieces<T>(n, {y}), [&](auto w) {
    for_each_index(n / w, Fill<T, w>{value, y});
  });
}

template <typename T>
void random_uniform(int64_t n, uint64_t seed, uint64_t offset, T low, T high, T* y) {
  for_each_index(n, RandomUniform<T>{seed, offset, low, high, y});
}

template <typename T>
void random_normal(int64_t n, uint64_t seed, uint64_t offset, T mean, T std, T* y) {
  for_each_index(n, RandomNormal<T>{seed, offset, mean, std, y});
}

template <typename T>
void unary_forward(UnaryOp op, int64_t n, const T* x, T* y) {
  unary::visit_unary_op<T, unary::StdMath>(op, [&](auto f) {
    with_width<T>(contiguous_pieces<T>(n, {x, y}), [&](auto w) {
      for_each_index(n / w, UnaryForward<T, decltype(f), w>{x, y});
    });
  });
}

template <typename T>
void unary_backward(UnaryOp op, int64_t n, const T* x, const T* y, const T* dy, T* dx) {
  unary::visit_unary_op<T, unary::StdMath>(op, [&](auto f) {
    with_width<T>(contiguous_pieces<T>(n, {x, y, dy, dx}), [&](auto w) {
      for_each_index(n / w, UnaryBackward<T, decltype(f), w>{x, y, dy, dx});
    });
  });
}

template <typename T>
void binary_forward(BinaryOp op, const Broadcast& bc, const T* a, const T* b, T* y) {
  StridedSpace space;
  space.ndim = bc.ndim;
  for (int d = 0; d < bc.ndim; ++d) {
    space.sizes[d] = bc.sizes[d];
    space.strides[0][d] = bc.a_strides[d];
    space.strides[1][d] = bc.b_strides[d];
  }
  // y is contiguous, so merging dimensions never changes y's offset of index i.
  const StridedSpace merged = coalesce(space);
  const int64_t n = num_elements(bc.ndim, bc.sizes);
  visit_binary_op<T>(op, [&](auto f) {
    with_width<T>(binary_in_pieces(merged, a, b, y), [&](auto w) {
      for_each_index(n / w, BinaryBroadcast<T, decltype(f), w>{merged, a, b, y});
    });
  });
}

template <typename T>
void scalar_forward(ScalarOp op, int64_t n, const T* x, T s, T* y) {
  visit_scalar_op<T>(op, [&](auto f) {
    with_width<T>(contiguous_pieces<T>(n, {x, y}), [&](auto w) {
      for_each_index(n / w, ScalarRight<T, decltype(f), w>{x, s, y});
    });
  });
}

// ---- instantiations ----

#define NALA_COPY_STRIDED(Src, Dst) \
  template void copy_strided<Src, Dst>(const Layout&, const Src*, const Layout&, Dst*);
#define NALA_COPY_STRIDED_FROM(Src) \
  NALA_COPY_STRIDED(Src, float)     \
  NALA_COPY_STRIDED(Src, double)    \
  NALA_COPY_STRIDED(Src, int32_t)   \
  NALA_COPY_STRIDED(Src, int64_t)   \
  NALA_COPY_STRIDED(Src, uint8_t)
NALA_COPY_STRIDED_FROM(float)
NALA_COPY_STRIDED_FROM(double)
NALA_COPY_STRIDED_FROM(int32_t)
NALA_COPY_STRIDED_FROM(int64_t)
NALA_COPY_STRIDED_FROM(uint8_t)
#undef NALA_COPY_STRIDED_FROM
#undef NALA_COPY_STRIDED

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

}  // namespace nala::kernels::cuda
