// Host memory for tensors: the caching allocator (kernels/caching_allocator.h) over
// aligned_alloc. Blocks are 64-byte aligned (a cache line, and the widest AVX-512 load).
#include <cstdlib>

#include "kernels/caching_allocator.h"

namespace nala::kernels::cpu {
namespace {

struct HostMemory {
  static const char* name() { return "host"; }
  // Block sizes are multiples of 512 bytes, as aligned_alloc requires (a multiple of 64).
  static void* allocate(size_t bytes) { return std::aligned_alloc(64, bytes); }
  static void release(void* block) { std::free(block); }
  static void wait() {}  // CPU kernels have finished when they return
};

// Never destroyed: the cached blocks stay reachable until the process exits.
CachingAllocator<HostMemory>& allocator() {
  static auto* instance = new CachingAllocator<HostMemory>;
  return *instance;
}

}  // namespace

void* allocate(size_t bytes) { return allocator().allocate(bytes); }
void deallocate(void* ptr, size_t bytes) { allocator().deallocate(ptr, bytes); }
AllocatorStats allocator_stats() { return allocator().stats(); }
void reset_peak_stats() { allocator().reset_peak(); }
void empty_cache() { allocator().empty_cache(); }

}  // namespace nala::kernels::cpu
