// Benchmarks run by `nala bench NAME`: each times an op or kernel (median of repeats, after a
// warm-up) and prints what it achieves against its ceiling (GFLOP/s, GB/s).
#pragma once

#include <iosfwd>
#include <string>

namespace nala {

struct BenchOptions {
  std::string device = "cpu";
  int repeats = 5;
};

// Returns 0 on success; an unknown name lists the known ones and returns 2.
int run_benchmark(const std::string& name, const BenchOptions& options, std::ostream& os);

}  // namespace nala
