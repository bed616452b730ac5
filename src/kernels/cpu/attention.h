// Attention of each new token over its sequence's keys and values in the paged KV cache, on the
// CPU: prefill chunks and decode tokens of several sequences in one call.
#pragma once

#include "kernels/cpu/cpu_features.h"
#include "model/backend.h"

namespace kite::cpu {

// For token t of sequence s at position p = batch.positions[t], query head h reads kv head
// h / (Hq / Hkv) at cache positions j with max(0, p - sliding_window + 1) <= j <= p (no lower
// bound when sliding_window <= 0); cache position j of s is token j % block_size of block
// block_table[s][j / block_size]. out = softmax(scale * q.K^T) V, the softmax in float32 with the
// maximum subtracted, like Hugging Face's eager attention.
// q, out [T, Hq*D] float32; cache float32, float16 or bfloat16 with head_dim D.
void attention(const DeviceTensor& q, const AttentionBatch& batch, const KvCacheView& cache,
               int64_t layer, float scale, int64_t sliding_window, DeviceTensor& out, Isa isa);

}  // namespace kite::cpu
