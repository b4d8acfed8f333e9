// The datasets: CIFAR-10 binary files, image folders, Fashion-MNIST IDX files and a synthetic
// set, each decoded once into a Dataset (uint8 images (N, C, H, W), int64 labels (N)).
#include <stb/stb_image.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <thread>

#include "nn/data.h"

namespace nala::data {

namespace fs = std::filesystem;

const char* split_name(Split split) { return split == Split::Train ? "train" : "test"; }

// An empty dataset of n images of shape (channels, height, width), to be filled in.
static Dataset allocate(int64_t n, int64_t channels, int64_t height, int64_t width,
                        std::vector<std::string> classes) {
  Dataset d;
  d.images = empty({n, channels, height, width}, TensorOptions{DType::UInt8});
  d.labels = empty({n}, TensorOptions{DType::Int64});
  d.classes = std::move(classes);
  return d;
}

// The whole of a file, read through zlib: gzread passes a file that is not gzip-compressed
// through unchanged, so one reader serves both `name` and `name.gz`.
static std::vector<uint8_t> read_file(const std::string& path, const char* who) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (!file) throw std::runtime_error(std::string(who) + ": cannot open " + path);
  std::vector<uint8_t> bytes;
  constexpr size_t kChunk = 1 << 20;
  for (;;) {
    size_t size = bytes.size();
    bytes.resize(size + kChunk);
    int got = gzread(file, bytes.data() + size, kChunk);
    if (got < 0) {
      int code = 0;
      std::string reason = gzerror(file, &code);
      gzclose(file);
      throw std::runtime_error(std::string(who) + ": cannot read " + path + ": " + reason);
    }
    bytes.resize(size + got);
    if (got == 0) break;
  }
  gzclose(file);
  return bytes;
}

// ---- CIFAR-10 ----

static const std::vector<std::string> kCifar10Classes = {
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};

Dataset load_cifar10(const std::string& dir_name, Split split) {
  constexpr int64_t kImageBytes = 3 * 32 * 32, kRecordBytes = 1 + kImageBytes;
  fs::path dir(dir_name);
  if (!fs::exists(dir / "data_batch_1.bin") && !fs::exists(dir / "test_batch.bin") &&
      fs::is_directory(dir / "cifar-10-batches-bin"))
    dir /= "cifar-10-batches-bin";
  std::vector<fs::path> files;
  if (split == Split::Train) {
    for (int i = 1; i <= 5; ++i)
      files.push_back(dir / ("data_batch_" + std::to_string(i) + ".bin"));
  } else {
    files.push_back(dir / "test_batch.bin");
  }
  // Every file is checked before any is read, so a missing batch stops the run at once.
  int64_t records = 0;
  for (const fs::path& file : files) {
    if (!fs::is_regular_file(file))
      throw std::runtime_error("load_cifar10: missing " + file.string() +
                               " (expected data_batch_1.bin .. data_batch_5.bin and "
                               "test_batch.bin in " +
                               dir_name + "; tools/download_cifar10.sh fetches them)");
    auto bytes = static_cast<int64_t>(fs::file_size(file));
    if (bytes == 0 || bytes % kRecordBytes != 0)
      throw std::runtime_error("load_cifar10: " + file.string() +
                               " is truncated or not a CIFAR-10 "
                               "batch: " +
                               std::to_string(bytes) + " bytes is not a whole number of " +
                               std::to_string(kRecordBytes) + "-byte records");
    records += bytes / kRecordBytes;
  }
  Dataset d = allocate(records, 3, 32, 32, kCifar10Classes);
  uint8_t* images = d.images.data<uint8_t>();
  int64_t* labels = d.labels.data<int64_t>();
  int64_t n = 0;
  for (const fs::path& file : files) {
    std::vector<uint8_t> bytes = read_file(file.string(), "load_cifar10");
    for (size_t at = 0; at < bytes.size(); at += kRecordBytes, ++n) {
      if (bytes[at] > 9)
        throw std::runtime_error("load_cifar10: " + file.string() + ": record " +
                                 std::to_string(at / kRecordBytes) + " has label " +
                                 std::to_string(bytes[at]) + " (CIFAR-10 labels are 0 .. 9)");
      labels[n] = bytes[at];
      std::memcpy(images + n * kImageBytes, bytes.data() + at + 1, kImageBytes);
    }
  }
  return d;
}

// ---- image folders ----

static bool is_image_file(const fs::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png";
}

