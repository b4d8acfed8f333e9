// NaLaFormer: the vision transformer of NALAFORMER.md (sections 2 and 4), built from the layers of
// nn/layers.h and the fused attention op. Inside a stage, activations are images (B, C, H, W); a
// module that works on tokens permutes to (B, H, W, C), where a Linear acts on the last dim, and
// back.
//
//   image -> PatchEmbed (stem, /4 or /2) -> 4 stages of Blocks, a PatchMerging (/2) after each
//         of the first three -> Head (Linear, BN, SiLU per token, average pool, Linear) -> logits
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "autograd/ops.h"
#include "nn/layers.h"

namespace nala {

// How Linear layers start. Convolutions and the classifier (a 1x1 conv in the public release)
// always get truncated normal (std 0.02) weights and zero biases.
enum class LinearInit {
  TruncNormal,     // weight truncated normal std 0.02, bias 0: section 2, the default
  PyTorchDefault,  // weight and bias uniform +-1/sqrt(fan_in): the public release
};

struct NaLaFormerConfig {
  std::string variant = "custom";  // xt, t, s, xt-cifar, or custom
  std::vector<int64_t> widths;     // channels per stage
  std::vector<int64_t> depths;     // blocks per stage
  std::vector<int64_t> heads;      // attention heads per stage
  double mlp_ratio = 4.0;
  double drop_path_rate = 0.0;  // rises linearly from 0 over all blocks to this
  double layerscale_init = 1.0;
  std::string attention = "l,l,v,v";  // per stage: l NaLa, v softmax, r ReLU-linear
  int64_t stem_stride = 2;            // stride of the stem's first conv (s1)
  int64_t num_classes = 1000;
  int64_t in_channels = 3;
  int64_t head_hidden = 1024;
  LinearInit linear_init = LinearInit::TruncNormal;

  std::vector<AttentionKind> attention_kinds() const;  // parsed `attention`, one per stage
  void validate() const;                               // throws naming the bad field
  int64_t default_image_size() const { return stem_stride == 1 ? 32 : 224; }
  // Every field as strings, and back: stored in checkpoints as config.<field>.
  std::map<std::string, std::string> to_metadata() const;
  static NaLaFormerConfig from_metadata(const std::map<std::string, std::string>& metadata);
};

// The variants of NALAFORMER.md section 4: "xt", "t", "s", "xt-cifar".
NaLaFormerConfig nalaformer_variant(const std::string& name, int64_t num_classes = 1000);

// Multi-head attention of one kind with LePE and a SiLU gate:
//   [q, k, v, g] = qkvg(x);  y = attention(q, k, v) + lepe(v);  out = proj(norm(y) * silu(g))
class Attention : public Module {
 public:
  Attention(int64_t dim, int64_t heads, AttentionKind kind);
  Tensor forward(const Tensor& x) override;  // (B, C, H, W) -> (B, C, H, W)
  std::string describe() const override;
  int64_t macs(int64_t h, int64_t w) const;

  int64_t dim, heads;
  AttentionKind kind;
  std::shared_ptr<Linear> qkvg;  // C -> 4C
  std::shared_ptr<Conv2d> lepe;  // depthwise 5x5 on v
  std::shared_ptr<LayerNorm> norm;
  std::shared_ptr<Linear> proj;  // C -> C
};

// h = GELU(fc1(x));  h = h + dwconv(h);  out = fc2(h)
class Ffn : public Module {
 public:
  Ffn(int64_t dim, int64_t hidden);
  Tensor forward(const Tensor& x) override;  // (B, C, H, W) -> (B, C, H, W)
  std::string describe() const override;
  int64_t macs(int64_t h, int64_t w) const;

