// Augmentation: the per-sample generator, crops, flips and resizes on uint8 images,
// normalisation to float32, and batch-level mixup / cutmix.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>

#include "kernels/random.h"
#include "nn/data.h"

namespace nala::data {

// ---- Rng ----

Rng::Rng(uint64_t seed, std::initializer_list<uint64_t> path) : key_(seed) {
  for (uint64_t step : path) key_ = kernels::random_bits(key_, step);
}

Rng::result_type Rng::operator()() { return kernels::random_bits(key_, counter_++); }

double Rng::uniform(double low, double high) {
  return low + (high - low) * kernels::unit_interval((*this)());
}

int64_t Rng::below(int64_t n) {
  // u * n lies in [0, n) (u < 1 with 53 bits); the min guards the rounding of u * n up to n.
  return std::min(n - 1, static_cast<int64_t>(uniform() * static_cast<double>(n)));
}

// ---- geometry on uint8 images ----

Image image_at(const Dataset& dataset, int64_t index) {
  Image image(dataset.channels(), dataset.height(), dataset.width());
  const size_t bytes = image.pixels.size();
  std::memcpy(image.pixels.data(), dataset.images.data<uint8_t>() + index * bytes, bytes);
  return image;
}

Image flip_horizontal(const Image& image) {
  Image out(image.channels, image.height, image.width);
  for (int64_t c = 0; c < image.channels; ++c)
    for (int64_t y = 0; y < image.height; ++y)
      for (int64_t x = 0; x < image.width; ++x)
        out.at(c, y, x) = image.at(c, y, image.width - 1 - x);
  return out;
}

Image crop(const Image& image, int64_t top, int64_t left, int64_t height, int64_t width) {
  Image out(image.channels, height, width);  // zero-filled
  const int64_t y0 = std::max<int64_t>(0, -top), y1 = std::min(height, image.height - top);
  const int64_t x0 = std::max<int64_t>(0, -left), x1 = std::min(width, image.width - left);
  for (int64_t c = 0; c < image.channels; ++c)
    for (int64_t y = y0; y < y1; ++y)
      for (int64_t x = x0; x < x1; ++x) out.at(c, y, x) = image.at(c, top + y, left + x);
  return out;
}

Image random_crop(const Image& image, int64_t padding, Rng& rng) {
  // Padding then cropping the original size is a shift by (dy, dx) in [-padding, padding].
  const int64_t dy = rng.below(2 * padding + 1) - padding;
  const int64_t dx = rng.below(2 * padding + 1) - padding;
  return crop(image, dy, dx, image.height, image.width);
}

namespace {

// How one axis is resampled: output pixel j reads source pixels first[j] .. first[j] +
// count[j] - 1 with weights weights[j * max_taps + k].
struct AxisTaps {
  int64_t max_taps = 0;
  std::vector<int64_t> first, count;
  std::vector<float> weights;
};

}  // namespace

// Taps that map the source interval [start, start + length) of an axis of `in` pixels onto
// `out` pixels. Output pixel j has its centre at source coordinate c = start + (j + 0.5) *
// scale, scale = length / out (source pixel i has its centre at i + 0.5). Its weights are a
// tent around c of radius r = max(scale, 1), w_i = max(0, 1 - |i + 0.5 - c| / r), normalised
// to sum 1: plain linear interpolation between the two nearest pixels when enlarging (r = 1),
// and, when shrinking, an average over the footprint of the output pixel, which keeps detail
// finer than the output grid from aliasing. Taps outside the axis are dropped.
static AxisTaps axis_taps(double start, double length, int64_t out, int64_t in) {
  const double scale = length / static_cast<double>(out);
  const double radius = std::max(scale, 1.0);
  AxisTaps taps;
  // At most 2 r + 2 pixel centres lie within r of c; one more absorbs rounding in the bounds.
  taps.max_taps = 2 * static_cast<int64_t>(std::ceil(radius)) + 3;
  taps.first.resize(out);
  taps.count.resize(out);
  taps.weights.assign(out * taps.max_taps, 0.0f);
  for (int64_t j = 0; j < out; ++j) {
    const double centre = start + (static_cast<double>(j) + 0.5) * scale;
    const int64_t lo = std::max<int64_t>(0, static_cast<int64_t>(std::floor(centre - radius)));
    const int64_t hi =
        std::min({in, lo + taps.max_taps, static_cast<int64_t>(std::ceil(centre + radius)) + 1});
    float* w = &taps.weights[j * taps.max_taps];
    double total = 0;
    for (int64_t i = lo; i < hi; ++i) {
      const double weight = std::max(0.0, 1.0 - std::abs(i + 0.5 - centre) / radius);
      w[i - lo] = static_cast<float>(weight);
      total += weight;
    }
    taps.first[j] = lo;
    taps.count[j] = std::max<int64_t>(0, hi - lo);
    if (total > 0) {
      for (int64_t k = 0; k < taps.count[j]; ++k) w[k] = static_cast<float>(w[k] / total);
    } else {  // a centre beyond the edge: the nearest pixel
      taps.first[j] = std::clamp<int64_t>(static_cast<int64_t>(centre), 0, in - 1);
      taps.count[j] = 1;
      w[0] = 1.0f;
    }
  }
  return taps;
}

// The source rectangle (top, left, height, width), in pixels and possibly fractional, resampled
// to out_height x out_width: rows first into a float buffer, then columns.
static Image resample(const Image& image, double top, double left, double height, double width,
                      int64_t out_height, int64_t out_width) {
  if (out_height <= 0 || out_width <= 0 || image.height <= 0 || image.width <= 0)
    throw std::invalid_argument("resize: cannot resize " + std::to_string(image.height) + "x" +
                                std::to_string(image.width) + " to " + std::to_string(out_height) +
                                "x" + std::to_string(out_width));
  const AxisTaps xs = axis_taps(left, width, out_width, image.width);
  const AxisTaps ys = axis_taps(top, height, out_height, image.height);
  // Only the source rows some output row reads are resampled horizontally.
  int64_t row0 = image.height, row1 = 0;
  for (int64_t i = 0; i < out_height; ++i) {
    row0 = std::min(row0, ys.first[i]);
    row1 = std::max(row1, ys.first[i] + ys.count[i]);
  }
  std::vector<float> rows((row1 - row0) * out_width);
  Image out(image.channels, out_height, out_width);
  for (int64_t c = 0; c < image.channels; ++c) {
    for (int64_t y = row0; y < row1; ++y) {
      const uint8_t* src = &image.pixels[(c * image.height + y) * image.width];
      for (int64_t j = 0; j < out_width; ++j) {
        const float* w = &xs.weights[j * xs.max_taps];
        float sum = 0;
        for (int64_t k = 0; k < xs.count[j]; ++k) sum += w[k] * src[xs.first[j] + k];
        rows[(y - row0) * out_width + j] = sum;
      }
    }
    for (int64_t i = 0; i < out_height; ++i) {
      const float* w = &ys.weights[i * ys.max_taps];
      for (int64_t j = 0; j < out_width; ++j) {
        float sum = 0;
        for (int64_t k = 0; k < ys.count[i]; ++k)
          sum += w[k] * rows[(ys.first[i] + k - row0) * out_width + j];
        out.at(c, i, j) = static_cast<uint8_t>(std::clamp(sum + 0.5f, 0.0f, 255.0f));
      }
    }
  }
  return out;
}

Image resize(const Image& image, int64_t height, int64_t width) {
  return resample(image, 0, 0, static_cast<double>(image.height), static_cast<double>(image.width),
                  height, width);
}

Image resize_center_crop(const Image& image, int64_t resize_to, int64_t crop_size) {
  if (crop_size > resize_to)
    throw std::invalid_argument("resize_center_crop: crop " + std::to_string(crop_size) +
                                " is larger than the resized shorter side " +
                                std::to_string(resize_to));
  // The crop, seen in source pixels: a square of side crop_size / scale around the centre.
  const double scale = static_cast<double>(resize_to) / std::min(image.height, image.width);
  const double side = static_cast<double>(crop_size) / scale;
  return resample(image, (image.height - side) / 2, (image.width - side) / 2, side, side, crop_size,
                  crop_size);
}

Image random_resized_crop(const Image& image, int64_t out_height, int64_t out_width,
                          double min_scale, Rng& rng) {
  const double area = static_cast<double>(image.height * image.width);
  const double log_min_ratio = std::log(3.0 / 4.0), log_max_ratio = std::log(4.0 / 3.0);
  // Up to ten tries at a window that fits, as torchvision does ...
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target_area = area * rng.uniform(min_scale, 1.0);
    const double ratio = std::exp(rng.uniform(log_min_ratio, log_max_ratio));  // width / height
    const auto width = static_cast<int64_t>(std::lround(std::sqrt(target_area * ratio)));
    const auto height = static_cast<int64_t>(std::lround(std::sqrt(target_area / ratio)));
    if (width > 0 && width <= image.width && height > 0 && height <= image.height) {
      const int64_t top = rng.below(image.height - height + 1);
      const int64_t left = rng.below(image.width - width + 1);
      return resample(image, static_cast<double>(top), static_cast<double>(left),
                      static_cast<double>(height), static_cast<double>(width), out_height,
                      out_width);
    }
  }
  // ... then the largest central window whose aspect ratio lies within [3/4, 4/3].
  double height = image.height, width = image.width;
  if (width / height < 3.0 / 4.0) height = width * 4.0 / 3.0;
  if (width / height > 4.0 / 3.0) width = height * 4.0 / 3.0;
  return resample(image, (image.height - height) / 2, (image.width - width) / 2, height, width,
                  out_height, out_width);
}

