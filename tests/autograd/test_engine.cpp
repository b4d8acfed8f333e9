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
