// Bad words on the GPU: the logits of the tokens a row may not pick become -inf before sampling.
// CPU twin: kernels/cpu/ban_tokens.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "model/backend.h"

namespace kite::cuda {

// logits[pairs[2i], pairs[2i + 1]] = -inf for i < *count (Backend::ban_tokens). logits [R, V]
// float32; pairs [2 * max_count] and count [1] in device memory. The launch depends on max_count
// only and the kernel reads *count, so a captured graph bans each replay's pairs. Pairs outside
// [0, R) x [0, V) (which the runtime never sends) are skipped rather than written.
void ban_tokens(DeviceTensor& logits, const int32_t* pairs, const int32_t* count, int64_t max_count,
                cudaStream_t stream);

}  // namespace kite::cuda
