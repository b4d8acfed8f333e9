#include "nn/train.h"

#include <stb/stb_image_write.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <memory>
#include <numeric>
#include <ostream>
#include <sstream>

#include "nn/checkpoint.h"
#include "nn/optim.h"
#ifdef NALA_WITH_CUDA
#include "kernels/kernels.h"
#endif

namespace nala {

namespace fs = std::filesystem;

// ---- data ----

// One split of `spec` (TrainOptions::data, see data::load_dataset), image folders decoded at
// `image_size`.
static data::Dataset load_split(const std::string& spec, data::Split split, int64_t image_size) {
  data::FolderOptions folder;
  folder.image_size = image_size;
  return data::load_dataset(spec, split, folder);
}

// Train-time augmentation: CIFAR-style crop+flip for small images, random-resized-crop for
// larger ones; both normalise with the training set's channel statistics.
static data::Transform train_transform(const data::Dataset& d, const data::ChannelStats& stats) {
  data::Transform t;
  t.horizontal_flip = true;
  if (d.height() <= 64) {
    t.crop_padding = d.height() / 8;
  } else {
    t.random_resized_crop = true;
    t.min_scale = 0.25;
  }
  t.mean = stats.mean;
  t.stddev = stats.stddev;
  return t;
}

static data::Transform eval_transform(const data::ChannelStats& stats) {
  data::Transform t;
  t.mean = stats.mean;
  t.stddev = stats.stddev;
  return t;
}

// ---- Ctrl-C ----

static std::atomic<bool> g_interrupted{false};
static void on_sigint(int) { g_interrupted = true; }

// ---- evaluation ----

EvalResult evaluate(NaLaFormer& model, data::DataLoader& loader, Device device) {
  NoGradGuard no_grad;
  model.eval();
  int64_t classes = loader.dataset().num_classes(), seen = 0;
  std::vector<int64_t> class_total(classes, 0), class_correct(classes, 0);
  double loss_sum = 0, top1 = 0, top5 = 0;
  loader.start_epoch(0);
  data::Batch batch;
  while (loader.next(batch)) {
    Tensor logits = model.forward(batch.images.to(device));
    int64_t B = batch.labels.numel();
    loss_sum += cross_entropy(logits, batch.labels.to(device)).item() * B;
    std::vector<float> l = logits.to(DType::Float32).to_vector<float>();
    std::vector<int64_t> y = batch.labels.to_vector<int64_t>();
    for (int64_t i = 0; i < B; ++i) {
      const float* row = &l[i * classes];
      int64_t above = 0;  // classes scored higher than the true one
      for (int64_t c = 0; c < classes; ++c) above += row[c] > row[y[i]];
      top1 += above == 0;
      top5 += above < 5;
      class_total[y[i]]++;
      class_correct[y[i]] += above == 0;
    }
    seen += B;
  }
  model.train();
  EvalResult r;
  r.loss = loss_sum / std::max<int64_t>(seen, 1);
  r.top1 = 100.0 * top1 / std::max<int64_t>(seen, 1);
  r.top5 = 100.0 * top5 / std::max<int64_t>(seen, 1);
  for (int64_t c = 0; c < classes; ++c)
    r.per_class_top1.push_back(class_total[c] ? 100.0 * class_correct[c] / class_total[c] : 0.0);
  return r;
}

// ---- curves.png: loss (left) and accuracy (right) per epoch, drawn pixel by pixel ----

struct EpochRecord {
  int64_t epoch;
  double train_loss, train_acc, test_loss, test_top1, test_top5, lr, seconds;
};

// The records of a metrics.csv written by train(), for a resumed run's curves and best accuracy;
// none when the file does not exist. Fields are read with strtod, which also takes the "nan" and
// "inf" that a diverged run writes (operator>> does not).
static std::vector<EpochRecord> read_metrics_csv(const std::string& path) {
  std::vector<EpochRecord> records;
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);  // the header
  while (std::getline(in, line)) {
    double fields[8];
    const char* at = line.c_str();
    for (int i = 0; i < 8; ++i) {
      char* end = nullptr;
      fields[i] = std::strtod(at, &end);
      if (end == at || *end != (i < 7 ? ',' : '\0'))
        throw std::runtime_error("train: cannot read line '" + line + "' of " + path);
      at = end + 1;
    }
    records.push_back(EpochRecord{static_cast<int64_t>(fields[0]), fields[1], fields[2], fields[3],
                                  fields[4], fields[5], fields[6], fields[7]});
  }
  return records;
}

