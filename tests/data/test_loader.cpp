// DataLoader: reproducible shuffling and augmentation, every sample once per epoch, prefetching
// threads that change nothing but the speed, and clean stops.
#include <numeric>
#include <set>

#include "nn/data.h"
#include "test_util.h"

using namespace nala;
using namespace nala::data;

// Every batch of one epoch.
static std::vector<Batch> epoch_batches(DataLoader& loader, int64_t epoch) {
  loader.start_epoch(epoch);
  std::vector<Batch> batches;
  Batch batch;
  while (loader.next(batch)) batches.push_back(batch);
  return batches;
}

static std::vector<int64_t> epoch_order(DataLoader& loader, int64_t epoch) {
  std::vector<int64_t> order;
  for (const Batch& b : epoch_batches(loader, epoch))
    order.insert(order.end(), b.indices.begin(), b.indices.end());
  return order;
}

static LoaderOptions augmenting(int64_t batch_size, int64_t workers, uint64_t seed) {
  LoaderOptions options;
  options.batch_size = batch_size;
  options.workers = workers;
  options.seed = seed;
  options.transform.crop_padding = 4;
  options.transform.horizontal_flip = true;
  options.transform.mean = {0.5f, 0.5f, 0.5f};
  options.transform.stddev = {0.25f, 0.25f, 0.25f};
  return options;
}

TEST_CASE("loader: the order follows the seed and changes from epoch to epoch") {
  Dataset data = make_synthetic(Split::Train, 40, 0);
  DataLoader a(data, augmenting(8, 0, 1)), b(data, augmenting(8, 0, 1)),
      c(data, augmenting(8, 0, 2));
  std::vector<int64_t> a0 = epoch_order(a, 0);
  CHECK(a0 == epoch_order(b, 0));
  CHECK(a0 != epoch_order(a, 1));
  CHECK(a0 != epoch_order(c, 0));
  CHECK(a0 == epoch_order(a, 0));  // going back to an epoch repeats it

  LoaderOptions in_order = augmenting(8, 0, 1);
  in_order.shuffle = false;
  DataLoader d(data, in_order);
  std::vector<int64_t> expected(40);
  std::iota(expected.begin(), expected.end(), int64_t{0});
  CHECK(epoch_order(d, 3) == expected);
}

TEST_CASE("loader: worker threads change nothing but the speed") {
  Dataset data = make_synthetic(Split::Train, 37, 0);
  DataLoader serial(data, augmenting(5, 0, 9));
  DataLoader threaded(data, augmenting(5, 3, 9));
  std::vector<Batch> s = epoch_batches(serial, 2), t = epoch_batches(threaded, 2);
  REQUIRE(s.size() == t.size());
  for (size_t i = 0; i < s.size(); ++i) {
    CHECK(s[i].indices == t[i].indices);
    CHECK(s[i].labels.to_vector<int64_t>() == t[i].labels.to_vector<int64_t>());
    CHECK(s[i].images.to_vector<float>() == t[i].images.to_vector<float>());
  }
}

TEST_CASE("loader: an epoch started at batch k yields that epoch's batches from k on") {
  Dataset data = make_synthetic(Split::Train, 37, 0);
  for (int64_t workers : {0, 2}) {
    CAPTURE(workers);
    DataLoader loader(data, augmenting(5, workers, 9));
    std::vector<Batch> whole = epoch_batches(loader, 3);
    loader.start_epoch(3, 5);
    Batch batch;
    for (size_t i = 5; i < whole.size(); ++i) {
      REQUIRE(loader.next(batch));
      CHECK(batch.indices == whole[i].indices);
      CHECK(batch.images.to_vector<float>() == whole[i].images.to_vector<float>());
    }
    CHECK_FALSE(loader.next(batch));
    loader.start_epoch(3, loader.batches_per_epoch());  // at the end: nothing left
    CHECK_FALSE(loader.next(batch));
    CHECK_THROWS_WITH_AS(loader.start_epoch(3, loader.batches_per_epoch() + 1),
                         doctest::Contains("first batch"), std::invalid_argument);
    CHECK_THROWS_AS(loader.start_epoch(3, -1), std::invalid_argument);
  }
}

TEST_CASE("loader: a prefetching loader yields every sample exactly once per epoch") {
  Dataset data = make_synthetic(Split::Train, 103, 0);
  LoaderOptions options = augmenting(10, 3, 4);
  options.prefetch = 2;
  for (bool drop_last : {false, true}) {
    options.drop_last = drop_last;
    DataLoader loader(data, options);
    CHECK(loader.batches_per_epoch() == (drop_last ? 10 : 11));
    for (int64_t epoch = 0; epoch < 3; ++epoch) {
      std::vector<Batch> batches = epoch_batches(loader, epoch);
      REQUIRE(static_cast<int64_t>(batches.size()) == loader.batches_per_epoch());
      CHECK(batches.back().images.shape() == Shape{drop_last ? 10 : 3, 3, 32, 32});
      std::set<int64_t> seen;
      for (const Batch& b : batches) {
        std::vector<int64_t> labels = b.labels.to_vector<int64_t>();
        for (size_t i = 0; i < b.indices.size(); ++i) {
          CHECK(seen.insert(b.indices[i]).second);
          CHECK(labels[i] == b.indices[i] % 10);  // make_synthetic's labels cycle
        }
      }
      CHECK(static_cast<int64_t>(seen.size()) == (drop_last ? 100 : 103));
    }
  }
}

