// Optimizers against updates computed here from their formulas, the decay split, clipping,
// schedules, the weight EMA and optimizer state round trips.
#include <array>

#include "nn/models/nalaformer.h"
#include "nn/optim.h"
#include "test_util.h"

using namespace nala;

namespace {

using Vec = std::array<double, 3>;

// A 3-element float64 parameter and the gradients of three steps.
const Vec kStart = {1.0, -2.0, 0.5};
const std::array<Vec, 3> kGrads = {Vec{0.1, -0.2, 0.3}, Vec{0.4, 0.0, -0.1}, Vec{-0.3, 0.2, 0.05}};

Tensor param_from(const Vec& v) {
  return from_vector({v[0], v[1], v[2]}, {3}, TensorOptions{DType::Float64, Device::CPU, true});
}

// Runs three steps of `optimizer` on `p` with kGrads, checking p against `expected` after each.
void check_three_steps(Optimizer& optimizer, const Tensor& p, const std::array<Vec, 3>& expected) {
  for (int t = 0; t < 3; ++t) {
    p.set_grad(from_vector({kGrads[t][0], kGrads[t][1], kGrads[t][2]}, {3},
                           TensorOptions{DType::Float64}));
    optimizer.step();
    std::vector<double> got = p.to_vector<double>();
    for (int i = 0; i < 3; ++i) CHECK(got[i] == doctest::Approx(expected[t][i]).epsilon(1e-14));
  }
  CHECK(optimizer.steps() == 3);
}

}  // namespace

