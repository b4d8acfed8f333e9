// NaLaFormer: shapes through every stage of each variant, parameter counts worked out by hand
// from NALAFORMER.md, a float64 gradient check of whole Blocks, the model table, and a tiny model
// that must overfit a fixed batch.
#include <chrono>

#include "autograd/gradcheck.h"
#include "nn/models/nalaformer.h"
#include "nn/optim.h"
#include "nn_test_util.h"
#include "test_util.h"

using namespace nala;
using test::random_tensor;

namespace {

using test::tiny_config;

// ---- parameter counts, layer by layer from NALAFORMER.md section 2 ----

// Every conv and Linear of the model has a bias.
int64_t conv_params(int64_t in, int64_t out, int64_t k, int64_t groups) {
  return out * (in / groups) * k * k + out;
}
int64_t linear_params(int64_t in, int64_t out) { return out * in + out; }
int64_t norm_params(int64_t c) { return 2 * c; }  // weight and bias (LayerNorm or BatchNorm)

int64_t block_params(int64_t C, double mlp_ratio) {
  int64_t hidden = static_cast<int64_t>(C * mlp_ratio);
  int64_t cpe = 2 * conv_params(C, C, 3, C);     // cpe1, cpe2
  int64_t norms = 2 * norm_params(C);            // norm1, norm2
  int64_t attention = linear_params(C, 4 * C)    // q, k, v, g
                      + conv_params(C, C, 5, C)  // LePE
                      + norm_params(C)           // LayerNorm inside
                      + linear_params(C, C);     // output projection
  int64_t ffn =
      linear_params(C, hidden) + conv_params(hidden, hidden, 3, hidden) + linear_params(hidden, C);
  int64_t layerscale = 2 * C;  // gamma1, gamma2
  return cpe + norms + attention + ffn + layerscale;
}

int64_t nalaformer_params(const std::vector<int64_t>& widths, const std::vector<int64_t>& depths,
                          double mlp_ratio, int64_t classes) {
  int64_t half = widths[0] / 2;
  int64_t stem = conv_params(3, half, 3, 1) + norm_params(half) +
                 2 * (conv_params(half, half, 3, 1) + norm_params(half)) +
                 conv_params(half, widths[0], 3, 1) + norm_params(widths[0]);
  int64_t total = stem;
  for (size_t i = 0; i < 4; ++i) {
    total += depths[i] * block_params(widths[i], mlp_ratio);
    if (i < 3) total += conv_params(widths[i], widths[i + 1], 3, 1) + norm_params(widths[i + 1]);
  }
  int64_t head = linear_params(widths[3], 1024) + norm_params(1024) + linear_params(1024, classes);
  return total + head;
}

// gradcheck perturbs fresh copies of its inputs. To check a module's parameters as well, every
// evaluation points each parameter's TensorImpl at the matching input (sharing its storage and
// autograd state, so the analytic gradients land in the inputs). A whole block sums hundreds of
// outputs of size ~10, so the forward's round-off (~1e-15 relative) over a step of 1e-6 would
// swamp the check: a step of 1e-5 balances round-off against truncation (both ~1e-7 here).
GradcheckResult gradcheck_module(Module& module, const Tensor& x) {
  std::vector<Tensor> params = module.parameters(), inputs{x};
  for (const Tensor& p : params) {
    Tensor copy = p.detach().clone();
    copy.requires_grad_(true);
    inputs.push_back(copy);
  }
  auto f = [&](const std::vector<Tensor>& args) {
    for (size_t i = 0; i < params.size(); ++i) *params[i].impl() = *args[i + 1].impl();
    return module.forward(args[0]);
  };
  return gradcheck(f, inputs, /*step=*/1e-5, /*tolerance=*/1e-6);
}

}  // namespace

