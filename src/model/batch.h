// What one forward step works on: the tokens of several sequences (prefill chunks and decode
// tokens mixed), where each sequence's keys and values live in the paged KV cache, and which rows
// need logits. Plain structs of pointers and sizes, shared by the CPU and CUDA kernels (the
// flashinfer / vLLM approach): the runtime fills them, the backend only reads them.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace kite {

// The paged KV cache of all layers: one pool of fixed-size blocks per layer.
// Layout: [num_layers][num_blocks][2 (key, value)][num_kv_heads][block_size][head_dim].
// Keeping heads outside tokens makes one head's keys of a block contiguous (block_size * head_dim),
// which is what attention reads.
struct KvCacheView {
  void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t num_layers = 0;
  int64_t num_blocks = 0;
  int64_t num_kv_heads = 0;
  int64_t block_size = 0;  // tokens per block
  int64_t head_dim = 0;

  // constexpr so that CUDA kernels can call them too (nvcc --expt-relaxed-constexpr).
  constexpr int64_t block_elements() const { return 2 * num_kv_heads * block_size * head_dim; }
  constexpr int64_t layer_elements() const { return num_blocks * block_elements(); }
  // Element offset of (layer, block, key=0 / value=1, head, token-in-block, 0).
  constexpr int64_t offset(int64_t layer, int64_t block, int64_t kv, int64_t head,
                           int64_t token) const {
    return layer * layer_elements() + block * block_elements() +
           ((kv * num_kv_heads + head) * block_size + token) * head_dim;
  }
};

// Per-step attention metadata, in backend memory. Sequence s owns tokens
// [query_start[s], query_start[s + 1]) of the step; after the step its cache holds
// context_length[s] tokens, the new ones last; its cache blocks are
// block_table[s * max_blocks_per_sequence + i] for i < ceil(context_length[s] / block_size).
struct AttentionBatch {
  int64_t num_tokens = 0;
  int64_t num_sequences = 0;
  int64_t max_blocks_per_sequence = 0;
  int64_t max_query_length = 0;             // max over s of query_start[s + 1] - query_start[s]
  int64_t max_context_length = 0;           // max over s of context_length[s]
  const int32_t* positions = nullptr;       // [num_tokens] position of each token in its sequence
  const int32_t* slot_mapping = nullptr;    // [num_tokens] block * block_size + offset to write
  const int32_t* query_start = nullptr;     // [num_sequences + 1]
  const int32_t* context_length = nullptr;  // [num_sequences]
  const int32_t* block_table = nullptr;     // [num_sequences * max_blocks_per_sequence]
  // Leading sequences with exactly one new token each (decodes; an in-flight batch puts them
  // first), so that their tokens are the step's first ones: a backend may run them through its
  // decode kernel and only the rest through its prefill kernel.
  int64_t num_leading_decodes = 0;
};

// How one logits row picks its token when the backend samples (Backend::sample): the meaning of
// kite::SamplingConfig plus the position in the sequence's random stream. Uploaded per step.
struct SamplingRow {
  float temperature = 1.0f;         // 0: greedy
  int32_t top_k = 0;                // 0: off; 1: greedy
  float top_p = 1.0f;               // 1: off
  float min_p = 0.0f;               // 0: off
  float repetition_penalty = 1.0f;  // 1: off
  uint64_t seed = 0;
  uint64_t step = 0;               // which draw of this sequence: the counter of its random stream
  float presence_penalty = 0.0f;   // 0: off (OpenAI's, over the output: see runtime/sampling.h)
  float frequency_penalty = 0.0f;  // 0: off
  int32_t output_start = 0;        // where the output starts in the row's history
};

// One addition to a step's float32 logits (Backend::add_logit_bias): logits[row, token] += bias.
// A bias of -inf bans the token (bad words).
struct LogitBiasEntry {
  int32_t row = 0;
  int32_t token = 0;
  float bias = 0.0f;
  bool operator==(const LogitBiasEntry&) const = default;
};

}  // namespace kite
