// RoPE (Hugging Face "rotate_half" layout) applied to queries in place and to keys on their way
// into the paged KV cache, one token per loop iteration; values are copied alongside.
#include "kernels/cpu/rope.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/float_types.h"
#include "kernels/cpu/threading.h"

namespace kite::cpu {
namespace {

// Rotates the first 2 * half elements of head (in place) by the angles whose cos/sin are given.
void rotate_head(float* head, const float* cos_values, const float* sin_values, int64_t half) {
  for (int64_t i = 0; i < half; ++i) {
    const float first = head[i];
    const float second = head[i + half];
    head[i] = first * cos_values[i] - second * sin_values[i];
    head[i + half] = second * cos_values[i] + first * sin_values[i];
  }
}

template <typename Element>
void store_row(const float* source, int64_t size, typename Element::Storage* destination) {
  for (int64_t i = 0; i < size; ++i) destination[i] = Element::store(source[i]);
}

}  // namespace

void rope_and_store_kv(const DeviceTensor& qkv, const RopeParams& rope, const AttentionBatch& batch,
                       const KvCacheView& cache, int64_t layer, DeviceTensor& q) {
  const int64_t tokens = batch.num_tokens;
  const int64_t head_dim = cache.head_dim;
  const int64_t kv_heads = cache.num_kv_heads;
  KITE_CHECK(q.dtype == DType::kF32 && qkv.dtype == DType::kF32);
  KITE_CHECK(is_cpu_cache_dtype(cache.dtype));
  KITE_CHECK(head_dim > 0 && kv_heads > 0 && cache.block_size > 0);
  KITE_CHECK(layer >= 0 && layer < cache.num_layers);
  KITE_CHECK(q.rows() == tokens && q.cols() % head_dim == 0);
  KITE_CHECK(qkv.rows() == tokens && qkv.cols() == q.cols() + 2 * kv_heads * head_dim);
  KITE_CHECK(rope.rotary_dim % 2 == 0 && rope.rotary_dim > 0 && rope.rotary_dim <= head_dim);
  KITE_CHECK(rope.inv_freq != nullptr);
  const int64_t query_heads = q.cols() / head_dim;
  const int64_t half = rope.rotary_dim / 2;
  const int64_t cache_slots = cache.num_blocks * cache.block_size;
  for (int64_t t = 0; t < tokens; ++t) {
    KITE_CHECK(batch.positions[t] >= 0 && batch.slot_mapping[t] < cache_slots);
  }
  const int64_t qkv_width = qkv.cols();
  const auto* rows = static_cast<const float*>(qkv.data);
  auto* queries = static_cast<float*>(q.data);

  dispatch_cache_dtype(cache.dtype, [&](auto element) {
    using Element = decltype(element);
    auto* cache_data = static_cast<typename Element::Storage*>(cache.data);
#pragma omp parallel if (qkv.numel() >= kMinParallelWork)
    {
      std::vector<float> cos_values(static_cast<size_t>(half)),
          sin_values(static_cast<size_t>(half));
      std::vector<float> rotated_key(static_cast<size_t>(head_dim));
#pragma omp for schedule(static)
      for (int64_t t = 0; t < tokens; ++t) {
        const float position = float(batch.positions[t]);
        for (int64_t i = 0; i < half; ++i) {
          const float angle = position * rope.inv_freq[i];
          cos_values[size_t(i)] = std::cos(angle) * rope.attention_scaling;
          sin_values[size_t(i)] = std::sin(angle) * rope.attention_scaling;
        }
        const float* row = rows + t * qkv_width;
        float* query_row = queries + t * query_heads * head_dim;
        std::copy(row, row + query_heads * head_dim, query_row);
        for (int64_t head = 0; head < query_heads; ++head) {
          rotate_head(query_row + head * head_dim, cos_values.data(), sin_values.data(), half);
        }
        const float* keys = row + query_heads * head_dim;
        const float* values = keys + kv_heads * head_dim;
        const int64_t slot = batch.slot_mapping[t];
        if (slot < 0) continue;
        const int64_t block = slot / cache.block_size;
        const int64_t token_in_block = slot % cache.block_size;
        for (int64_t head = 0; head < kv_heads; ++head) {
          const int64_t offset = head * head_dim;
          std::copy(keys + offset, keys + offset + head_dim, rotated_key.begin());
          rotate_head(rotated_key.data(), cos_values.data(), sin_values.data(), half);
          store_row<Element>(rotated_key.data(), head_dim,
                             cache_data + cache.offset(layer, block, 0, head, token_in_block));
          store_row<Element>(values + offset, head_dim,
                             cache_data + cache.offset(layer, block, 1, head, token_in_block));
        }
      }
    }
  });
}

}  // namespace kite::cpu