// One epoch's line of metrics.csv (after its header) and of metrics.jsonl.
static const char* const kMetricsCsvHeader =
    "epoch,train_loss,train_acc,test_loss,test_top1,test_top5,lr,seconds\n";
static void write_csv_row(std::ostream& csv, const EpochRecord& r) {
  csv << r.epoch << "," << r.train_loss << "," << r.train_acc << "," << r.test_loss << ","
      << r.test_top1 << "," << r.test_top5 << "," << r.lr << "," << r.seconds << std::endl;
}
static void write_jsonl_row(std::ostream& jsonl, const EpochRecord& r) {
  jsonl << std::setprecision(6) << "{\"epoch\": " << r.epoch << ", \"train_loss\": " << r.train_loss
        << ", \"train_acc\": " << r.train_acc << ", \"test_loss\": " << r.test_loss
        << ", \"test_top1\": " << r.test_top1 << ", \"test_top5\": " << r.test_top5
        << ", \"lr\": " << r.lr << ", \"seconds\": " << r.seconds << "}" << std::endl;
}

static void write_curves_png(const std::string& path, const std::vector<EpochRecord>& history) {
  const int W = 800, H = 300, panel = W / 2, margin = 20;
  std::vector<uint8_t> px(W * H * 3, 255);
  auto dot = [&](int x, int y, const uint8_t* c) {
    for (int dy = -1; dy <= 1; ++dy)
      for (int dx = -1; dx <= 1; ++dx) {
        int X = x + dx, Y = y + dy;
        if (X >= 0 && X < W && Y >= 0 && Y < H) std::copy(c, c + 3, &px[(Y * W + X) * 3]);
      }
  };
  auto line = [&](double x0, double y0, double x1, double y1, const uint8_t* c) {
    int steps = static_cast<int>(std::max(std::abs(x1 - x0), std::abs(y1 - y0))) + 1;
    for (int i = 0; i <= steps; ++i)
      dot(int(x0 + (x1 - x0) * i / steps), int(y0 + (y1 - y0) * i / steps), c);
  };
  const uint8_t black[3] = {0, 0, 0}, blue[3] = {31, 119, 180}, orange[3] = {255, 127, 14};
  // Each series: panel, colour, value per epoch, value range. A diverged epoch's nan or inf loss
  // is left out of the range and of the plot.
  double max_loss = 1e-9;
  for (const EpochRecord& e : history)
    for (double loss : {e.train_loss, e.test_loss})
      if (std::isfinite(loss)) max_loss = std::max(max_loss, loss);
  struct Series {
    int panel;
    const uint8_t* color;
    std::function<double(const EpochRecord&)> value;
    double top;
  };
  std::vector<Series> series = {
      {0, blue, [](const EpochRecord& e) { return e.train_loss; }, max_loss},
      {0, orange, [](const EpochRecord& e) { return e.test_loss; }, max_loss},
      {1, blue, [](const EpochRecord& e) { return e.train_acc; }, 100.0},
      {1, orange, [](const EpochRecord& e) { return e.test_top1; }, 100.0}};
  for (int p = 0; p < 2; ++p) {
    line(p * panel + margin, H - margin, (p + 1) * panel - margin, H - margin, black);  // x axis
    line(p * panel + margin, margin, p * panel + margin, H - margin, black);            // y axis
  }
  size_t n = history.size();
  for (const Series& s : series)
    for (size_t i = 0; i < n; ++i) {
      auto at = [&](size_t j) {
        double x =
            s.panel * panel + margin + (panel - 2.0 * margin) * (n > 1 ? double(j) / (n - 1) : 0.5);
        double y =
            H - margin - (H - 2.0 * margin) * std::clamp(s.value(history[j]) / s.top, 0.0, 1.0);
        return std::pair{x, y};
      };
      if (!std::isfinite(s.value(history[i]))) continue;
      auto [x, y] = at(i);
      dot(int(x), int(y), s.color);
      if (i > 0 && std::isfinite(s.value(history[i - 1]))) {
        auto [px0, py0] = at(i - 1);
        line(px0, py0, x, y, s.color);
      }
    }
  stbi_write_png(path.c_str(), W, H, 3, px.data(), W * 3);
}