// The sorted names of the subdirectories of dir: the class names of an image folder.
static std::vector<std::string> class_folders(const fs::path& dir) {
  std::vector<std::string> names;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir))
    if (entry.is_directory()) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  if (names.empty())
    throw std::runtime_error("load_image_folder: " + dir.string() +
                             " holds no class folders (expected <class>/*.jpg)");
  return names;
}

// Decodes one file to channels x size x size, or returns why it cannot.
static std::string decode_image(const std::string& path, const FolderOptions& options, Image& out) {
  int width = 0, height = 0, channels_in_file = 0;
  auto channels = static_cast<int>(options.channels);
  // Asking stb_image for `channels` components converts on the way: gray is repeated into RGB,
  // RGB is averaged into gray, alpha is dropped.
  uint8_t* pixels = stbi_load(path.c_str(), &width, &height, &channels_in_file, channels);
  if (!pixels) return stbi_failure_reason();
  Image image(options.channels, height, width);  // stb_image gives HWC; Image is CHW
  for (int64_t c = 0; c < image.channels; ++c)
    for (int64_t y = 0; y < height; ++y)
      for (int64_t x = 0; x < width; ++x)
        image.at(c, y, x) = pixels[(y * width + x) * channels + c];
  stbi_image_free(pixels);
  out = options.center_crop ? resize_center_crop(image, options.image_size, options.image_size)
                            : resize(image, options.image_size, options.image_size);
  return "";
}

// The shorter side of the first image of `files` that decodes: the default image_size.
static int64_t first_image_size(const std::vector<std::string>& files, const fs::path& dir) {
  for (const std::string& file : files) {
    int width = 0, height = 0, channels = 0;
    if (stbi_info(file.c_str(), &width, &height, &channels)) return std::min(width, height);
  }
  throw std::runtime_error("load_image_folder: no image in " + dir.string() + " can be decoded");
}

Dataset load_image_folder(const std::string& root_name, Split split,
                          const FolderOptions& options_in) {
  const fs::path root(root_name);
  if (!fs::is_directory(root))
    throw std::runtime_error("load_image_folder: no such directory: " + root_name);
  if (options_in.channels != 1 && options_in.channels != 3)
    throw std::invalid_argument("load_image_folder: channels must be 1 or 3, got " +
                                std::to_string(options_in.channels));
  const fs::path train_dir = root / "train";
  fs::path dir = train_dir;
  if (split == Split::Test) dir = fs::is_directory(root / "val") ? root / "val" : root / "test";
  if (!fs::is_directory(dir))
    throw std::runtime_error("load_image_folder: " + root_name + " has no " +
                             (split == Split::Train ? "train/" : "val/ or test/") + " folder");

  // Class indices come from train/, so that both splits number the classes alike.
  std::vector<std::string> classes = class_folders(fs::is_directory(train_dir) ? train_dir : dir);
  if (dir != train_dir && fs::is_directory(train_dir) && class_folders(dir) != classes)
    throw std::runtime_error("load_image_folder: the class folders of " + dir.string() +
                             " differ from those of " + train_dir.string());

  std::vector<std::string> files;
  std::vector<int64_t> file_labels;
  for (size_t label = 0; label < classes.size(); ++label) {
    const fs::path class_dir = dir / classes[label];
    std::vector<std::string> class_files;
    for (const fs::directory_entry& entry : fs::directory_iterator(class_dir))
      if (entry.is_regular_file() && is_image_file(entry.path()))
        class_files.push_back(entry.path().string());
    if (class_files.empty())
      throw std::runtime_error("load_image_folder: class folder " + class_dir.string() +
                               " holds no .jpg, .jpeg or .png file");
    std::sort(class_files.begin(), class_files.end());
    files.insert(files.end(), class_files.begin(), class_files.end());
    file_labels.insert(file_labels.end(), class_files.size(), static_cast<int64_t>(label));
  }

  FolderOptions options = options_in;
  if (options.image_size <= 0) options.image_size = first_image_size(files, dir);
  const auto n = static_cast<int64_t>(files.size());
  const int64_t image_bytes = options.channels * options.image_size * options.image_size;
  Dataset d = allocate(n, options.channels, options.image_size, options.image_size, classes);

  // Decode in parallel: each thread takes the next file index and writes image i to slot i.
  std::vector<std::string> failures(n);
  uint8_t* images = d.images.data<uint8_t>();
  std::atomic<int64_t> next_file{0};
  auto decode_files = [&] {
    Image image;
    for (int64_t i = next_file++; i < n; i = next_file++) {
      failures[i] = decode_image(files[i], options, image);
      if (failures[i].empty())
        std::memcpy(images + i * image_bytes, image.pixels.data(), image_bytes);
    }
  };
  int64_t threads = options.threads > 0 ? options.threads
                                        : std::max<int64_t>(1, std::thread::hardware_concurrency());
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < std::min(threads, n); ++t) pool.emplace_back(decode_files);
  for (std::thread& thread : pool) thread.join();

  // Close the gaps the unreadable files left, keeping the order.
  int64_t* labels = d.labels.data<int64_t>();
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (!failures[i].empty()) {
      std::cerr << "warning: load_image_folder: skipping " << files[i] << ": " << failures[i]
                << "\n";
      continue;
    }
    if (kept != i) std::memmove(images + kept * image_bytes, images + i * image_bytes, image_bytes);
    labels[kept++] = file_labels[i];
  }
  d.skipped = n - kept;
  if (kept == 0)
    throw std::runtime_error("load_image_folder: none of the " + std::to_string(n) + " images in " +
                             dir.string() + " can be decoded");
  if (d.skipped > 0) {
    std::cerr << "load_image_folder: skipped " << d.skipped << " unreadable file"
              << (d.skipped > 1 ? "s" : "") << " of " << n << " in " << dir.string() << "\n";
    d.images = d.images.slice(0, 0, kept);
    d.labels = d.labels.slice(0, 0, kept);
  }
  return d;
}

