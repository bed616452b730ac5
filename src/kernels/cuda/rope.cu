// RoPE + KV cache store: the token's cos/sin go to shared memory, then its query heads are rotated
// into q, its key heads into the cache slot, and its values copied there. Two kernels: 16 bytes a
// thread (one CTA per token; each thread rotates 8 element pairs of a head), when the rotary half
// and the head dim are multiples of 8, else one element a thread (one CTA per token and group of
// heads).
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/rope.h"

namespace kite::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxHalfRotary = 256;  // head_dim up to 512
// Heads per CTA: a decode step of one sequence still spreads over several SMs (Llama-3-8B: 48
// heads, 12 CTAs), rather than one CTA walking all heads at the latency of its loads.
constexpr int kHeadsPerCta = 4;
// The 16-byte kernel's CTA (one per token): Llama-3-8B has 448 chunks of work a token.
constexpr int kVectorThreads = 256;

// cos and sin of position * inv_freq[i] for i < half, scaled, into shared memory (the caller
// synchronises before reading them).
__device__ void token_angles(float position, const float* inv_freq, float attention_scaling,
                             int half, float* cos_values, float* sin_values) {
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float sine, cosine;
    sincosf(position * inv_freq[i], &sine, &cosine);
    cos_values[i] = cosine * attention_scaling;
    sin_values[i] = sine * attention_scaling;
  }
}

// x'[i] = x[i] cos_i - x[i + R/2] sin_i;  x'[i + R/2] = x[i + R/2] cos_i + x[i] sin_i
template <typename T>
__device__ void rotate_heads(const T* source, T* destination, int64_t destination_head_stride,
                             int heads, int head_dim, int half, const float* cos_values,
                             const float* sin_values) {
  for (int index = threadIdx.x; index < heads * half; index += blockDim.x) {
    const int head = index / half, i = index % half;
    const T* x = source + head * head_dim;
    T* y = destination + head * destination_head_stride;
    const float first = to_float(x[i]), second = to_float(x[i + half]);
    y[i] = from_float<T>(first * cos_values[i] - second * sin_values[i]);
    y[i + half] = from_float<T>(second * cos_values[i] + first * sin_values[i]);
  }
  // Elements past the rotary dimensions pass through.
  const int rest = head_dim - 2 * half;
  for (int index = threadIdx.x; index < heads * rest; index += blockDim.x) {
    const int head = index / rest, i = 2 * half + index % rest;
    destination[head * destination_head_stride + i] = source[head * head_dim + i];
  }
}

template <typename T>
__global__ void rope_and_store_kv_kernel(const T* qkv, const float* inv_freq,
                                         float attention_scaling, const int32_t* positions,
                                         const int32_t* slot_mapping, KvCacheView cache,
                                         int64_t layer, int query_heads, int half, T* q) {
  __shared__ float cos_values[kMaxHalfRotary], sin_values[kMaxHalfRotary];
  pdl_launch_dependents();
  pdl_wait();
  const int64_t token = blockIdx.x;
  const int head_dim = int(cache.head_dim), kv_heads = int(cache.num_kv_heads);
  token_angles(float(positions[token]), inv_freq, attention_scaling, half, cos_values, sin_values);
  __syncthreads();
  // This CTA's heads of the token's [q heads | k heads | v heads], as ranges of each kind.
  const int first = int(blockIdx.y) * kHeadsPerCta;
  const int last = first + kHeadsPerCta;
  auto range = [&](int begin, int count, int& from) {
    from = max(first, begin) - begin;
    return max(0, min(last, begin + count) - max(first, begin));
  };
  const T* row = qkv + token * int64_t(query_heads + 2 * kv_heads) * head_dim;
  int from = 0;
  if (const int count = range(0, query_heads, from); count > 0) {
    rotate_heads(row + from * head_dim, q + (token * int64_t(query_heads) + from) * head_dim,
                 head_dim, count, head_dim, half, cos_values, sin_values);
  }
  const int64_t slot = slot_mapping[token];
  if (slot < 0) return;  // a padding token stores nothing
  const int64_t block = slot / cache.block_size, offset_in_block = slot % cache.block_size;
  T* cache_data = static_cast<T*>(cache.data);
  T* key_destination = cache_data + cache.offset(layer, block, 0, 0, offset_in_block);
  T* value_destination = cache_data + cache.offset(layer, block, 1, 0, offset_in_block);
  const int64_t head_stride = cache.block_size * head_dim;  // from one kv head to the next
  const T* keys = row + query_heads * head_dim;
  const T* values = keys + kv_heads * head_dim;
  if (const int count = range(query_heads, kv_heads, from); count > 0) {
    rotate_heads(keys + from * head_dim, key_destination + from * head_stride, head_stride, count,
                 head_dim, half, cos_values, sin_values);
  }
  if (const int count = range(query_heads + kv_heads, kv_heads, from); count > 0) {
    for (int index = threadIdx.x; index < count * head_dim; index += blockDim.x) {
      const int head = from + index / head_dim, i = index % head_dim;
      value_destination[head * head_stride + i] = values[head * head_dim + i];
    }
  }
}