// ---- training ----

static std::string format_duration(double seconds) {
  int s = static_cast<int>(seconds);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%02d:%02d:%02d", s / 3600, s / 60 % 60, s % 60);
  return buf;
}

EvalResult train(const TrainOptions& o, std::ostream& log) {
  Device device = parse_device(o.device);
  manual_seed(o.seed);
  fs::create_directories(o.out);

  // Data.
  data::Dataset train_set = load_split(o.data, data::Split::Train, o.image_size);
  data::Dataset test_set = load_split(o.data, data::Split::Test, o.image_size);
  if (o.limit_train > 0) train_set = data::random_subset(train_set, o.limit_train, o.seed);
  if (o.limit_test > 0) test_set = data::random_subset(test_set, o.limit_test, o.seed + 1);
  data::ChannelStats stats = data::channel_stats(train_set);
  data::LoaderOptions train_opts;
  train_opts.batch_size = o.batch_size;
  train_opts.drop_last = true;
  train_opts.seed = o.seed;
  train_opts.workers = o.workers;
  train_opts.transform = train_transform(train_set, stats);
  train_opts.mixing.mixup_alpha = o.mixup;
  train_opts.mixing.cutmix_alpha = o.cutmix;
  train_opts.mixing.label_smoothing = o.label_smoothing;
  data::LoaderOptions test_opts = train_opts;
  test_opts.shuffle = false;
  test_opts.drop_last = false;
  test_opts.transform = eval_transform(stats);
  test_opts.mixing = data::Mixing{};
  data::DataLoader train_loader(train_set, train_opts), test_loader(test_set, test_opts);

  // Model, optimizer, schedule.
  NaLaFormerConfig config = nalaformer_variant(o.model, train_set.num_classes());
  config.in_channels = train_set.channels();
  if (!o.attention.empty()) config.attention = o.attention;
  if (o.drop_path >= 0) config.drop_path_rate = o.drop_path;
  config.validate();
  auto model = make_nalaformer(config);
  model->to(device);
  AdamW optimizer(split_decay_groups(*model, o.weight_decay), AdamWOptions{o.lr});
  int64_t steps_per_epoch = train_loader.batches_per_epoch();
  if (steps_per_epoch == 0)
    throw std::invalid_argument("train: " + std::to_string(train_set.size()) +
                                " training images make no batch of " +
                                std::to_string(o.batch_size));
  int64_t total_steps = o.epochs * steps_per_epoch;
  int64_t warmup_steps =
      std::min<int64_t>(static_cast<int64_t>(o.warmup_epochs * steps_per_epoch), total_steps - 1);
  WarmupCosineSchedule schedule(o.lr, total_steps, warmup_steps, o.min_lr);
  std::unique_ptr<ModelEma> ema =
      o.ema_decay > 0 ? std::make_unique<ModelEma>(*model, o.ema_decay) : nullptr;
  Metadata meta = config.to_metadata();
  TrainingProgress progress;
  // Batches of epoch progress.epoch done before a mid-epoch stop, skipped when resuming.
  int64_t resume_batch = 0;
  if (!o.resume.empty()) {
    progress = load_checkpoint(o.resume, *model, &optimizer, ema.get(), meta);
    resume_batch = progress.step - progress.epoch * steps_per_epoch;
    if (resume_batch < 0 || resume_batch > steps_per_epoch)
      throw std::invalid_argument(
          "train: " + o.resume + " was saved at step " + std::to_string(progress.step) + " after " +
          std::to_string(progress.epoch) + " epochs, which does not fit " +
          std::to_string(steps_per_epoch) +
          " steps per epoch (another dataset, --limit-train or --batch-size?)");
    log << "resumed from " << o.resume << " at epoch " << progress.epoch << ", step "
        << progress.step << "\n";
  }
  log << "model " << o.model << " (" << config.attention << "), " << model->num_parameters()
      << " parameters, " << train_set.size() << " train / " << test_set.size() << " test images of "
      << train_set.channels() << "x" << train_set.height() << "x" << train_set.width() << ", "
      << steps_per_epoch << " steps per epoch on " << o.device << "\n";

  // A resumed run continues the curves and the best accuracy of its run directory, up to the
  // checkpoint's epoch: resuming from an earlier checkpoint (best.safetensors, say) drops the
  // later epochs' records, which that run will write again.
  std::vector<EpochRecord> history;
  if (!o.resume.empty()) {
    history = read_metrics_csv(o.out + "/metrics.csv");
    const size_t recorded = history.size();
    history.erase(std::remove_if(history.begin(), history.end(),
                                 [&](const EpochRecord& r) { return r.epoch > progress.epoch; }),
                  history.end());
    if (history.size() < recorded) {
      std::ofstream csv(o.out + "/metrics.csv"), jsonl(o.out + "/metrics.jsonl");
      csv << kMetricsCsvHeader;
      for (const EpochRecord& r : history) {
        write_csv_row(csv, r);
        write_jsonl_row(jsonl, r);
      }
    }
  }
  std::ofstream jsonl(o.out + "/metrics.jsonl", std::ios::app),
      csv(o.out + "/metrics.csv", std::ios::app);
  if (csv.tellp() == 0) csv << kMetricsCsvHeader;
  double best_top1 = -1;
  for (const EpochRecord& r : history) best_top1 = std::max(best_top1, r.test_top1);
  EvalResult last;
  g_interrupted = false;
  int64_t steps_run = 0;
  auto stopping = [&] {
    return g_interrupted || (o.stop_after_steps > 0 && steps_run >= o.stop_after_steps);
  };
  auto previous_handler = std::signal(SIGINT, on_sigint);
  auto save = [&](const std::string& name) {
    save_checkpoint(o.out + "/" + name, *model, &optimizer, ema.get(), progress, meta);
  };

  bool checkpoint_current = false;  // last.safetensors holds the state as it is now
  for (int64_t epoch = progress.epoch; epoch < o.epochs && !stopping(); ++epoch) {
    auto t0 = std::chrono::steady_clock::now();
    const int64_t first_batch = epoch == progress.epoch ? resume_batch : 0;
    train_loader.start_epoch(epoch, first_batch);
    model->train();
    // Loss and correct counts accumulate on the device; the host reads them only to print.
    Tensor loss_sum = zeros({}, TensorOptions{DType::Float32, device}),
           correct = zeros({}, TensorOptions{DType::Float32, device});
    int64_t seen = 0, step_in_epoch = first_batch;
    data::Batch batch;
    double last_print = 0;
    while (!stopping() && train_loader.next(batch)) {
      optimizer.lr = schedule.lr_at(progress.step);
      Tensor x = batch.images.to(device), y = batch.labels.to(device);
      Tensor logits = model->forward(x);
      Tensor loss = batch.targets.defined()
                        ? soft_target_cross_entropy(logits, batch.targets.to(device))
                        : cross_entropy(logits, y, o.label_smoothing);
      optimizer.zero_grad();
      loss.backward();
      // Clipping stays on the device: the coefficient is a tensor the fused update reads.
      optimizer.step(o.clip_grad > 0 ? grad_clip_scale(model->parameters(), o.clip_grad)
                                     : Tensor());
      if (ema) ema->update(*model);
      {
        NoGradGuard no_grad;
        int64_t B = batch.labels.numel(), C = logits.size(1);
        // The logit of the true class equals the row max exactly when the prediction is right.
        std::vector<float> onehot(B * C, 0.0f);
        std::vector<int64_t> labels = batch.labels.to_vector<int64_t>();
        for (int64_t i = 0; i < B; ++i) onehot[i * C + labels[i]] = 1.0f;
        Tensor true_logit = sum(mul(logits.detach(), from_data(onehot, {B, C}, device)), {1});
        correct = add(correct, sum(eq(true_logit, max(logits.detach(), {1}))));
        loss_sum = add(loss_sum, mul(loss.detach(), double(B)));
        seen += B;
      }
      ++progress.step;
      ++step_in_epoch;
      ++steps_run;
      checkpoint_current = false;
      double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (elapsed - last_print > 1.0 || step_in_epoch == steps_per_epoch) {
        last_print = elapsed;
        double ips = seen / elapsed,
               eta = (steps_per_epoch - step_in_epoch) * o.batch_size / std::max(ips, 1e-9);
        // (After a mid-epoch resume, loss and images/s cover this run's batches only.)
        log << "\r\033[Kepoch " << epoch + 1 << "/" << o.epochs << "  step " << step_in_epoch << "/"
            << steps_per_epoch << "  loss " << std::fixed << std::setprecision(4)
            << loss_sum.item() / seen << "  lr " << std::scientific << std::setprecision(2)
            << optimizer.lr << std::fixed << "  " << std::setprecision(0) << ips << " img/s  ETA "
            << format_duration(eta) << std::flush;
      }
    }
    log << "\n";
    // A stop within the epoch saves it unfinished; one on its last batch still evaluates and
    // records it, so that the checkpoint never sits at the end of an unrecorded epoch.
    if (stopping() && step_in_epoch < steps_per_epoch) break;
    progress.epoch = epoch + 1;
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    last = evaluate(*model, test_loader, device);
    EpochRecord rec{epoch + 1,
                    loss_sum.item() / seen,
                    100.0 * correct.item() / seen,
                    last.loss,
                    last.top1,
                    last.top5,
                    optimizer.lr,
                    seconds};
    history.push_back(rec);
    log << std::fixed << std::setprecision(2) << "epoch " << rec.epoch << ": train loss "
        << rec.train_loss << " acc " << rec.train_acc << "%, test loss " << rec.test_loss
        << " top-1 " << rec.test_top1 << "% top-5 " << rec.test_top5 << "% ("
        << std::setprecision(1) << seconds << " s, " << std::setprecision(0) << seen / seconds
        << " img/s)\n";
    write_jsonl_row(jsonl, rec);
    write_csv_row(csv, rec);
    save("last.safetensors");
    checkpoint_current = true;
    if (rec.test_top1 > best_top1) {
      best_top1 = rec.test_top1;
      save("best.safetensors");
    }
    write_curves_png(o.out + "/curves.png", history);
  }
  std::signal(SIGINT, previous_handler);
  // A stop before the last epoch's end saves where it is, unless the epoch it stopped at the end
  // of was just saved; one on the last epoch's last batch has finished the run.
  if (stopping() && progress.epoch < o.epochs) {
    if (!checkpoint_current) save("last.safetensors");
    log << (g_interrupted ? "interrupted" : "stopped after " + std::to_string(steps_run) + " steps")
        << ": saved " << o.out << "/last.safetensors at epoch " << progress.epoch << ", step "
        << progress.step << " (resume with --resume)\n";
  } else if (!history.empty()) {
    log << "done: best test top-1 " << std::setprecision(2) << best_top1 << "%, last " << last.top1
        << "%; run in " << o.out << "\n";
  }
  return last;
}

