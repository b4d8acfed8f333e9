// Datasets: CIFAR-10 binary batches, image folders, IDX files and the synthetic set, each read
// from small files the tests write themselves, plus the errors a bad file or folder gives.
#include <stb/stb_image_write.h>
#include <zlib.h>

#include <set>

#include "data_test_util.h"
#include "nn/data.h"
#include "test_util.h"

using namespace nala;
using namespace nala::data;
using nala::test::contains;
using nala::test::TempDir;
using nala::test::write_bytes;

// ---- CIFAR-10 ----

// `count` CIFAR-10 records: record r has label (first + r) % 10 and pixel (c, y, x) equal to
// (first + r + c * 7 + y * 3 + x) % 256.
static std::vector<uint8_t> cifar_records(int64_t first, int64_t count) {
  std::vector<uint8_t> bytes;
  for (int64_t r = first; r < first + count; ++r) {
    bytes.push_back(static_cast<uint8_t>(r % 10));
    for (int64_t c = 0; c < 3; ++c)
      for (int64_t y = 0; y < 32; ++y)
        for (int64_t x = 0; x < 32; ++x)
          bytes.push_back(static_cast<uint8_t>((r + c * 7 + y * 3 + x) % 256));
  }
  return bytes;
}

static void write_cifar(const std::string& dir) {
  for (int i = 1; i <= 5; ++i)
    write_bytes(dir + "/data_batch_" + std::to_string(i) + ".bin", cifar_records(2 * (i - 1), 2));
  write_bytes(dir + "/test_batch.bin", cifar_records(100, 3));
}

TEST_CASE("CIFAR-10: records decode to CHW images and labels, batches in order") {
  TempDir tmp("cifar");
  write_cifar(tmp / "");
  Dataset train = load_cifar10(tmp / "", Split::Train);
  CHECK(train.images.shape() == Shape{10, 3, 32, 32});
  CHECK(train.images.dtype() == DType::UInt8);
  CHECK(train.labels.to_vector<int64_t>() == std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  CHECK(train.classes.size() == 10);
  CHECK(train.classes[0] == "airplane");
  const uint8_t* p = train.images.data<uint8_t>();
  // image 7, channel 2, row 5, column 9
  CHECK(p[((7 * 3 + 2) * 32 + 5) * 32 + 9] == (7 + 2 * 7 + 5 * 3 + 9) % 256);

  Dataset test = load_cifar10(tmp / "", Split::Test);
  CHECK(test.size() == 3);
  CHECK(test.labels.to_vector<int64_t>() == std::vector<int64_t>{0, 1, 2});
}

TEST_CASE("CIFAR-10: the folder above cifar-10-batches-bin works too") {
  TempDir tmp("cifar_parent");
  write_cifar(tmp / "cifar-10-batches-bin");
  CHECK(load_cifar10(tmp / "", Split::Test).size() == 3);
  CHECK(load_dataset(tmp / "", Split::Train, {}).size() == 10);
}

TEST_CASE("CIFAR-10: a missing batch, a truncated file or a bad label is a clear error") {
  TempDir tmp("cifar_bad");
  write_cifar(tmp / "");
  std::filesystem::remove(tmp / "data_batch_3.bin");
  CHECK_THROWS_WITH_AS(load_cifar10(tmp / "", Split::Train),
                       contains("missing " + (tmp / "data_batch_3.bin")), std::runtime_error);

  std::vector<uint8_t> truncated = cifar_records(0, 2);
  truncated.resize(truncated.size() - 5);
  write_bytes(tmp / "test_batch.bin", truncated);
  CHECK_THROWS_WITH_AS(load_cifar10(tmp / "", Split::Test),
                       contains((tmp / "test_batch.bin") + " is truncated"), std::runtime_error);

  std::vector<uint8_t> bad_label = cifar_records(0, 2);
  bad_label[3073] = 10;
  write_bytes(tmp / "test_batch.bin", bad_label);
  CHECK_THROWS_WITH_AS(load_cifar10(tmp / "", Split::Test), contains("has label 10"),
                       std::runtime_error);
}

// ---- image folders ----

static void write_png(const std::string& path, int width, int height, int channels,
                      const std::vector<uint8_t>& hwc) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  REQUIRE(stbi_write_png(path.c_str(), width, height, channels, hwc.data(), width * channels));
}