void normalize(const Image& image, const std::vector<float>& mean, const std::vector<float>& stddev,
               float* out) {
  const int64_t plane = image.height * image.width;
  for (int64_t c = 0; c < image.channels; ++c) {
    // (p / 255 - mean) / stddev as one multiply-add per pixel.
    const float m = mean.empty() ? 0.0f : mean[c], s = stddev.empty() ? 1.0f : stddev[c];
    const float scale = 1.0f / (255.0f * s), shift = -m / s;
    const uint8_t* p = &image.pixels[c * plane];
    for (int64_t i = 0; i < plane; ++i) out[c * plane + i] = p[i] * scale + shift;
  }
}

Image transform_image(const Image& image, const Transform& t, Rng& rng) {
  Image out;
  if (t.random_resized_crop) {
    const int64_t height = t.output_size > 0 ? t.output_size : image.height;
    const int64_t width = t.output_size > 0 ? t.output_size : image.width;
    out = random_resized_crop(image, height, width, t.min_scale, rng);
  } else if (t.output_size > 0 && (t.output_size != image.height || t.output_size != image.width)) {
    const auto resize_to =
        static_cast<int64_t>(std::lround(t.output_size / t.center_crop_fraction));
    out = resize_center_crop(image, resize_to, t.output_size);
  } else {
    out = image;
  }
  if (t.crop_padding > 0) out = random_crop(out, t.crop_padding, rng);
  if (t.horizontal_flip && rng.coin()) out = flip_horizontal(out);
  return out;
}