  std::shared_ptr<Linear> fc1;
  std::shared_ptr<Conv2d> dwconv;  // depthwise 3x3
  std::shared_ptr<Linear> fc2;
};

//   x = x + cpe1(x);  x = x + DropPath(gamma1 * attn(norm1(x)))
//   x = x + cpe2(x);  x = x + DropPath(gamma2 * mlp(norm2(x)))
class Block : public Module {
 public:
  Block(int64_t dim, int64_t heads, double mlp_ratio, AttentionKind kind, double drop_rate,
        double layerscale_init);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  int64_t macs(int64_t h, int64_t w) const;

  int64_t dim;
  std::shared_ptr<Conv2d> cpe1, cpe2;  // depthwise 3x3 position encodings
  std::shared_ptr<ChannelLayerNorm> norm1, norm2;
  std::shared_ptr<Attention> attn;
  std::shared_ptr<Ffn> mlp;
  std::shared_ptr<DropPath> drop_path;
  Tensor gamma1, gamma2;  // LayerScale, (C)
};

// The stem: four 3x3 convs (with bias) each followed by batch norm, GELU between them; strides
// s1, 1, 1, 2.
class PatchEmbed : public Module {
 public:
  PatchEmbed(int64_t in_channels, int64_t dim, int64_t first_stride);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  int64_t output_size(int64_t input_size) const;
  int64_t macs(int64_t h, int64_t w) const;

  std::shared_ptr<Conv2d> conv1, conv2, conv3, conv4;
  std::shared_ptr<BatchNorm2d> norm1, norm2, norm3, norm4;
};

// Between stages: 3x3 conv (with bias) with stride 2 (C_in -> C_out), then batch norm.
class PatchMerging : public Module {
 public:
  PatchMerging(int64_t in_dim, int64_t out_dim);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  int64_t macs(int64_t h, int64_t w) const;

  std::shared_ptr<Conv2d> conv;
  std::shared_ptr<BatchNorm2d> norm;
};

// Per token: proj (C -> hidden), batch norm, SiLU; then the mean over tokens and the classifier.
class Head : public Module {
 public:
  Head(int64_t dim, int64_t hidden, int64_t num_classes);
  Tensor forward(const Tensor& x) override;  // (B, C, H, W) -> (B, num_classes)
  std::string describe() const override;
  int64_t macs(int64_t h, int64_t w) const;

  std::shared_ptr<Linear> proj;
  std::shared_ptr<BatchNorm2d> norm;
  std::shared_ptr<Linear> classifier;
};

// One stage: its blocks, then (except in the last stage) the downsampling to the next width.
class Stage : public Module {
 public:
  Stage(const NaLaFormerConfig& config, int64_t stage, const std::vector<double>& drop_paths);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;

  std::shared_ptr<Sequential> blocks;
  std::shared_ptr<PatchMerging> downsample;  // null in the last stage
};

class NaLaFormer : public Module {
 public:
  explicit NaLaFormer(const NaLaFormerConfig& config);
  Tensor forward(const Tensor& x) override;  // (B, in_channels, H, W) -> (B, num_classes)
  std::string describe() const override;

  NaLaFormerConfig config;
  std::shared_ptr<PatchEmbed> patch_embed;
  std::shared_ptr<Sequential> layers;  // the stages
  std::shared_ptr<Head> head;
};

std::shared_ptr<NaLaFormer> make_nalaformer(const NaLaFormerConfig& config);

// One row of the model table: a stem, block, downsampling or head, at a given input size.
struct LayerRow {
  std::string name;         // e.g. "layers.2.blocks.1"
  std::string description;  // e.g. "Block(128, 4 heads, v)"
  Shape output;             // (C, H, W) or (classes) for one image
  int64_t parameters = 0;
  int64_t macs = 0;  // forward multiply-adds for one image (what papers call FLOPs)
};
std::vector<LayerRow> layer_table(const NaLaFormerConfig& config, int64_t image_size);
// The table as text, with totals: what `nala model --variant NAME` prints.
std::string model_summary(const NaLaFormerConfig& config, int64_t image_size);

}  // namespace nala