static void write_jpg(const std::string& path, int width, int height,
                      const std::vector<uint8_t>& hwc) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  REQUIRE(stbi_write_jpg(path.c_str(), width, height, 3, hwc.data(), 95));
}

// An RGB image of one colour, HWC.
static std::vector<uint8_t> solid(int width, int height, uint8_t r, uint8_t g, uint8_t b) {
  std::vector<uint8_t> hwc;
  for (int i = 0; i < width * height; ++i) hwc.insert(hwc.end(), {r, g, b});
  return hwc;
}

// train/cat: a red 8x8 PNG and a blue 8x8 JPEG; train/dog: a gray 12x8 PNG, a corrupt .jpg
// and a text file; val/ the same classes, one image each.
static void write_folder(const TempDir& tmp) {
  write_png(tmp / "train/cat/a.png", 8, 8, 3, solid(8, 8, 255, 0, 0));
  write_jpg(tmp / "train/cat/b.JPEG", 8, 8, solid(8, 8, 0, 0, 255));
  write_png(tmp / "train/dog/c.png", 12, 8, 1, std::vector<uint8_t>(12 * 8, 77));
  write_bytes(tmp / "train/dog/broken.jpg",
              {0xFF, 0xD8, 'n', 'o', 't', ' ', 'a', ' ', 'j', 'p', 'g'});
  write_bytes(tmp / "train/dog/notes.txt", {'h', 'i'});
  write_png(tmp / "val/cat/v.png", 8, 8, 3, solid(8, 8, 0, 255, 0));
  write_png(tmp / "val/dog/w.png", 8, 8, 3, solid(8, 8, 9, 9, 9));
}

TEST_CASE("image folder: decodes PNG and JPEG, grays to RGB, skips a corrupt file") {
  TempDir tmp("folder");
  write_folder(tmp);
  FolderOptions options;
  options.image_size = 4;
  Dataset train = load_image_folder(tmp / "", Split::Train, options);
  CHECK(train.classes == std::vector<std::string>{"cat", "dog"});
  CHECK(train.images.shape() == Shape{3, 3, 4, 4});
  CHECK(train.labels.to_vector<int64_t>() == std::vector<int64_t>{0, 0, 1});
  CHECK(train.skipped == 1);
  Image red = image_at(train, 0), blue = image_at(train, 1), gray = image_at(train, 2);
  for (int64_t y = 0; y < 4; ++y) {
    for (int64_t x = 0; x < 4; ++x) {
      CHECK(red.at(0, y, x) == 255);  // PNG is lossless and a constant stays constant
      CHECK(red.at(1, y, x) == 0);
      CHECK(blue.at(2, y, x) > 240);  // JPEG is close
      CHECK(blue.at(0, y, x) < 15);
      for (int64_t c = 0; c < 3; ++c) CHECK(gray.at(c, y, x) == 77);
    }
  }

  Dataset val = load_image_folder(tmp / "", Split::Test, options);
  CHECK(val.size() == 2);
  CHECK(val.labels.to_vector<int64_t>() == std::vector<int64_t>{0, 1});
  CHECK(image_at(val, 0).at(1, 2, 2) == 255);
}

