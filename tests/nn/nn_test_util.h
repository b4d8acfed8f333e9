// Helpers shared by the nn suites.
#pragma once

#include "nn/models/nalaformer.h"

namespace nala::test {

// Four stages at widths 8..32 with head dim 4, one block each: fast on the CPU.
inline NaLaFormerConfig tiny_config(double drop_path_rate = 0.0) {
  NaLaFormerConfig c;
  c.variant = "tiny";
  c.widths = {8, 16, 24, 32};
  c.depths = {1, 1, 1, 1};
  c.heads = {2, 4, 6, 8};
  c.mlp_ratio = 2.0;
  c.drop_path_rate = drop_path_rate;
  c.stem_stride = 1;
  c.num_classes = 10;
  c.head_hidden = 32;
  return c;
}

}  // namespace nala::test
