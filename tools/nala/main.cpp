// The `nala` command line: parses arguments and calls the library, nothing more.
#include <CLI/CLI.hpp>
#include <filesystem>
#include <iostream>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "bench/bench.h"
#include "nn/train.h"

using namespace nala;

// `nala attn`: runs one attention op on .npy inputs and writes out.npy (and dq, dk, dv).
static int run_attn(const std::string& kind_name, const std::string& q_path,
                    const std::string& k_path, const std::string& v_path,
                    const std::vector<int64_t>& grid, const std::string& grad_path,
                    const std::string& device_name_str, const std::string& out_dir) {
  AttentionKind kind = kind_name == "nala"      ? AttentionKind::Nala
                       : kind_name == "softmax" ? AttentionKind::Softmax
                                                : AttentionKind::Relu;
  Device device = parse_device(device_name_str);
  Tensor q0 = load_npy(q_path), k0 = load_npy(k_path), v0 = load_npy(v_path);
  DType dtype = q0.dtype();
  auto prepare = [&](const Tensor& t) {
    return t.to(device).detach().requires_grad_(!grad_path.empty());
  };
  Tensor q = prepare(q0), k = prepare(k0), v = prepare(v0);
  Tensor out = attention(kind, q, k, v, grid[0], grid[1]);
  std::filesystem::create_directories(out_dir);
  save_npy(out_dir + "/out.npy", out.to(dtype));
  if (!grad_path.empty()) {
    out.backward(load_npy(grad_path).to(dtype).to(device));
    save_npy(out_dir + "/dq.npy", q.grad());
    save_npy(out_dir + "/dk.npy", k.grad());
    save_npy(out_dir + "/dv.npy", v.grad());
  }
  std::cout << "wrote " << out_dir << "/out.npy"
            << (grad_path.empty() ? "" : " and dq.npy, dk.npy, dv.npy") << "\n";
  return 0;
}

