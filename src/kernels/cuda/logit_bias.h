// Logit bias and bad words on the GPU: each (row, token) entry's bias is added to its float32
// logit before sampling (-inf bans the token). CPU twin: kernels/cpu/logit_bias.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "model/backend.h"

namespace kite::cuda {

// logits[entries[i].row, entries[i].token] += entries[i].bias for i < *count
// (Backend::add_logit_bias). logits [R, V] float32; entries [max_count] and count [1] in device
// memory, each (row, token) at most once. The launch depends on max_count only and the kernel reads
// *count, so a captured graph applies each replay's entries. Entries outside [0, R) x [0, V)
// (which the runtime never sends) are skipped rather than written.
void add_logit_bias(DeviceTensor& logits, const LogitBiasEntry* entries, const int32_t* count,
                    int64_t max_count, cudaStream_t stream);

}  // namespace kite::cuda
