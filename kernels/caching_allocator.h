// The caching allocator behind both devices' tensors (kernels/cpu/allocator.cpp for host memory,
// kernels/cuda/runtime.cu for device memory).
//
// Freed blocks are kept in a free list ordered by size and handed out again instead of going back
// to the system. A training loop frees and allocates the same sizes at every step, so after its
// first step it allocates nothing new: on the GPU no cudaMalloc / cudaFree (which synchronise the
// device), on the CPU no fresh pages (which the operating system zeroes on first touch).
//
// Backend is a type with
//   static const char* name();            "CUDA" or "host", for messages
//   static void* allocate(size_t bytes);  a new block, or nullptr when out of memory
//   static void release(void* block);     gives a block back to the system
//   static void wait();                   returns once queued work no longer uses freed blocks
#pragma once

#include <algorithm>
#include <cstdio>
#include <map>
#include <mutex>
#include <stdexcept>
#include <unordered_map>

#include "kernels/kernels.h"

namespace nala::kernels {

template <typename Backend>
class CachingAllocator {
 public:
  static constexpr size_t kMiB = size_t(1) << 20;
  static constexpr size_t kSmallAlignment = 512;  // requests below kLargeThreshold round up to it
  static constexpr size_t kLargeThreshold = kMiB;
  static constexpr size_t kLargeAlignment = 2 * kMiB;  // larger requests round up to this

  // This backend's one allocator. Never destroyed: cached blocks stay reachable until the process
  // exits (on the GPU, freeing them from a static destructor could run after CUDA has shut down;
  // the driver reclaims them).
  static CachingAllocator& instance() {
    static auto* allocator = new CachingAllocator;
    return *allocator;
  }

  // The size of the block that serves a request of `bytes`.
  static size_t block_size_for(size_t bytes) {
    const size_t multiple = bytes < kLargeThreshold ? kSmallAlignment : kLargeAlignment;
    return (bytes + multiple - 1) / multiple * multiple;
  }

  void* allocate(size_t bytes) {
    if (bytes == 0) return nullptr;
    const size_t size = block_size_for(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    void* ptr = take_cached(size);
    if (ptr == nullptr) ptr = allocate_new(size);
    live_blocks_.emplace(ptr, size);
    stats_.bytes_in_use += size;
    stats_.peak_bytes_in_use = std::max(stats_.peak_bytes_in_use, stats_.bytes_in_use);
    return ptr;
  }

  // A freed block can be handed out again at once: all work runs in order on one stream (one
  // thread of queued kernels per device), so later work that reuses it runs after earlier work
  // that used it.
  void deallocate(void* ptr, size_t bytes) {
    if (ptr == nullptr) return;
    std::lock_guard<std::mutex> lock(mutex_);
    const auto live = live_blocks_.find(ptr);
    if (live == live_blocks_.end() || block_size_for(bytes) > live->second)
      throw std::logic_error(std::string(Backend::name()) +
                             " deallocate: not a live block of this size");
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

  // A new block; when the system has none left, gives back every cached block and tries once
  // more, then throws with the request and the statistics.
  void* allocate_new(size_t size) {
    void* ptr = Backend::allocate(size);
    if (ptr == nullptr) {
      const size_t cached = stats_.bytes_cached;
      release_cached();
      ptr = Backend::allocate(size);
      if (ptr == nullptr) {
        char message[256];
        std::snprintf(message, sizeof(message),
                      "%s out of memory: tried to allocate %.2f MiB (in use %.2f MiB, cached "
                      "%.2f MiB, peak %.2f MiB)",
                      Backend::name(), to_mib(size), to_mib(stats_.bytes_in_use), to_mib(cached),
                      to_mib(stats_.peak_bytes_in_use));
        throw std::runtime_error(message);
      }
    }
    ++stats_.num_system_allocs;
    return ptr;
  }

  // Gives every cached block back, once the work queued before is done with them.
  void release_cached() {
    if (free_blocks_.empty()) return;
    Backend::wait();
    for (const auto& [size, ptr] : free_blocks_) Backend::release(ptr);
    free_blocks_.clear();
    stats_.bytes_cached = 0;
  }

  static double to_mib(size_t bytes) {
    return static_cast<double>(bytes) / static_cast<double>(kMiB);
  }

  std::mutex mutex_;
  std::multimap<size_t, void*> free_blocks_;       // block size -> cached block
  std::unordered_map<void*, size_t> live_blocks_;  // handed-out block -> its size
  AllocatorStats stats_;
};

}  // namespace nala::kernels

// Defines a backend's allocator functions (declared in kernels/kernel_list.inc) over
// CachingAllocator<Backend>::instance(), in the backend's namespace.
#define NALA_DEFINE_ALLOCATOR_FUNCTIONS(Backend)                                                 \
  void* allocate(size_t bytes) { return CachingAllocator<Backend>::instance().allocate(bytes); } \
  void deallocate(void* ptr, size_t bytes) {                                                     \
    CachingAllocator<Backend>::instance().deallocate(ptr, bytes);                                \
  }                                                                                              \
  AllocatorStats allocator_stats() { return CachingAllocator<Backend>::instance().stats(); }     \
  void reset_peak_stats() { CachingAllocator<Backend>::instance().reset_peak(); }                \
  void empty_cache() { CachingAllocator<Backend>::instance().empty_cache(); }
