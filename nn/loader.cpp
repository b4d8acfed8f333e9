// DataLoader: shuffled, augmented batches, built ahead of time by a pool of worker threads.
//
// Workers and the consumer share one small state under a mutex: the epoch's sample order, the
// next batch number to claim, the next to hand out, and the batches built but not yet handed
// out. A worker claims batch b only while b < next_to_yield + prefetch, which bounds the memory
// held by finished batches, and builds it outside the lock. next() waits for batch
// next_to_yield, so batches come out in order whichever worker finishes first.
#include <algorithm>
#include <numeric>
#include <stdexcept>

#include "nn/data.h"

namespace nala::data {

// Throws std::invalid_argument naming the loader and the bad setting.
static void check_options(const Dataset& dataset, const LoaderOptions& o) {
  auto fail = [](const std::string& why) { throw std::invalid_argument("DataLoader: " + why); };
  if (!dataset.images.defined() || dataset.images.dtype() != DType::UInt8 ||
      dataset.images.dim() != 4 || !dataset.images.is_contiguous() || dataset.images.is_cuda())
    fail("the dataset's images must be a contiguous uint8 (N, C, H, W) CPU tensor");
  if (!dataset.labels.defined() || dataset.labels.dtype() != DType::Int64 ||
      dataset.labels.shape() != Shape{dataset.images.size(0)})
    fail("the dataset's labels must be int64 (N) with N = " +
         std::to_string(dataset.images.size(0)));
  if (dataset.size() == 0) fail("the dataset is empty");
  if (o.batch_size <= 0) fail("batch_size must be positive, got " + std::to_string(o.batch_size));
  if (o.drop_last && o.batch_size > dataset.size())
    fail("drop_last with batch_size " + std::to_string(o.batch_size) + " larger than the " +
         std::to_string(dataset.size()) + " samples leaves no batch");
  if (o.workers < 0) fail("workers must be 0 or more, got " + std::to_string(o.workers));
  if (o.prefetch <= 0) fail("prefetch must be positive, got " + std::to_string(o.prefetch));

  const Transform& t = o.transform;
  const auto channels = static_cast<size_t>(dataset.channels());
  if (t.output_size < 0) fail("output_size must be 0 or more");
  if (!(t.min_scale > 0 && t.min_scale <= 1)) fail("min_scale must be in (0, 1]");
  if (!(t.center_crop_fraction > 0 && t.center_crop_fraction <= 1))
    fail("center_crop_fraction must be in (0, 1]");
  if (t.crop_padding < 0) fail("crop_padding must be 0 or more");
  if (!t.mean.empty() && t.mean.size() != channels)
    fail("mean has " + std::to_string(t.mean.size()) + " values for " + std::to_string(channels) +
         " channels");
  if (!t.stddev.empty() && t.stddev.size() != channels)
    fail("stddev has " + std::to_string(t.stddev.size()) + " values for " +
         std::to_string(channels) + " channels");
  for (float s : t.stddev)
    if (!(s > 0)) fail("every stddev must be positive, got " + std::to_string(s));

  const Mixing& m = o.mixing;
  if (m.mixup_alpha < 0 || m.cutmix_alpha < 0) fail("mixup_alpha and cutmix_alpha must be >= 0");
  if (!(m.label_smoothing >= 0 && m.label_smoothing < 1)) fail("label_smoothing must be in [0, 1)");
}

DataLoader::DataLoader(Dataset dataset, LoaderOptions options)
    : dataset_(std::move(dataset)), options_(std::move(options)) {
  check_options(dataset_, options_);
  for (int64_t i = 0; i < options_.workers; ++i) workers_.emplace_back([this] { worker_loop(); });
}

DataLoader::~DataLoader() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  work_ready_.notify_all();
  for (std::thread& worker : workers_) worker.join();
}

int64_t DataLoader::batches_per_epoch() const {
  const int64_t n = dataset_.size(), b = options_.batch_size;
  return options_.drop_last ? n / b : (n + b - 1) / b;
}

