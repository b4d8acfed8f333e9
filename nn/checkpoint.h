// Checkpoints as safetensors files (https://huggingface.co/docs/safetensors), readable by the
// Python `safetensors` package:
//
//   8 bytes    N, the header length, unsigned little-endian
//   N bytes    JSON: {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]},
//                     ..., "__metadata__": {"<key>": "<string value>", ...}}
//              padded with spaces to a multiple of 8 bytes
//   the rest   the tensors' raw little-endian bytes, C order; offsets count from here
//
// A training checkpoint is one such file: the model's state dict under its own names, the
// optimizer's state as `optim.<name>`, the EMA weights as `ema.<name>`, and metadata: the step,
// the epoch, the random generator's state and the model config as `config.<field>`.
// Files are written atomically (path.tmp, flushed and fsynced, then renamed over path), so a
// crash leaves either the old checkpoint or the new one, never half of one.
#pragma once

#include <map>
#include <string>

#include "nn/module.h"
#include "nn/optim.h"

namespace nala {

using Metadata = std::map<std::string, std::string>;

// Writes CPU copies of `tensors` (float32/64, int32/64, uint8) with `metadata`, atomically.
void save_safetensors(const std::string& path, const StateDict& tensors,
                      const Metadata& metadata = {});

struct SafetensorsFile {
  StateDict tensors;  // on the CPU
  Metadata metadata;
};
// Reads a whole file. A truncated or corrupt file throws std::runtime_error naming the path and,
// where it can, the tensor.
SafetensorsFile load_safetensors(const std::string& path);

struct TrainingProgress {
  int64_t step = 0;   // optimizer steps taken
  int64_t epoch = 0;  // epochs completed
};

// Saves the model, the optimizer and EMA state (each may be null), `progress`, the random
// generator's state (nala::generator_state()) and `config` (stored as config.<key>).
void save_checkpoint(const std::string& path, const Module& model, const Optimizer* optimizer,
                     const ModelEma* ema, const TrainingProgress& progress, const Metadata& config);

// Loads a checkpoint written by save_checkpoint into existing objects of the same shape and
// restores the random generator's state, so that training resumes exactly where it stopped.
// Every entry of `config` must equal the checkpoint's (e.g. a checkpoint of variant xt does not
// load into a model of variant t); then the model loads strictly, and the optimizer and EMA
// (when not null) need their state in the file. Errors name the path and the key or tensor.
TrainingProgress load_checkpoint(const std::string& path, Module& model, Optimizer* optimizer,
                                 ModelEma* ema, const Metadata& config);

// The config.<key> entries of a checkpoint, without the prefix (to rebuild its model).
Metadata checkpoint_config(const std::string& path);

}  // namespace nala