// The 16-byte kernel. A token's work items, in order: (head, chunk) of the first rotary half for
// each of its Hq + Hkv rotated heads (the chunk and its partner half / 8 chunks further), the
// chunks past the rotary dims of those heads, and the chunks of its Hkv value heads.
template <typename T>
__global__ void rope_and_store_kv_vector_kernel(const T* qkv, const float* inv_freq,
                                                float attention_scaling, const int32_t* positions,
                                                const int32_t* slot_mapping, KvCacheView cache,
                                                int64_t layer, int query_heads, int half, T* q) {
  __shared__ float cos_values[kMaxHalfRotary], sin_values[kMaxHalfRotary];
  pdl_launch_dependents();
  pdl_wait();
  using Vector = Pack<T, 8>;
  const int64_t token = blockIdx.x;
  const int head_dim = int(cache.head_dim), kv_heads = int(cache.num_kv_heads);
  token_angles(float(positions[token]), inv_freq, attention_scaling, half, cos_values, sin_values);
  const int64_t slot = slot_mapping[token];  // < 0: a padding token stores nothing
  __syncthreads();
  const T* row = qkv + token * int64_t(query_heads + 2 * kv_heads) * head_dim;
  T* key_destination = nullptr;
  T* value_destination = nullptr;
  if (slot >= 0) {
    const int64_t block = slot / cache.block_size, offset_in_block = slot % cache.block_size;
    key_destination =
        static_cast<T*>(cache.data) + cache.offset(layer, block, 0, 0, offset_in_block);
    value_destination =
        static_cast<T*>(cache.data) + cache.offset(layer, block, 1, 0, offset_in_block);
  }
  const int64_t head_stride = cache.block_size * head_dim;  // from one kv head to the next
  // Where rotated head h (queries, then keys) goes; null for a padding token's keys.
  auto destination_of = [&](int head) -> T* {
    if (head < query_heads) return q + (token * query_heads + head) * head_dim;
    return slot < 0 ? nullptr : key_destination + (head - query_heads) * head_stride;
  };

  const int rotated_heads = query_heads + kv_heads;
  const int half_chunks = half / 8, pass_chunks = (head_dim - 2 * half) / 8;
  const int rotation_items = rotated_heads * half_chunks;
  const int pass_items = rotated_heads * pass_chunks;
  const int items = rotation_items + pass_items + kv_heads * (head_dim / 8);
  for (int item = threadIdx.x; item < items; item += blockDim.x) {
    if (item < rotation_items) {
      const int head = item / half_chunks, first = 8 * (item % half_chunks);
      T* destination = destination_of(head);
      if (!destination) continue;
      const T* x = row + head * head_dim;
      const Vector low = *reinterpret_cast<const Vector*>(x + first);
      const Vector high = *reinterpret_cast<const Vector*>(x + first + half);
      Vector rotated_low, rotated_high;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float a = to_float(low.values[e]), b = to_float(high.values[e]);
        const float c = cos_values[first + e], s = sin_values[first + e];
        rotated_low.values[e] = from_float<T>(a * c - b * s);
        rotated_high.values[e] = from_float<T>(b * c + a * s);
      }
      *reinterpret_cast<Vector*>(destination + first) = rotated_low;
      *reinterpret_cast<Vector*>(destination + first + half) = rotated_high;
    } else if (item < rotation_items + pass_items) {
      const int index = item - rotation_items;
      const int head = index / pass_chunks, column = 2 * half + 8 * (index % pass_chunks);
      T* destination = destination_of(head);
      if (!destination) continue;
      *reinterpret_cast<Vector*>(destination + column) =
          *reinterpret_cast<const Vector*>(row + head * head_dim + column);
    } else if (slot >= 0) {
      const int index = item - rotation_items - pass_items;
      const int head = index / (head_dim / 8), column = 8 * (index % (head_dim / 8));
      *reinterpret_cast<Vector*>(value_destination + head * head_stride + column) =
          *reinterpret_cast<const Vector*>(row + (rotated_heads + head) * head_dim + column);
    }
  }
}

}  // namespace

void rope_and_store_kv(const DeviceTensor& qkv, const RopeParams& rope, const AttentionBatch& batch,
                       const KvCacheView& cache, int64_t layer, DeviceTensor& q,
                       cudaStream_t stream) {
  const int64_t tokens = batch.num_tokens, head_dim = cache.head_dim;
  KITE_CHECK(qkv.dtype == q.dtype && cache.dtype == q.dtype);
  KITE_CHECK(q.rows() == tokens && q.cols() % head_dim == 0);
  KITE_CHECK(qkv.rows() == tokens && qkv.cols() == q.cols() + 2 * cache.num_kv_heads * head_dim);
  KITE_CHECK(rope.rotary_dim % 2 == 0 && rope.rotary_dim > 0 && rope.rotary_dim <= head_dim);
  KITE_CHECK(rope.rotary_dim / 2 <= kMaxHalfRotary && layer >= 0 && layer < cache.num_layers);
  if (tokens == 0) return;
  const int half = int(rope.rotary_dim / 2);
  bool vectorized = half % 8 == 0 && head_dim % 8 == 0;
  for (const void* pointer : {qkv.data, q.data, cache.data}) {
    vectorized = vectorized && reinterpret_cast<uintptr_t>(pointer) % 16 == 0;
  }
  dispatch_half(q.dtype, [&](auto element) {
    using T = decltype(element);
    if (vectorized) {
      launch_kernel(rope_and_store_kv_vector_kernel<T>, unsigned(tokens), kVectorThreads, 0, stream,
                    static_cast<const T*>(qkv.data), rope.inv_freq, rope.attention_scaling,
                    batch.positions, batch.slot_mapping, cache, layer, int(q.cols() / head_dim),
                    half, static_cast<T*>(q.data));
      return;
    }
    const int heads = int(q.cols() / head_dim + 2 * cache.num_kv_heads);
    const dim3 grid(unsigned(tokens), unsigned((heads + kHeadsPerCta - 1) / kHeadsPerCta));
    launch_kernel(rope_and_store_kv_kernel<T>, grid, kThreads, 0, stream,
                  static_cast<const T*>(qkv.data), rope.inv_freq, rope.attention_scaling,
                  batch.positions, batch.slot_mapping, cache, layer, int(q.cols() / head_dim),
                  int(rope.rotary_dim / 2), static_cast<T*>(q.data));
  });
}

}  // namespace kite::cuda
