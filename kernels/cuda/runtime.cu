// CUDA runtime services: device query, the caching allocator, byte copies, the cuBLAS handle and
// the TF32 switch.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

#include "kernels/caching_allocator.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/kernels.h"

namespace nala::kernels::cuda {

bool is_available() {
  // Not checked: without a driver or a device this fails, and that only means "no CUDA".
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the error so that the next checked call does not report it
    return false;
  }
  return count > 0;
}

// A kernel that is never launched: its attributes tell which code this device runs.
__global__ void compiled_code_probe() {}

// NALA_CUDA_OVERLAP=0 launches every kernel only after the one before has finished (to compare
// timings, or to rule overlap out while debugging), as CUDA_LAUNCH_BLOCKING=1 rules out
// asynchrony.
bool kernels_may_overlap() {
  static const bool may = [] {
    const int major = device_attribute(cudaDevAttrComputeCapabilityMajor);
    cudaFuncAttributes code;
    NALA_CUDA_CHECK(cudaFuncGetAttributes(&code, compiled_code_probe));
    const char* setting = std::getenv("NALA_CUDA_OVERLAP");
    const bool switched_off = setting != nullptr && std::string(setting) == "0";
    // after_previous_kernel() waits only in code compiled from compute_90 PTX or later (its
    // __CUDA_ARCH__): compute_80 PTX compiled for an H100 at load time would have no wait.
    return major >= 9 && code.ptxVersion >= 90 && !switched_off;
  }();
  return may;
}

void synchronize() { NALA_CUDA_CHECK(cudaStreamSynchronize(stream())); }

cublasHandle_t cublas_handle() {
  static const cublasHandle_t handle = [] {
    cublasHandle_t h = nullptr;
    NALA_CUBLAS_CHECK(cublasCreate(&h));
    NALA_CUBLAS_CHECK(cublasSetStream(h, stream()));
    return h;
  }();
  return handle;
}

// ---- the caching allocator (kernels/caching_allocator.h) over cudaMalloc ----

namespace {

constexpr size_t kMiB = size_t(1) << 20;

struct DeviceMemory {
  static const char* name() { return "CUDA"; }
  // nullptr when the device is full; any other failure throws.
  static void* allocate(size_t bytes) {
    void* ptr = nullptr;
    const cudaError_t status = cudaMalloc(&ptr, bytes);
    if (status == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear the error: the allocator handles it
      return nullptr;
    }
    if (status != cudaSuccess)
      throw_cuda_error("cudaMalloc", __FILE__, __LINE__, cudaGetErrorString(status));
    return ptr;
  }
  static void release(void* block) { NALA_CUDA_CHECK(cudaFree(block)); }
  // Kernels queued before may still use the cached blocks.
  static void wait() { NALA_CUDA_CHECK(cudaStreamSynchronize(stream())); }
};

}  // namespace

NALA_DEFINE_ALLOCATOR_FUNCTIONS(DeviceMemory)

// ---- copies ----

namespace {

constexpr size_t kStagedCopyThreshold = kMiB;  // host->device copies at least this big are staged

// Host->device copies through two pinned buffers used in turn: while the GPU reads a chunk from
// one, the host fills the other. Each buffer's event marks when its last chunk has been read.
// Like the allocator's blocks, the buffers live until the process exits.
class PinnedStaging {
 public:
  void copy_to_device(void* dst, const void* src, size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (buffers_[0].data == nullptr) create_buffers();
    size_t chunk_index = 0;
    for (size_t offset = 0; offset < bytes; offset += kChunkBytes, ++chunk_index) {
      Buffer& buffer = buffers_[chunk_index % 2];
      const size_t chunk = std::min(kChunkBytes, bytes - offset);
      NALA_CUDA_CHECK(cudaEventSynchronize(buffer.drained));
      std::memcpy(buffer.data, static_cast<const char*>(src) + offset, chunk);
      NALA_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst) + offset, buffer.data, chunk,
                                      cudaMemcpyHostToDevice, stream()));
      NALA_CUDA_CHECK(cudaEventRecord(buffer.drained, stream()));
    }
  }

 private:
  static constexpr size_t kChunkBytes = 8 * kMiB;

  struct Buffer {
    void* data = nullptr;
    cudaEvent_t drained = nullptr;  // recorded after the copy out of `data`
  };

  void create_buffers() {
    for (Buffer& buffer : buffers_) {
      NALA_CUDA_CHECK(cudaMallocHost(&buffer.data, kChunkBytes));
      NALA_CUDA_CHECK(cudaEventCreateWithFlags(&buffer.drained, cudaEventDisableTiming));
    }
  }

  std::mutex mutex_;
  Buffer buffers_[2];
};

PinnedStaging& pinned_staging() {
  static PinnedStaging instance;
  return instance;
}

}  // namespace

// Returns once `src` may be reused; the data reaches the device in stream order.
void copy_host_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  if (bytes >= kStagedCopyThreshold) {
    pinned_staging().copy_to_device(dst, src, bytes);
  } else {
    // From pageable memory (all host tensors) the driver copies `src` to its own staging buffer
    // before returning.
    NALA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream()));
  }
}

// Waits for every queued kernel and for the copy: the host reads `dst` next.
void copy_device_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  NALA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream()));
  NALA_CUDA_CHECK(cudaStreamSynchronize(stream()));
}

void copy_device_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  NALA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()));
}

// ---- TF32 ----

namespace {
std::atomic<bool> allow_tf32_flag{true};
}  // namespace

void set_allow_tf32(bool allow) { allow_tf32_flag = allow; }
bool allow_tf32() { return allow_tf32_flag; }

}  // namespace nala::kernels::cuda
