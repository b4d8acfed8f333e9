// The autograd engine: accumulation, explicit gradients, freed graphs, grad mode, detach.
#include "test_util.h"

using namespace nala;

TEST_CASE("a tensor used twice accumulates both gradients") {
  Tensor x = from_vector({1, 2, 3}, {3}, TensorOptions{DType::Float64, Device::CPU, true});
  Tensor y = sum(add(mul(x, x), x));  // dy/dx = 2x + 1
  y.backward();
  CHECK(x.grad().to_vector<double>() == std::vector<double>{3, 5, 7});
  sum(x).backward();  // a second graph accumulates into .grad
  CHECK(x.grad().to_vector<double>() == std::vector<double>{4, 6, 8});
  x.zero_grad();
  CHECK_FALSE(x.grad().defined());
}

TEST_CASE("backward with an explicit output gradient") {
  Tensor x = from_vector({1, 2}, {2}, TensorOptions{DType::Float64, Device::CPU, true});
  Tensor y = mul(x, 3.0);
  y.backward(from_vector({10, 100}, {2}, TensorOptions{DType::Float64}));
  CHECK(x.grad().to_vector<double>() == std::vector<double>{30, 300});
  Tensor z = mul(x, 3.0);
  CHECK_THROWS_WITH_AS(z.backward(), doctest::Contains("non-scalar output of shape [2]"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(z.backward(ones({3}, TensorOptions{DType::Float64})),
                       "backward: gradient of shape [3] for an output of shape [2]",
                       std::invalid_argument);
}

TEST_CASE("a freed graph cannot be run twice unless retained") {
  Tensor x = from_vector({2}, {1}, TensorOptions{DType::Float64, Device::CPU, true});
  Tensor y = sum(exp(x));
  y.backward({}, /*retain_graph=*/true);
  y.backward();
  CHECK(x.grad().item() == doctest::Approx(2 * std::exp(2.0)));
  CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("already freed"), std::runtime_error);
}

TEST_CASE("no-grad mode and detach record nothing") {
  Tensor x = ones({2}, TensorOptions{DType::Float32, Device::CPU, true});
  {
    NoGradGuard guard;
    CHECK_FALSE(mul(x, 2.0).requires_grad());
  }
  CHECK(mul(x, 2.0).requires_grad());
  CHECK_FALSE(mul(x.detach(), 2.0).requires_grad());
  CHECK_THROWS_WITH_AS(sum(x.detach()).backward(), doctest::Contains("does not require grad"),
                       std::invalid_argument);
  CHECK_THROWS_AS(arange(3, TensorOptions{DType::Int64}).requires_grad_(), std::invalid_argument);
}

TEST_CASE("gradients flow through views to the base tensor") {
  Tensor x = arange(6, TensorOptions{DType::Float64}).requires_grad_();
  Tensor y = x.reshape({2, 3}).t().slice(0, 1, 3);  // rows 1..2 of x^T = columns 1, 2
  sum(mul(y, y)).backward();                        // d/dx = 2x on those columns, 0 elsewhere
  CHECK(x.grad().to_vector<double>() == std::vector<double>{0, 2, 4, 0, 8, 10});
}

TEST_CASE("an op of several outputs records one node and gets a gradient per output") {
  Tensor x = arange(6, TensorOptions{DType::Float64}).requires_grad_();
  std::vector<Tensor> p = split(x, {2, 4}, 0);
  REQUIRE(p[0].grad_fn());
  CHECK(p[0].grad_fn() == p[1].grad_fn());
  CHECK(p[0].grad_fn()->name == "split");
  CHECK(p[1].grad_fn()->num_outputs == 2);
  // Only the second part reaches the loss: the first part's place in dx gets zeros.
  sum(mul(p[1], 3.0)).backward({}, /*retain_graph=*/true);
  CHECK(x.grad().to_vector<double>() == std::vector<double>{0, 0, 3, 3, 3, 3});
  // backward() from a part itself: the root is output 1 of the node.
  x.zero_grad();
  p[1].backward(from_vector({1, 2, 3, 4}, {4}, TensorOptions{DType::Float64}));
  CHECK(x.grad().to_vector<double>() == std::vector<double>{0, 0, 1, 2, 3, 4});
}

TEST_CASE("ops compute only the gradients their inputs need") {
  // Each op's backward runs twice on the same values and output gradient: once with every input
  // requiring grad (the reference), once with input `frozen` not requiring it. For the frozen
  // input the backward returns no tensor (no work done); the others are exactly the reference's.
  using Op = std::function<Tensor(const std::vector<Tensor>&)>;
  struct Case {
    const char* name;
    std::vector<Shape> shapes;
    Op f;
  };
  const std::vector<Case> cases = {
      {"mul", {{3, 4}, {4}}, [](const std::vector<Tensor>& x) { return mul(x[0], x[1]); }},
      {"div", {{3, 4}, {4}}, [](const std::vector<Tensor>& x) { return div(x[0], x[1]); }},
      {"matmul", {{3, 4}, {4, 2}}, [](const std::vector<Tensor>& x) { return matmul(x[0], x[1]); }},
      {"linear",
       {{3, 4}, {2, 4}, {2}},
       [](const std::vector<Tensor>& x) { return linear(x[0], x[1], x[2]); }},
      {"conv2d",
       {{2, 3, 5, 5}, {4, 3, 3, 3}, {4}},
       [](const std::vector<Tensor>& x) { return conv2d(x[0], x[1], x[2], 1, 1); }},
      {"conv2d (depthwise)",
       {{2, 3, 5, 5}, {3, 1, 3, 3}, {3}},
       [](const std::vector<Tensor>& x) { return conv2d(x[0], x[1], x[2], 1, 1, 3); }},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    auto input_grads = [&](int frozen) {
      std::vector<Tensor> inputs;
      for (size_t i = 0; i < c.shapes.size(); ++i) {
        // Values away from 0, so that div's denominator is safe.
        Tensor t = add(test::random_tensor(c.shapes[i], 10 + i, DType::Float64), 3.0);
        if (static_cast<int>(i) != frozen) t.requires_grad_();
        inputs.push_back(t);
      }
      Tensor y = c.f(inputs);
      REQUIRE(y.grad_fn());
      return y.grad_fn()->backward({test::random_tensor(y.shape(), 99, DType::Float64)});
    };
    const std::vector<Tensor> reference = input_grads(-1);
    for (size_t frozen = 0; frozen < c.shapes.size(); ++frozen) {
      CAPTURE(frozen);
      const std::vector<Tensor> g = input_grads(static_cast<int>(frozen));
      REQUIRE(g.size() == reference.size());
      for (size_t i = 0; i < g.size(); ++i) {
        CAPTURE(i);
        if (i == frozen) {
          CHECK_FALSE(g[i].defined());
        } else {
          REQUIRE(g[i].defined());
          CHECK(test::max_rel_diff(g[i], reference[i]) == 0.0);
        }
      }
    }
  }
}
