// Kite's engine (docs/engine.md): a folder with config.json (format version, device, build limits,
// model config, KV block size), rank<i>.engine holding the weights ready to upload, and the
// tokenizer files. rank<i>.engine is one file: magic, format version, a JSON header of tensors,
// 64-byte aligned data and a CRC32 of header and data, checked when the file is opened.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/file.h"
#include "core/status.h"
#include "core/tensor.h"
#include "formats/gemm_choice.h"
#include "formats/model_config.h"
#include "formats/quantization.h"

namespace kite {

inline constexpr int kEngineFormatVersion = 2;

// The limits an engine was built for; the runtime refuses requests beyond them.
struct BuildLimits {
  int64_t max_batch_size = 8;
  int64_t max_input_len = 2048;
  int64_t max_seq_len = 4096;
  int64_t tokens_per_block = 32;  // KV cache block size
  int64_t max_num_tokens = 8192;  // tokens of all sequences in one step (prompts beyond: chunked)
  // The widest beam search (TensorRT-LLM's max_beam_width); each beam is a sequence of the batch,
  // so at most max_batch_size. 0: max_batch_size.
  int64_t max_beam_width = 0;

  int64_t beam_width_limit() const { return max_beam_width > 0 ? max_beam_width : max_batch_size; }

  // KV cache blocks one sequence of max_seq_len tokens takes.
  int64_t blocks_per_sequence() const {
    return (max_seq_len + tokens_per_block - 1) / tokens_per_block;
  }
  // The block-table width of a step whose longest context is `context_tokens`: the blocks it
  // needs, rounded up to a power of two, at most blocks_per_sequence(). Decode graphs are
  // captured per width, and the split-KV decode chooses its splits from it (a 256-token table
  // needs no split), so contexts that grow within a width replay the same graph.
  int64_t block_table_width(int64_t context_tokens) const {
    const int64_t needed =
        std::max<int64_t>(1, (context_tokens + tokens_per_block - 1) / tokens_per_block);
    int64_t width = 1;
    while (width < needed) width *= 2;
    return std::min(width, blocks_per_sequence());
  }

  bool operator==(const BuildLimits&) const = default;
};

// What an engine's memory holds besides its KV cache, planned by kite build from the limits
// (runtime/memory_plan.h): zeros in engines built before the plan was recorded.
struct MemoryPlan {
  int64_t weights_bytes = 0;     // the tensors of rank0.engine, as uploaded
  int64_t activation_bytes = 0;  // the workspace of the largest step (max_num_tokens tokens)
  int64_t kv_cache_bytes_per_token = 0;

  bool operator==(const MemoryPlan&) const = default;
};

struct EngineConfig {
  int format_version = kEngineFormatVersion;
  std::string kite_version;
  std::string device = "cpu";  // "cpu" or "cuda"
  BuildLimits limits;
  ModelConfig model;
  DType weight_dtype = DType::kF32;  // of every floating weight and of the quantized ones' scales
  WeightOnlyConfig weight_only;      // the decoder's linear weights as int8 / int4, or not
  // The layers' RMSNorm scales are folded into the stored q/k/v and gate/up weights
  // (folded_norm_of, model/llama.h; CUDA engines); the norm weights are stored as they were.
  bool norm_scales_folded = false;
  DType kv_cache_dtype = DType::kF32;
  std::string built_from;  // the checkpoint folder, for information
  MemoryPlan memory;
  // device "cuda" only: the GPU the kernels were chosen on (an engine runs only on GPUs of the
  // same compute capability), the split-KV decode switch, and the tuned GEMM kernels.
  std::string gpu_name;
  int compute_capability = 0;
  bool multi_block_mode = true;
  std::vector<GemmChoice> gemm_choices;
};

nlohmann::ordered_json engine_config_to_json(const EngineConfig& config);
// Refuses other format versions with a message saying to rebuild.
Result<EngineConfig> engine_config_from_json(const nlohmann::json& json, const std::string& source);
Result<EngineConfig> read_engine_config(const std::string& engine_dir);
Status write_engine_config(const std::string& engine_dir, const EngineConfig& config);
// "<dir>/rank<rank>.engine"
std::string engine_rank_path(const std::string& engine_dir, int rank);

// CRC-32 (IEEE 802.3, as zlib), continued from `crc` (0 to start).
uint32_t crc32(const uint8_t* data, size_t size, uint32_t crc = 0);
// The same CRC computed on several threads (pieces of `data` combined as zlib's crc32_combine
// does): for the tens of GB of an engine file, checked at every load.
uint32_t crc32_parallel(const uint8_t* data, size_t size, uint32_t crc = 0);

// Writes a rank file: `produce(i)` gives the bytes of tensor i, which must match its declared
// dtype and shape. Written to "<path>.tmp" and renamed when complete.
struct EngineTensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
};
Status write_engine_file(const std::string& path, const std::vector<EngineTensorInfo>& tensors,
                         const std::function<Result<TensorView>(size_t index)>& produce);

// An opened, verified rank file (mapped; views live as long as this object).
class EngineFile {
 public:
  // Checks magic, format version, header, every tensor's extent and the CRC32.
  static Result<EngineFile> open(const std::string& path);

  const std::string& path() const { return file_.path(); }
  const std::vector<std::string>& names() const { return names_; }
  Result<TensorView> tensor(const std::string& name) const;

 private:
  MappedFile file_;
  std::vector<std::string> names_;
  std::map<std::string, TensorView> tensors_;
};

}  // namespace kite
