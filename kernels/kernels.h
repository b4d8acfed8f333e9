// The device-neutral kernel interface.
//
// Kernels know memory, not autograd: they take plain pointers, sizes and strides, never a
// Tensor. Every kernel below is declared once, in kernel_list.inc, and defined twice with the
// same name and arguments: in kernels/cpu/*.cpp (namespace nala::kernels::cpu, OpenMP) and in
// kernels/cuda/*.cu (namespace nala::kernels::cuda). The ops in autograd/ops pick one of the two
// with NALA_KERNEL (autograd/dispatch.h) from the tensor's device and dtype.
//
// Conventions shared by every kernel:
// - Sizes and strides are int64_t and counted in elements, not bytes.
// - A pointer argument is contiguous (row-major) unless a Layout/Broadcast gives its strides.
// - T is float or double unless a kernel says otherwise; labels are int64_t.
// - A kernel never allocates memory. When it needs scratch space its caller passes a workspace
//   whose size a *_workspace_size function returns; the one exception is per-thread scratch on
//   the CPU, kept and reused across calls (kernels/cpu/scratch.h).
// - On CUDA every pointer is device memory, every kernel is asynchronous on the one stream, and
//   no kernel synchronises with the host.
#pragma once

#include <cstddef>
#include <cstdint>

namespace nala::kernels {

// Tensors have at most this many dimensions.
constexpr int kMaxDims = 8;

// Sizes of an n-d iteration space and the strides of one operand over it. A stride of 0 repeats
// the operand along that dimension (broadcasting).
struct Layout {
  int ndim = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};
};

// Two inputs broadcast against each other; the output is contiguous with `out.sizes`.
// a_strides / b_strides are the inputs' strides over the output's dimensions (0 where broadcast).
struct Broadcast {
  int ndim = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t a_strides[kMaxDims] = {};
  int64_t b_strides[kMaxDims] = {};
};

enum class UnaryOp {
  Neg,       // -x
  Exp,       // e^x
  Log,       // ln x
  Sqrt,      // sqrt(x)
  Abs,       // |x|
  Tanh,      // tanh x
  Sigmoid,   // 1 / (1 + e^-x)
  Relu,      // max(x, 0)
  GeluTanh,  // x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
  GeluErf,   // x/2 (1 + erf(x / sqrt 2))
  Silu,      // x * sigmoid(x)
};

enum class BinaryOp {
  Add,  // a + b
  Sub,  // a - b
  Mul,  // a * b
  Div,  // a / b
  Pow,  // a ^ b, with 0 ^ b = 0 for b > 0
  Eq,   // 1 if a == b else 0 (not differentiable)
  Gt,   // 1 if a > b else 0  (not differentiable)
};

enum class ScalarOp {
  Add,  // x + s
  Mul,  // x * s
  Pow,  // x ^ s, with 0 ^ s = 0 for s > 0
};

enum class ReduceOp { Sum, Max };

// Geometry of a 2-d convolution of x (batch, channels, height, width) with a kernel_h x kernel_w
// window, stride and zero padding; out_h/out_w are the output's spatial sizes.
struct Conv2dShape {
  int64_t batch, channels, height, width;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
  int64_t out_h, out_w;
};

// Up to kMaxTensors tensors handed to one kernel launch (a "multi-tensor apply": an optimizer
// step over a whole model is one launch, not a dozen per parameter). Passed by value as a kernel
// argument: 256 tensors take about 12 KiB, which needs CUDA 12.1 or later on Volta or newer
// (kernel arguments up to 32 KiB). arrays[a][t] is array a of tensor t (for AdamW: 0 param,
// 1 grad, 2 exp_avg, 3 exp_avg_sq), each sizes[t] elements, contiguous.
template <typename T>
struct TensorList {
  static constexpr int kMaxTensors = 256;
  int count = 0;
  int64_t sizes[kMaxTensors] = {};
  T* arrays[4][kMaxTensors] = {};
  T weight_decay[kMaxTensors] = {};
};

// The scalars of one AdamW step (bias corrections 1 - beta^t for step t).
struct AdamWStep {
  double lr, beta1, beta2, eps, bias_correction1, bias_correction2;
};

// Feature maps of the linear attentions (NALAFORMER.md section 1).
enum class FeatureMap {
  Nala,  // phiQ = [a^p, b^p] (query-norm-aware power), phiK = [relu(k^3), relu(-k^3)]: 2d wide
  Relu,  // phiQ = relu(q), phiK = relu(k): d wide (the 'r' baseline)
};

// Width of the feature map for head dim d: 2d for NaLa, d for ReLU.
inline int64_t feature_dim(FeatureMap fm, int64_t d) { return fm == FeatureMap::Nala ? 2 * d : d; }

// Statistics of a device's caching allocator (kernels/caching_allocator.h).
struct AllocatorStats {
  size_t bytes_in_use = 0;       // handed out and not yet freed
  size_t peak_bytes_in_use = 0;  // high-water mark of bytes_in_use since the last reset
  size_t bytes_cached = 0;       // held in free lists, ready for reuse
  size_t num_system_allocs = 0;  // blocks obtained from the system (aligned_alloc, cudaMalloc)
};

namespace cpu {
#include "kernels/kernel_list.inc"
}  // namespace cpu

#ifdef NALA_WITH_CUDA
namespace cuda {
#include "kernels/kernel_list.inc"

// ---- CUDA runtime services (kernels/cuda/runtime.cu) ----
bool is_available();  // true when a CUDA device can be used
void synchronize();   // waits for all work queued on the stream

// Copies of raw bytes. Host->device copies of large blocks are staged through pinned memory.
void copy_host_to_device(void* dst, const void* src, size_t bytes);
void copy_device_to_host(void* dst, const void* src, size_t bytes);
void copy_device_to_device(void* dst, const void* src, size_t bytes);

// TF32 tensor cores for float32 GEMMs and the linear-attention products (on by default), like
// torch.backends.cuda.matmul.allow_tf32.
void set_allow_tf32(bool allow);
bool allow_tf32();

// allow_tf32 set to `allow` for the scope of this object, the previous setting back after it
// (also when an exception leaves the scope).
class Tf32Scope {
 public:
  explicit Tf32Scope(bool allow) : previous_(allow_tf32()) { set_allow_tf32(allow); }
  ~Tf32Scope() { set_allow_tf32(previous_); }
  Tf32Scope(const Tf32Scope&) = delete;
  Tf32Scope& operator=(const Tf32Scope&) = delete;

 private:
  bool previous_;
};

// Whether a kernel may be scheduled while the one before it in the stream still runs
// (launch_kernel in kernels/cuda/common.h): the device supports it (compute capability 9.0 on),
// the code that runs on it was compiled from compute_90 PTX or later, and NALA_CUDA_OVERLAP is
// not 0.
bool kernels_may_overlap();
}  // namespace cuda
#endif

}  // namespace nala::kernels