TEST_CASE("every variant: shapes through each stage, and the parameter count worked out by hand") {
  struct Case {
    std::string variant;
    int64_t image, tokens;  // input side, stem output side
    int64_t params;         // at 1000 classes, by hand below
  };
  for (const Case& c : {Case{"xt", 64, 16, 0}, Case{"xt-cifar", 32, 16, 0}, Case{"t", 64, 16, 0},
                        Case{"s", 64, 16, 0}}) {
    CAPTURE(c.variant);
    NaLaFormerConfig config = nalaformer_variant(c.variant);
    manual_seed(0);
    auto model = make_nalaformer(config);
    CHECK(model->num_parameters() ==
          nalaformer_params(config.widths, config.depths, config.mlp_ratio, 1000));
    model->eval();
    NoGradGuard no_grad;
    Tensor x = random_tensor({2, 3, c.image, c.image}, 1);
    Tensor y = model->patch_embed->forward(x);
    CHECK(y.shape() == Shape{2, config.widths[0], c.tokens, c.tokens});
    int64_t side = c.tokens;
    for (size_t i = 0; i < 4; ++i) {
      auto& stage = dynamic_cast<Stage&>(*(*model->layers)[i]);
      CHECK(stage.blocks->size() == static_cast<size_t>(config.depths[i]));
      y = stage.blocks->forward(y);
      CHECK(y.shape() == Shape{2, config.widths[i], side, side});
      if (i < 3) {
        y = stage.downsample->forward(y);
        side /= 2;
        CHECK(y.shape() == Shape{2, config.widths[i + 1], side, side});
      } else {
        CHECK_FALSE(stage.downsample);
      }
    }
    Tensor logits = model->head->forward(y);
    CHECK(logits.shape() == Shape{2, 1000});
    std::vector<float> v = logits.to_vector<float>();
    for (float l : v) CHECK(std::isfinite(l));
  }
  CHECK(nalaformer_params({32, 64, 128, 384}, {2, 2, 2, 2}, 3.5, 1000) == 6142248);
  CHECK(nalaformer_params({64, 128, 256, 512}, {2, 2, 6, 2}, 4.0, 1000) == 15907752);
  CHECK(nalaformer_params({64, 128, 320, 512}, {3, 5, 9, 3}, 3.5, 1000) == 25654184);
}

TEST_CASE("variants carry the table of NALAFORMER.md section 4") {
  NaLaFormerConfig xt = nalaformer_variant("xt"), s = nalaformer_variant("s", 100);
  CHECK(xt.heads == std::vector<int64_t>{1, 2, 4, 12});
  CHECK(xt.mlp_ratio == 3.5);
  CHECK(xt.stem_stride == 2);
  CHECK(nalaformer_variant("xt-cifar").stem_stride == 1);
  CHECK(s.depths == std::vector<int64_t>{3, 5, 9, 3});
  CHECK(s.drop_path_rate == 0.15);
  CHECK(s.num_classes == 100);
  CHECK(xt.attention == "l,l,v,v");
  CHECK_THROWS_WITH_AS(nalaformer_variant("xl"), doctest::Contains("unknown variant 'xl'"),
                       std::invalid_argument);
}

TEST_CASE("blocks follow the per-stage attention kinds; drop path rises linearly to the rate") {
  NaLaFormerConfig c = tiny_config();
  c.depths = {2, 1, 1, 1};
  c.drop_path_rate = 0.4;
  c.attention = "l,r,v,l";
  NaLaFormer model(c);
  auto block = [&](int stage, int b) -> Block& {
    return dynamic_cast<Block&>(*(*dynamic_cast<Stage&>(*(*model.layers)[stage]).blocks)[b]);
  };
  CHECK(block(0, 1).attn->kind == AttentionKind::Nala);
  CHECK(block(1, 0).attn->kind == AttentionKind::Relu);
  CHECK(block(2, 0).attn->kind == AttentionKind::Softmax);
  CHECK(block(3, 0).attn->kind == AttentionKind::Nala);
  CHECK(block(0, 0).drop_path->p == 0.0);
  CHECK(block(0, 1).drop_path->p == doctest::Approx(0.1));
  CHECK(block(2, 0).drop_path->p == doctest::Approx(0.3));
  CHECK(block(3, 0).drop_path->p == doctest::Approx(0.4));
  CHECK(model.named_parameters()[0].first == "patch_embed.conv1.weight");
  CHECK(model.state_dict().count("layers.0.blocks.1.attn.qkvg.weight"));
  CHECK(model.state_dict().count("layers.2.downsample.norm.running_var"));
  CHECK(model.state_dict().count("head.classifier.bias"));
}