// ---- mixup and cutmix ----

// lambda ~ Beta(alpha, alpha), as X / (X + Y) with X, Y ~ Gamma(alpha, 1).
static double sample_beta(double alpha, Rng& rng) {
  std::gamma_distribution<double> gamma(alpha, 1.0);
  const double x = gamma(rng), y = gamma(rng);
  return x + y > 0 ? x / (x + y) : 0.5;
}

Tensor mix_batch(const Tensor& images, const Tensor& labels, int64_t num_classes,
                 const Mixing& mixing, Rng& rng) {
  if (images.dtype() != DType::Float32 || images.dim() != 4 || !images.is_contiguous() ||
      images.is_cuda())
    throw std::invalid_argument(
        "mix_batch: images must be a contiguous float32 (B, C, H, W) "
        "CPU tensor, got " +
        shape_str(images.shape()) + " " + dtype_name(images.dtype()));
  const int64_t batch = images.size(0), height = images.size(2), width = images.size(3);
  if (labels.dtype() != DType::Int64 || labels.shape() != Shape{batch})
    throw std::invalid_argument("mix_batch: labels must be int64 (" + std::to_string(batch) +
                                "), got " + shape_str(labels.shape()));
  if (!mixing.enabled()) throw std::invalid_argument("mix_batch: no mixup or cutmix alpha set");

  const bool cutmix = mixing.cutmix_alpha > 0 && (mixing.mixup_alpha <= 0 || rng.coin());
  double lambda = sample_beta(cutmix ? mixing.cutmix_alpha : mixing.mixup_alpha, rng);
  float* x = images.data<float>();
  const int64_t channels = images.size(1), sample = channels * height * width;
  // Sample i is mixed with its partner p = B - 1 - i. Both mixes read the original pair, so
  // each pair is done at once, in place; the middle sample of an odd batch pairs with itself.
  if (cutmix) {
    // A box of area (1 - lambda) H W around a random centre, clipped to the image; lambda is
    // then recomputed from the clipped box, the area that is left of the sample itself.
    const double cut = std::sqrt(1.0 - lambda);
    const auto cut_h = static_cast<int64_t>(height * cut),
               cut_w = static_cast<int64_t>(width * cut);
    const int64_t cy = rng.below(height), cx = rng.below(width);
    const int64_t y0 = std::max<int64_t>(0, cy - cut_h / 2), y1 = std::min(height, cy + cut_h / 2);
    const int64_t x0 = std::max<int64_t>(0, cx - cut_w / 2), x1 = std::min(width, cx + cut_w / 2);
    lambda = 1.0 - static_cast<double>((y1 - y0) * (x1 - x0)) / static_cast<double>(height * width);
    // Pasting p's box into i and i's box into p is swapping the two boxes.
    for (int64_t i = 0; i < batch / 2; ++i) {
      float* a = x + i * sample;
      float* b = x + (batch - 1 - i) * sample;
      for (int64_t c = 0; c < channels; ++c)
        for (int64_t y = y0; y < y1; ++y)
          for (int64_t xx = x0; xx < x1; ++xx)
            std::swap(a[(c * height + y) * width + xx], b[(c * height + y) * width + xx]);
    }
  } else {
    const auto l = static_cast<float>(lambda);
    for (int64_t i = 0; i < batch / 2; ++i) {
      float* a = x + i * sample;
      float* b = x + (batch - 1 - i) * sample;
      for (int64_t k = 0; k < sample; ++k) {
        const float va = a[k], vb = b[k];
        a[k] = l * va + (1 - l) * vb;
        b[k] = l * vb + (1 - l) * va;
      }
    }
  }

  // Soft targets: smoothing / K everywhere, plus lambda (1 - smoothing) on the sample's own
  // label and (1 - lambda) (1 - smoothing) on its partner's.
  Tensor targets = empty({batch, num_classes}, TensorOptions{DType::Float32});
  float* t = targets.data<float>();
  const int64_t* y = labels.data<int64_t>();
  const double keep = 1.0 - mixing.label_smoothing;
  std::fill(t, t + batch * num_classes,
            static_cast<float>(mixing.label_smoothing / static_cast<double>(num_classes)));
  for (int64_t i = 0; i < batch; ++i) {
    const int64_t own = y[i], partner = y[batch - 1 - i];
    if (own < 0 || own >= num_classes)
      throw std::invalid_argument("mix_batch: label " + std::to_string(own) + " out of range for " +
                                  std::to_string(num_classes) + " classes");
    t[i * num_classes + own] += static_cast<float>(lambda * keep);
    t[i * num_classes + partner] += static_cast<float>((1.0 - lambda) * keep);
  }
  return targets;
}

}  // namespace nala::data