TEST_CASE("image folder: the size defaults to the first image's, grayscale on request") {
  TempDir tmp("folder_default");
  write_folder(tmp);
  FolderOptions options;
  options.channels = 1;
  options.threads = 1;
  Dataset train = load_image_folder(tmp / "", Split::Train, options);
  CHECK(train.images.shape() == Shape{3, 1, 8, 8});
  CHECK(image_at(train, 2).at(0, 3, 3) == 77);
  // The result does not depend on how many threads decode.
  options.threads = 4;
  Dataset again = load_image_folder(tmp / "", Split::Train, options);
  CHECK(again.images.to_vector<uint8_t>() == train.images.to_vector<uint8_t>());
}

TEST_CASE("image folder: missing, empty or mismatched folders are clear errors") {
  TempDir tmp("folder_bad");
  CHECK_THROWS_WITH_AS(load_image_folder(tmp / "nowhere", Split::Train, {}),
                       contains("no such directory: " + (tmp / "nowhere")), std::runtime_error);
  CHECK_THROWS_WITH_AS(load_image_folder(tmp / "", Split::Train, {}),
                       contains("has no train/ folder"), std::runtime_error);
  write_folder(tmp);
  std::filesystem::create_directories(tmp / "train/emu");
  CHECK_THROWS_WITH_AS(load_image_folder(tmp / "", Split::Train, {}),
                       contains("class folder " + (tmp / "train/emu") + " holds no"),
                       std::runtime_error);
  write_png(tmp / "train/emu/e.png", 8, 8, 3, solid(8, 8, 1, 2, 3));
  CHECK(load_image_folder(tmp / "", Split::Train, {}).num_classes() == 3);
  CHECK_THROWS_WITH_AS(load_image_folder(tmp / "", Split::Test, {}),
                       contains("the class folders of " + (tmp / "val") + " differ"),
                       std::runtime_error);
  // Every image unreadable: an error, not an empty dataset.
  TempDir only_broken("folder_broken");
  write_bytes(only_broken / "train/a/x.png", {1, 2, 3});
  CHECK_THROWS_WITH_AS(load_image_folder(only_broken / "", Split::Train, FolderOptions{4}),
                       contains("none of the 1 images"), std::runtime_error);
}

// ---- Fashion-MNIST (IDX) ----

static std::vector<uint8_t> idx_header(uint8_t ndim, std::vector<uint32_t> sizes) {
  std::vector<uint8_t> bytes{0, 0, 0x08, ndim};
  for (uint32_t s : sizes)
    bytes.insert(bytes.end(), {static_cast<uint8_t>(s >> 24), static_cast<uint8_t>(s >> 16),
                               static_cast<uint8_t>(s >> 8), static_cast<uint8_t>(s)});
  return bytes;
}

// n images of rows x cols with pixel (i, y, x) = i + y + x, and labels i % 10.
static std::pair<std::vector<uint8_t>, std::vector<uint8_t>> idx_files(uint32_t n, uint32_t rows,
                                                                       uint32_t cols) {
  std::vector<uint8_t> images = idx_header(3, {n, rows, cols});
  std::vector<uint8_t> labels = idx_header(1, {n});
  for (uint32_t i = 0; i < n; ++i) {
    labels.push_back(static_cast<uint8_t>(i % 10));
    for (uint32_t y = 0; y < rows; ++y)
      for (uint32_t x = 0; x < cols; ++x) images.push_back(static_cast<uint8_t>(i + y + x));
  }
  return {images, labels};
}

static void write_gz(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile file = gzopen(path.c_str(), "wb");
  REQUIRE(file);
  REQUIRE(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())) ==
          static_cast<int>(bytes.size()));
  gzclose(file);
}