TEST_CASE("a bad config names the field") {
  NaLaFormerConfig c = tiny_config();
  c.heads = {2, 4, 5, 8};
  CHECK_THROWS_WITH_AS(NaLaFormer{c}, doctest::Contains("stage 2: width 24 over 5 heads"),
                       std::invalid_argument);
  c = tiny_config();
  c.attention = "l,l,x,v";
  CHECK_THROWS_WITH_AS(NaLaFormer{c}, doctest::Contains("must list l, v or r"),
                       std::invalid_argument);
  c.attention = "l,l,v";
  CHECK_THROWS_WITH_AS(NaLaFormer{c}, doctest::Contains("one kind per stage (4)"),
                       std::invalid_argument);
  NaLaFormer model(tiny_config());
  CHECK_THROWS_WITH_AS(model.forward(zeros({1, 1, 16, 16})),
                       "NaLaFormer(tiny): input of shape [1, 1, 16, 16] must be (B, 3, H, W)",
                       std::invalid_argument);
}

TEST_CASE("the config survives a trip through checkpoint metadata") {
  NaLaFormerConfig c = nalaformer_variant("xt-cifar", 10);
  c.attention = "l,l,l,l";
  c.drop_path_rate = 0.123456789012345;
  c.linear_init = LinearInit::PyTorchDefault;
  NaLaFormerConfig back = NaLaFormerConfig::from_metadata(c.to_metadata());
  CHECK(back.to_metadata() == c.to_metadata());
  CHECK(back.drop_path_rate == c.drop_path_rate);
  CHECK(back.linear_init == LinearInit::PyTorchDefault);
}

TEST_CASE("init: truncated normal std 0.02 for convs, the classifier and (by default) Linear") {
  auto stats = [](const Tensor& t) {
    std::vector<double> v = t.to_vector<double>();
    double sq = 0, bound = 0;
    for (double x : v) {
      sq += x * x;
      bound = std::max(bound, std::abs(x));
    }
    return std::pair{std::sqrt(sq / v.size()), bound};
  };
  for (LinearInit init : {LinearInit::TruncNormal, LinearInit::PyTorchDefault}) {
    NaLaFormerConfig c = nalaformer_variant("xt-cifar", 10);
    c.linear_init = init;
    manual_seed(3);
    NaLaFormer model(c);
    auto& block = dynamic_cast<Block&>(*(*dynamic_cast<Stage&>(*(*model.layers)[3]).blocks)[0]);
    CHECK(stats(block.mlp->fc1->weight).first ==
          doctest::Approx(init == LinearInit::TruncNormal ? 0.02 : 1 / std::sqrt(384.0 * 3))
              .epsilon(0.05));
    CHECK(stats(block.attn->qkvg->bias).second ==
          doctest::Approx(init == LinearInit::TruncNormal ? 0.0 : 1 / std::sqrt(384.0))
              .epsilon(0.05));
    CHECK(stats(block.mlp->dwconv->weight).first == doctest::Approx(0.02).epsilon(0.05));
    CHECK(stats(block.cpe1->bias).second == 0.0);
    CHECK(stats(model.head->classifier->weight).first == doctest::Approx(0.02).epsilon(0.05));
    CHECK(stats(model.head->classifier->bias).second == 0.0);
    CHECK(stats(block.gamma1).first == 1.0);
    CHECK(stats(block.norm1->weight).first == 1.0);
  }
}

TEST_CASE("float64 gradient check of one whole Block of each attention kind") {
  for (AttentionKind kind : {AttentionKind::Nala, AttentionKind::Softmax, AttentionKind::Relu}) {
    manual_seed(4);
    Block block(8, 2, 2.0, kind, 0.0, 1.0);
    block.to(DType::Float64);
    // Away from LayerScale 1 and norms at 1/0, so that every parameter's gradient is generic.
    uint64_t seed = 100;
    for (const Tensor& p : block.parameters())
      if (p.dim() == 1)
        p.copy_(random_tensor(p.shape(), seed++, DType::Float64, Device::CPU, 0.5, 1.5));
    Tensor x = random_tensor({2, 8, 4, 4}, 6, DType::Float64);
    x.requires_grad_(true);
    GradcheckResult r = gradcheck_module(block, x);
    CAPTURE(r.worst);
    CHECK(r.passed);
  }
}

