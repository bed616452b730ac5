// Rotary position embedding fused with the write of keys and values into the paged KV cache, on
// the GPU. CPU twin: kernels/cpu/rope.h (same semantics).
#pragma once

#include <cuda_runtime_api.h>

#include "model/backend.h"

namespace kite::cuda {

// qkv [T, (Hq + 2 Hkv) * D] (q | k | v heads of each token), q [T, Hq * D] and the cache share one
// dtype, float16 or bfloat16. Angles float(position) * inv_freq[i] and their cos/sin in float32;
// each rotated element is rounded once. Bytes: read qkv, write q and 2 Hkv D per token.
void rope_and_store_kv(const DeviceTensor& qkv, const RopeParams& rope, const AttentionBatch& batch,
                       const KvCacheView& cache, int64_t layer, DeviceTensor& q,
                       cudaStream_t stream);

}  // namespace kite::cuda
