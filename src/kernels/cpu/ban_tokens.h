// Bad words on the CPU: the logits of the tokens a row may not pick become -inf before sampling.
// The reference for kernels/cuda/ban_tokens.h.
#pragma once

#include <cstdint>

#include "model/backend.h"

namespace kite::cpu {

// logits[pairs[2i], pairs[2i + 1]] = -inf for i < *count (Backend::ban_tokens). logits [R, V]
// float32; pairs [2 * max_count] with rows in [0, R) and tokens in [0, V); *count in
// [0, max_count].
void ban_tokens(DeviceTensor& logits, const int32_t* pairs, const int32_t* count,
                int64_t max_count);

}  // namespace kite::cpu