// ---- Fashion-MNIST (IDX files) ----

static const std::vector<std::string> kFashionMnistClasses = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

// `dir/name`, or `dir/name.gz` when only that exists.
static std::string find_idx_file(const fs::path& dir, const std::string& name) {
  if (fs::is_regular_file(dir / name)) return (dir / name).string();
  if (fs::is_regular_file(dir / (name + ".gz"))) return (dir / (name + ".gz")).string();
  throw std::runtime_error("load_fashion_mnist: missing " + (dir / name).string() + "(.gz)" +
                           " (Debian's dataset-fashion-mnist package installs it in " +
                           kDebianFashionMnistDir + ")");
}

// An IDX file of unsigned bytes: magic 0 0 0x08 ndim, then ndim big-endian uint32 sizes, then
// the values. Returns the sizes; `values` is set to where the values start.
static std::vector<int64_t> parse_idx(const std::vector<uint8_t>& bytes, int64_t ndim,
                                      const std::string& path, const uint8_t** values) {
  auto fail = [&](const std::string& why) {
    return std::runtime_error("load_fashion_mnist: " + path + ": " + why);
  };
  const int64_t header = 4 + 4 * ndim;
  if (bytes.size() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 || bytes[3] != ndim)
    throw fail("not an IDX file of unsigned bytes with " + std::to_string(ndim) +
               " dimension(s) (magic 00 00 08 0" + std::to_string(ndim) + ")");
  if (static_cast<int64_t>(bytes.size()) < header) throw fail("too short for its IDX header");
  std::vector<int64_t> sizes;
  int64_t count = 1;
  for (int64_t d = 0; d < ndim; ++d) {
    const uint8_t* p = bytes.data() + 4 + 4 * d;
    sizes.push_back((int64_t{p[0]} << 24) | (p[1] << 16) | (p[2] << 8) | p[3]);
    count *= sizes.back();
  }
  if (static_cast<int64_t>(bytes.size()) != header + count)
    throw fail("truncated or too long: the header promises " + std::to_string(count) +
               " values, the file holds " + std::to_string(bytes.size() - header));
  *values = bytes.data() + header;
  return sizes;
}

Dataset load_fashion_mnist(const std::string& dir_name, Split split) {
  const fs::path dir(dir_name);
  if (!fs::is_directory(dir))
    throw std::runtime_error("load_fashion_mnist: no such directory: " + dir_name);
  const std::string prefix = split == Split::Train ? "train" : "t10k";
  const std::string images_path = find_idx_file(dir, prefix + "-images-idx3-ubyte");
  const std::string labels_path = find_idx_file(dir, prefix + "-labels-idx1-ubyte");

  std::vector<uint8_t> image_bytes = read_file(images_path, "load_fashion_mnist");
  std::vector<uint8_t> label_bytes = read_file(labels_path, "load_fashion_mnist");
  const uint8_t *pixels = nullptr, *label_values = nullptr;
  std::vector<int64_t> image_sizes = parse_idx(image_bytes, 3, images_path, &pixels);
  int64_t n = parse_idx(label_bytes, 1, labels_path, &label_values)[0];
  if (image_sizes[0] != n)
    throw std::runtime_error("load_fashion_mnist: " + images_path + " holds " +
                             std::to_string(image_sizes[0]) + " images but " + labels_path +
                             " holds " + std::to_string(n) + " labels");

  Dataset d = allocate(n, 1, image_sizes[1], image_sizes[2], kFashionMnistClasses);
  std::memcpy(d.images.data<uint8_t>(), pixels, d.images.numel());
  int64_t* labels = d.labels.data<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    if (static_cast<size_t>(label_values[i]) >= kFashionMnistClasses.size())
      throw std::runtime_error("load_fashion_mnist: " + labels_path + ": label " +
                               std::to_string(label_values[i]) + " at index " + std::to_string(i) +
                               " (labels are 0 .. 9)");
    labels[i] = label_values[i];
  }
  return d;
}

