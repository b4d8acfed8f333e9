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
  // not dividing it), and the streamed depthwise kernels with bands of rows per plane or several
  // planes per group (the last group's planes running past the batch), checked in float64 against
  // the CPU.
  // A case of float64 inputs of these shapes, drawn with seeds seed, seed + 1, ...
  auto make_case = [](std::string name, std::vector<Shape> shapes, uint64_t seed, TensorFn f) {
    auto inputs = [shapes, seed](Device) {
      std::vector<Tensor> x;
      for (size_t i = 0; i < shapes.size(); ++i)
        x.push_back(test::random_tensor(shapes[i], seed + i, DType::Float64).requires_grad_());
      return x;
    };
    return GradcheckCase{std::move(name), inputs, std::move(f)};
  };
  auto batch_norm_case = [&](const Shape& x, uint64_t seed) {
    return make_case("batch_norm " + shape_str(x), {x, {x[1]}, {x[1]}}, seed,
                     [](const std::vector<Tensor>& t) {
                       return batch_norm(t[0], t[1], t[2], Tensor(), Tensor(), true);
                     });
  };
  auto layer_norm_case = [&](int64_t rows, int64_t cols, uint64_t seed) {
    return make_case(
        "layer_norm " + shape_str({rows, cols}), {{rows, cols}, {cols}, {cols}}, seed,
        [](const std::vector<Tensor>& t) { return layer_norm(t[0], t[1], t[2], 1e-5); });
  };
  // Labels cycling through the classes, label smoothing 0.1.
  auto cross_entropy_case = [&](int64_t rows, int64_t classes, uint64_t seed) {
    return make_case("cross_entropy " + shape_str({rows, classes}), {{rows, classes}}, seed,
                     [rows, classes](const std::vector<Tensor>& t) {
                       std::vector<int64_t> labels(rows);
                       for (int64_t i = 0; i < rows; ++i) labels[i] = i * 7 % classes;
                       return cross_entropy(t[0], from_data(labels, {rows}, t[0].device()), 0.1);
                     });
  };
  // Depthwise k x k convolution of x (N, C, H, W) with bias.
  auto depthwise_case = [&](const std::string& why, const Shape& x, int64_t k, int64_t stride,
                            int64_t pad, uint64_t seed) {
    const int64_t c = x[1];
    return make_case("depthwise " + std::to_string(k) + "x" + std::to_string(k) + " on " +
                         shape_str(x) + ", stride " + std::to_string(stride) + ", padding " +
                         std::to_string(pad) + " (" + why + ")",
                     {x, {c, 1, k, k}, {c}}, seed, [=](const std::vector<Tensor>& t) {
                       return conv2d(t[0], t[1], t[2], stride, pad, c);
                     });
  };
  const std::vector<GradcheckCase> cases = {
      batch_norm_case({37, 3, 24, 24}, 1),
      batch_norm_case({2100, 3, 2, 2}, 4),
      // Layer norm: dgamma / dbeta fused into the dx kernel (rows of at most 256; 20 columns
      // take teams of 8 lanes, 32 per block, which loop over several rows each once rows pass
      // 32 * 1024; 40001 rows leave three of the last warp's four teams past the end, which
      // must not add the last row to dgamma / dbeta again), or column reductions after it
      // (wider rows; a block per row beyond 1024).
      layer_norm_case(40001, 20, 25),
      layer_norm_case(40001, 12, 32),  // teams of 4 lanes, 8 rows a warp
      layer_norm_case(37, 300, 28),
      layer_norm_case(4, 1500, 31),
      // Row kernels with a group of lanes per row: 16 lanes over 37 columns, 4 over 10, rows
      // that do not fill the last block, nor the last warp (2 and 8 rows a warp).
      make_case("softmax (333, 37)", {{333, 37}}, 34,
                [](const std::vector<Tensor>& t) { return softmax(t[0]); }),
      make_case("log_softmax (1003, 10)", {{1003, 10}}, 35,
                [](const std::vector<Tensor>& t) { return log_softmax(t[0]); }),
      // Cross-entropy's mean in one launch (the last block sums the blocks' partials): 1094
      // blocks of 4 lanes per row, 188 blocks of 16 lanes per row, 7 blocks of a block per row.
      cross_entropy_case(70001, 10, 36),
      cross_entropy_case(3001, 40, 37),
      cross_entropy_case(7, 1500, 38),
      depthwise_case("planes smaller than a block", {300, 6, 2, 2}, 3, 1, 1, 7),
      depthwise_case("several splits of positions", {64, 3, 12, 12}, 5, 1, 2, 13),
      depthwise_case("several tap windows; the per-output kernels", {5, 2, 9, 9}, 7, 2, 3, 16),
      depthwise_case("37-wide rows copied an element at a time, no padding", {2, 3, 40, 37}, 3, 1,
                     0, 19),
      depthwise_case("a block of planes, all taps but one outside", {300, 5, 1, 1}, 5, 1, 2, 22),
      depthwise_case("planes not dividing a block", {13, 4, 5, 5}, 3, 1, 1, 10),
      // Planes larger than a staging buffer (22 KiB) go through it in bands of rows, whole
      // groups of a thread's 4 rows, the last band shorter and ending inside a group: 32 rows in
      // the first case's correlations and 16 in its weight gradient (which stages dy too), 40 and
      // 20 in the second's. 64-wide rows move in 16-byte copies, 37-wide ones an element at a
      // time.
      depthwise_case("bands of rows, 16-byte copies", {2, 3, 71, 64}, 5, 1, 2, 40),
      depthwise_case("bands of rows, a 7 x 7 filter, single-element copies", {2, 2, 83, 37}, 7, 1,
                     3, 43),
      // Many small planes: blocks take several groups each, so their two buffers are reused (on
      // an H100, 528 blocks at once: the correlation's 1200 groups of 32 planes go 2-3 to a
      // block, the weight gradient's 8 groups of 16 images a channel all to one block).
      depthwise_case("a block's groups past its ring of buffers", {128, 300, 6, 6}, 3, 1, 1, 46),
      // Both: 256 planes of 135 rows in bands (the correlations' 5 of 32 rows), 2-3 groups a
      // block on an H100, so a buffer holds an inner band's rows and then an edge band's.
      depthwise_case("bands of rows past the ring of buffers", {64, 4, 135, 64}, 5, 1, 2, 49),
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

TEST_CASE("CUDA copies that transpose, or move rows in 16-byte pieces, match the CPU's") {
  if (!test::cuda_available()) return;
  // Tiles through shared memory: images between (N, C, H, W) and (N, H, W, C), a matrix
  // transposed, dimensions that are not multiples of the 32 x 32 tiles. Element by element: a
  // dimension too short for tiles (the fourth case's 2), rows of 6 (not whole 16-byte pieces of
  // float32). Pieces: rows of 8 (heads split off a row of tokens), and of 6 in float64 and int64.
  // An int64 copy and copies converting between float32 and float64 (never in pieces).
  struct Case {
    Shape shape;
    std::vector<int64_t> order;
  };
  for (const Case& c : {Case{{3, 37, 5, 7}, {0, 2, 3, 1}}, Case{{3, 5, 7, 37}, {0, 3, 1, 2}},
                        Case{{70, 33}, {1, 0}}, Case{{2, 40, 3, 50}, {3, 1, 2, 0}},
                        Case{{2, 7, 3, 8}, {0, 2, 1, 3}}, Case{{2, 7, 3, 6}, {0, 2, 1, 3}}}) {
    CAPTURE(shape_str(c.shape));
    for (DType dtype : {DType::Float32, DType::Float64}) {
      Tensor x = test::random_tensor(c.shape, 61, dtype, Device::CUDA, -1000, 1000);
      const std::vector<double> expected =
          x.cpu().permute(c.order).contiguous().to_vector<double>();
      CHECK(x.permute(c.order).contiguous().to_vector<double>() == expected);
      // (to() of the tensor's own dtype would return the view itself: convert to the other one.)
      const DType other = dtype == DType::Float32 ? DType::Float64 : DType::Float32;
      CHECK(x.permute(c.order).to(other).to_vector<double>() ==
            x.cpu().permute(c.order).contiguous().to(other).to_vector<double>());
      CHECK(x.to(DType::Int64).permute(c.order).contiguous().to_vector<double>() ==
            x.cpu().to(DType::Int64).permute(c.order).contiguous().to_vector<double>());
    }
  }
}

TEST_CASE("CUDA element-wise ops in 16-byte pieces, and an element at a time, match the CPU's") {
  if (!test::cuda_available()) return;
  for (DType dtype : {DType::Float32, DType::Float64}) {
    CAPTURE(dtype_name(dtype));
    const auto on_gpu = [&](const Shape& shape, uint64_t seed) {
      return test::random_tensor(shape, seed, dtype, Device::CUDA, 0.5, 2);
    };
    // A contiguous view one element into its storage: off the 16-byte boundary, so one element
    // at a time although its 192 elements are whole pieces.
    Tensor shifted = on_gpu({193}, 70).slice(0, 1, 193).view({12, 16});
    struct Pair {
      const char* what;
      Tensor a, b;
    };
    const Pair pairs[] = {
        {"same shapes", on_gpu({6, 16}, 71), on_gpu({6, 16}, 72)},
        {"b along all but the last dim (stride 0 there)", on_gpu({2, 3, 16}, 73),
         on_gpu({3, 1}, 74)},
        {"b along the last dim only", on_gpu({5, 16}, 75), on_gpu({16}, 76)},
        {"rows of 7: an element at a time", on_gpu({5, 7}, 77), on_gpu({7}, 78)},
        {"a off the 16-byte boundary", shifted, on_gpu({12, 16}, 79)},
        // Operands in the other image layout (channels last against channels first): one
        // crosses y's rows, the other reads along them or both cross; an element at a time.
        {"b an image in the other layout", on_gpu({2, 5, 6, 40}, 80),
         on_gpu({2, 40, 5, 6}, 81).permute({0, 2, 3, 1})},
        {"a in the other layout, b one value per channel",
         on_gpu({2, 5, 4, 37}, 82).permute({0, 3, 1, 2}), on_gpu({37, 1, 1}, 83)},
        {"both in the other layout", on_gpu({2, 5, 4, 37}, 84).permute({0, 3, 1, 2}),
         on_gpu({2, 5, 4, 37}, 85).permute({0, 3, 1, 2})},
    };
    for (const Pair& p : pairs) {
      CAPTURE(p.what);
      const Tensor a = p.a.cpu(), b = p.b.cpu();
      CHECK(add(p.a, p.b).to_vector<double>() == add(a, b).to_vector<double>());
      CHECK(sub(p.a, p.b).to_vector<double>() == sub(a, b).to_vector<double>());
      CHECK(mul(p.a, p.b).to_vector<double>() == mul(a, b).to_vector<double>());
      CHECK(div(p.a, p.b).to_vector<double>() == div(a, b).to_vector<double>());
      CHECK(mul(p.a, 2.5).to_vector<double>() == mul(a, 2.5).to_vector<double>());
      // The device's erf and exp against the host's: a few units in the last place apart.
      CHECK(test::max_rel_diff(gelu(p.a), gelu(a)) < (dtype == DType::Float32 ? 1e-6 : 1e-14));
      Tensor x = p.a.detach().requires_grad_(), x_cpu = a.detach().requires_grad_();
      sum(mul(exp(x), p.b)).backward();
      sum(mul(exp(x_cpu), b)).backward();
      CHECK(test::max_rel_diff(x.grad(), x_cpu.grad()) < (dtype == DType::Float32 ? 1e-6 : 1e-14));
    }
    for (int64_t n : {16, 13})
      CHECK(full({n}, 3.0, TensorOptions{dtype, Device::CUDA}).to_vector<double>() ==
            std::vector<double>(n, 3.0));
  }
}

TEST_CASE("CUDA layer norm with rows in 16-byte pieces, and an element at a time, in float32") {
  if (!test::cuda_available()) return;
  // Rows of 20, 32 and 12 columns are whole pieces of float32 (a lane loads 4 columns at once;
  // 20 leaves lanes of the team without columns); 7 goes an element at a time, and so does an
  // input off the 16-byte boundary. Forward, dx, dgamma and dbeta against the CPU.
  struct Case {
    int64_t rows, cols;
    bool shifted;
  };
  for (const Case& c : {Case{40001, 20, false}, Case{1000, 32, false}, Case{999, 12, false},
                        Case{77, 7, false}, Case{1000, 32, true}}) {
    CAPTURE(c.rows);
    CAPTURE(c.cols);
    CAPTURE(c.shifted);
    const int64_t n = c.rows * c.cols;
    Tensor storage = test::random_tensor({n + 1}, 90, DType::Float32);
    Tensor gamma = test::random_tensor({c.cols}, 91), beta = test::random_tensor({c.cols}, 92);
    Tensor g = test::random_tensor({c.rows, c.cols}, 93);
    std::vector<Tensor> results[2];
    for (Device device : {Device::CPU, Device::CUDA}) {
      Tensor x = storage.to(device).slice(0, c.shifted ? 1 : 0, n + (c.shifted ? 1 : 0));
      x = x.view({c.rows, c.cols}).detach().requires_grad_();
      Tensor w = gamma.to(device).detach().requires_grad_(),
             b = beta.to(device).detach().requires_grad_();
      Tensor y = layer_norm(x, w, b, 1e-5);
      sum(mul(y, g.to(device))).backward();
      results[device == Device::CUDA] = {y.cpu(), x.grad().cpu(), w.grad().cpu(), b.grad().cpu()};
    }
    for (size_t i = 0; i < results[0].size(); ++i) {
      CAPTURE(i);
      // float32 sums over at most 40001 rows (dgamma, dbeta), in different orders on each side.
      CHECK(test::max_rel_diff(results[1][i], results[0][i]) < 1e-4);
    }
  }
}

TEST_CASE("CUDA depthwise backward: dx and dw in one pass, or either alone, match the CPU") {
  if (!test::cuda_available()) return;
  // With "same" padding and both gradients wanted, one streamed pass computes dx and dw (dy read
  // once); with one of them wanted, or padding that changes the plane's size, the correlation
  // computes dx and the weight gradient's pass dw alone. run_case returns the output and the
  // gradient of each input that requires grad; float64, each against the CPU.
  struct Case {
    int64_t k, pad;
    bool want_dx, want_dw;
  };
  for (const Case& c : {Case{3, 1, true, true}, Case{3, 1, true, false}, Case{3, 1, false, true},
                        Case{5, 2, true, true}, Case{5, 1, true, true}, Case{7, 3, false, true}}) {
    CAPTURE(c.k);
    CAPTURE(c.pad);
    CAPTURE(c.want_dx);
    CAPTURE(c.want_dw);
    const GradcheckCase conv{"depthwise", nullptr, [c](const std::vector<Tensor>& t) {
                               return conv2d(t[0], t[1], Tensor(), 1, c.pad, 5);
                             }};
    const std::vector<Tensor> base = {
        test::random_tensor({6, 5, 9, 11}, 95, DType::Float64).requires_grad_(c.want_dx),
        test::random_tensor({5, 1, c.k, c.k}, 97, DType::Float64).requires_grad_(c.want_dw)};
    const std::vector<Tensor> cpu = run_case(conv, base, Device::CPU, DType::Float64);
    const std::vector<Tensor> gpu = run_case(conv, base, Device::CUDA, DType::Float64);
    REQUIRE(cpu.size() == 1 + c.want_dx + c.want_dw);
    REQUIRE(gpu.size() == cpu.size());
    for (size_t i = 0; i < cpu.size(); ++i) {
      CAPTURE(i);
      CHECK(test::max_rel_diff(gpu[i], cpu[i]) < 1e-12);
    }
  }
}

TEST_CASE("CUDA cross-entropy: the mean of each call, over many blocks, and NaN for a bad label") {
  // The forward's last block sums the blocks' partials and resets the count of finished blocks.
  // Calls alternate between two inputs: a call that found the count left over would not write
  // its loss, and would show the other input's (the caching allocator hands back its memory).
  if (!test::cuda_available()) return;
  const int64_t rows = 70001;  // 1094 blocks
  std::vector<int64_t> labels(rows);
  for (int64_t i = 0; i < rows; ++i) labels[i] = i % 10;
  Tensor y = from_data(labels, {rows}, Device::CUDA);
  Tensor logits[2] = {test::random_tensor({rows, 10}, 50, DType::Float32, Device::CUDA),
                      test::random_tensor({rows, 10}, 51, DType::Float32, Device::CUDA, -3, 3)};
  double expected[2];
  for (int i = 0; i < 2; ++i) expected[i] = cross_entropy(logits[i].cpu(), y.cpu()).item();
  REQUIRE(std::abs(expected[0] - expected[1]) > 1e-2);
  for (int call = 0; call < 4; ++call) {
    CAPTURE(call);
    // float32 tree sums of 70001 positive terms against the CPU's double sum: about 1e-6 apart.
    CHECK(cross_entropy(logits[call % 2], y).item() ==
          doctest::Approx(expected[call % 2]).epsilon(1e-5));
  }
  labels[40000] = 10;  // outside [0, 10): that row's loss, and so the mean, is NaN
  Tensor bad = from_data(labels, {rows}, Device::CUDA);
  Tensor x = logits[0].detach().requires_grad_();
  Tensor loss = cross_entropy(x, bad);
  CHECK(std::isnan(loss.item()));
  loss.backward();
  std::vector<float> grad = x.grad().cpu().to_vector<float>();
  CHECK(std::isnan(grad[40000 * 10]));
  CHECK(std::isfinite(grad[39999 * 10]));
  CHECK(cross_entropy(logits[0], y).item() == doctest::Approx(expected[0]).epsilon(1e-5));
}

TEST_CASE("CUDA kernels queued back to back each read what the one before wrote") {
  // A kernel may be scheduled while the one before it still runs (launch_kernel); its blocks
  // wait for that kernel's writes before reading anything. Here a chain of 500 short dependent
  // kernels (elementwise, row kernels, a split reduction) adds known amounts to the tensor's
  // sum at each step: 1 to each of 48 columns, 48 softmax rows that sum to 1, layer-norm rows
  // with weight 1 and bias 1 (which sum to 48), and y / mean(y), which sums to the element
  // count. A kernel that read its input before the kernel before had written it would lose that
  // step's amount, or (softmax, layer norm: their rows sum to the same from any input) give
  // values away from the CPU's, which runs the same chain.
  if (!test::cuda_available()) return;
#ifdef NALA_WITH_CUDA
  MESSAGE(doctest::String(kernels::cuda::kernels_may_overlap() ? "kernels may overlap: yes"
                                                               : "kernels may overlap: no"));
#endif
  const int64_t rows = 64, cols = 48, steps = 50;
  const auto chain = [&](Device device) {
    Tensor x = test::random_tensor({rows, cols}, 60, DType::Float64, device);
    Tensor one = ones({cols}, {DType::Float64, device});
    Tensor y = x;
    for (int step = 0; step < steps; ++step) {
      y = add(y, 1.0);
      y = add(y, mul(softmax(y), double(cols)));
      y = add(y, layer_norm(y, one, one));
      y = add(y, div(y, mean(y)));
    }
    return std::pair{sum(x).item(), y.cpu()};
  };
  const auto [x_sum, y] = chain(Device::CUDA);
  const double added = steps * 4.0 * rows * cols;
  // float64: each step's sums are exact to about 1e-16 of their size, the total here 6e5.
  CHECK(sum(y).item() == doctest::Approx(x_sum + added).epsilon(1e-12));
  // The backends' summation orders differ by about 1e-16 relative per operation; over the chain
  // such differences add up to about 1e-14 of max |y| (tools/overlap_test_sensitivity.py, which
  // models the chain in double): 1e-12 leaves a margin of 100, where a stale input moved y by
  // about 1e-2 of max |y| (docs/benchmarks.md).
  CHECK(test::scaled_max_diff(y, chain(Device::CPU).second) < 1e-12);
}

TEST_CASE("CUDA linear attention: head dims past the kernels' 64 are a clear error") {
  if (!test::cuda_available()) return;
  Tensor wide = zeros({1, 1, 4, 72}, TensorOptions{DType::Float32, Device::CUDA});
  for (AttentionKind kind : {AttentionKind::Nala, AttentionKind::Relu})
    CHECK_THROWS_WITH_AS(attention(kind, wide, wide, wide, 2, 2),
                         doctest::Contains("head dim 72 is larger than the CUDA kernels' 64"),
                         std::invalid_argument);
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
