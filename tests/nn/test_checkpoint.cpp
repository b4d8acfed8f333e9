// safetensors files (layout, round trips bit for bit, files from other writers) and training
// checkpoints: save/load, exact resume, and the errors for truncated, corrupt or mismatched files.
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "nn/checkpoint.h"
#include "nn/models/nalaformer.h"
#include "nn_test_util.h"
#include "test_util.h"

using namespace nala;
namespace fs = std::filesystem;

namespace {

// A fresh directory per test run, removed at exit.
struct TempDir {
  fs::path path = fs::temp_directory_path() / ("nala_test_nn_" + std::to_string(getpid()));
  TempDir() { fs::create_directories(path); }
  ~TempDir() { fs::remove_all(path); }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  if (a.numel() == 0) return true;  // no data (and no data pointer to compare)
  Tensor ca = a.contiguous().cpu(), cb = b.contiguous().cpu();
  return std::memcmp(ca.raw_data(), cb.raw_data(), ca.numel() * dtype_size(ca.dtype())) == 0;
}

void check_same_tensors(const StateDict& a, const StateDict& b) {
  REQUIRE(a.size() == b.size());
  for (const auto& [name, t] : a) {
    CAPTURE(name);
    REQUIRE(b.count(name));
    CHECK(bitwise_equal(t, b.at(name)));
  }
}

// Drop path on, so that resuming must restore the random generator.
NaLaFormerConfig tiny_config() { return test::tiny_config(0.2); }

// Everything a training run carries from step to step.
struct Run {
  std::shared_ptr<NaLaFormer> model;
  std::unique_ptr<AdamW> optimizer;
  std::unique_ptr<ModelEma> ema;
  WarmupCosineSchedule schedule{1e-2, 10, 2};

  explicit Run(uint64_t seed) {
    manual_seed(seed);
    model = make_nalaformer(tiny_config());
    optimizer = std::make_unique<AdamW>(split_decay_groups(*model, 0.05), AdamWOptions{});
    ema = std::make_unique<ModelEma>(*model, 0.9);
  }

  double step(const Tensor& images, const Tensor& labels) {
    optimizer->lr = schedule.lr_at(optimizer->steps());
    Tensor loss = cross_entropy(model->forward(images), labels, 0.1);
    optimizer->zero_grad();
    loss.backward();
    clip_grad_norm(model->parameters(), 1.0);
    optimizer->step();
    ema->update(*model);
    return loss.item();
  }
};

struct Batch {
  Tensor images = test::random_tensor({4, 3, 16, 16}, 77);
  Tensor labels = from_data<int64_t>({1, 7, 3, 3}, {4});
};

}  // namespace

TEST_CASE(
    "safetensors: every dtype, odd values, scalars and empty tensors round-trip bit for bit") {
  TempDir dir;
  StateDict tensors = {
      {"f32", from_data<float>({NAN, -0.0f, INFINITY, -INFINITY, 1e-40f, 3.14159f}, {2, 3})},
      {"f64", from_data<double>({-1e-310, 2.5, std::nan("")}, {3})},
      {"i32", from_data<int32_t>({-7, 1 << 30}, {2, 1})},
      {"i64", from_data<int64_t>({int64_t(1) << 62}, {})},
      {"u8", from_data<uint8_t>({0, 255, 9}, {3})},
      {"empty", zeros({0, 4})},
      {"strided view", test::random_tensor({4, 6}, 1).t()},
      {"name with \"quotes\" \\ and \xc2\xb5", ones({1})}};
  Metadata meta = {{"note", "line\nbreak \"quoted\" tab\t \xe2\x82\xac"}, {"empty", ""}};
  save_safetensors(dir.file("a.safetensors"), tensors, meta);
  CHECK_FALSE(fs::exists(dir.file("a.safetensors.tmp")));
  SafetensorsFile back = load_safetensors(dir.file("a.safetensors"));
  check_same_tensors(back.tensors, tensors);
  for (const auto& [key, value] : meta) CHECK(back.metadata.at(key) == value);
}

TEST_CASE("safetensors: the bytes on disk follow the format") {
  TempDir dir;
  save_safetensors(dir.file("b.safetensors"), {{"w", from_data<float>({1.0f, -2.0f}, {2})}},
                   {{"k", "v"}});
  std::string bytes = read_bytes(dir.file("b.safetensors"));
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(static_cast<unsigned char>(bytes[i])) << (8 * i);
  REQUIRE(bytes.size() == 8 + n + 8);
  CHECK(n % 8 == 0);
  std::string header = bytes.substr(8, n);
  CHECK(header.rfind(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{)",
                     0) == 0);
  CHECK(header.find(R"("k":"v")") != std::string::npos);
  float data[2];
  std::memcpy(data, bytes.data() + 8 + n, 8);
  CHECK(data[0] == 1.0f);
  CHECK(data[1] == -2.0f);
}