TEST_CASE("Fashion-MNIST: plain and gzip IDX files") {
  TempDir tmp("idx");
  auto [train_images, train_labels] = idx_files(12, 28, 28);
  write_bytes(tmp / "train-images-idx3-ubyte", train_images);
  write_bytes(tmp / "train-labels-idx1-ubyte", train_labels);
  auto [test_images, test_labels] = idx_files(3, 28, 28);
  write_gz(tmp / "t10k-images-idx3-ubyte.gz", test_images);
  write_gz(tmp / "t10k-labels-idx1-ubyte.gz", test_labels);

  Dataset train = load_fashion_mnist(tmp / "", Split::Train);
  CHECK(train.images.shape() == Shape{12, 1, 28, 28});
  CHECK(train.labels.to_vector<int64_t>()[11] == 1);
  CHECK(image_at(train, 5).at(0, 7, 3) == 5 + 7 + 3);
  CHECK(train.classes[9] == "Ankle boot");
  Dataset test = load_dataset(tmp / "", Split::Test, {});
  CHECK(test.images.shape() == Shape{3, 1, 28, 28});
  CHECK(image_at(test, 2).at(0, 27, 27) == 2 + 27 + 27);
}

TEST_CASE("Fashion-MNIST: truncated, mismatched or missing files are clear errors") {
  TempDir tmp("idx_bad");
  auto [images, labels] = idx_files(4, 28, 28);
  std::vector<uint8_t> truncated(images.begin(), images.end() - 1);
  write_bytes(tmp / "train-images-idx3-ubyte", truncated);
  write_bytes(tmp / "train-labels-idx1-ubyte", labels);
  CHECK_THROWS_WITH_AS(load_fashion_mnist(tmp / "", Split::Train),
                       contains((tmp / "train-images-idx3-ubyte") + ": truncated"),
                       std::runtime_error);
  write_bytes(tmp / "train-images-idx3-ubyte", labels);  // a labels file where images belong
  CHECK_THROWS_WITH_AS(load_fashion_mnist(tmp / "", Split::Train), contains("not an IDX file"),
                       std::runtime_error);
  write_bytes(tmp / "train-images-idx3-ubyte", idx_files(5, 28, 28).first);
  CHECK_THROWS_WITH_AS(load_fashion_mnist(tmp / "", Split::Train), contains("holds 5 images but"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(load_fashion_mnist(tmp / "", Split::Test),
                       contains("missing " + (tmp / "t10k-images-idx3-ubyte")), std::runtime_error);
}

TEST_CASE("Fashion-MNIST: Debian's copy, when installed") {
  if (!std::filesystem::exists(kDebianFashionMnistDir)) {
    std::cout << "[skip] " << kDebianFashionMnistDir
              << " not found (apt-get install dataset-fashion-mnist)\n";
    return;
  }
  Dataset test = load_dataset("fashion-mnist", Split::Test, {});
  CHECK(test.images.shape() == Shape{10000, 1, 28, 28});
  std::vector<int64_t> per_class(10, 0);
  for (int64_t label : test.labels.to_vector<int64_t>()) ++per_class[label];
  CHECK(per_class == std::vector<int64_t>(10, 1000));
}

// ---- synthetic ----

TEST_CASE("synthetic: deterministic from the seed, splits and seeds differ, labels cycle") {
  Dataset a = make_synthetic(Split::Train, 50, 7);
  CHECK(a.images.shape() == Shape{50, 3, 32, 32});
  CHECK(a.num_classes() == 10);
  CHECK(a.labels.to_vector<int64_t>()[23] == 3);
  std::vector<uint8_t> pixels = a.images.to_vector<uint8_t>();
  CHECK(make_synthetic(Split::Train, 50, 7).images.to_vector<uint8_t>() == pixels);
  CHECK(make_synthetic(Split::Train, 50, 8).images.to_vector<uint8_t>() != pixels);
  CHECK(make_synthetic(Split::Test, 50, 7).images.to_vector<uint8_t>() != pixels);
  // Image i does not depend on n.
  std::vector<uint8_t> longer = make_synthetic(Split::Train, 60, 7).images.to_vector<uint8_t>();
  CHECK(std::vector<uint8_t>(longer.begin(), longer.begin() + pixels.size()) == pixels);
  // Not blank: every image has a pattern in two colours well apart.
  for (int64_t i = 0; i < a.size(); ++i) {
    Image image = image_at(a, i);
    auto [lo, hi] = std::minmax_element(image.pixels.begin(), image.pixels.end());
    CHECK(*hi - *lo > 96);
  }
}

TEST_CASE("load_dataset tells datasets apart and names what it cannot read") {
  CHECK(load_dataset("synthetic", Split::Test, {}).size() == kSyntheticTestSize);
  TempDir tmp("load_dataset");
  write_folder(tmp);
  CHECK(load_dataset(tmp / "", Split::Test, FolderOptions{4}).images.shape() == Shape{2, 3, 4, 4});
  CHECK_THROWS_WITH_AS(load_dataset(tmp / "train/cat", Split::Train, {}),
                       contains("cannot tell what dataset " + (tmp / "train/cat")),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(load_dataset(tmp / "nothing", Split::Train, {}), contains("nor a directory"),
                       std::runtime_error);
}

TEST_CASE("random_subset: seeded, in order, pairs kept, every class of a sorted dataset") {
  // 200 images stored class by class (as an image folder is): labels 0 x 20, 1 x 20, ...
  Dataset sorted = make_synthetic(Split::Train, 200, 3);
  std::vector<int64_t> labels(200);
  for (int64_t i = 0; i < 200; ++i) labels[i] = i / 20;
  sorted.labels = from_data(labels, {200});
  Dataset a = random_subset(sorted, 30, 5);
  REQUIRE(a.size() == 30);
  CHECK(a.images.shape() == Shape{30, 3, 32, 32});
  CHECK(a.classes == sorted.classes);
  CHECK(random_subset(sorted, 30, 5).images.to_vector<uint8_t>() == a.images.to_vector<uint8_t>());
  CHECK(random_subset(sorted, 30, 6).labels.to_vector<int64_t>() != a.labels.to_vector<int64_t>());
  // Each image is one of the originals, with its own label, in the original order, no repeats.
  std::vector<int64_t> from;
  for (int64_t i = 0; i < a.size(); ++i) {
    Image image = image_at(a, i);
    int64_t found = -1;
    for (int64_t j = 0; j < sorted.size() && found < 0; ++j)
      if (image_at(sorted, j).pixels == image.pixels) found = j;
    REQUIRE(found >= 0);
    CHECK(a.labels.to_vector<int64_t>()[i] == labels[found]);
    from.push_back(found);
  }
  CHECK(std::is_sorted(from.begin(), from.end()));
  CHECK(std::adjacent_find(from.begin(), from.end()) == from.end());
  // A first-30 slice would hold classes 0 and 1 only.
  std::vector<int64_t> seen = a.labels.to_vector<int64_t>();
  std::sort(seen.begin(), seen.end());
  CHECK(std::unique(seen.begin(), seen.end()) - seen.begin() >= 6);
  CHECK(random_subset(sorted, 500, 5).size() == 200);
  CHECK_THROWS_WITH_AS(random_subset(sorted, -1, 5), contains("random_subset"),
                       std::invalid_argument);
}

TEST_CASE("channel_stats: mean and standard deviation of pixel / 255 per channel") {
  Dataset d;
  d.classes = {"only"};
  // Two 1x2 images, 2 channels: channel 0 is all 51, channel 1 holds 0, 255, 0, 255.
  d.images = from_data<uint8_t>({51, 51, 0, 255, 51, 51, 0, 255}, {2, 2, 1, 2});
  d.labels = from_data<int64_t>({0, 0}, {2});
  ChannelStats stats = channel_stats(d);
  CHECK(stats.mean[0] == doctest::Approx(0.2));
  CHECK(stats.stddev[0] == doctest::Approx(0.0));
  CHECK(stats.mean[1] == doctest::Approx(0.5));
  CHECK(stats.stddev[1] == doctest::Approx(0.5));
}
