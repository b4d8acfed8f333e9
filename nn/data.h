// Data: datasets decoded into memory, image augmentations, and a prefetching DataLoader.
//
// The path of one batch:
//
//   load_cifar10 / load_image_folder / load_fashion_mnist / make_synthetic   (nn/datasets.cpp)
//     -> Dataset: every image decoded once, uint8 (N, C, H, W), int64 labels (N), class names
//   DataLoader(dataset, options)                                            (nn/loader.cpp)
//     start_epoch(e): a permutation of 0 .. N-1 drawn from (seed, e), cut into batches
//     worker threads, for each sample of a batch (nn/augment.cpp):
//       crop / resize / flip on uint8 -> normalise into the float32 batch
//       then, once per batch, mixup or cutmix (soft targets)
//     -> a bounded set of ready batches, handed out in order by next()
//
// Reproducibility: every random choice for sample i in epoch e comes from a generator keyed by
// (seed, e, i), and every batch-level choice from (seed, e, batch number). The batches of an
// epoch therefore depend on the seed and the epoch alone, not on the number of worker threads
// or on which thread happened to build which batch.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tensor/tensor.h"

namespace nala::data {

// ---- datasets (nn/datasets.cpp) ----

// A labelled image dataset held in memory. The tensors are handles, so copying a Dataset is
// cheap and shares the pixels.
struct Dataset {
  Tensor images;                     // uint8 (N, C, H, W), contiguous, on the CPU
  Tensor labels;                     // int64 (N), each in [0, classes.size())
  std::vector<std::string> classes;  // class index -> name
  int64_t skipped = 0;               // files that could not be decoded (image folders only)

  int64_t size() const { return labels.numel(); }
  int64_t num_classes() const { return static_cast<int64_t>(classes.size()); }
  int64_t channels() const { return images.size(1); }
  int64_t height() const { return images.size(2); }
  int64_t width() const { return images.size(3); }
};

// Which half of a dataset to load. Test is the held-out half: test_batch.bin for CIFAR-10,
// t10k-* for Fashion-MNIST, val/ (or test/) for an image folder.
enum class Split { Train, Test };
const char* split_name(Split split);  // "train" or "test"

// CIFAR-10, binary version: `dir` holds data_batch_1.bin .. data_batch_5.bin and test_batch.bin
// (or is the folder that holds cifar-10-batches-bin/, as tools/download_cifar10.sh leaves it).
// Each file is a run of 3073-byte records: one label byte, then a 3 x 32 x 32 image in CHW
// order. A missing or truncated file, or a label above 9, throws naming the file.
Dataset load_cifar10(const std::string& dir, Split split);

// How an image folder is decoded: every image becomes channels x image_size x image_size.
struct FolderOptions {
  int64_t image_size = 0;   // 0: the shorter side of the first image
  int64_t channels = 3;     // 3: RGB (grayscale is repeated, alpha dropped); 1: grayscale
  bool center_crop = true;  // shorter side to image_size, then the central square; false: the
                            // whole image squeezed to a square (for images already square)
  int64_t threads = 0;      // decoding threads; 0: one per hardware thread
};

// An ImageNet-style folder: root/train/<class>/*.{jpg,jpeg,png} for Train, root/val/<class>/
// (or root/test/<class>/) for Test. Classes are the sorted names of the train class folders,
// so a class has the same index in both splits. A file stb_image cannot decode is skipped with
// a warning naming it, and the number skipped is reported and kept in Dataset::skipped. A
// missing directory, an empty class folder, or class folders that differ between the splits
// throw naming the directory.
Dataset load_image_folder(const std::string& root, Split split, const FolderOptions& options);

// Where Debian's dataset-fashion-mnist package puts the files.
constexpr const char* kDebianFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// Fashion-MNIST (or any IDX pair laid out like it): `dir` holds train-images-idx3-ubyte and
// train-labels-idx1-ubyte for Train, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte for
// Test, each either plain or gzip-compressed with a .gz suffix. Images are 1 x 28 x 28.
Dataset load_fashion_mnist(const std::string& dir, Split split);

// A dataset the program draws itself, for trying things out with no data on disk: `n` images,
// 3 x 32 x 32, of 10 classes of procedural patterns (stripes, checkerboard, dots, disk, ring,
// square, plus, triangle, x) in random colours and random positions and sizes, with pixel noise.
// Labels cycle 0, 1, ..., 9, 0, ... Image i is a function of (seed, split, i) alone, so the two
// splits never share an image. Every class keeps its label under a horizontal flip and a small
// shift, so the usual CIFAR augmentations apply; a small convnet learns it to high accuracy.
Dataset make_synthetic(Split split, int64_t n, uint64_t seed = 0);
constexpr int64_t kSyntheticTrainSize = 10000;
constexpr int64_t kSyntheticTestSize = 2000;

// Loads a dataset named by `source` (what `nala train --data` takes):
//   "" or "synthetic"  make_synthetic with kSyntheticTrainSize / kSyntheticTestSize images
//   "fashion-mnist"  load_fashion_mnist(kDebianFashionMnistDir)
//   cifar10=DIR, folder=DIR, fashion-mnist=DIR   that loader on DIR
//   a directory      CIFAR-10 binary files, IDX files or an image folder, told apart by the
//                    files it holds (`folder` is used for an image folder only)
Dataset load_dataset(const std::string& source, Split split, const FolderOptions& folder);

// `n` images drawn without replacement from `dataset`, at random (seeded: the same seed, the same
// subset), kept in their original order: what `--limit-train` / `--limit-test` use, so that a
// quick run on a dataset stored class by class (an image folder) still sees every class. The
// whole dataset when n >= its size.
Dataset random_subset(const Dataset& dataset, int64_t n, uint64_t seed);

// Per-channel mean and standard deviation of pixel / 255 over a whole dataset, the usual
// constants of the normalisation step.
struct ChannelStats {
  std::vector<float> mean, stddev;
};
ChannelStats channel_stats(const Dataset& dataset);

// ---- random numbers for augmentation (nn/augment.cpp) ----

// A generator keyed by a seed and a path of integers, e.g. Rng(seed, {kSampleStream, epoch, i}):
// draw k of key K is splitmix64(K ^ splitmix64(k)), as in kernels/random.h. Cheap to make (no
// state to warm up), so each sample gets its own. Meets UniformRandomBitGenerator, for use
// with std:: distributions.
class Rng {
 public:
  // The first key of each stream drawn from, so that no two uses coincide: the loader's shuffle,
  // per-sample augmentation and per-batch mixing, and random_subset.
  enum Stream : uint64_t {
    kShuffleStream = 1,
    kSampleStream = 2,
    kBatchStream = 3,
    kSubsetStream = 4
  };

