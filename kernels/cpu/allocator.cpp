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

}  // namespace

NALA_DEFINE_ALLOCATOR_FUNCTIONS(HostMemory)

}  // namespace nala::kernels::cpu
