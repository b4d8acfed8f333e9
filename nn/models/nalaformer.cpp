#include "nn/models/nalaformer.h"

#include <cstdio>
#include <iomanip>
#include <sstream>
#include <stdexcept>

namespace nala {

// ---- configuration ----

static char kind_letter(AttentionKind kind) {
  switch (kind) {
    case AttentionKind::Nala:
      return 'l';
    case AttentionKind::Softmax:
      return 'v';
    case AttentionKind::Relu:
      return 'r';
  }
  return '?';
}

std::vector<AttentionKind> NaLaFormerConfig::attention_kinds() const {
  std::vector<AttentionKind> kinds;
  std::stringstream ss(attention);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item == "l")
      kinds.push_back(AttentionKind::Nala);
    else if (item == "v")
      kinds.push_back(AttentionKind::Softmax);
    else if (item == "r")
      kinds.push_back(AttentionKind::Relu);
    else
      throw std::invalid_argument("NaLaFormerConfig: attention '" + attention +
                                  "' must list l, v or r per stage, separated by commas");
  }
  return kinds;
}

void NaLaFormerConfig::validate() const {
  auto fail = [&](const std::string& why) {
    throw std::invalid_argument("NaLaFormerConfig (" + variant + "): " + why);
  };
  size_t stages = widths.size();
  if (stages == 0) fail("no stages (widths is empty)");
  if (depths.size() != stages || heads.size() != stages)
    fail("widths, depths and heads must have one entry per stage");
  if (attention_kinds().size() != stages)
    fail("attention '" + attention + "' must name one kind per stage (" + std::to_string(stages) +
         ")");
  for (size_t i = 0; i < stages; ++i) {
    if (widths[i] < 2 || depths[i] < 1 || heads[i] < 1)
      fail("stage " + std::to_string(i) + ": width >= 2, depth >= 1 and heads >= 1 needed");
    if (widths[i] % heads[i] || (widths[i] / heads[i]) % 4)
      fail("stage " + std::to_string(i) + ": width " + std::to_string(widths[i]) + " over " +
           std::to_string(heads[i]) + " heads must give a head dim that is a multiple of 4");
  }
  if (widths[0] % 2) fail("the first width must be even (the stem halves it)");
  if (mlp_ratio <= 0 || drop_path_rate < 0 || drop_path_rate >= 1)
    fail("mlp_ratio > 0 and 0 <= drop_path_rate < 1 needed");
  if (stem_stride < 1 || num_classes < 1 || in_channels < 1 || head_hidden < 1)
    fail("stem_stride, num_classes, in_channels and head_hidden must be positive");
}

NaLaFormerConfig nalaformer_variant(const std::string& name, int64_t num_classes) {
  NaLaFormerConfig c;
  c.variant = name;
  c.num_classes = num_classes;
  if (name == "xt" || name == "xt-cifar") {
    c.widths = {32, 64, 128, 384};
    c.depths = {2, 2, 2, 2};
    c.heads = {1, 2, 4, 12};
    c.mlp_ratio = 3.5;
    c.drop_path_rate = 0.1;
    c.stem_stride = name == "xt" ? 2 : 1;
  } else if (name == "t") {
    c.widths = {64, 128, 256, 512};
    c.depths = {2, 2, 6, 2};
    c.heads = {1, 2, 4, 8};
    c.mlp_ratio = 4.0;
    c.drop_path_rate = 0.1;
  } else if (name == "s") {
    c.widths = {64, 128, 320, 512};
    c.depths = {3, 5, 9, 3};
    c.heads = {1, 2, 5, 8};
    c.mlp_ratio = 3.5;
    c.drop_path_rate = 0.15;
  } else {
    throw std::invalid_argument("nalaformer_variant: unknown variant '" + name +
                                "' (xt, t, s, xt-cifar)");
  }
  return c;
}