  using result_type = uint64_t;
  Rng(uint64_t seed, std::initializer_list<uint64_t> path);
  static constexpr result_type min() { return 0; }
  static constexpr result_type max() { return ~result_type{0}; }
  result_type operator()();
  double uniform(double low = 0.0, double high = 1.0);  // in [low, high)
  int64_t below(int64_t n);                             // integer in [0, n), n > 0
  bool coin() { return (*this)() >> 63; }               // true with probability 1/2

 private:
  uint64_t key_;
  uint64_t counter_ = 0;
};

// ---- augmentation (nn/augment.cpp) ----

// One image, uint8, channels x height x width in row-major order (a slice of Dataset::images).
struct Image {
  int64_t channels = 0, height = 0, width = 0;
  std::vector<uint8_t> pixels;

  Image() = default;
  Image(int64_t channels, int64_t height, int64_t width)
      : channels(channels), height(height), width(width), pixels(channels * height * width) {}
  uint8_t& at(int64_t c, int64_t y, int64_t x) { return pixels[(c * height + y) * width + x]; }
  uint8_t at(int64_t c, int64_t y, int64_t x) const { return pixels[(c * height + y) * width + x]; }
};
Image image_at(const Dataset& dataset, int64_t index);  // a copy of image `index`

Image flip_horizontal(const Image& image);
// The height x width window whose top-left corner is (top, left); pixels outside the image
// (negative or past the edge) are 0.
Image crop(const Image& image, int64_t top, int64_t left, int64_t height, int64_t width);
// Pads every side with `padding` zero pixels, then takes a random window of the original size
// (the CIFAR augmentation, padding 4).
Image random_crop(const Image& image, int64_t padding, Rng& rng);
// Bilinear resize. When shrinking, the tent filter widens to the footprint of an output pixel,
// so every source pixel contributes (no aliasing); resizing to the same size is the identity.
Image resize(const Image& image, int64_t height, int64_t width);
// Scales the shorter side to `resize_to`, then takes the central crop_size x crop_size square.
Image resize_center_crop(const Image& image, int64_t resize_to, int64_t crop_size);
// The Inception / torchvision crop: a random window covering a fraction in [min_scale, 1] of
// the image area, aspect ratio in [3/4, 4/3] (uniform in log), resized to height x width.
Image random_resized_crop(const Image& image, int64_t height, int64_t width, double min_scale,
                          Rng& rng);
// Writes (pixel / 255 - mean[c]) / stddev[c] to out (channels x height x width floats). Empty
// mean and stddev mean 0 and 1.
void normalize(const Image& image, const std::vector<float>& mean, const std::vector<float>& stddev,
               float* out);

// What happens to each sample on its way into a batch, in this order:
//   1. geometry: random_resized_crop to output_size (or the image's own size when it is 0), when
//      random_resized_crop;
//      otherwise, when output_size differs from the image, resize_center_crop(image,
//      output_size / center_crop_fraction, output_size); then random_crop when crop_padding > 0
//   2. flip_horizontal with probability 1/2, when horizontal_flip
//   3. normalize with mean and stddev
// The default is the evaluation transform of a dataset stored at its training size. Typical
// training settings:
//   CIFAR-10, Fashion-MNIST, synthetic:  crop_padding = 4, horizontal_flip = true
//   ImageNet-style, training:            output_size = 224, random_resized_crop = true,
//                                        horizontal_flip = true
//   ImageNet-style, evaluation:          output_size = 224, center_crop_fraction = 0.875
struct Transform {
  int64_t output_size = 0;  // 0: the dataset's own height and width
  bool random_resized_crop = false;
  double min_scale = 0.08;  // smallest area fraction random_resized_crop keeps
  double center_crop_fraction = 1.0;
  int64_t crop_padding = 0;
  bool horizontal_flip = false;
  std::vector<float> mean, stddev;  // per channel (see channel_stats); empty: 0 and 1
};
// Steps 1 and 2 above.
Image transform_image(const Image& image, const Transform& transform, Rng& rng);

// Batch-level mixing (mixup, arXiv 1710.09412; cutmix, arXiv 1905.04899), which replaces the
// hard labels with soft targets. With both alphas set, each batch uses one of the two, chosen
// with probability 1/2.
struct Mixing {
  double mixup_alpha = 0.0;      // > 0: mixup with lambda ~ Beta(alpha, alpha)
  double cutmix_alpha = 0.0;     // > 0: cutmix with lambda ~ Beta(alpha, alpha)
  double label_smoothing = 0.0;  // folded into the soft targets
  bool enabled() const { return mixup_alpha > 0.0 || cutmix_alpha > 0.0; }
};
// Mixes sample i of `images` (float32 (B, C, H, W), contiguous, changed in place) with sample
// B - 1 - i, and returns the matching soft targets, float32 (B, num_classes): lambda times the
// (smoothed) one-hot label of i plus 1 - lambda times that of its partner. Mixup blends the
// whole images; cutmix pastes a random box of the partner, lambda being the area left.
Tensor mix_batch(const Tensor& images, const Tensor& labels, int64_t num_classes,
                 const Mixing& mixing, Rng& rng);

// ---- the loader (nn/loader.cpp) ----

struct LoaderOptions {
  int64_t batch_size = 128;
  bool shuffle = true;     // a new permutation each epoch; false: dataset order
  bool drop_last = false;  // drop the last, smaller batch
  uint64_t seed = 0;       // shuffling, augmentation and mixing all derive from it
  int64_t workers = 2;     // background threads building batches; 0: built inside next()
  int64_t prefetch = 4;    // at most this many batches built or being built ahead of next()
  Transform transform;
  Mixing mixing;
};

struct Batch {
  Tensor images;                 // float32 (B, C, H, W), on the CPU
  Tensor labels;                 // int64 (B)
  Tensor targets;                // float32 (B, classes) when mixing is enabled, else undefined
  std::vector<int64_t> indices;  // the dataset index of each sample
};

// Usage:
//   DataLoader loader(train, options);
//   for (int64_t epoch = 0; epoch < epochs; ++epoch) {
//     loader.start_epoch(epoch);
//     Batch batch;
//     while (loader.next(batch)) { ... }
//   }
// Workers start building an epoch's batches as soon as start_epoch is called and keep at most
// `prefetch` of them ahead of the consumer. Calling start_epoch again before the epoch is
// finished abandons the rest of it; destroying the loader stops the workers after the batch
// each one is building (no waiting for a consumer that has left).
class DataLoader {
 public:
  DataLoader(Dataset dataset, LoaderOptions options);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  const Dataset& dataset() const { return dataset_; }
  const LoaderOptions& options() const { return options_; }
  int64_t batches_per_epoch() const;
  // Starts epoch `epoch` at its batch `first_batch` (0 .. batches_per_epoch()): a batch depends
  // only on (seed, epoch, its number), so a run resumed in the middle of an epoch gets the same
  // remaining batches as one that never stopped.
  void start_epoch(int64_t epoch, int64_t first_batch = 0);
  // The epoch's next batch in order; false when the epoch is over. Rethrows an error a worker
  // met building the batch.
  bool next(Batch& batch);

 private:
  // A batch as a worker hands it over: the batch, or the error that stopped it.
  struct Built {
    Batch batch;
    std::exception_ptr error;
  };
  // Batch `number` of `epoch` whose samples are order[number * batch_size ...]: a pure
  // function of its arguments, safe to call from any thread.
  Batch build_batch(int64_t epoch, int64_t number, const std::vector<int64_t>& order) const;
  void worker_loop();

  const Dataset dataset_;
  const LoaderOptions options_;

  // The epoch in progress, shared with the workers under mutex_.
  std::mutex mutex_;
  std::condition_variable work_ready_;   // a batch may be claimed, or the loader is stopping
  std::condition_variable batch_ready_;  // a built batch has arrived
  int64_t epoch_ = -1;
  uint64_t generation_ = 0;  // bumped by start_epoch: work of an older epoch is dropped
  std::shared_ptr<const std::vector<int64_t>> order_;  // sample order of this epoch
  int64_t next_to_claim_ = 0;                          // the next batch a worker builds
  int64_t next_to_yield_ = 0;                          // the next batch next() returns
  std::map<int64_t, Built> ready_;                     // built, not yet returned
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace nala::data
