// Train NaLaFormer xt on an ImageNet-style folder (root/train/<class>/*.jpg, root/val/...),
// e.g. Imagenette at 128 px, with the library's training loop.
//
//   build/train_imagenet_subset ROOT [EPOCHS] [cpu|cuda] [IMAGE_SIZE]
#include <iostream>

#include "nn/train.h"

using namespace nala;

int main(int argc, char** argv) try {
  if (argc < 2) {
    std::cerr << "usage: " << argv[0] << " ROOT [EPOCHS] [cpu|cuda] [IMAGE_SIZE]\n";
    return 2;
  }
  TrainOptions options;
  options.model = "xt";  // the ImageNet stem: stride 4 overall
  options.data = std::string("folder=") + argv[1];
  options.epochs = argc > 2 ? std::stoll(argv[2]) : 10;
  options.device = argc > 3 ? argv[3] : "cpu";
  options.image_size = argc > 4 ? std::stoll(argv[4]) : 128;  // images are decoded at this size
  options.batch_size = 64;
  options.lr = 1e-3;
  options.out = "runs/imagenet_subset";
  EvalResult r = train(options, std::cout);  // random-resized-crop + flip for images > 64 px
  std::cout << "final top-1 " << r.top1 << "%\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "error: " << e.what() << "\n";
  return 1;
}