TEST_CASE(
    "safetensors: reads a file laid out as another writer would (order, spaces, no checksums)") {
  TempDir dir;
  std::string header =
      R"({ "__metadata__" : {"format": "pt"}, "b": {"dtype": "I64", "shape": [], "data_offsets": [8, 16]},)"
      R"( "a" : {"shape": [1], "dtype":"F64", "data_offsets":[0,8]}, "\u00b5\ud83d\ude00": {"dtype": "U8", "shape": [0], "data_offsets": [16, 16]} })";
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>(uint64_t(header.size()) >> (8 * i));
  double a = -0.75;
  int64_t b = 123456789012345;
  file += header + std::string(reinterpret_cast<char*>(&a), 8) +
          std::string(reinterpret_cast<char*>(&b), 8);
  write_bytes(dir.file("c.safetensors"), file);
  SafetensorsFile f = load_safetensors(dir.file("c.safetensors"));
  CHECK(f.tensors.at("a").item() == -0.75);
  CHECK(f.tensors.at("b").shape() == Shape{});
  CHECK(f.tensors.at("b").to_vector<int64_t>()[0] == b);
  CHECK(f.tensors.at("\xc2\xb5\xf0\x9f\x98\x80").numel() == 0);  // escapes decoded to UTF-8
  CHECK(f.metadata.at("format") == "pt");
}

TEST_CASE("a checkpoint restores model, optimizer, EMA and the random generator bit for bit") {
  TempDir dir;
  Batch batch;
  Run run(1);
  for (int i = 0; i < 2; ++i) run.step(batch.images, batch.labels);
  GeneratorState rng = generator_state();
  save_checkpoint(dir.file("ckpt.safetensors"), *run.model, run.optimizer.get(), run.ema.get(),
                  TrainingProgress{2, 1}, tiny_config().to_metadata());
  manual_seed(12345);
  Run fresh(2);
  TrainingProgress progress =
      load_checkpoint(dir.file("ckpt.safetensors"), *fresh.model, fresh.optimizer.get(),
                      fresh.ema.get(), tiny_config().to_metadata());
  CHECK(progress.step == 2);
  CHECK(progress.epoch == 1);
  CHECK(generator_state().seed == rng.seed);
  CHECK(generator_state().offset == rng.offset);
  check_same_tensors(fresh.model->state_dict(), run.model->state_dict());
  check_same_tensors(fresh.optimizer->state_dict(), run.optimizer->state_dict());
  check_same_tensors(fresh.ema->state_dict(), run.ema->state_dict());
  NaLaFormerConfig config =
      NaLaFormerConfig::from_metadata(checkpoint_config(dir.file("ckpt.safetensors")));
  CHECK(config.to_metadata() == tiny_config().to_metadata());
}

TEST_CASE("resume: N steps straight equal K steps, save, load into fresh objects, N - K steps") {
  TempDir dir;
  Batch batch;
  const int N = 5, K = 2;
  Run straight(3);
  std::vector<double> losses_straight;
  for (int i = 0; i < N; ++i) losses_straight.push_back(straight.step(batch.images, batch.labels));

  std::vector<double> losses_resumed;
  {
    Run first(3);
    for (int i = 0; i < K; ++i) losses_resumed.push_back(first.step(batch.images, batch.labels));
    save_checkpoint(dir.file("resume.safetensors"), *first.model, first.optimizer.get(),
                    first.ema.get(), TrainingProgress{K, 0}, tiny_config().to_metadata());
  }
  manual_seed(999);  // a different generator state, overwritten by the load
  Run second(4);
  load_checkpoint(dir.file("resume.safetensors"), *second.model, second.optimizer.get(),
                  second.ema.get(), tiny_config().to_metadata());
  for (int i = K; i < N; ++i) losses_resumed.push_back(second.step(batch.images, batch.labels));

  CHECK(losses_resumed == losses_straight);
  check_same_tensors(second.model->state_dict(), straight.model->state_dict());
  check_same_tensors(second.optimizer->state_dict(), straight.optimizer->state_dict());
  check_same_tensors(second.ema->state_dict(), straight.ema->state_dict());
}

