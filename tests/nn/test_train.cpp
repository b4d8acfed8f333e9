// The training loop end to end on a few synthetic images: files written, resume, eval, errors.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "nn/checkpoint.h"
#include "nn/train.h"
#include "test_util.h"

using namespace nala;
namespace fs = std::filesystem;

static int count_lines(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  int n = 0;
  while (std::getline(f, line)) ++n;
  return n;
}

static TrainOptions tiny_run(const std::string& out, int64_t epochs) {
  TrainOptions o;
  o.epochs = epochs;
  o.batch_size = 32;
  o.limit_train = 64;
  o.limit_test = 64;
  o.workers = 1;
  o.warmup_epochs = 0.5;
  o.out = out;
  return o;
}

TEST_CASE("nala train: writes metrics, checkpoints and curves; resumes; evaluates") {
  std::string out = "/tmp/nala_test_train_run";
  fs::remove_all(out);
  std::ostringstream log;
  EvalResult r = train(tiny_run(out, 2), log);
  CHECK(r.top1 >= 0.0);
  CHECK(r.top1 <= 100.0);
  CHECK(r.top5 >= r.top1);
  CHECK(std::isfinite(r.loss));
  CHECK(count_lines(out + "/metrics.jsonl") == 2);
  CHECK(count_lines(out + "/metrics.csv") == 3);  // header + 2 epochs
  for (const char* f : {"last.safetensors", "best.safetensors", "curves.png"})
    CHECK(fs::exists(out + "/" + f));
  std::ifstream png(out + "/curves.png", std::ios::binary);
  char sig[8] = {};
  png.read(sig, 8);
  CHECK(std::string(sig + 1, 3) == "PNG");
  CHECK(log.str().find("epoch 2: train loss") != std::string::npos);

  // Resume the 2-epoch run for a third epoch: one more line of metrics.
  TrainOptions more = tiny_run(out, 3);
  more.resume = out + "/last.safetensors";
  std::ostringstream log2;
  train(more, log2);
  CHECK(log2.str().find("resumed from") != std::string::npos);
  CHECK(log2.str().find("at epoch 2") != std::string::npos);
  CHECK(log2.str().find("epoch 3: train loss") != std::string::npos);
  CHECK(count_lines(out + "/metrics.jsonl") == 3);

  // nala eval rebuilds the model from the checkpoint's config.
  std::ostringstream log3;
  EvalResult e = evaluate_checkpoint(out + "/last.safetensors", "", "cpu", 256, log3);
  CHECK(e.per_class_top1.size() == 10);
  CHECK(log3.str().find("top-1") != std::string::npos);
}

