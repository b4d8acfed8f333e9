// CUDA runtime services: device query, the caching allocator, byte copies, the cuBLAS handle and
// the TF32 switch.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>

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

// ---- the caching allocator ----

namespace {

constexpr size_t kMiB = size_t(1) << 20;
constexpr size_t kSmallAlignment = 512;  // requests below kLargeThreshold round up to this
constexpr size_t kLargeThreshold = kMiB;
constexpr size_t kLargeAlignment = 2 * kMiB;  // larger requests round up to this

size_t round_up(size_t bytes, size_t multiple) {
  return (bytes + multiple - 1) / multiple * multiple;
}

// The size of the block that serves a request of `bytes`.
size_t block_size_for(size_t bytes) {
  return bytes < kLargeThreshold ? round_up(bytes, kSmallAlignment)
                                 : round_up(bytes, kLargeAlignment);
}

double to_mib(size_t bytes) { return static_cast<double>(bytes) / static_cast<double>(kMiB); }

// Freed blocks are kept in a free list ordered by size and handed out again instead of calling
// cudaFree and cudaMalloc. Since all work runs on the one stream, a block freed on the host while
// kernels that use it are still queued can be reused at once: later kernels run after them.
// Cached blocks are not returned at exit: the driver reclaims them, and freeing them from a
// static destructor could run after CUDA itself has shut down.
class CachingAllocator {
 public:
  void* allocate(size_t bytes) {
    if (bytes == 0) return nullptr;
    const size_t size = block_size_for(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    void* ptr = take_cached(size);
    if (ptr == nullptr) ptr = malloc_device(size);
    live_blocks_.emplace(ptr, size);
    stats_.bytes_in_use += size;
    stats_.peak_bytes_in_use = std::max(stats_.peak_bytes_in_use, stats_.bytes_in_use);
    return ptr;
  }

  void deallocate(void* ptr, size_t bytes) {
    if (ptr == nullptr) return;
    std::lock_guard<std::mutex> lock(mutex_);
    const auto live = live_blocks_.find(ptr);
    if (live == live_blocks_.end() || block_size_for(bytes) > live->second)
      throw std::logic_error("CUDA deallocate: not a live block of this size");
    const size_t size = live->second;
    live_blocks_.erase(live);
    free_blocks_.emplace(size, ptr);
    stats_.bytes_in_use -= size;
    stats_.bytes_cached += size;
  }

  AllocatorStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

  void reset_peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.peak_bytes_in_use = stats_.bytes_in_use;
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    release_cached();
  }

 private:
  // The smallest cached block of at least `size` bytes, if it is at most twice as large (a
  // bigger one would waste more than it saves); nullptr when there is none.
  void* take_cached(size_t size) {
    const auto it = free_blocks_.lower_bound(size);
    if (it == free_blocks_.end() || it->first > 2 * size) return nullptr;
    void* ptr = it->second;
    stats_.bytes_cached -= it->first;
    free_blocks_.erase(it);
    return ptr;
  }

  // cudaMalloc; when the device is full, frees every cached block and tries once more.
  void* malloc_device(size_t size) {
    void* ptr = nullptr;
    cudaError_t status = cudaMalloc(&ptr, size);
    if (status == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear the error: it is handled here
      const size_t cached = stats_.bytes_cached;
      release_cached();
      status = cudaMalloc(&ptr, size);
      if (status == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        char message[256];
        std::snprintf(message, sizeof(message),
                      "CUDA out of memory: tried to allocate %.2f MiB (in use %.2f MiB, cached "
                      "%.2f MiB, peak %.2f MiB)",
                      to_mib(size), to_mib(stats_.bytes_in_use), to_mib(cached),
                      to_mib(stats_.peak_bytes_in_use));
        throw std::runtime_error(message);
      }
    }
    if (status != cudaSuccess)
      throw_cuda_error("cudaMalloc", __FILE__, __LINE__, cudaGetErrorString(status));
    ++stats_.num_device_allocs;
    return ptr;
  }

  // Returns every cached block to the driver, once the kernels queued before are done with them.
  void release_cached() {
    if (free_blocks_.empty()) return;
    NALA_CUDA_CHECK(cudaStreamSynchronize(stream()));
    for (const auto& [size, ptr] : free_blocks_) NALA_CUDA_CHECK(cudaFree(ptr));
    free_blocks_.clear();
    stats_.bytes_cached = 0;
  }

  std::mutex mutex_;
  std::multimap<size_t, void*> free_blocks_;       // block size -> cached block
  std::unordered_map<void*, size_t> live_blocks_;  // handed-out block -> its size
  AllocatorStats stats_;
};

CachingAllocator& allocator() {
  static CachingAllocator instance;
  return instance;
}

}  // namespace

void* allocate(size_t bytes) { return allocator().allocate(bytes); }
void deallocate(void* ptr, size_t bytes) { allocator().deallocate(ptr, bytes); }
AllocatorStats allocator_stats() { return allocator().stats(); }
void reset_peak_stats() { allocator().reset_peak(); }
void empty_cache() { allocator().empty_cache(); }

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
