// Augmentation: the generator, flips, crops, resizes, normalisation, mixup and cutmix.
#include <numeric>
#include <set>

#include "nn/data.h"
#include "test_util.h"

using namespace nala;
using namespace nala::data;

// A channels x height x width image whose pixel (c, y, x) is (c * 50 + y * 7 + x * 3) % 256.
static Image ramp(int64_t channels, int64_t height, int64_t width) {
  Image image(channels, height, width);
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t y = 0; y < height; ++y)
      for (int64_t x = 0; x < width; ++x)
        image.at(c, y, x) = static_cast<uint8_t>((c * 50 + y * 7 + x * 3) % 256);
  return image;
}

static Image constant(int64_t channels, int64_t height, int64_t width, uint8_t value) {
  Image image(channels, height, width);
  std::fill(image.pixels.begin(), image.pixels.end(), value);
  return image;
}

TEST_CASE("Rng: the same key gives the same stream, another key another") {
  Rng a(1, {2, 3}), b(1, {2, 3}), c(1, {2, 4}), d(2, {2, 3});
  uint64_t first = a();
  CHECK(first == b());
  CHECK(first != c());
  CHECK(first != d());
  CHECK(a() != first);  // the stream moves on
  std::set<int64_t> seen;
  for (int i = 0; i < 1000; ++i) {
    int64_t k = a.below(7);
    CHECK(k >= 0);
    CHECK(k < 7);
    seen.insert(k);
    double u = a.uniform(-2, 3);
    CHECK(u >= -2);
    CHECK(u < 3);
  }
  CHECK(seen.size() == 7);
}

TEST_CASE("flip: mirrors the columns, and twice is the identity") {
  Image image = ramp(3, 5, 7);
  Image flipped = flip_horizontal(image);
  CHECK(flipped.at(1, 2, 0) == image.at(1, 2, 6));
  CHECK(flipped.pixels != image.pixels);
  CHECK(flip_horizontal(flipped).pixels == image.pixels);
}

TEST_CASE("crop: windows past the edge read zeros; random_crop keeps the shape") {
  Image image = ramp(2, 6, 6);
  Image window = crop(image, -1, 2, 3, 5);
  CHECK(window.height == 3);
  CHECK(window.width == 5);
  CHECK(window.at(1, 0, 0) == 0);                  // row -1
  CHECK(window.at(1, 1, 0) == image.at(1, 0, 2));  // row 0, column 2
  CHECK(window.at(0, 2, 3) == image.at(0, 1, 5));
  CHECK(window.at(0, 2, 4) == 0);  // column 6

  // Padding 2: a shift by (dy, dx) in [-2, 2]^2, every shift reached over many draws.
  std::set<std::pair<int64_t, int64_t>> shifts;
  for (uint64_t seed = 0; seed < 400; ++seed) {
    Rng rng(seed, {});
    Image out = random_crop(image, 2, rng);
    REQUIRE(out.channels == 2);
    REQUIRE(out.height == 6);
    REQUIRE(out.width == 6);
    for (int64_t dy = -2; dy <= 2; ++dy)
      for (int64_t dx = -2; dx <= 2; ++dx)
        if (crop(image, dy, dx, 6, 6).pixels == out.pixels) shifts.insert({dy, dx});
  }
  CHECK(shifts.size() == 25);
}

TEST_CASE("resize: identity at the same size, linear when enlarging, no aliasing when shrinking") {
  Image image = ramp(3, 9, 13);
  CHECK(resize(image, 9, 13).pixels == image.pixels);

  // Enlarging one row [0, 100] to 4 pixels: centres at 0.25, 0.75, 1.25, 1.75 source pixels.
  Image row(1, 1, 2);
  row.at(0, 0, 1) = 100;
  CHECK(resize(row, 1, 4).pixels == std::vector<uint8_t>{0, 25, 75, 100});

  // A one-pixel checkerboard shrunk 4x averages to gray instead of picking black or white.
  Image checker(1, 16, 16);
  for (int64_t y = 0; y < 16; ++y)
    for (int64_t x = 0; x < 16; ++x) checker.at(0, y, x) = (x + y) % 2 ? 255 : 0;
  for (uint8_t v : resize(checker, 4, 4).pixels) {
    CHECK(v > 110);
    CHECK(v < 145);
  }
  for (uint8_t v : resize(constant(2, 7, 5, 200), 3, 11).pixels) CHECK(v == 200);
}