TEST_CASE("the model table: parameters match the model, MACs match a block worked out by hand") {
  NaLaFormerConfig c = nalaformer_variant("xt-cifar", 10);
  std::vector<LayerRow> rows = layer_table(c, 32);
  REQUIRE(rows.size() == 1 + 8 + 3 + 1);
  int64_t params = 0;
  for (const LayerRow& r : rows) params += r.parameters;
  CHECK(params == NaLaFormer(c).num_parameters());
  CHECK(rows[0].output == Shape{32, 16, 16});
  CHECK(rows[1].name == "layers.0.blocks.0");
  CHECK(rows[1].parameters == block_params(32, 3.5));
  // Stage 0 of xt-cifar: C = 32, one head of d = 32, 16 x 16 tokens, FFN hidden 112, NaLa.
  int64_t N = 256, C = 32, d = 32, hidden = 112;
  int64_t macs = 2 * 9 * C * N                 // cpe1, cpe2
                 + N * C * 4 * C + 25 * C * N  // qkvg, LePE
                 + N * (4 * d * d + 2 * d)     // S = K'^T v, Q' S, and z, with 2d-wide features
                 + N * C * C                   // proj
                 + N * C * hidden + 9 * hidden * N + N * hidden * C;  // FFN
  CHECK(rows[1].macs == macs);
  CHECK(rows.back().output == Shape{10});
  std::string text = model_summary(c, 32);
  CHECK(text.find("layers.3.blocks.1") != std::string::npos);
  CHECK(text.find("total: " + std::to_string(params) + " parameters") != std::string::npos);
}

TEST_CASE("a tiny NaLaFormer overfits a fixed batch of 16 images with AdamW") {
  manual_seed(5);
  auto model = make_nalaformer(tiny_config());
  Tensor images = randn({16, 3, 16, 16});
  Tensor labels = from_data<int64_t>({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5}, {16});
  AdamW optimizer(split_decay_groups(*model, 0.01), AdamWOptions{3e-3});
  auto start = std::chrono::steady_clock::now();
  double loss = 0;
  int step = 0;
  for (; step < 400; ++step) {
    Tensor l = cross_entropy(model->forward(images), labels);
    loss = l.item();
    if (loss < 0.05) break;
    optimizer.zero_grad();
    l.backward();
    optimizer.step();
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  MESSAGE("overfit: loss " << loss << " after " << step << " steps, " << seconds << " s");
  CHECK(loss < 0.05);
}

TEST_CASE("on CUDA, the model's loss, gradients, SGD step and BN statistics match the CPU") {
  if (!test::cuda_available()) return;
  std::shared_ptr<NaLaFormer> models[2];
  for (auto& m : models) {
    manual_seed(8);
    m = make_nalaformer(tiny_config());
    m->to(DType::Float64);
  }
  models[1]->to(Device::CUDA);
  Tensor images = random_tensor({4, 3, 16, 16}, 9, DType::Float64);
  Tensor labels = from_data<int64_t>({1, 2, 3, 4}, {4});
  double losses[2];
  for (int i = 0; i < 2; ++i) {
    Device device = i ? Device::CUDA : Device::CPU;
    Tensor loss = cross_entropy(models[i]->forward(images.to(device)), labels.to(device));
    loss.backward();
    losses[i] = loss.item();
    Sgd sgd({ParamGroup{models[i]->named_parameters(), 0.01}}, SgdOptions{0.1, 0.9, 0.0, true});
    sgd.step();
  }
  CHECK(losses[1] == doctest::Approx(losses[0]).epsilon(1e-10));
  std::vector<NamedTensor> cpu = models[0]->named_parameters(), gpu = models[1]->named_parameters();
  for (size_t i = 0; i < cpu.size(); ++i) {
    CAPTURE(cpu[i].first);
    CHECK(gpu[i].second.is_cuda());
    CHECK(test::max_rel_diff(gpu[i].second.grad().cpu(), cpu[i].second.grad()) < 1e-9);
    CHECK(test::max_rel_diff(gpu[i].second.cpu(), cpu[i].second) < 1e-10);
  }
  for (const auto& [name, t] : models[0]->named_buffers())
    CHECK(test::max_rel_diff(models[1]->state_dict().at(name).cpu(), t) < 1e-10);
}
