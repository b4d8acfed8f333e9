// Every op on CUDA against the same op on the CPU, forward and gradients, in float32 and
// float64 (skipped when no GPU is present).
#include "autograd/gradcheck.h"
#include "test_util.h"

using namespace nala;

// Runs case c on `device` in `dtype` with inputs copied from `base` (CPU float64), backpropagates
// a fixed output gradient, and returns the output followed by each input's gradient (on CPU).
static std::vector<Tensor> run_case(const GradcheckCase& c, const std::vector<Tensor>& base,
                                    Device device, DType dtype) {
  std::vector<Tensor> inputs;
  for (const Tensor& b : base) {
    Tensor t = copy_tensor(b, device, dtype);
    if (b.requires_grad()) t.requires_grad_();
    inputs.push_back(t);
  }
  Tensor out = c.f(inputs);
  Tensor g = test::random_tensor(out.shape(), 99, dtype, device);
  sum(mul(out, g)).backward();
  std::vector<Tensor> results{out.cpu().to(DType::Float64)};
  for (const Tensor& t : inputs)
    if (t.requires_grad()) results.push_back(t.grad().cpu().to(DType::Float64));
  return results;
}

TEST_CASE("CUDA ops agree with the CPU ops") {
  if (!test::cuda_available()) return;
  test::FullFloat32Guard full_float32;
  for (const GradcheckCase& c : builtin_gradcheck_cases()) {
    CAPTURE(c.name);
    std::vector<Tensor> base = c.make_inputs(Device::CPU);
    // float64: the two backends differ only in summation order.
    // float32: relative 1e-4 covers the rounding of sums over at most a few hundred terms
    // (about sqrt(n) * 6e-8 each) with a wide margin; any indexing bug is off by O(1).
    for (auto [dtype, tol] : {std::pair{DType::Float64, 1e-12}, std::pair{DType::Float32, 1e-4}}) {
      std::vector<Tensor> cpu = run_case(c, base, Device::CPU, dtype);
      std::vector<Tensor> gpu = run_case(c, base, Device::CUDA, dtype);
      REQUIRE(cpu.size() == gpu.size());
      for (size_t i = 0; i < cpu.size(); ++i) {
        CAPTURE(i);
        CHECK(test::max_rel_diff(gpu[i], cpu[i]) < tol);
      }
    }
  }
}