// ---- the synthetic dataset ----

static const std::vector<std::string> kSyntheticClasses = {"horizontal stripes",
                                                           "vertical stripes",
                                                           "checkerboard",
                                                           "dots",
                                                           "disk",
                                                           "ring",
                                                           "square",
                                                           "plus",
                                                           "triangle",
                                                           "x"};

namespace {

// Coverage (0 or 1) of the pattern of class `label` at pixel (x, y). Every pattern is symmetric
// under a horizontal flip about its own centre, so a flipped image keeps its class.
struct Pattern {
  int64_t label;
  double period, phase_x, phase_y;  // stripes, checkerboard, dots
  double cx, cy, radius;            // shapes

  bool covers(double x, double y) const {
    const double dx = x - cx, dy = y - cy, ax = std::abs(dx), ay = std::abs(dy);
    const double dist = std::sqrt(dx * dx + dy * dy), stroke = 1.5;
    auto cell = [&](double v, double phase) { return std::floor((v + phase) / period); };
    auto in_first_half = [&](double v, double phase) {
      return std::fmod(v + phase, period) < period / 2;
    };
    switch (label) {
      case 0:
        return in_first_half(y, phase_y);
      case 1:
        return in_first_half(x, phase_x);
      case 2:
        return static_cast<int64_t>(cell(x, phase_x) + cell(y, phase_y)) % 2 == 0;
      case 3: {  // a grid of round dots
        const double gx = std::fmod(x + phase_x, period) - period / 2;
        const double gy = std::fmod(y + phase_y, period) - period / 2;
        return gx * gx + gy * gy < 0.09 * period * period;
      }
      case 4:
        return dist < radius;
      case 5:
        return std::abs(dist - radius) < stroke;
      case 6:
        return std::max(ax, ay) < 0.85 * radius;
      case 7:
        return (ax < stroke && ay < radius) || (ay < stroke && ax < radius);
      case 8:
        return dy > -radius && dy < radius && ax < 0.6 * (dy + radius);  // apex up
      default:
        return std::abs(ax - ay) < stroke && std::max(ax, ay) < radius;
    }
  }
};

}  // namespace

Dataset make_synthetic(Split split, int64_t n, uint64_t seed) {
  if (n <= 0)
    throw std::invalid_argument("make_synthetic: n must be positive, got " + std::to_string(n));
  constexpr int64_t kSize = 32, kPlane = kSize * kSize;
  Dataset d = allocate(n, 3, kSize, kSize, kSyntheticClasses);
  uint8_t* images = d.images.data<uint8_t>();
  int64_t* labels = d.labels.data<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    Rng rng(seed, {static_cast<uint64_t>(split), static_cast<uint64_t>(i)});
    Pattern pattern{i % 10,
                    static_cast<double>(4 + rng.below(5)),
                    rng.uniform(0, 8),
                    rng.uniform(0, 8),
                    rng.uniform(11, 21),
                    rng.uniform(11, 21),
                    rng.uniform(5, 9.5)};
    // Colours: any background, and a foreground at least 96 away from it in every channel, so
    // colour alone says nothing about the class but the pattern always stands out.
    double background[3], foreground[3];
    for (int c = 0; c < 3; ++c) {
      background[c] = static_cast<double>(rng.below(256));
      foreground[c] = std::fmod(background[c] + 96 + rng.below(64), 256.0);
    }
    labels[i] = pattern.label;
    uint8_t* image = images + i * 3 * kPlane;
    for (int64_t y = 0; y < kSize; ++y) {
      for (int64_t x = 0; x < kSize; ++x) {
        const bool on = pattern.covers(x + 0.5, y + 0.5);
        for (int c = 0; c < 3; ++c) {
          const double value = (on ? foreground[c] : background[c]) + rng.uniform(-24, 24);
          image[c * kPlane + y * kSize + x] =
              static_cast<uint8_t>(std::clamp(std::lround(value), 0L, 255L));
        }
      }
    }
  }
  return d;
}