TEST_CASE("resize_center_crop and random_resized_crop give the asked size") {
  // 4 x 8, the central 4 x 4 at 200 and the sides 0: the centre crop is all 200.
  Image wide(1, 4, 8);
  for (int64_t y = 0; y < 4; ++y)
    for (int64_t x = 2; x < 6; ++x) wide.at(0, y, x) = 200;
  Image centre = resize_center_crop(wide, 4, 4);
  CHECK(centre.height == 4);
  CHECK(centre.pixels == std::vector<uint8_t>(16, 200));
  Image smaller = resize_center_crop(ramp(3, 20, 30), 10, 8);
  CHECK(smaller.height == 8);
  CHECK(smaller.width == 8);
  CHECK_THROWS_AS(resize_center_crop(wide, 4, 5), std::invalid_argument);

  Image image = ramp(3, 20, 30);
  Rng a(5, {}), b(5, {});
  Image out = random_resized_crop(image, 12, 12, 0.08, a);
  CHECK(out.channels == 3);
  CHECK(out.height == 12);
  CHECK(out.width == 12);
  CHECK(random_resized_crop(image, 12, 12, 0.08, b).pixels == out.pixels);  // seeded
  Rng c(6, {});
  for (uint8_t v : random_resized_crop(constant(3, 20, 30, 9), 16, 10, 0.5, c).pixels)
    CHECK(v == 9);
}

TEST_CASE("normalize: (pixel / 255 - mean) / stddev per channel") {
  Image image(2, 2, 3);
  std::fill(image.pixels.begin(), image.pixels.begin() + 6, 51);  // channel 0: 0.2
  std::fill(image.pixels.begin() + 6, image.pixels.end(), 255);   // channel 1: 1.0
  std::vector<float> out(12);
  normalize(image, {0.1f, 0.5f}, {0.5f, 0.25f}, out.data());
  for (int i = 0; i < 6; ++i) CHECK(out[i] == doctest::Approx(0.2));
  for (int i = 6; i < 12; ++i) CHECK(out[i] == doctest::Approx(2.0));
  normalize(image, {}, {}, out.data());
  CHECK(out[0] == doctest::Approx(0.2));
  CHECK(out[11] == doctest::Approx(1.0));
}

TEST_CASE("transform_image: the default transform is the identity") {
  Image image = ramp(3, 8, 8);
  Rng rng(0, {});
  CHECK(transform_image(image, Transform{}, rng).pixels == image.pixels);
  Transform resize_only;
  resize_only.output_size = 4;
  CHECK(transform_image(image, resize_only, rng).pixels == resize(image, 4, 4).pixels);
}

// Four constant images, image i at value 10 i with label i (4 classes). Mixing preserves
// "mean of image i = sum_c targets[i][c] * 10 c" for mixup and cutmix alike: the soft target
// is exactly the share of each source in the mixed image.
static void check_mix(const Mixing& mixing, uint64_t seed) {
  const int64_t batch = 4, size = 8;
  std::vector<double> values;
  for (int64_t i = 0; i < batch; ++i) values.insert(values.end(), 3 * size * size, 10.0 * i);
  Tensor images = from_vector(values, {batch, 3, size, size});
  Tensor labels = from_data<int64_t>({0, 1, 2, 3}, {batch});
  Rng rng(seed, {});
  Tensor targets = mix_batch(images, labels, batch, mixing, rng);
  REQUIRE(targets.shape() == Shape{batch, batch});
  std::vector<double> t = targets.to_vector<double>();
  std::vector<double> mixed = images.to_vector<double>();
  const double off = mixing.label_smoothing / batch;
  for (int64_t i = 0; i < batch; ++i) {
    double row_sum = 0, expected_mean = 0, mean = 0;
    for (int64_t c = 0; c < batch; ++c) {
      row_sum += t[i * batch + c];
      expected_mean += (t[i * batch + c] - off) / (1 - mixing.label_smoothing) * 10.0 * c;
      if (c != i && c != batch - 1 - i) CHECK(t[i * batch + c] == doctest::Approx(off));
    }
    for (int64_t k = 0; k < 3 * size * size; ++k) mean += mixed[i * 3 * size * size + k];
    mean /= 3 * size * size;
    CHECK(row_sum == doctest::Approx(1.0));
    CHECK(mean == doctest::Approx(expected_mean).epsilon(1e-4));
  }
}

TEST_CASE("mix_batch: soft targets match the share of each image, for mixup and cutmix") {
  for (uint64_t seed = 0; seed < 20; ++seed) {
    check_mix(Mixing{0.8, 0.0, 0.0}, seed);
    check_mix(Mixing{0.0, 1.0, 0.0}, seed);
    check_mix(Mixing{0.8, 1.0, 0.1}, seed);
  }
  Tensor images = zeros({2, 1, 2, 2});
  Tensor labels = from_data<int64_t>({0, 5}, {2});
  Rng rng(0, {});
  CHECK_THROWS_WITH_AS(mix_batch(images, labels, 3, Mixing{0.5}, rng),
                       doctest::Contains("label 5 out of range"), std::invalid_argument);
}