EvalResult evaluate_checkpoint(const std::string& checkpoint, const std::string& data_spec,
                               const std::string& device_name_str, int64_t batch_size,
                               std::ostream& log) {
  Device device = parse_device(device_name_str);
  NaLaFormerConfig config = NaLaFormerConfig::from_metadata(checkpoint_config(checkpoint));
  int64_t image_size = config.stem_stride == 1 ? 0 : config.default_image_size();
  data::Dataset train_set = load_split(data_spec, data::Split::Train, image_size);
  data::Dataset test_set = load_split(data_spec, data::Split::Test, image_size);
  auto model = make_nalaformer(config);
  load_checkpoint(checkpoint, *model, nullptr, nullptr, config.to_metadata());
  model->to(device);
  data::LoaderOptions opts;
  opts.batch_size = batch_size;
  opts.shuffle = false;
  opts.transform = eval_transform(data::channel_stats(train_set));
  data::DataLoader loader(test_set, opts);
  EvalResult r = evaluate(*model, loader, device);
  log << std::fixed << std::setprecision(2) << "test loss " << r.loss << ", top-1 " << r.top1
      << "%, top-5 " << r.top5 << "% on " << test_set.size() << " images\n";
  log << std::left << std::setw(20) << "class"
      << "top-1 %\n";
  for (size_t c = 0; c < r.per_class_top1.size(); ++c)
    log << std::setw(20) << test_set.classes[c] << r.per_class_top1[c] << "\n";
  return r;
}

}  // namespace nala