void DataLoader::start_epoch(int64_t epoch, int64_t first_batch) {
  if (first_batch < 0 || first_batch > batches_per_epoch())
    throw std::invalid_argument("DataLoader::start_epoch: first batch " +
                                std::to_string(first_batch) + " outside 0.." +
                                std::to_string(batches_per_epoch()));
  auto order = std::make_shared<std::vector<int64_t>>(dataset_.size());
  std::iota(order->begin(), order->end(), int64_t{0});
  if (options_.shuffle) {  // Fisher-Yates, from a generator keyed by (seed, epoch)
    Rng rng(options_.seed, {Rng::kShuffleStream, static_cast<uint64_t>(epoch)});
    for (int64_t i = static_cast<int64_t>(order->size()) - 1; i > 0; --i)
      std::swap((*order)[i], (*order)[rng.below(i + 1)]);
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    epoch_ = epoch;
    ++generation_;
    order_ = std::move(order);
    next_to_claim_ = first_batch;
    next_to_yield_ = first_batch;
    ready_.clear();
  }
  work_ready_.notify_all();
}

bool DataLoader::next(Batch& batch) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!order_) throw std::logic_error("DataLoader::next: call start_epoch first");
  if (next_to_yield_ == batches_per_epoch()) return false;
  if (workers_.empty()) {  // no workers: build the batch here
    batch = build_batch(epoch_, next_to_yield_++, *order_);
    return true;
  }
  batch_ready_.wait(lock, [&] { return ready_.count(next_to_yield_) > 0; });
  Built built = std::move(ready_[next_to_yield_]);
  ready_.erase(next_to_yield_++);
  lock.unlock();
  work_ready_.notify_all();  // a slot in the prefetch window has opened
  if (built.error) std::rethrow_exception(built.error);
  batch = std::move(built.batch);
  return true;
}

void DataLoader::worker_loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    work_ready_.wait(lock, [&] {
      return stopping_ || (order_ && next_to_claim_ < batches_per_epoch() &&
                           next_to_claim_ < next_to_yield_ + options_.prefetch);
    });
    if (stopping_) return;
    const int64_t number = next_to_claim_++, epoch = epoch_;
    const uint64_t generation = generation_;
    const std::shared_ptr<const std::vector<int64_t>> order = order_;
    lock.unlock();
    Built built;
    try {
      built.batch = build_batch(epoch, number, *order);
    } catch (...) {
      built.error = std::current_exception();
    }
    lock.lock();
    if (generation == generation_) {  // else start_epoch has moved on: drop the batch
      ready_.emplace(number, std::move(built));
      batch_ready_.notify_all();
    }
  }
}

Batch DataLoader::build_batch(int64_t epoch, int64_t number,
                              const std::vector<int64_t>& order) const {
  const int64_t first = number * options_.batch_size;
  const int64_t count = std::min(options_.batch_size, dataset_.size() - first);
  const Transform& transform = options_.transform;
  const int64_t channels = dataset_.channels();
  const int64_t height = transform.output_size > 0 ? transform.output_size : dataset_.height();
  const int64_t width = transform.output_size > 0 ? transform.output_size : dataset_.width();
  const int64_t sample = channels * height * width;

  Batch batch;
  batch.images = empty({count, channels, height, width}, TensorOptions{DType::Float32});
  batch.labels = empty({count}, TensorOptions{DType::Int64});
  float* images = batch.images.data<float>();
  int64_t* labels = batch.labels.data<int64_t>();
  const int64_t* dataset_labels = dataset_.labels.data<int64_t>();
  for (int64_t i = 0; i < count; ++i) {
    const int64_t index = order[first + i];
    // Keyed by the dataset index, not the position in the batch: a sample's augmentation in an
    // epoch does not depend on where the shuffle put it.
    Rng rng(options_.seed,
            {Rng::kSampleStream, static_cast<uint64_t>(epoch), static_cast<uint64_t>(index)});
    const Image image = transform_image(image_at(dataset_, index), transform, rng);
    normalize(image, transform.mean, transform.stddev, images + i * sample);
    labels[i] = dataset_labels[index];
    batch.indices.push_back(index);
  }
  if (options_.mixing.enabled()) {
    Rng rng(options_.seed,
            {Rng::kBatchStream, static_cast<uint64_t>(epoch), static_cast<uint64_t>(number)});
    batch.targets =
        mix_batch(batch.images, batch.labels, dataset_.num_classes(), options_.mixing, rng);
  }
  return batch;
}

}  // namespace nala::data