// ---- by name ----

Dataset load_dataset(const std::string& source, Split split, const FolderOptions& folder) {
  if (source.empty() || source == "synthetic")
    return make_synthetic(split, split == Split::Train ? kSyntheticTrainSize : kSyntheticTestSize);
  if (source == "fashion-mnist") return load_fashion_mnist(kDebianFashionMnistDir, split);
  const size_t eq = source.find('=');
  if (eq != std::string::npos) {
    const std::string kind = source.substr(0, eq), where = source.substr(eq + 1);
    if (kind == "cifar10") return load_cifar10(where, split);
    if (kind == "folder") return load_image_folder(where, split, folder);
    if (kind == "fashion-mnist") return load_fashion_mnist(where, split);
    throw std::runtime_error("load_dataset: unknown kind '" + kind + "' in '" + source +
                             "' (expected cifar10=DIR, folder=DIR or fashion-mnist=DIR)");
  }
  const fs::path dir(source);
  if (!fs::is_directory(dir))
    throw std::runtime_error("load_dataset: '" + source +
                             "' is neither 'synthetic', 'fashion-mnist', KIND=DIR nor a directory");
  auto has_file = [&](const std::string& name) { return fs::is_regular_file(dir / name); };
  if (has_file("data_batch_1.bin") || has_file("test_batch.bin") ||
      fs::is_directory(dir / "cifar-10-batches-bin"))
    return load_cifar10(source, split);
  for (const char* name : {"train-images-idx3-ubyte", "t10k-images-idx3-ubyte"})
    if (has_file(name) || has_file(std::string(name) + ".gz"))
      return load_fashion_mnist(source, split);
  if (fs::is_directory(dir / "train") || fs::is_directory(dir / "val") ||
      fs::is_directory(dir / "test"))
    return load_image_folder(source, split, folder);
  throw std::runtime_error("load_dataset: cannot tell what dataset " + source +
                           " holds: expected CIFAR-10 .bin files, IDX files "
                           "(train-images-idx3-ubyte...) or train/ and val/ image folders");
}

Dataset random_subset(const Dataset& dataset, int64_t n, uint64_t seed) {
  if (n < 0) throw std::invalid_argument("random_subset: n must be >= 0, got " + std::to_string(n));
  if (n >= dataset.size()) return dataset;
  // The first n entries of a Fisher-Yates shuffle of 0 .. size-1, then sorted.
  std::vector<int64_t> order(static_cast<size_t>(dataset.size()));
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  Rng rng(seed, {Rng::kSubsetStream});
  for (int64_t i = 0; i < n; ++i) std::swap(order[i], order[i + rng.below(dataset.size() - i)]);
  std::sort(order.begin(), order.begin() + n);
  Dataset subset = dataset;
  const int64_t image_bytes = dataset.channels() * dataset.height() * dataset.width();
  subset.images = empty({n, dataset.channels(), dataset.height(), dataset.width()},
                        TensorOptions{DType::UInt8});
  subset.labels = empty({n}, TensorOptions{DType::Int64});
  const uint8_t* from = dataset.images.data<uint8_t>();
  uint8_t* to = subset.images.data<uint8_t>();
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(to + i * image_bytes, from + order[i] * image_bytes, image_bytes);
    subset.labels.data<int64_t>()[i] = dataset.labels.data<int64_t>()[order[i]];
  }
  return subset;
}

ChannelStats channel_stats(const Dataset& dataset) {
  const int64_t n = dataset.size(), channels = dataset.channels();
  const int64_t plane = dataset.height() * dataset.width();
  if (n == 0) throw std::invalid_argument("channel_stats: the dataset is empty");
  const uint8_t* images = dataset.images.data<uint8_t>();
  ChannelStats stats;
  for (int64_t c = 0; c < channels; ++c) {
    // Integer sums are exact, so the result does not depend on the order of the pixels.
    uint64_t sum = 0, sum_squares = 0;
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t* p = images + (i * channels + c) * plane;
      for (int64_t k = 0; k < plane; ++k) {
        sum += p[k];
        sum_squares += uint64_t{p[k]} * p[k];
      }
    }
    const double count = static_cast<double>(n * plane);
    const double mean = static_cast<double>(sum) / count;
    const double variance = static_cast<double>(sum_squares) / count - mean * mean;
    stats.mean.push_back(static_cast<float>(mean / 255.0));
    stats.stddev.push_back(static_cast<float>(std::sqrt(std::max(variance, 0.0)) / 255.0));
  }
  return stats;
}

}  // namespace nala::data
