// The `nala` command line: parses arguments and calls the library, nothing more.
#include <CLI/CLI.hpp>
#include <iostream>

#include "autograd/gradcheck.h"
#include "bench/bench.h"

int main(int argc, char** argv) {
  CLI::App app{"nala: a from-scratch deep-learning framework with NaLa attention"};
  app.require_subcommand(1);

  auto* gradcheck = app.add_subcommand("gradcheck", "check every op's gradient against finite differences (float64)");
  std::string gc_device = "cpu";
  gradcheck->add_option("--device", gc_device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));

  auto* bench = app.add_subcommand("bench", "benchmark kernels and ops");
  std::string bench_name;
  nala::BenchOptions bench_options;
  bench->add_option("name", bench_name, "what to benchmark (list: nala bench list)")->required();
  bench->add_option("--device", bench_options.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  bench->add_option("--repeats", bench_options.repeats, "timed repetitions (median reported)");

  auto* train = app.add_subcommand("train", "train a model (not implemented yet: see issue 6)");
  train->allow_extras();

  CLI11_PARSE(app, argc, argv);
  try {
    if (*gradcheck) {
      int failures = nala::run_gradcheck_table(nala::builtin_gradcheck_cases(),
                                               nala::parse_device(gc_device), std::cout);
      return failures == 0 ? 0 : 1;
    }
    if (*bench) return nala::run_benchmark(bench_name, bench_options, std::cout);
    if (*train) {
      std::cerr << "nala train: not implemented yet (a stub until the training issue lands)\n";
      return 2;
    }
  } catch (const std::exception& e) {
    std::cerr << "nala: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
