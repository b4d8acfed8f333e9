// Train NaLaFormer xt-cifar on CIFAR-10: the whole loop, written out with the library API.
// (`nala train` runs the same steps with more options; read this first.)
//
//   build/train_cifar10 [CIFAR_DIR] [EPOCHS] [cpu|cuda]
//
// CIFAR_DIR holds the binary batches (tools/download_cifar10.sh fetches them); without it the
// program trains on the built-in synthetic dataset, so it runs anywhere.
#include <iostream>

#include "nn/checkpoint.h"
#include "nn/data.h"
#include "nn/models/nalaformer.h"
#include "nn/optim.h"
#include "nn/train.h"

using namespace nala;

int main(int argc, char** argv) try {
  std::string dir = argc > 1 ? argv[1] : "";
  int64_t epochs = argc > 2 ? std::stoll(argv[2]) : 2;
  Device device = parse_device(argc > 3 ? argv[3] : "cpu");
  manual_seed(0);

  // 1. Data: uint8 images in memory; the loader shuffles, augments (random crop with 4 pixels
  //    of padding, horizontal flip), normalises and batches them on background threads.
  data::Dataset train_set = dir.empty() ? data::make_synthetic(data::Split::Train, 5000)
                                        : data::load_cifar10(dir, data::Split::Train);
  data::Dataset test_set = dir.empty() ? data::make_synthetic(data::Split::Test, 1000)
                                       : data::load_cifar10(dir, data::Split::Test);
  data::ChannelStats stats = data::channel_stats(train_set);
  data::LoaderOptions options;
  options.batch_size = 128;
  options.drop_last = true;
  options.transform.crop_padding = 4;
  options.transform.horizontal_flip = true;
  options.transform.mean = stats.mean;
  options.transform.stddev = stats.stddev;
  data::DataLoader train_loader(train_set, options);
  data::LoaderOptions test_options = options;
  test_options.shuffle = false;
  test_options.drop_last = false;
  test_options.transform = data::Transform{};
  test_options.transform.mean = stats.mean;
  test_options.transform.stddev = stats.stddev;
  data::DataLoader test_loader(test_set, test_options);

  // 2. Model: the CIFAR variant (stride-1 stem: 32 px in, 16 x 16 tokens), NaLa attention in
  //    the first two stages and softmax attention in the last two.
  auto model = make_nalaformer(nalaformer_variant("xt-cifar", train_set.num_classes()));
  model->to(device);
  std::cout << model->num_parameters() << " parameters\n";

  // 3. Optimizer: AdamW with no weight decay on norms, biases and LayerScale; the learning rate
  //    warms up linearly for one epoch, then follows a cosine to zero.
  AdamW optimizer(split_decay_groups(*model, 0.05), AdamWOptions{2e-3});
  int64_t steps = epochs * train_loader.batches_per_epoch();
  WarmupCosineSchedule schedule(2e-3, steps,
                                std::min<int64_t>(train_loader.batches_per_epoch(), steps - 1));

  // 4. The loop: forward, loss, backward, clip, step.
  int64_t step = 0;
  for (int64_t epoch = 0; epoch < epochs; ++epoch) {
    train_loader.start_epoch(epoch);
    model->train();
    data::Batch batch;
    while (train_loader.next(batch)) {
      optimizer.lr = schedule.lr_at(step++);
      Tensor logits = model->forward(batch.images.to(device));
      Tensor loss = cross_entropy(logits, batch.labels.to(device), /*label_smoothing=*/0.1);
      optimizer.zero_grad();
      loss.backward();  // fills .grad of every parameter
      clip_grad_norm(model->parameters(), 5.0);
      optimizer.step();
      if (step % 10 == 0)
        std::cout << "epoch " << epoch + 1 << " step " << step << " loss " << loss.item() << "\n";
    }
    // 5. Evaluate on the held-out split (eval mode: batch norm uses its running statistics).
    EvalResult r = evaluate(*model, test_loader, device);
    std::cout << "epoch " << epoch + 1 << ": test top-1 " << r.top1 << "%, top-5 " << r.top5
              << "%\n";
  }

  // 6. Save the weights (safetensors: readable by PyTorch's `safetensors` library).
  save_checkpoint("xt_cifar.safetensors", *model, &optimizer, nullptr,
                  TrainingProgress{step, epochs},
                  nalaformer_variant("xt-cifar", train_set.num_classes()).to_metadata());
  return 0;
} catch (const std::exception& e) {
  std::cerr << "error: " << e.what() << "\n";
  return 1;
}