static std::string join(const std::vector<int64_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

static std::string exact(double x) {  // enough digits to read back the same double
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", x);
  return buf;
}

std::map<std::string, std::string> NaLaFormerConfig::to_metadata() const {
  return {{"variant", variant},
          {"widths", join(widths)},
          {"depths", join(depths)},
          {"heads", join(heads)},
          {"mlp_ratio", exact(mlp_ratio)},
          {"drop_path_rate", exact(drop_path_rate)},
          {"layerscale_init", exact(layerscale_init)},
          {"attention", attention},
          {"stem_stride", std::to_string(stem_stride)},
          {"num_classes", std::to_string(num_classes)},
          {"in_channels", std::to_string(in_channels)},
          {"head_hidden", std::to_string(head_hidden)},
          {"linear_init", linear_init == LinearInit::TruncNormal ? "trunc_normal" : "pytorch"}};
}

NaLaFormerConfig NaLaFormerConfig::from_metadata(const std::map<std::string, std::string>& m) {
  auto get = [&](const std::string& key) -> const std::string& {
    auto it = m.find(key);
    if (it == m.end())
      throw std::invalid_argument("NaLaFormerConfig::from_metadata: no entry '" + key + "'");
    return it->second;
  };
  auto ints = [&](const std::string& key) {
    std::vector<int64_t> v;
    std::stringstream ss(get(key));
    std::string item;
    while (std::getline(ss, item, ',')) v.push_back(std::stoll(item));
    return v;
  };
  NaLaFormerConfig c;
  c.variant = get("variant");
  c.widths = ints("widths");
  c.depths = ints("depths");
  c.heads = ints("heads");
  c.mlp_ratio = std::stod(get("mlp_ratio"));
  c.drop_path_rate = std::stod(get("drop_path_rate"));
  c.layerscale_init = std::stod(get("layerscale_init"));
  c.attention = get("attention");
  c.stem_stride = std::stoll(get("stem_stride"));
  c.num_classes = std::stoll(get("num_classes"));
  c.in_channels = std::stoll(get("in_channels"));
  c.head_hidden = std::stoll(get("head_hidden"));
  c.linear_init =
      get("linear_init") == "pytorch" ? LinearInit::PyTorchDefault : LinearInit::TruncNormal;
  c.validate();
  return c;
}

// ---- layout helpers: images (B, C, H, W) <-> channels-last (B, H, W, C) ----

static Tensor channels_last(const Tensor& x) { return x.permute({0, 2, 3, 1}); }
static Tensor channels_first(const Tensor& x) { return x.permute({0, 3, 1, 2}); }

static void check_image(const std::string& who, const Tensor& x, int64_t channels) {
  if (x.dim() != 4 || x.size(1) != channels)
    throw std::invalid_argument(who + ": input of shape " + shape_str(x.shape()) + " must be (B, " +
                                std::to_string(channels) + ", H, W)");
}

// ---- attention ----

Attention::Attention(int64_t dim, int64_t heads, AttentionKind kind)
    : dim(dim), heads(heads), kind(kind) {
  qkvg = register_module("qkvg", std::make_shared<Linear>(dim, 4 * dim));
  lepe = register_module("lepe", std::make_shared<Conv2d>(dim, dim, 5, 1, 2, dim));
  norm = register_module("norm", std::make_shared<LayerNorm>(dim, 1e-5));
  proj = register_module("proj", std::make_shared<Linear>(dim, dim));
}

std::string Attention::describe() const {
  return std::string("Attention(") + std::to_string(dim) + ", " + std::to_string(heads) +
         " heads, " + kind_letter(kind) + ")";
}

Tensor Attention::forward(const Tensor& x) {
  check_image(describe(), x, dim);
  int64_t B = x.size(0), H = x.size(2), W = x.size(3), N = H * W, C = dim, d = C / heads;
  std::vector<Tensor> qkvg_parts = split(qkvg->forward(channels_last(x)), {C, C, C, C}, -1);
  const Tensor &q = qkvg_parts[0], &k = qkvg_parts[1], &v = qkvg_parts[2], &g = qkvg_parts[3];
  // (B, H, W, C) -> (B, heads, N, d): channel c = head * d + j.
  auto split_heads = [&](const Tensor& t) {
    return t.reshape({B, N, heads, d}).permute({0, 2, 1, 3});
  };
  Tensor y = attention(kind, split_heads(q), split_heads(k), split_heads(v), H, W);
  y = y.permute({0, 2, 1, 3}).reshape({B, H, W, C});  // heads concatenated back to C
  Tensor local = channels_last(lepe->forward(channels_first(v)));
  y = mul(norm->forward(add(y, local)), silu(g));
  return channels_first(proj->forward(y));
}

// Attention's cost per head of dim d over N tokens, counting the products with v:
//   NaLa: S = K'^T v and Q' S with 2d-wide features, 2 * 2d * d per token, plus z, 2d per token
//   ReLU: the same with d-wide features;  softmax: Q K^T and P v, 2 * N * d per token.
int64_t Attention::macs(int64_t h, int64_t w) const {
  int64_t N = h * w, d = dim / heads;
  int64_t core = 0;
  switch (kind) {
    case AttentionKind::Nala:
      core = heads * N * (4 * d * d + 2 * d);
      break;
    case AttentionKind::Relu:
      core = heads * N * (2 * d * d + d);
      break;
    case AttentionKind::Softmax:
      core = heads * 2 * N * N * d;
      break;
  }
  return qkvg->macs(N) + lepe->macs(h, w) + core + proj->macs(N);
}

// ---- feed-forward ----

Ffn::Ffn(int64_t dim, int64_t hidden) {
  fc1 = register_module("fc1", std::make_shared<Linear>(dim, hidden));
  dwconv = register_module("dwconv", std::make_shared<Conv2d>(hidden, hidden, 3, 1, 1, hidden));
  fc2 = register_module("fc2", std::make_shared<Linear>(hidden, dim));
}

std::string Ffn::describe() const {
  return "Ffn(" + std::to_string(fc1->in_features) + " -> " + std::to_string(fc1->out_features) +
         ")";
}

Tensor Ffn::forward(const Tensor& x) {
  check_image(describe(), x, fc1->in_features);
  Tensor h = gelu(fc1->forward(channels_last(x)));  // (B, H, W, hidden)
  h = add(h, channels_last(dwconv->forward(channels_first(h))));
  return channels_first(fc2->forward(h));
}

int64_t Ffn::macs(int64_t h, int64_t w) const {
  return fc1->macs(h * w) + dwconv->macs(h, w) + fc2->macs(h * w);
}

// ---- block ----

Block::Block(int64_t dim, int64_t heads, double mlp_ratio, AttentionKind kind, double drop_rate,
             double layerscale_init)
    : dim(dim) {
  cpe1 = register_module("cpe1", std::make_shared<Conv2d>(dim, dim, 3, 1, 1, dim));
  norm1 = register_module("norm1", std::make_shared<ChannelLayerNorm>(dim, 1e-6));
  attn = register_module("attn", std::make_shared<Attention>(dim, heads, kind));
  cpe2 = register_module("cpe2", std::make_shared<Conv2d>(dim, dim, 3, 1, 1, dim));
  norm2 = register_module("norm2", std::make_shared<ChannelLayerNorm>(dim, 1e-6));
  auto hidden = static_cast<int64_t>(static_cast<double>(dim) * mlp_ratio);
  mlp = register_module("mlp", std::make_shared<Ffn>(dim, hidden));
  drop_path = register_module("drop_path", std::make_shared<DropPath>(drop_rate));
  gamma1 = register_parameter("gamma1", full({dim}, layerscale_init));
  gamma2 = register_parameter("gamma2", full({dim}, layerscale_init));
}

std::string Block::describe() const {
  return std::string("Block(") + std::to_string(dim) + ", " + std::to_string(attn->heads) +
         " heads, " + kind_letter(attn->kind) + ")";
}

Tensor Block::forward(const Tensor& x_in) {
  Tensor x = add(x_in, cpe1->forward(x_in));
  x = add(x, drop_path->forward(mul(gamma1.view({dim, 1, 1}), attn->forward(norm1->forward(x)))));
  x = add(x, cpe2->forward(x));
  x = add(x, drop_path->forward(mul(gamma2.view({dim, 1, 1}), mlp->forward(norm2->forward(x)))));
  return x;
}

int64_t Block::macs(int64_t h, int64_t w) const {
  return cpe1->macs(h, w) + attn->macs(h, w) + cpe2->macs(h, w) + mlp->macs(h, w);
}

// ---- stem, downsampling, head ----

// The convs keep their bias before the batch norm, as in the public release.
PatchEmbed::PatchEmbed(int64_t in_channels, int64_t dim, int64_t first_stride) {
  int64_t half = dim / 2;
  conv1 = register_module("conv1", std::make_shared<Conv2d>(in_channels, half, 3, first_stride, 1));
  norm1 = register_module("norm1", std::make_shared<BatchNorm2d>(half));
  conv2 = register_module("conv2", std::make_shared<Conv2d>(half, half, 3, 1, 1));
  norm2 = register_module("norm2", std::make_shared<BatchNorm2d>(half));
  conv3 = register_module("conv3", std::make_shared<Conv2d>(half, half, 3, 1, 1));
  norm3 = register_module("norm3", std::make_shared<BatchNorm2d>(half));
  conv4 = register_module("conv4", std::make_shared<Conv2d>(half, dim, 3, 2, 1));
  norm4 = register_module("norm4", std::make_shared<BatchNorm2d>(dim));
}

std::string PatchEmbed::describe() const {
  return "PatchEmbed(" + std::to_string(conv1->in_channels) + " -> " +
         std::to_string(conv4->out_channels) + ", /" + std::to_string(conv1->stride * 2) + ")";
}

Tensor PatchEmbed::forward(const Tensor& x) {
  check_image(describe(), x, conv1->in_channels);
  Tensor y = gelu(norm1->forward(conv1->forward(x)));
  y = gelu(norm2->forward(conv2->forward(y)));
  y = gelu(norm3->forward(conv3->forward(y)));
  return norm4->forward(conv4->forward(y));
}

int64_t PatchEmbed::output_size(int64_t input_size) const {
  int64_t s = input_size;
  for (const auto& conv : {conv1, conv2, conv3, conv4}) s = conv->output_size(s);
  return s;
}

int64_t PatchEmbed::macs(int64_t h, int64_t w) const {
  int64_t total = 0;
  for (const auto& conv : {conv1, conv2, conv3, conv4}) {
    h = conv->output_size(h);
    w = conv->output_size(w);
    total += conv->macs(h, w);
  }
  return total;
}

PatchMerging::PatchMerging(int64_t in_dim, int64_t out_dim) {
  conv = register_module("conv", std::make_shared<Conv2d>(in_dim, out_dim, 3, 2, 1));
  norm = register_module("norm", std::make_shared<BatchNorm2d>(out_dim));
}

std::string PatchMerging::describe() const {
  return "PatchMerging(" + std::to_string(conv->in_channels) + " -> " +
         std::to_string(conv->out_channels) + ")";
}

Tensor PatchMerging::forward(const Tensor& x) { return norm->forward(conv->forward(x)); }

int64_t PatchMerging::macs(int64_t h, int64_t w) const {
  return conv->macs(conv->output_size(h), conv->output_size(w));
}

Head::Head(int64_t dim, int64_t hidden, int64_t num_classes) {
  proj = register_module("proj", std::make_shared<Linear>(dim, hidden));
  norm = register_module("norm", std::make_shared<BatchNorm2d>(hidden));
  classifier = register_module("classifier", std::make_shared<Linear>(hidden, num_classes));
}

std::string Head::describe() const {
  return "Head(" + std::to_string(proj->in_features) + " -> " + std::to_string(proj->out_features) +
         " -> " + std::to_string(classifier->out_features) + ")";
}

Tensor Head::forward(const Tensor& x) {
  check_image(describe(), x, proj->in_features);
  int64_t B = x.size(0), N = x.size(2) * x.size(3);
  Tensor tokens = channels_last(x).reshape({B * N, proj->in_features});  // one row per token
  Tensor h = silu(norm->forward(proj->forward(tokens)));                 // BN over all B*N rows
  Tensor pooled = mean(h.view({B, N, proj->out_features}), {1});         // (B, hidden)
  return classifier->forward(pooled);
}

int64_t Head::macs(int64_t h, int64_t w) const { return proj->macs(h * w) + classifier->macs(1); }

// ---- the network ----

Stage::Stage(const NaLaFormerConfig& c, int64_t stage, const std::vector<double>& drop_paths) {
  AttentionKind kind = c.attention_kinds()[stage];
  blocks = register_module("blocks", std::make_shared<Sequential>());
  for (double p : drop_paths)
    blocks->push_back(std::make_shared<Block>(c.widths[stage], c.heads[stage], c.mlp_ratio, kind, p,
                                              c.layerscale_init));
  if (stage + 1 < static_cast<int64_t>(c.widths.size()))
    downsample = register_module(
        "downsample", std::make_shared<PatchMerging>(c.widths[stage], c.widths[stage + 1]));
}

std::string Stage::describe() const {
  return "Stage(" + std::to_string(blocks->size()) + " blocks)";
}

Tensor Stage::forward(const Tensor& x) {
  Tensor y = blocks->forward(x);
  return downsample ? downsample->forward(y) : y;
}

// Section 2's init: conv weights truncated normal (std 0.02), biases 0; Linear layers likewise,
// or left at PyTorch's default uniform. The bounds +-2 are absolute, as in timm's
// trunc_normal_(std=.02), so with std 0.02 nothing is ever cut.
static void reset_truncated_normal(const Tensor& weight, const Tensor& bias) {
  weight.copy_(trunc_normal(weight.shape(), 0.02, -2.0, 2.0));
  if (bias.defined()) bias.copy_(zeros(bias.shape()));
}

static void init_weights(Module& m, LinearInit linear_init) {
  if (auto* conv = dynamic_cast<Conv2d*>(&m)) reset_truncated_normal(conv->weight, conv->bias);
  if (auto* lin = dynamic_cast<Linear*>(&m); lin && linear_init == LinearInit::TruncNormal)
    reset_truncated_normal(lin->weight, lin->bias);
}

NaLaFormer::NaLaFormer(const NaLaFormerConfig& c) : config(c) {
  config.validate();
  patch_embed = register_module(
      "patch_embed", std::make_shared<PatchEmbed>(c.in_channels, c.widths[0], c.stem_stride));
  // Stochastic depth rate rises linearly from 0 (first block) to drop_path_rate (last block).
  int64_t total = 0, done = 0;
  for (int64_t d : c.depths) total += d;
  layers = register_module("layers", std::make_shared<Sequential>());
  for (size_t i = 0; i < c.widths.size(); ++i) {
    std::vector<double> rates;
    for (int64_t b = 0; b < c.depths[i]; ++b, ++done)
      rates.push_back(total > 1 ? c.drop_path_rate * static_cast<double>(done) /
                                      static_cast<double>(total - 1)
                                : 0.0);
    layers->push_back(std::make_shared<Stage>(c, static_cast<int64_t>(i), rates));
  }
  head = register_module("head",
                         std::make_shared<Head>(c.widths.back(), c.head_hidden, c.num_classes));
  apply([&](Module& m) { init_weights(m, c.linear_init); });
  // The release's classifier is a 1x1 conv on the pooled features, so it has the conv init.
  reset_truncated_normal(head->classifier->weight, head->classifier->bias);
}

std::string NaLaFormer::describe() const { return "NaLaFormer(" + config.variant + ")"; }

Tensor NaLaFormer::forward(const Tensor& x) {
  check_image(describe(), x, config.in_channels);
  return head->forward(layers->forward(patch_embed->forward(x)));
}

std::shared_ptr<NaLaFormer> make_nalaformer(const NaLaFormerConfig& config) {
  return std::make_shared<NaLaFormer>(config);
}

// ---- the model table ----

std::vector<LayerRow> layer_table(const NaLaFormerConfig& config, int64_t image_size) {
  NaLaFormer model(config);
  std::vector<LayerRow> rows;
  int64_t h = model.patch_embed->output_size(image_size), w = h;
  rows.push_back({"patch_embed",
                  model.patch_embed->describe(),
                  {config.widths[0], h, w},
                  model.patch_embed->num_parameters(),
                  model.patch_embed->macs(image_size, image_size)});
  for (size_t i = 0; i < model.layers->size(); ++i) {
    auto& stage = dynamic_cast<Stage&>(*(*model.layers)[i]);
    std::string prefix = "layers." + std::to_string(i) + ".";
    for (size_t b = 0; b < stage.blocks->size(); ++b) {
      auto& block = dynamic_cast<Block&>(*(*stage.blocks)[b]);
      rows.push_back({prefix + "blocks." + std::to_string(b),
                      block.describe(),
                      {block.dim, h, w},
                      block.num_parameters(),
                      block.macs(h, w)});
    }
    if (stage.downsample) {
      int64_t macs = stage.downsample->macs(h, w);
      h = stage.downsample->conv->output_size(h);
      w = stage.downsample->conv->output_size(w);
      rows.push_back({prefix + "downsample",
                      stage.downsample->describe(),
                      {stage.downsample->conv->out_channels, h, w},
                      stage.downsample->num_parameters(),
                      macs});
    }
  }
  rows.push_back({"head",
                  model.head->describe(),
                  {config.num_classes},
                  model.head->num_parameters(),
                  model.head->macs(h, w)});
  return rows;
}

std::string model_summary(const NaLaFormerConfig& config, int64_t image_size) {
  std::vector<LayerRow> rows = layer_table(config, image_size);
  std::ostringstream os;
  os << "NaLaFormer-" << config.variant << ", " << config.in_channels << " x " << image_size
     << " x " << image_size << " input, " << config.num_classes << " classes, attention "
     << config.attention << "\n";
  os << std::left << std::setw(22) << "layer" << std::setw(30) << "module" << std::setw(18)
     << "output" << std::right << std::setw(12) << "params" << std::setw(12) << "MMACs"
     << "\n";
  int64_t params = 0, macs = 0;
  for (const LayerRow& r : rows) {
    os << std::left << std::setw(22) << r.name << std::setw(30) << r.description << std::setw(18)
       << shape_str(r.output) << std::right << std::setw(12) << r.parameters << std::setw(12)
       << std::fixed << std::setprecision(1) << static_cast<double>(r.macs) / 1e6 << "\n";
    params += r.parameters;
    macs += r.macs;
  }
  os << "total: " << params << " parameters (" << std::setprecision(2)
     << static_cast<double>(params) / 1e6 << " M), " << std::setprecision(3)
     << static_cast<double>(macs) / 1e9
     << " GMACs forward per image (multiply-adds, what papers report as FLOPs; norms and "
        "activations not counted)\n";
  return os.str();
}

}  // namespace nala
