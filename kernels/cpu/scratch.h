// Per-thread scratch for the CPU kernels: the exception to "a kernel never allocates"
// (kernels/kernels.h). A kernel whose scratch depends on the work it is given, per thread and
// inside its parallel loop (the GEMM's packed panels, attention's chunk of feature rows, a
// depthwise weight gradient's per-pixel sums), takes it here: allocated on a thread's first
// call, grown when a call needs more, reused by every later call, never shrunk. Taken on the
// calling thread before a parallel loop, it is shared by the loop's threads (cross-entropy's
// per-row losses, summed in row order after the loop).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace nala::kernels::cpu {

// This thread's scratch for `Tag`: room for `count` elements of T, 64-byte aligned. Each Tag
// (an empty struct named after its user) has its own buffer, so that a kernel may hold its
// scratch while it calls another kernel that takes some too (attention's features while the GEMM
// packs its operands).
template <typename Tag, typename T>
T* thread_scratch(int64_t count) {
  constexpr size_t kAlign = 64;
  static thread_local std::vector<T> storage;
  const size_t padded = static_cast<size_t>(count) + kAlign / sizeof(T);
  if (storage.size() < padded) storage.resize(padded);
  void* start = storage.data();
  size_t space = storage.size() * sizeof(T);
  return static_cast<T*>(std::align(kAlign, static_cast<size_t>(count) * sizeof(T), start, space));
}

}  // namespace nala::kernels::cpu
