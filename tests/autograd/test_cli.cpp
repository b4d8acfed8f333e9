// The `nala` command line, run as a user would (CTest passes its path in NALA_CLI).
#include <cstdlib>
#include <filesystem>

#include "test_util.h"

using namespace nala;

static const char* cli() { return std::getenv("NALA_CLI"); }

static int run(const std::string& args) {
  std::string cmd = std::string(cli()) + " " + args + " > /tmp/nala_test_cli.log 2>&1";
  int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST_CASE("nala attn: .npy in, out.npy and gradients out, equal to the op") {
  if (!cli()) {
    MESSAGE("NALA_CLI not set (run through ctest): skipped");
    return;
  }
  std::string dir = "/tmp/nala_test_attn";
  std::filesystem::create_directories(dir);
  Tensor q = test::random_tensor({1, 2, 6, 8}, 1, DType::Float64),
         k = test::random_tensor({1, 2, 6, 8}, 2, DType::Float64);
  Tensor v = test::random_tensor({1, 2, 6, 8}, 3, DType::Float64),
         g = test::random_tensor({1, 2, 6, 8}, 4, DType::Float64);
  for (auto [name, t] : {std::pair{"q", q}, {"k", k}, {"v", v}, {"g", g}})
    save_npy(dir + "/" + name + ".npy", t);
  std::string files = " --q " + dir + "/q.npy --k " + dir + "/k.npy --v " + dir + "/v.npy";
  REQUIRE(run("attn --kind nala" + files + " --grid 2 3 --grad-out " + dir + "/g.npy --out " + dir +
              "/out") == 0);
  Tensor qg = q.detach().requires_grad_(), kg = k.detach().requires_grad_(),
         vg = v.detach().requires_grad_();
  Tensor o = nala_attention(qg, kg, vg, 2, 3);
  o.backward(g);
  CHECK(load_npy(dir + "/out/out.npy").dtype() == DType::Float64);
  CHECK(test::max_rel_diff(load_npy(dir + "/out/out.npy"), o) == 0.0);
  CHECK(test::max_rel_diff(load_npy(dir + "/out/dq.npy"), qg.grad()) == 0.0);
  CHECK(test::max_rel_diff(load_npy(dir + "/out/dk.npy"), kg.grad()) == 0.0);
  CHECK(test::max_rel_diff(load_npy(dir + "/out/dv.npy"), vg.grad()) == 0.0);
  // A grid that does not match N, and a missing file: non-zero exit with a message.
  CHECK(run("attn" + files + " --grid 2 2 --out " + dir + "/bad") == 1);
  CHECK(run("attn --q /nonexistent.npy --k x --v y --grid 1 1") != 0);
}

TEST_CASE("nala gradcheck exits 0 when every op passes") {
  if (!cli()) return;
  CHECK(run("gradcheck") == 0);
}
