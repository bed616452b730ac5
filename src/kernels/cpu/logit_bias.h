// Logit bias and bad words on the CPU: each (row, token) entry's bias is added to its float32 logit
// before sampling (-inf bans the token). The reference for kernels/cuda/logit_bias.h.
#pragma once

#include <cstdint>

#include "model/backend.h"

namespace kite::cpu {

// logits[entries[i].row, entries[i].token] += entries[i].bias for i < *count
// (Backend::add_logit_bias). logits [R, V] float32; entries [max_count] with rows in [0, R) and
// tokens in [0, V); *count in [0, max_count].
void add_logit_bias(DeviceTensor& logits, const LogitBiasEntry* entries, const int32_t* count,
                    int64_t max_count);

}  // namespace kite::cpu
