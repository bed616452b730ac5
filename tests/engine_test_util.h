// A helper for the tests that check incremental steps (shared KV blocks, decode) against a model
// run from scratch.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/engine.h"

namespace kite::test {

// The float32 logits of `logit_rows` (positions in `tokens`) from one prefill of `tokens` alone, in
// fresh KV cache blocks that go back to the cache afterwards.
inline std::vector<float> forward_from_scratch(Engine& engine, const std::vector<int32_t>& tokens,
                                               const std::vector<int32_t>& logit_rows) {
  const int64_t block_size = engine.kv_cache().view().block_size;
  StepBlocks blocks(engine.kv_cache());
  const std::vector<int32_t> table =
      blocks.allocate((int64_t(tokens.size()) + block_size - 1) / block_size).value();
  StepInput step;
  step.token_ids = tokens;
  step.query_start = {0, int32_t(tokens.size())};
  step.context_length = {int32_t(tokens.size())};
  step.logit_rows = logit_rows;
  for (size_t i = 0; i < tokens.size(); ++i) {
    step.positions.push_back(int32_t(i));
    step.slot_mapping.push_back(table[i / size_t(block_size)] * int32_t(block_size) +
                                int32_t(i % size_t(block_size)));
  }
  step.max_blocks_per_sequence = int64_t(table.size());
  step.block_table = table;
  return engine.model().forward(step, engine.kv_cache().view()).value();
}

}  // namespace kite::test