TEST_CASE("AdamW matches its formulas over three steps, with decoupled weight decay") {
  const double lr = 0.1, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, wd = 0.01;
  std::array<Vec, 3> expected;
  Vec p = kStart, m{}, v{};
  for (int t = 1; t <= 3; ++t) {
    for (int i = 0; i < 3; ++i) {
      double g = kGrads[t - 1][i];
      p[i] *= 1 - lr * wd;
      m[i] = beta1 * m[i] + (1 - beta1) * g;
      v[i] = beta2 * v[i] + (1 - beta2) * g * g;
      double m_hat = m[i] / (1 - std::pow(beta1, t)), v_hat = v[i] / (1 - std::pow(beta2, t));
      p[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
    }
    expected[t - 1] = p;
  }
  Tensor param = param_from(kStart);
  AdamW adamw({ParamGroup{{{"p", param}}, wd}}, AdamWOptions{lr, beta1, beta2, eps});
  check_three_steps(adamw, param, expected);
}

TEST_CASE("SGD with Nesterov momentum and weight decay matches its formulas over three steps") {
  const double lr = 0.1, momentum = 0.9, wd = 0.01;
  std::array<Vec, 3> expected;
  Vec p = kStart, buf{};
  for (int t = 1; t <= 3; ++t) {
    for (int i = 0; i < 3; ++i) {
      double g = kGrads[t - 1][i] + wd * p[i];
      buf[i] = t == 1 ? g : momentum * buf[i] + g;
      p[i] -= lr * (g + momentum * buf[i]);
    }
    expected[t - 1] = p;
  }
  Tensor param = param_from(kStart);
  Sgd sgd({ParamGroup{{{"p", param}}, wd}}, SgdOptions{lr, momentum, 0.0, true});
  check_three_steps(sgd, param, expected);
}

TEST_CASE("SGD with plain momentum and dampening matches its formulas over three steps") {
  const double lr = 0.05, momentum = 0.8, dampening = 0.1;
  std::array<Vec, 3> expected;
  Vec p = kStart, buf{};
  for (int t = 1; t <= 3; ++t) {
    for (int i = 0; i < 3; ++i) {
      double g = kGrads[t - 1][i];
      buf[i] = t == 1 ? g : momentum * buf[i] + (1 - dampening) * g;
      p[i] -= lr * buf[i];
    }
    expected[t - 1] = p;
  }
  Tensor param = param_from(kStart);
  Sgd sgd({ParamGroup{{{"p", param}}, 0.0}}, SgdOptions{lr, momentum, dampening, false});
  check_three_steps(sgd, param, expected);
  CHECK_THROWS_WITH_AS(Sgd({ParamGroup{{{"p", param}}, 0.0}}, SgdOptions{lr, 0.0, 0.0, true}),
                       doctest::Contains("Nesterov momentum needs momentum > 0"),
                       std::invalid_argument);
}

TEST_CASE("parameters without a gradient are left alone and get no state") {
  Tensor a = param_from(kStart), b = param_from(kStart);
  AdamW adamw({ParamGroup{{{"a", a}, {"b", b}}, 0.1}}, AdamWOptions{});
  a.set_grad(ones({3}, TensorOptions{DType::Float64}));
  adamw.step();
  CHECK(b.to_vector<double>() == std::vector<double>{1.0, -2.0, 0.5});
  StateDict state = adamw.state_dict();
  CHECK(state.count("exp_avg.a"));
  CHECK_FALSE(state.count("exp_avg.b"));
  CHECK(state.at("step").item() == 1);
  CHECK_THROWS_WITH_AS(AdamW({ParamGroup{{{"a", a}, {"a", b}}, 0.0}}, AdamWOptions{}),
                       doctest::Contains("'a' appears twice"), std::invalid_argument);
}

TEST_CASE("optimizer state round trip: a fresh optimizer continues bit for bit") {
  for (bool adam : {true, false}) {
    Tensor p1 = param_from(kStart), p2 = param_from(kStart);
    auto make = [&](const Tensor& p) -> std::unique_ptr<Optimizer> {
      std::vector<ParamGroup> groups{ParamGroup{{{"w", p}}, 0.05}};
      if (adam) return std::make_unique<AdamW>(groups, AdamWOptions{0.01});
      return std::make_unique<Sgd>(groups, SgdOptions{0.01, 0.9, 0.0, true});
    };
    auto first = make(p1);
    for (int t = 0; t < 2; ++t) {
      p1.set_grad(from_vector({kGrads[t][0], kGrads[t][1], kGrads[t][2]}, {3},
                              TensorOptions{DType::Float64}));
      first->step();
    }
    p2.copy_(p1);
    auto second = make(p2);
    second->load_state_dict(first->state_dict());
    CHECK(second->steps() == 2);
    for (const Tensor& p : {p1, p2}) {
      p.set_grad(from_vector({kGrads[2][0], kGrads[2][1], kGrads[2][2]}, {3},
                             TensorOptions{DType::Float64}));
    }
    first->step();
    second->step();
    CHECK(p1.to_vector<double>() == p2.to_vector<double>());

    StateDict bad = first->state_dict();
    bad[adam ? "exp_avg.w" : "momentum_buffer.w"] = zeros({4}, TensorOptions{DType::Float64});
    CHECK_THROWS_WITH_AS(second->load_state_dict(bad),
                         doctest::Contains("has shape [4] but the parameter has [3]"),
                         std::invalid_argument);
    bad = first->state_dict();
    bad["exp_avg.other"] = zeros({3}, TensorOptions{DType::Float64});
    CHECK_THROWS_WITH_AS(second->load_state_dict(bad),
                         doctest::Contains("unexpected entry 'exp_avg.other'"),
                         std::invalid_argument);
  }
}

TEST_CASE("split_decay_groups: weights decay; norms, biases and LayerScale do not") {
  Block block(8, 2, 2.0, AttentionKind::Nala, 0.0, 1.0);
  std::vector<ParamGroup> groups = split_decay_groups(block, 0.05);
  REQUIRE(groups.size() == 2);
  CHECK(groups[0].weight_decay == 0.05);
  CHECK(groups[1].weight_decay == 0.0);
  std::vector<std::string> decayed;
  for (const auto& [name, p] : groups[0].params) decayed.push_back(name);
  CHECK(decayed == std::vector<std::string>{"cpe1.weight", "attn.qkvg.weight", "attn.lepe.weight",
                                            "attn.proj.weight", "cpe2.weight", "mlp.fc1.weight",
                                            "mlp.dwconv.weight", "mlp.fc2.weight"});
  CHECK(groups[0].params.size() + groups[1].params.size() == block.named_parameters().size());
  for (const auto& [name, p] : groups[1].params) CHECK(p.dim() == 1);
}

TEST_CASE("clip_grad_norm scales all gradients to the max norm and returns the norm before") {
  Tensor a = zeros({2}, TensorOptions{DType::Float64, Device::CPU, true});
  Tensor b = zeros({1}, TensorOptions{DType::Float64, Device::CPU, true});
  Tensor none = zeros({1}, TensorOptions{DType::Float64, Device::CPU, true});
  a.set_grad(from_vector({3, 4}, {2}, TensorOptions{DType::Float64}));
  b.set_grad(from_vector({12}, {1}, TensorOptions{DType::Float64}));
  CHECK(clip_grad_norm({a, b, none}, 20.0) == doctest::Approx(13.0).epsilon(1e-15));
  CHECK(b.grad().item() == 12.0);  // under the limit: untouched
  CHECK(clip_grad_norm({a, b, none}, 6.5) == doctest::Approx(13.0).epsilon(1e-15));
  double scale = 6.5 / (13.0 + 1e-6);
  CHECK(a.grad().to_vector<double>()[1] == doctest::Approx(4 * scale).epsilon(1e-15));
  CHECK(b.grad().item() == doctest::Approx(12 * scale).epsilon(1e-15));
  CHECK_FALSE(none.grad().defined());
}

TEST_CASE("grad_clip_scale is min(1, max_norm / norm) on the device, and step applies it") {
  Tensor a = zeros({2}, TensorOptions{DType::Float64, Device::CPU, true});
  Tensor b = zeros({1}, TensorOptions{DType::Float64, Device::CPU, true});
  a.set_grad(from_vector({3, 4}, {2}, TensorOptions{DType::Float64}));
  b.set_grad(from_vector({12}, {1}, TensorOptions{DType::Float64}));
  CHECK(grad_clip_scale({a, b}, 20.0).item() == 1.0);
  Tensor scale = grad_clip_scale({a, b}, 6.5);
  CHECK(scale.dim() == 0);
  CHECK(scale.item() == doctest::Approx(6.5 / (13.0 + 1e-6)).epsilon(1e-15));
  // SGD without momentum: p = -lr * scale * g.
  Sgd sgd({ParamGroup{{{"a", a}, {"b", b}}, 0.0}}, SgdOptions{1.0});
  sgd.step(scale);
  CHECK(b.item() == doctest::Approx(-12 * 6.5 / (13.0 + 1e-6)).epsilon(1e-15));
}

// More parameters than one TensorList holds (256), so the fused step needs two launches.
// Tensor i of the multi-tensor tests: mostly small, one (i = 23) large enough to be shared by
// many blocks of a CUDA launch.
static Shape multi_tensor_shape(int i) { return i == 23 ? Shape{30001, 3} : Shape{i % 40 + 1, 3}; }

TEST_CASE("fused AdamW over many tensors: CPU float64 vs the formula, CUDA vs CPU") {
  auto run = [](Device device, DType dtype) {
    std::vector<NamedTensor> params;
    for (int i = 0; i < 300; ++i) {
      Tensor p =
          test::random_tensor(multi_tensor_shape(i), 100 + i, dtype, device).requires_grad_();
      p.set_grad(test::random_tensor(multi_tensor_shape(i), 1000 + i, dtype, device));
      params.push_back({"p" + std::to_string(i), p});
    }
    std::vector<NamedTensor> first(params.begin(), params.begin() + 150),
        rest(params.begin() + 150, params.end());
    AdamW adamw({ParamGroup{first, 0.1}, ParamGroup{rest, 0.0}}, AdamWOptions{0.01});
    Tensor scale = full({}, 0.5, TensorOptions{dtype, device});
    adamw.step(scale);
    adamw.step(scale);
    std::vector<Tensor> out;
    for (const auto& [name, p] : params) out.push_back(p.detach().cpu().to(DType::Float64));
    return out;
  };
  // The reference: two steps of the formula with the same gradient g' = 0.5 g each time.
  std::vector<Tensor> cpu = run(Device::CPU, DType::Float64);
  for (int i = 0; i < 300; i += 23) {
    std::vector<double> p =
        test::random_tensor(multi_tensor_shape(i), 100 + i, DType::Float64).to_vector<double>();
    std::vector<double> g =
        test::random_tensor(multi_tensor_shape(i), 1000 + i, DType::Float64).to_vector<double>();
    double wd = i < 150 ? 0.1 : 0.0, lr = 0.01, worst = 0;
    const std::vector<double> got = cpu[i].to_vector<double>();
    for (size_t j = 0; j < p.size(); ++j) {
      double m = 0, v = 0, x = p[j], gj = 0.5 * g[j];
      for (int t = 1; t <= 2; ++t) {
        x *= 1 - lr * wd;
        m = 0.9 * m + 0.1 * gj;
        v = 0.999 * v + 0.001 * gj * gj;
        x -= lr * (m / (1 - std::pow(0.9, t))) / (std::sqrt(v / (1 - std::pow(0.999, t))) + 1e-8);
      }
      // doctest's Approx(x).epsilon(e): |got - x| < e (1 + max(|got|, |x|))
      worst = std::max(worst, std::abs(got[j] - x) / (1 + std::max(std::abs(got[j]), std::abs(x))));
    }
    CAPTURE(i);
    CHECK(worst < 1e-13);
  }
  if (!test::cuda_available()) return;
  for (DType dtype : {DType::Float64, DType::Float32}) {
    std::vector<Tensor> c = run(Device::CPU, dtype), g = run(Device::CUDA, dtype);
    for (size_t i = 0; i < c.size(); ++i)
      CHECK(test::max_rel_diff(g[i], c[i]) < (dtype == DType::Float64 ? 1e-14 : 1e-6));
  }
}

TEST_CASE("the gradient norm over many tensors: the formula on the CPU, CUDA vs CPU") {
  auto norm = [](Device device) {
    std::vector<Tensor> params;
    for (int i = 0; i < 300; ++i) {
      Tensor p = zeros(multi_tensor_shape(i), TensorOptions{DType::Float64, device, true});
      p.set_grad(test::random_tensor(multi_tensor_shape(i), 1000 + i, DType::Float64, device));
      params.push_back(p);
    }
    return clip_grad_norm(params, 1e30);
  };
  double squares = 0;
  for (int i = 0; i < 300; ++i)
    for (double g :
         test::random_tensor(multi_tensor_shape(i), 1000 + i, DType::Float64).to_vector<double>())
      squares += g * g;
  const double cpu = norm(Device::CPU);
  CHECK(cpu == doctest::Approx(std::sqrt(squares)).epsilon(1e-13));
  if (!test::cuda_available()) return;
  CHECK(norm(Device::CUDA) == doctest::Approx(cpu).epsilon(1e-13));
}

TEST_CASE("warmup-cosine and step-decay schedules") {
  WarmupCosineSchedule cosine(1.0, 110, 10, 0.1);
  CHECK(cosine.lr_at(0) == 0.0);
  CHECK(cosine.lr_at(5) == doctest::Approx(0.5));
  CHECK(cosine.lr_at(10) == doctest::Approx(1.0));
  CHECK(cosine.lr_at(60) == doctest::Approx(0.55));  // halfway: min + (base - min) / 2
  CHECK(cosine.lr_at(35) == doctest::Approx(0.1 + 0.45 * (1 + std::cos(M_PI / 4))));
  CHECK(cosine.lr_at(110) == doctest::Approx(0.1));
  CHECK(cosine.lr_at(500) == doctest::Approx(0.1));
  CHECK_THROWS_AS(WarmupCosineSchedule(1.0, 10, 10), std::invalid_argument);

  StepDecaySchedule steps(1.0, 30, 0.1, 5, 0.5);
  CHECK(steps.lr_at(0) == 0.5);
  CHECK(steps.lr_at(34) == 1.0);
  CHECK(steps.lr_at(35) == doctest::Approx(0.1));
  CHECK(steps.lr_at(70) == doctest::Approx(0.01));
}

TEST_CASE("ModelEma averages parameters and buffers; loading checks names and shapes") {
  BatchNorm2d model(2);
  model.to(DType::Float64);
  model.weight.copy_(from_vector({1, 2}, {2}));
  ModelEma ema(model, 0.9);
  model.weight.copy_(from_vector({3, 4}, {2}));
  model.running_mean.copy_(from_vector({10, 20}, {2}));
  ema.update(model);
  const double d = 0.9, rest = 1 - d;  // as the EMA computes them
  CHECK(ema.state_dict().at("weight").to_vector<double>() ==
        std::vector<double>{d * 1 + rest * 3, d * 2 + rest * 4});
  CHECK(ema.state_dict().at("running_mean").to_vector<double>() ==
        std::vector<double>{rest * 10, rest * 20});
  ema.update(model);
  CHECK(ema.state_dict().at("running_mean").to_vector<double>()[0] == d * (rest * 10) + rest * 10);
  // Loading the average into a model; a second EMA restored from the first's state.
  BatchNorm2d eval_model(2);
  ema.copy_to(eval_model);
  CHECK(eval_model.weight.to_vector<double>()[0] == doctest::Approx(d * 1.2 + rest * 3));
  ModelEma restored(model, 0.9);
  restored.load_state_dict(ema.state_dict());
  CHECK(restored.state_dict().at("bias").to_vector<double>() ==
        ema.state_dict().at("bias").to_vector<double>());
  StateDict bad = ema.state_dict();
  bad["weight"] = zeros({3});
  CHECK_THROWS_WITH_AS(restored.load_state_dict(bad), doctest::Contains("weight has shape [3]"),
                       std::invalid_argument);
}
