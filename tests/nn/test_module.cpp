// Module bookkeeping (names, state dicts, modes, devices) and the layers of nn/layers.h against
// their definitions.
#include "nn/layers.h"
#include "test_util.h"

using namespace nala;
using test::max_rel_diff;
using test::random_tensor;

namespace {

// Two levels of nesting: a parameter, a buffer and two children, one of them a Sequential.
class Toy : public Module {
 public:
  Toy() {
    scale = register_parameter("scale", ones({3}));
    count = register_buffer("count", zeros({1}));
    body = register_module("body", std::make_shared<Sequential>());
    body->push_back(std::make_shared<Linear>(3, 4));
    body->push_back(std::make_shared<GELU>());
    body->push_back(std::make_shared<Linear>(4, 2, false));
    norm = register_module("norm", std::make_shared<BatchNorm2d>(2));
  }
  Tensor forward(const Tensor& x) override { return norm->forward(body->forward(mul(x, scale))); }
  Tensor scale, count;
  std::shared_ptr<Sequential> body;
  std::shared_ptr<BatchNorm2d> norm;
};

std::vector<std::string> names_of(const std::vector<NamedTensor>& list) {
  std::vector<std::string> names;
  for (const auto& [name, t] : list) names.push_back(name);
  return names;
}

}  // namespace

TEST_CASE("parameters and buffers are named in registration order, depth first") {
  Toy toy;
  CHECK(names_of(toy.named_parameters()) == std::vector<std::string>{"scale", "body.0.weight",
                                                                     "body.0.bias", "body.2.weight",
                                                                     "norm.weight", "norm.bias"});
  CHECK(names_of(toy.named_buffers()) ==
        std::vector<std::string>{"count", "norm.running_mean", "norm.running_var"});
  CHECK(toy.num_parameters() == 3 + 12 + 4 + 8 + 2 + 2);
  CHECK(toy.state_dict().size() == 9);
  for (const Tensor& p : toy.parameters()) CHECK((p.requires_grad() && p.is_leaf()));
  // The state dict shares storage with the module.
  CHECK(toy.state_dict().at("body.0.weight").storage() ==
        toy.body->children()[0].second->named_parameters()[0].second.storage());
}

