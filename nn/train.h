// Training and evaluation of a NaLaFormer on an image dataset: the loop behind `nala train`,
// `nala eval` and examples/. One function per job, reading top to bottom like timm's train.py.
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

#include "nn/data.h"
#include "nn/models/nalaformer.h"

namespace nala {

struct TrainOptions {
  std::string model = "xt-cifar";  // a variant of NALAFORMER.md section 4
  std::string attention;           // per-stage override, e.g. "l,l,l,l"; empty: the variant's
  std::string data;                // cifar10=DIR, folder=DIR, fashion-mnist[=DIR]; empty: synthetic
  int64_t image_size = 0;          // folder datasets: training resolution (0: the variant's)
  int64_t epochs = 10;
  int64_t batch_size = 128;
  double lr = 2e-3;  // AdamW peak learning rate
  double min_lr = 1e-5;
  double weight_decay = 0.05;
  double warmup_epochs = 1.0;
  double label_smoothing = 0.1;
  double drop_path = -1.0;           // < 0: the variant's rate
  double clip_grad = 5.0;            // max gradient norm; 0: no clipping
  double mixup = 0.0, cutmix = 0.0;  // alphas; 0: off
  double ema_decay = 0.0;            // > 0: keep an EMA of the weights and evaluate it too
  std::string device = "cpu";
  uint64_t seed = 0;
  int64_t workers = 2;      // data loader threads
  int64_t limit_train = 0;  // > 0: a random subset of this many training images (quick runs)
  int64_t limit_test = 0;   // > 0: evaluate on a random subset of this many test images
  std::string out = "runs/latest";
  std::string resume;            // a checkpoint to continue from (mid-epoch too)
  int64_t stop_after_steps = 0;  // > 0: stop after this many steps of this run, as Ctrl-C does
};

struct EvalResult {
  double loss = 0, top1 = 0, top5 = 0;  // top1/top5 in percent
  std::vector<double> per_class_top1;   // percent, per class
};

// Trains as the options say, writing RUN_DIR/metrics.jsonl, metrics.csv, last.safetensors,
// best.safetensors and curves.png; prints a progress line and per-epoch results on `log`.
// Ctrl-C (or stop_after_steps) saves last.safetensors and returns. Resuming from it continues
// at the next batch of the same epoch, with the best accuracy and the curves of RUN_DIR's
// metrics.csv. Returns the last epoch's evaluation.
EvalResult train(const TrainOptions& options, std::ostream& log);

// Evaluates `model` (in eval mode) on every image of `loader`'s dataset.
EvalResult evaluate(NaLaFormer& model, data::DataLoader& loader, Device device);

// `nala eval`: loads a checkpoint (rebuilding its model from the stored config) and evaluates it.
EvalResult evaluate_checkpoint(const std::string& checkpoint, const std::string& data_spec,
                               const std::string& device, int64_t batch_size, std::ostream& log);

}  // namespace nala