int main(int argc, char** argv) {
  CLI::App app{"nala: a from-scratch deep-learning framework with NaLa attention"};
  app.require_subcommand(1);
  const std::vector<std::string> devices{"cpu", "cuda"};

  auto* train_cmd = app.add_subcommand(
      "train", "train a NaLaFormer (with no --data: on a built-in synthetic dataset)");
  TrainOptions t;
  train_cmd->add_option("--model", t.model, "variant: xt-cifar, xt, t, s")->capture_default_str();
  train_cmd->add_option("--data", t.data,
                        "cifar10=DIR | folder=DIR | fashion-mnist[=DIR]; none: synthetic");
  train_cmd->add_option("--attention", t.attention,
                        "per-stage kinds, e.g. l,l,v,v (l NaLa, v softmax, r ReLU)");
  train_cmd->add_option("--image-size", t.image_size, "image folders: training resolution")
      ->capture_default_str();
  train_cmd->add_option("--epochs", t.epochs)->capture_default_str();
  train_cmd->add_option("--batch-size", t.batch_size)->capture_default_str();
  train_cmd->add_option("--lr", t.lr, "AdamW peak learning rate")->capture_default_str();
  train_cmd->add_option("--min-lr", t.min_lr)->capture_default_str();
  train_cmd->add_option("--weight-decay", t.weight_decay)->capture_default_str();
  train_cmd->add_option("--warmup-epochs", t.warmup_epochs)->capture_default_str();
  train_cmd->add_option("--label-smoothing", t.label_smoothing)->capture_default_str();
  train_cmd->add_option("--drop-path", t.drop_path,
                        "stochastic depth rate (default: the variant's)");
  train_cmd->add_option("--clip-grad", t.clip_grad, "max gradient norm (0: off)")
      ->capture_default_str();
  train_cmd->add_option("--mixup", t.mixup, "mixup alpha (0: off)")->capture_default_str();
  train_cmd->add_option("--cutmix", t.cutmix, "cutmix alpha (0: off)")->capture_default_str();
  train_cmd->add_option("--ema-decay", t.ema_decay, "EMA of weights (0: off)")
      ->capture_default_str();
  train_cmd->add_option("--device", t.device)->check(CLI::IsMember(devices))->capture_default_str();
  train_cmd->add_option("--seed", t.seed)->capture_default_str();
  train_cmd->add_option("--workers", t.workers, "data loader threads")->capture_default_str();
  train_cmd
      ->add_option("--limit-test", t.limit_test,
                   "evaluate on only this many test images (a seeded random subset)")
      ->capture_default_str();
  train_cmd
      ->add_option("--limit-train", t.limit_train,
                   "use only this many training images (a seeded random subset)")
      ->capture_default_str();
  train_cmd->add_option("--out", t.out, "run directory")->capture_default_str();
  train_cmd->add_option("--resume", t.resume, "checkpoint to continue from");
  train_cmd->add_option("--stop-after-steps", t.stop_after_steps,
                        "stop after this many steps, saving last.safetensors as Ctrl-C does");

  auto* eval_cmd =
      app.add_subcommand("eval", "evaluate a checkpoint: top-1, top-5 and per-class accuracy");
  std::string eval_ckpt, eval_data, eval_device = "cpu";
  int64_t eval_batch = 256;
  eval_cmd->add_option("--checkpoint", eval_ckpt)->required();
  eval_cmd->add_option("--data", eval_data, "as for train");
  eval_cmd->add_option("--device", eval_device)->check(CLI::IsMember(devices));
  eval_cmd->add_option("--batch-size", eval_batch);

  auto* model_cmd =
      app.add_subcommand("model", "print a variant's layers, parameter counts and FLOPs");
  std::string variant = "xt";
  int64_t classes = 1000, image_size = 0;
  model_cmd->add_option("--variant", variant, "xt, t, s, xt-cifar")->capture_default_str();
  model_cmd->add_option("--classes", classes)->capture_default_str();
  model_cmd->add_option("--image-size", image_size, "default: 224, or 32 for xt-cifar");
  std::string model_attention;
  model_cmd->add_option("--attention", model_attention, "per-stage kinds, e.g. l,l,l,l");

  auto* attn_cmd = app.add_subcommand("attn", "run an attention op on .npy files (B, H, N, d)");
  std::string kind = "nala", q_path, k_path, v_path, grad_path, attn_device = "cpu", attn_out = ".";
  std::vector<int64_t> grid;
  attn_cmd->add_option("--kind", kind)->check(CLI::IsMember({"nala", "softmax", "relu"}));
  attn_cmd->add_option("--q", q_path)->required()->check(CLI::ExistingFile);
  attn_cmd->add_option("--k", k_path)->required()->check(CLI::ExistingFile);
  attn_cmd->add_option("--v", v_path)->required()->check(CLI::ExistingFile);
  attn_cmd->add_option("--grid", grid, "token grid H W (N = H * W)")->required()->expected(2);
  attn_cmd->add_option("--grad-out", grad_path, "gradient of out.npy: also writes dq, dk, dv")
      ->check(CLI::ExistingFile);
  attn_cmd->add_option("--device", attn_device)->check(CLI::IsMember(devices));
  attn_cmd->add_option("--out", attn_out, "output directory");

  auto* gradcheck = app.add_subcommand(
      "gradcheck", "check every op's gradient against finite differences (float64)");
  std::string gc_device = "cpu";
  gradcheck->add_option("--device", gc_device)->check(CLI::IsMember(devices));

  auto* bench = app.add_subcommand("bench", "benchmark kernels and ops");
  std::string bench_name;
  BenchOptions bench_options;
  bench->add_option("name", bench_name, "the benchmark")
      ->required()
      ->check(CLI::IsMember(benchmark_names()));
  bench->add_option("--device", bench_options.device)->check(CLI::IsMember(devices));
  bench->add_option("--repeats", bench_options.repeats, "timed repetitions (median reported)");
  bench->add_option("--head-dim", bench_options.head_dim, "attention: only this head dim");
  bench->add_option("--tokens", bench_options.tokens, "attention: only this N (a square grid)");
  bench->add_option("--kind", bench_options.kind, "attention: only this variant")
      ->check(CLI::IsMember(attention_bench_kinds()));

  CLI11_PARSE(app, argc, argv);
  try {
    if (*train_cmd) {
      train(t, std::cout);
      return 0;
    }
    if (*eval_cmd) {
      evaluate_checkpoint(eval_ckpt, eval_data, eval_device, eval_batch, std::cout);
      return 0;
    }
    if (*model_cmd) {
      NaLaFormerConfig config = nalaformer_variant(variant, classes);
      if (!model_attention.empty()) config.attention = model_attention;
      config.validate();
      std::cout << model_summary(config, image_size ? image_size : config.default_image_size());
      return 0;
    }
    if (*attn_cmd)
      return run_attn(kind, q_path, k_path, v_path, grid, grad_path, attn_device, attn_out);
    if (*gradcheck)
      return run_gradcheck_table(builtin_gradcheck_cases(), parse_device(gc_device), std::cout) == 0
                 ? 0
                 : 1;
    if (*bench) return run_benchmark(bench_name, bench_options, std::cout);
  } catch (const std::exception& e) {
    std::cerr << "nala: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