TEST_CASE("loader: with no augmentation a batch holds the dataset's pixels / 255") {
  Dataset data = make_synthetic(Split::Test, 6, 3);
  LoaderOptions options;
  options.batch_size = 4;
  options.workers = 1;
  DataLoader loader(data, options);
  std::vector<Batch> batches = epoch_batches(loader, 0);
  REQUIRE(batches.size() == 2);
  const Batch& b = batches[0];
  CHECK(b.images.dtype() == DType::Float32);
  CHECK(b.labels.dtype() == DType::Int64);
  CHECK_FALSE(b.targets.defined());
  std::vector<float> x = b.images.to_vector<float>();
  for (int64_t i = 0; i < 4; ++i) {
    Image image = image_at(data, b.indices[i]);
    for (size_t k = 0; k < image.pixels.size(); k += 97)
      CHECK(x[i * image.pixels.size() + k] == doctest::Approx(image.pixels[k] / 255.0));
  }
}

TEST_CASE("loader: resized crops and mixing give the asked shapes and soft targets") {
  Dataset data = make_synthetic(Split::Train, 20, 0);
  LoaderOptions options;
  options.batch_size = 8;
  options.transform.output_size = 24;
  options.transform.random_resized_crop = true;
  options.transform.horizontal_flip = true;
  options.mixing = Mixing{0.8, 1.0, 0.1};
  DataLoader loader(data, options);
  for (const Batch& b : epoch_batches(loader, 0)) {
    CHECK(b.images.shape()[1] == 3);
    CHECK(b.images.shape()[2] == 24);
    CHECK(b.images.shape()[3] == 24);
    REQUIRE(b.targets.defined());
    CHECK(b.targets.shape() == Shape{b.images.size(0), 10});
    std::vector<float> t = b.targets.to_vector<float>();
    for (int64_t i = 0; i < b.images.size(0); ++i) {
      double row = 0;
      for (int64_t c = 0; c < 10; ++c) row += t[i * 10 + c];
      CHECK(row == doctest::Approx(1.0).epsilon(1e-5));
    }
  }
  // Output size 0: random resized crops at the dataset's own size.
  options.transform.output_size = 0;
  DataLoader same_size(data, options);
  same_size.start_epoch(0);
  Batch batch;
  REQUIRE(same_size.next(batch));
  CHECK(batch.images.shape() == Shape{8, 3, 32, 32});
}

TEST_CASE("loader: stopping early, restarting an epoch and destroying mid-epoch do not hang") {
  Dataset data = make_synthetic(Split::Train, 200, 0);
  LoaderOptions options = augmenting(4, 2, 0);
  options.prefetch = 3;
  { DataLoader never_started(data, options); }
  DataLoader loader(data, options);
  loader.start_epoch(0);
  Batch batch;
  REQUIRE(loader.next(batch));
  REQUIRE(loader.next(batch));
  // Abandon epoch 0 two batches in: epoch 1 starts from its own first batch.
  std::vector<Batch> fresh = epoch_batches(loader, 1);
  DataLoader other(data, options);
  std::vector<Batch> reference = epoch_batches(other, 1);
  REQUIRE(fresh.size() == reference.size());
  CHECK(fresh[0].indices == reference[0].indices);
  CHECK(fresh[0].images.to_vector<float>() == reference[0].images.to_vector<float>());
  loader.start_epoch(2);
  REQUIRE(loader.next(batch));
  // loader goes out of scope mid-epoch, with workers waiting on a full prefetch window.
}

TEST_CASE("loader: bad options and misuse are clear errors") {
  Dataset data = make_synthetic(Split::Train, 10, 0);
  LoaderOptions options;
  options.batch_size = 0;
  CHECK_THROWS_WITH_AS(DataLoader(data, options), doctest::Contains("batch_size must be positive"),
                       std::invalid_argument);
  options.batch_size = 16;
  options.drop_last = true;
  CHECK_THROWS_WITH_AS(DataLoader(data, options), doctest::Contains("leaves no batch"),
                       std::invalid_argument);
  options.drop_last = false;
  options.transform.mean = {0.5f};
  CHECK_THROWS_WITH_AS(DataLoader(data, options), doctest::Contains("mean has 1 values for 3"),
                       std::invalid_argument);
  options.transform.mean = {};
  options.transform.center_crop_fraction = 1.5;
  CHECK_THROWS_WITH_AS(DataLoader(data, options),
                       doctest::Contains("center_crop_fraction must be in (0, 1]"),
                       std::invalid_argument);
  options.transform.center_crop_fraction = 1;
  DataLoader loader(data, options);
  Batch batch;
  CHECK_THROWS_WITH_AS(loader.next(batch), doctest::Contains("call start_epoch first"),
                       std::logic_error);
}