TEST_CASE("nala train: a run stopped mid-epoch and resumed equals one that never stopped") {
  // 64 images in batches of 32: 2 steps per epoch, 4 in all. The stopped run halts after step 3,
  // in the middle of epoch 2, and its resume takes only the epoch's last batch.
  const std::string straight = "/tmp/nala_test_train_straight",
                    split = "/tmp/nala_test_train_split";
  fs::remove_all(straight);
  fs::remove_all(split);
  std::ostringstream log;
  train(tiny_run(straight, 2), log);
  TrainOptions first = tiny_run(split, 2);
  first.stop_after_steps = 3;
  std::ostringstream log1;
  train(first, log1);
  CHECK(log1.str().find("stopped after 3 steps") != std::string::npos);
  CHECK(log1.str().find("at epoch 1, step 3") != std::string::npos);
  CHECK(count_lines(split + "/metrics.csv") == 2);  // header + epoch 1
  TrainOptions rest = tiny_run(split, 2);
  rest.resume = split + "/last.safetensors";
  std::ostringstream log2;
  train(rest, log2);
  CHECK(log2.str().find("epoch 2/2  step 2/2") != std::string::npos);
  CHECK(count_lines(split + "/metrics.csv") == 3);  // header + epochs 1, 2
  SafetensorsFile a = load_safetensors(straight + "/last.safetensors"),
                  b = load_safetensors(split + "/last.safetensors");
  REQUIRE(a.tensors.size() == b.tensors.size());
  for (const auto& [name, t] : a.tensors) {
    CAPTURE(name);
    REQUIRE(b.tensors.count(name));
    CHECK(test::max_rel_diff(b.tensors.at(name).to(DType::Float64), t.to(DType::Float64)) == 0.0);
  }
  // A stop on an epoch's last batch (step 2 of 2) records that epoch before stopping, and the
  // resumed run starts the next one.
  const std::string boundary = "/tmp/nala_test_train_boundary";
  fs::remove_all(boundary);
  TrainOptions at_end = tiny_run(boundary, 2);
  at_end.stop_after_steps = 2;
  std::ostringstream log4;
  train(at_end, log4);
  CHECK(log4.str().find("at epoch 1, step 2") != std::string::npos);
  CHECK(count_lines(boundary + "/metrics.csv") == 2);  // header + epoch 1
  // A diverged epoch's record (a nan loss, as operator<< writes it) does not stop a resume.
  std::string header, record;
  {
    std::ifstream csv(boundary + "/metrics.csv");
    std::getline(csv, header);
    std::getline(csv, record);
  }
  const size_t loss_at = record.find(',') + 1;
  record.replace(loss_at, record.find(',', loss_at) - loss_at, "-nan");
  std::ofstream(boundary + "/metrics.csv") << header << "\n" << record << "\n";
  at_end.stop_after_steps = 0;
  at_end.resume = boundary + "/last.safetensors";
  train(at_end, log4);
  CHECK(log4.str().find("epoch 2: train loss") != std::string::npos);
  CHECK(count_lines(boundary + "/metrics.csv") == 3);
  // A stop on the last epoch's last batch has finished the run: it reports done, not a resume.
  const std::string finished = "/tmp/nala_test_train_finished";
  fs::remove_all(finished);
  TrainOptions to_the_end = tiny_run(finished, 2);
  to_the_end.stop_after_steps = 4;  // 2 epochs of 2 steps
  std::ostringstream log5;
  train(to_the_end, log5);
  CHECK(log5.str().find("done: best test top-1") != std::string::npos);
  CHECK(log5.str().find("resume with --resume") == std::string::npos);
  // A checkpoint that does not fit the run (other batch size) is a clear error.
  TrainOptions other = tiny_run(split, 2);
  other.resume = split + "/last.safetensors";
  other.batch_size = 8;
  std::ostringstream log3;
  CHECK_THROWS_WITH_AS(train(other, log3), doctest::Contains("steps per epoch"),
                       std::invalid_argument);
}

TEST_CASE("nala train: resuming from an earlier epoch's checkpoint rewrites the later records") {
  // Epoch 1, a copy of its checkpoint, then epochs 2 and 3; resuming from the copy must leave the
  // records of epochs 1, 2, 3 once each (not 1, 2, 3, 2, 3), in both metrics files.
  const std::string out = "/tmp/nala_test_train_rewind";
  fs::remove_all(out);
  std::ostringstream log;
  train(tiny_run(out, 1), log);
  fs::copy_file(out + "/last.safetensors", out + "/epoch1.safetensors");
  TrainOptions more = tiny_run(out, 3);
  more.resume = out + "/last.safetensors";
  train(more, log);
  REQUIRE(count_lines(out + "/metrics.csv") == 4);  // header + 3 epochs
  more.resume = out + "/epoch1.safetensors";
  train(more, log);
  CHECK(count_lines(out + "/metrics.jsonl") == 3);
  std::ifstream csv(out + "/metrics.csv");
  std::string line;
  std::vector<std::string> epochs;
  std::getline(csv, line);
  CHECK(line.rfind("epoch,", 0) == 0);
  while (std::getline(csv, line)) epochs.push_back(line.substr(0, line.find(',')));
  CHECK(epochs == std::vector<std::string>{"1", "2", "3"});
}

TEST_CASE("nala train: bad data specs are clear errors") {
  std::ostringstream log;
  TrainOptions o = tiny_run("/tmp/nala_test_train_bad", 1);
  o.data = "imagenet";
  CHECK_THROWS_WITH_AS(train(o, log), doctest::Contains("nor a directory"), std::runtime_error);
  o.data = "mnist=/tmp";
  CHECK_THROWS_WITH_AS(train(o, log), doctest::Contains("unknown kind 'mnist'"),
                       std::runtime_error);
  o.data = "cifar10=/nonexistent/dir";
  CHECK_THROWS_AS(train(o, log), std::exception);
  o.data = "";
  o.model = "xxl";
  CHECK_THROWS_AS(train(o, log), std::exception);
}