TEST_CASE("truncated, corrupt and mismatched checkpoints are clear errors") {
  TempDir dir;
  std::string path = dir.file("good.safetensors"), bad = dir.file("bad.safetensors");
  Run run(5);
  save_checkpoint(path, *run.model, run.optimizer.get(), nullptr, TrainingProgress{},
                  tiny_config().to_metadata());
  std::string bytes = read_bytes(path);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(static_cast<unsigned char>(bytes[i])) << (8 * i);

  auto load_bad = [&](const std::string& content) {
    write_bytes(bad, content);
    Run fresh(6);
    load_checkpoint(bad, *fresh.model, fresh.optimizer.get(), nullptr, tiny_config().to_metadata());
  };
  using doctest::Contains;
  CHECK_THROWS_WITH_AS(load_bad(""), Contains("truncated: 0 bytes"), std::runtime_error);
  CHECK_THROWS_WITH_AS(load_bad(bytes.substr(0, 5)), Contains("truncated: 5 bytes"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(load_bad(bytes.substr(0, 8 + n / 2)), Contains("the header length says"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(load_bad(bytes.substr(0, bytes.size() - 3)),
                       Contains("tensor 'patch_embed.norm4.weight': data_offsets"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(load_bad(bytes.substr(0, bytes.size() - 3)),
                       Contains("the file is truncated"), std::runtime_error);
  std::string damaged = bytes;
  damaged[8 + 1] = 'x';  // the quote that opens the first tensor's name
  CHECK_THROWS_WITH_AS(load_bad(damaged), Contains("corrupt safetensors header"),
                       std::runtime_error);
  damaged = bytes;
  damaged.back() ^= 0x10;  // a bit of the last tensor's data
  CHECK_THROWS_WITH_AS(load_bad(damaged),
                       Contains("tensor 'patch_embed.norm4.weight': checksum mismatch"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(load_safetensors(dir.file("missing.safetensors")), Contains("cannot open"),
                       std::runtime_error);

  // A checkpoint of another variant, and a shape mismatch when the config is not compared.
  NaLaFormerConfig other = tiny_config();
  other.variant = "tiny-wide";
  other.widths = {8, 16, 24, 40};
  other.heads = {2, 4, 6, 10};
  NaLaFormer other_model(other);
  CHECK_THROWS_WITH_AS(
      load_checkpoint(path, other_model, nullptr, nullptr, other.to_metadata()),
      Contains("written for another model config: heads '2,4,6,8' (this model: '2,4,6,10'), "
               "variant 'tiny' (this model: 'tiny-wide'), widths '8,16,24,32'"),
      std::runtime_error);
  CHECK_THROWS_WITH_AS(
      load_checkpoint(path, other_model, nullptr, nullptr, {}),
      Contains("head.proj.weight has shape [32, 32] in the state dict but [32, 40]"),
      std::runtime_error);
  NaLaFormerConfig fewer_classes = tiny_config();
  fewer_classes.num_classes = 5;
  NaLaFormer small_head(fewer_classes);
  CHECK_THROWS_WITH_AS(
      load_checkpoint(path, small_head, nullptr, nullptr, {}),
      Contains("head.classifier.bias has shape [10] in the state dict but [5] in the model"),
      std::runtime_error);
  // Asking for state that was not saved.
  Run fresh(7);
  CHECK_THROWS_WITH_AS(load_checkpoint(path, *fresh.model, nullptr, fresh.ema.get(), {}),
                       Contains("no EMA weights"), std::runtime_error);
  // Writing where no file can be made leaves nothing behind and names the path.
  CHECK_THROWS_WITH_AS(save_safetensors(dir.file("no/such/dir/x.safetensors"), {}),
                       Contains("cannot create"), std::runtime_error);
}

TEST_CASE("a checkpoint of a CUDA model loads into a CPU model and back, bit for bit") {
  if (!test::cuda_available()) return;
  TempDir dir;
  Batch batch;
  Run gpu(8);
  gpu.model->to(Device::CUDA);
  gpu.optimizer = std::make_unique<AdamW>(split_decay_groups(*gpu.model, 0.05), AdamWOptions{});
  gpu.ema = std::make_unique<ModelEma>(*gpu.model, 0.9);
  gpu.step(batch.images.cuda(), batch.labels.cuda());
  save_checkpoint(dir.file("gpu.safetensors"), *gpu.model, gpu.optimizer.get(), gpu.ema.get(),
                  TrainingProgress{1, 0}, tiny_config().to_metadata());
  Run cpu(9);
  load_checkpoint(dir.file("gpu.safetensors"), *cpu.model, cpu.optimizer.get(), cpu.ema.get(),
                  tiny_config().to_metadata());
  check_same_tensors(cpu.model->state_dict(), gpu.model->state_dict());
  check_same_tensors(cpu.ema->state_dict(), gpu.ema->state_dict());
  Run back(10);
  back.model->to(Device::CUDA);
  load_checkpoint(dir.file("gpu.safetensors"), *back.model, nullptr, nullptr, {});
  CHECK(back.model->parameters()[0].is_cuda());
  check_same_tensors(back.model->state_dict(), gpu.model->state_dict());
}
