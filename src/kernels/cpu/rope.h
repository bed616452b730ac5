// Rotary position embedding fused with the write of keys and values into the paged KV cache.
#pragma once

#include "model/backend.h"

namespace kite::cpu {

// qkv [T, Q + 2 KV] holds each token's query heads, then key heads, then value heads (the fused
// QKV projection's output; Q = Hq*D, KV = Hkv*D). For each token t at position
// p = batch.positions[t], with angle_i = float(p) * inv_freq[i] computed in float32 (as Hugging
// Face does), cos_i = cos(angle_i) * attention_scaling and sin_i likewise, each head x of q and of
// k is rotated in its first rotary_dim elements:
//   x'[i]        = x[i] * cos_i - x[i + R/2] * sin_i
//   x'[i + R/2]  = x[i + R/2] * cos_i + x[i] * sin_i          (R = rotary_dim, i < R/2)
// The rotated queries go to q [T, Q]; the rotated k and the unchanged v go to the cache slot
// batch.slot_mapping[t] of `layer` (converted to the cache dtype). A negative slot (a padding
// token) stores nothing. qkv and q float32; D = cache.head_dim.
void rope_and_store_kv(const DeviceTensor& qkv, const RopeParams& rope,
                       const AttentionBatch& batch, const KvCacheView& cache, int64_t layer,
                       DeviceTensor& q);

}  // namespace kite::cpu
