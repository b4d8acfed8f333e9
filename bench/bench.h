// Benchmarks run by `nala bench NAME`: each times an op or kernel (median of repeats, after a
// warm-up) and prints what it achieves against its ceiling (GFLOP/s, GB/s).
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

namespace nala {

struct BenchOptions {
  std::string device = "cpu";
  int repeats = 5;
  // `nala bench attention` only: one head dim and one token count (0: every size it knows), one
  // variant (attention_bench_kinds(); empty: all).
  int64_t head_dim = 0, tokens = 0;
  std::string kind;
};

// The variants `nala bench attention --kind` takes.
std::vector<std::string> attention_bench_kinds();

// The benchmarks run_benchmark knows, by name.
std::vector<std::string> benchmark_names();

// Returns 0 on success; an unknown name lists the known ones and returns 2.
int run_benchmark(const std::string& name, const BenchOptions& options, std::ostream& os);

}  // namespace nala