TEST_CASE("CUDA reductions split over many blocks agree with the CPU") {
  if (!test::cuda_available()) return;
  // Shapes larger than the gradcheck cases, so that the CUDA kernels cut their reductions into
  // splits (batch norm: uneven splits of images; layer norm: many rows per block; depthwise weight
  // gradient: several splits of positions, several windows of taps, planes smaller than a block and
  // not dividing it), and the tiled depthwise forward / input gradient with several tiles per plane
  // or several planes per block (the last block's planes running past the batch), checked in
  // float64 against the CPU.
  auto input = [](const Shape& shape, uint64_t seed) {
    return test::random_tensor(shape, seed, DType::Float64).requires_grad_();
  };
  const std::vector<GradcheckCase> cases = {
      {"batch_norm (37, 3, 24, 24)",
       [&](Device) {
         return std::vector<Tensor>{input({37, 3, 24, 24}, 1), input({3}, 2), input({3}, 3)};
       },
       [](const std::vector<Tensor>& x) {
         return batch_norm(x[0], x[1], x[2], Tensor(), Tensor(), true);
       }},
      {"batch_norm (2100, 3, 2, 2)",
       [&](Device) {
         return std::vector<Tensor>{input({2100, 3, 2, 2}, 4), input({3}, 5), input({3}, 6)};
       },
       [](const std::vector<Tensor>& x) {
         return batch_norm(x[0], x[1], x[2], Tensor(), Tensor(), true);
       }},
      // Layer norm: dgamma / dbeta fused into the dx kernel (rows of at most 256; 20 columns
      // take teams of 8 lanes, 32 per block, which loop over several rows each once rows pass
      // 32 * 1024), or column reductions after it (wider rows; a block per row beyond 1024).
      {"layer_norm (40000, 20)",
       [&](Device) {
         return std::vector<Tensor>{input({40000, 20}, 25), input({20}, 26), input({20}, 27)};
       },
       [](const std::vector<Tensor>& x) { return layer_norm(x[0], x[1], x[2], 1e-5); }},
      {"layer_norm (37, 300)",
       [&](Device) {
         return std::vector<Tensor>{input({37, 300}, 28), input({300}, 29), input({300}, 30)};
       },
       [](const std::vector<Tensor>& x) { return layer_norm(x[0], x[1], x[2], 1e-5); }},
      {"layer_norm (4, 1500)",
       [&](Device) {
         return std::vector<Tensor>{input({4, 1500}, 31), input({1500}, 32), input({1500}, 33)};
       },
       [](const std::vector<Tensor>& x) { return layer_norm(x[0], x[1], x[2], 1e-5); }},
      // Row kernels with a group of lanes per row: 16 lanes over 37 columns, 4 over 10, rows
      // that do not fill the last block.
      {"softmax (333, 37)",
       [&](Device) {
         return std::vector<Tensor>{input({333, 37}, 34)};
       },
       [](const std::vector<Tensor>& x) { return softmax(x[0]); }},
      {"log_softmax (1000, 10)",
       [&](Device) {
         return std::vector<Tensor>{input({1000, 10}, 35)};
       },
       [](const std::vector<Tensor>& x) { return log_softmax(x[0]); }},
      {"cross_entropy (1000, 10)",
       [&](Device) {
         return std::vector<Tensor>{input({1000, 10}, 36)};
       },
       [](const std::vector<Tensor>& x) {
         std::vector<int64_t> labels(1000);
         for (int64_t i = 0; i < 1000; ++i) labels[i] = i * 7 % 10;
         return cross_entropy(x[0], from_data(labels, {1000}, x[0].device()), 0.1);
       }},
      {"depthwise 3x3 on 2x2 planes",
       [&](Device) {
         return std::vector<Tensor>{input({300, 6, 2, 2}, 7), input({6, 1, 3, 3}, 8),
                                    input({6}, 9)};
       },
       [](const std::vector<Tensor>& x) { return conv2d(x[0], x[1], x[2], 1, 1, 6); }},
      {"depthwise 5x5 over many positions (several splits)",
       [&](Device) {
         return std::vector<Tensor>{input({64, 3, 12, 12}, 13), input({3, 1, 5, 5}, 14),
                                    input({3}, 15)};
       },
       [](const std::vector<Tensor>& x) { return conv2d(x[0], x[1], x[2], 1, 2, 3); }},
      {"depthwise 7x7, stride 2 (several tap windows)",
       [&](Device) {
         return std::vector<Tensor>{input({5, 2, 9, 9}, 16), input({2, 1, 7, 7}, 17),
                                    input({2}, 18)};
       },
       [](const std::vector<Tensor>& x) { return conv2d(x[0], x[1], x[2], 2, 3, 2); }},
      {"depthwise 3x3, padding 0, on 40 x 37 planes (several tiles per plane)",
       [&](Device) {
         return std::vector<Tensor>{input({2, 3, 40, 37}, 19), input({3, 1, 3, 3}, 20),
                                    input({3}, 21)};
       },
       [](const std::vector<Tensor>& x) { return conv2d(x[0], x[1], x[2], 1, 0, 3); }},
      {"depthwise 5x5 on 1x1 planes (a block of planes, all taps but one outside)",
       [&](Device) {
         return std::vector<Tensor>{input({300, 5, 1, 1}, 22), input({5, 1, 5, 5}, 23),
                                    input({5}, 24)};
       },
       [](const std::vector<Tensor>& x) { return conv2d(x[0], x[1], x[2], 1, 2, 5); }},
      {"depthwise 3x3 on 5x5 planes",
       [&](Device) {
         return std::vector<Tensor>{input({13, 4, 5, 5}, 10), input({4, 1, 3, 3}, 11),
                                    input({4}, 12)};
       },
       [](const std::vector<Tensor>& x) { return conv2d(x[0], x[1], x[2], 1, 1, 4); }},
  };
  for (const GradcheckCase& c : cases) {
    CAPTURE(c.name);
    std::vector<Tensor> base = c.make_inputs(Device::CPU);
    std::vector<Tensor> cpu = run_case(c, base, Device::CPU, DType::Float64);
    std::vector<Tensor> gpu = run_case(c, base, Device::CUDA, DType::Float64);
    REQUIRE(cpu.size() == gpu.size());
    for (size_t i = 0; i < cpu.size(); ++i) {
      CAPTURE(i);
      CHECK(test::max_rel_diff(gpu[i], cpu[i]) < 1e-11);
    }
  }
}

TEST_CASE("TF32 matmul on CUDA: close to float32, and switched off exactly") {
  if (!test::cuda_available()) return;
  Tensor a = test::random_tensor({256, 256}, 1, DType::Float64),
         b = test::random_tensor({256, 256}, 2, DType::Float64);
  Tensor ref = matmul(a, b);
  Tensor fast =
      matmul(a.to(DType::Float32).cuda(), b.to(DType::Float32).cuda()).cpu().to(DType::Float64);
  // TF32 keeps 10 mantissa bits (relative rounding 2^-11 per operand); over 256 random terms
  // the error of a sum of magnitude ~1 stays below 1e-2.
  CHECK(test::max_rel_diff(fast, ref) < 1e-2);
  test::FullFloat32Guard full_float32;
  Tensor exact =
      matmul(a.to(DType::Float32).cuda(), b.to(DType::Float32).cuda()).cpu().to(DType::Float64);
  CHECK(test::max_rel_diff(exact, ref) < 1e-5);
}

TEST_CASE("mixing devices is an error naming both") {
  if (!test::cuda_available()) return;
  CHECK_THROWS_WITH_AS(add(zeros({2}), zeros({2}).cuda()),
                       "add: tensors on different devices: [2] on cpu and [2] on cuda",
                       std::invalid_argument);
}