TEST_CASE("registering a name twice or with a dot is an error") {
  class Bad : public Module {
   public:
    explicit Bad(const std::string& second) {
      register_parameter("w", ones({1}));
      register_buffer(second, ones({1}));
    }
  };
  CHECK_THROWS_WITH_AS(Bad("w"), doctest::Contains("'w' is registered twice"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(Bad("a.b"), doctest::Contains("bad member name 'a.b'"),
                       std::invalid_argument);
}

TEST_CASE("load_state_dict copies values in place and names what does not fit") {
  manual_seed(1);
  Toy a;
  manual_seed(2);
  Toy b;
  Tensor weight_handle = b.body->children()[0].second->named_parameters()[0].second;
  b.load_state_dict(a.state_dict());
  for (const auto& [name, t] : a.state_dict()) CHECK(max_rel_diff(b.state_dict().at(name), t) == 0);
  CHECK(max_rel_diff(weight_handle, a.state_dict().at("body.0.weight")) ==
        0);  // same handle, new values
  CHECK(weight_handle.requires_grad());

  StateDict dict = a.state_dict();
  dict.erase("norm.bias");
  dict["extra.weight"] = ones({1});
  CHECK_THROWS_WITH_AS(b.load_state_dict(dict),
                       "load_state_dict: missing keys: norm.bias; unexpected keys: extra.weight",
                       std::invalid_argument);
  b.load_state_dict(dict, /*strict=*/false);  // fine without strictness

  dict = a.state_dict();
  dict["body.0.weight"] = ones({4, 5});
  CHECK_THROWS_WITH_AS(
      b.load_state_dict(dict),
      "load_state_dict: body.0.weight has shape [4, 5] in the state dict but [4, 3] in the model",
      std::invalid_argument);
  CHECK_THROWS_WITH_AS(b.load_state_dict(dict, false),
                       doctest::Contains("body.0.weight has shape [4, 5]"), std::invalid_argument);
}

TEST_CASE("train and eval reach every submodule; zero_grad drops every gradient") {
  Toy toy;
  CHECK(toy.body->is_training());
  toy.eval();
  CHECK_FALSE(toy.is_training());
  CHECK_FALSE((*toy.body)[0]->is_training());
  CHECK_FALSE(toy.norm->is_training());
  toy.train();
  CHECK(toy.norm->is_training());

  sum(toy.forward(random_tensor({4, 3}, 3))).backward();
  for (const Tensor& p : toy.parameters()) CHECK(p.grad().defined());
  toy.zero_grad();
  for (const Tensor& p : toy.parameters()) CHECK_FALSE(p.grad().defined());
}

TEST_CASE("to(dtype) and to(device) convert in place; handles and requires_grad survive") {
  Toy toy;
  Tensor before = toy.scale;
  toy.to(DType::Float64);
  CHECK(before.dtype() == DType::Float64);
  CHECK(toy.norm->running_var.dtype() == DType::Float64);
  CHECK((before.requires_grad() && before.is_leaf()));
  CHECK(toy.forward(random_tensor({4, 3}, 4, DType::Float64)).dtype() == DType::Float64);
  if (!test::cuda_available()) return;
  Tensor x = random_tensor({4, 3}, 5, DType::Float64);
  toy.eval();
  Tensor y_cpu = toy.forward(x);
  toy.to(Device::CUDA);
  CHECK(before.is_cuda());
  CHECK(before.requires_grad());
  CHECK(max_rel_diff(toy.forward(x.cuda()).cpu(), y_cpu) < 1e-12);
}

TEST_CASE("Linear and Conv2d compute their ops with PyTorch's default init bounds") {
  manual_seed(7);
  Linear lin(16, 8);
  CHECK(lin.weight.shape() == Shape{8, 16});
  for (double w : lin.weight.to_vector<double>()) CHECK(std::abs(w) <= 0.25);  // 1/sqrt(16)
  Tensor x = random_tensor({2, 5, 16}, 8);
  CHECK(max_rel_diff(lin.forward(x), linear(x, lin.weight, lin.bias)) == 0);
  CHECK_THROWS_WITH_AS(lin.forward(random_tensor({2, 15}, 9)),
                       "Linear(16 -> 8): input of shape [2, 15] must end in 16",
                       std::invalid_argument);

  Conv2d conv(4, 6, 3, 2, 1, 2);
  CHECK(conv.weight.shape() == Shape{6, 2, 3, 3});
  for (double w : conv.weight.to_vector<double>()) CHECK(std::abs(w) <= 1.0 / std::sqrt(18.0));
  Tensor img = random_tensor({2, 4, 9, 7}, 10);
  Tensor y = conv.forward(img);
  CHECK(y.shape() == Shape{2, 6, conv.output_size(9), conv.output_size(7)});
  CHECK(y.shape() == Shape{2, 6, 5, 4});
  CHECK(max_rel_diff(y, conv2d(img, conv.weight, conv.bias, 2, 1, 2)) == 0);
  CHECK(conv.macs(5, 4) == 6 * 5 * 4 * 2 * 9);
  CHECK_THROWS_WITH_AS(conv.forward(random_tensor({2, 3, 9, 7}, 11)),
                       doctest::Contains("input of shape [2, 3, 9, 7] must be (B, 4, H, W)"),
                       std::invalid_argument);
}

TEST_CASE("ChannelLayerNorm normalises each pixel over its channels") {
  ChannelLayerNorm norm(3, 1e-6);
  norm.weight.copy_(from_vector({1, 2, 3}, {3}));
  norm.bias.copy_(from_vector({0.5, 0, -1}, {3}));
  Tensor x = random_tensor({2, 3, 4, 5}, 12, DType::Float64, Device::CPU, -2, 3);
  norm.to(DType::Float64);
  Tensor y = norm.forward(x);
  CHECK(y.shape() == x.shape());
  std::vector<double> xv = x.to_vector<double>(), yv = y.contiguous().to_vector<double>();
  double w[3] = {1, 2, 3}, b[3] = {0.5, 0, -1}, worst = 0;
  for (int n = 0; n < 2; ++n)
    for (int p = 0; p < 20; ++p) {
      double m = 0, v = 0;
      for (int c = 0; c < 3; ++c) m += xv[(n * 3 + c) * 20 + p] / 3;
      for (int c = 0; c < 3; ++c) v += std::pow(xv[(n * 3 + c) * 20 + p] - m, 2) / 3;
      for (int c = 0; c < 3; ++c) {
        double ref = (xv[(n * 3 + c) * 20 + p] - m) / std::sqrt(v + 1e-6) * w[c] + b[c];
        worst = std::max(worst, std::abs(yv[(n * 3 + c) * 20 + p] - ref));
      }
    }
  CHECK(worst < 1e-12);
}

TEST_CASE("BatchNorm2d updates its running statistics in training and uses them in eval") {
  BatchNorm2d bn(2);
  bn.to(DType::Float64);
  Tensor x = random_tensor({3, 2, 2, 2}, 13, DType::Float64, Device::CPU, 0, 4);
  Tensor y = bn.forward(x);
  std::vector<double> xv = x.to_vector<double>();
  for (int c = 0; c < 2; ++c) {
    double m = 0, v = 0;
    for (int n = 0; n < 3; ++n)
      for (int p = 0; p < 4; ++p) m += xv[(n * 2 + c) * 4 + p] / 12;
    for (int n = 0; n < 3; ++n)
      for (int p = 0; p < 4; ++p) v += std::pow(xv[(n * 2 + c) * 4 + p] - m, 2);
    CHECK(bn.running_mean.to_vector<double>()[c] == doctest::Approx(0.1 * m).epsilon(1e-12));
    CHECK(bn.running_var.to_vector<double>()[c] ==
          doctest::Approx(0.9 + 0.1 * v / 11).epsilon(1e-12));
    CHECK(y.to_vector<double>()[c * 4] ==
          doctest::Approx((xv[c * 4] - m) / std::sqrt(v / 12 + 1e-5)).epsilon(1e-9));
  }
  bn.eval();
  Tensor rm = bn.running_mean.view({1, 2, 1, 1}), rv = bn.running_var.view({1, 2, 1, 1});
  CHECK(max_rel_diff(bn.forward(x), div(sub(x, rm), sqrt(add(rv, 1e-5)))) < 1e-12);
  // (rows, C) input: BatchNorm1d's job, statistics over the rows.
  bn.train();
  CHECK(bn.forward(random_tensor({5, 2}, 14, DType::Float64)).shape() == Shape{5, 2});
}

TEST_CASE("DropPath keeps or drops whole samples, scaled by 1 / (1 - p); identity in eval") {
  DropPath drop(0.5);
  Tensor x = ones({64, 2, 3});
  manual_seed(15);
  std::vector<float> y = drop.forward(x).to_vector<float>();
  int kept = 0;
  for (int b = 0; b < 64; ++b) {
    for (int i = 1; i < 6; ++i) CHECK(y[b * 6 + i] == y[b * 6]);  // one decision per sample
    CHECK((y[b * 6] == 0.0f || y[b * 6] == 2.0f));
    kept += y[b * 6] == 2.0f;
  }
  CHECK(kept > 16);
  CHECK(kept < 48);
  drop.eval();
  CHECK(drop.forward(x).storage() == x.storage());
  CHECK_THROWS_AS(DropPath(1.0), std::invalid_argument);
}

TEST_CASE("Sequential chains its modules; a module without forward says so") {
  Sequential seq(
      {std::make_shared<Linear>(3, 4), std::make_shared<SiLU>(), std::make_shared<Dropout>(0.0)});
  Tensor x = random_tensor({2, 3}, 16);
  auto& lin = dynamic_cast<Linear&>(*seq[0]);
  CHECK(max_rel_diff(seq.forward(x), silu(linear(x, lin.weight, lin.bias))) == 0);
  Module bare;
  CHECK_THROWS_WITH_AS(bare.forward(x),
                       "Module: this module has no forward(Tensor) (called with input [2, 3])",
                       std::logic_error);
}
