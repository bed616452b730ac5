// Paged attention kernels (attention.h): the split-KV decode kernel (which merges its splits and
// may apply RoPE and store the new token's key and value itself), the flash-attention prefill
// kernel on the tensor cores, and the one table of their instances.
// Scores are kept in the log2 domain (scaled by scale * log2(e)) so that every exponential is one
// exp2; a running maximum of -inf (nothing visible yet) is replaced by 0 before it is subtracted.
#include "kernels/cuda/attention.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launch.cuh"

namespace kite::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;

// n / d for 0 <= n < 2^31 by a multiply-high, an add and a shift (Granlund and Montgomery): with
// l = ceil(log2 d) and m = floor(2^32 (2^l - d) / d) + 1, n / d = (umulhi(n, m) + n) >> l. The
// block size is a run-time value, and a hardware division per key costs more than the key's math.
struct FastDivider {
  uint32_t divisor = 1;
  uint32_t multiplier = 1;
  uint32_t shift = 0;

  static FastDivider make(uint32_t divisor) {
    FastDivider result;
    result.divisor = divisor;
    while ((uint64_t(1) << result.shift) < divisor) ++result.shift;
    result.multiplier =
        uint32_t(((uint64_t(1) << 32) * ((uint64_t(1) << result.shift) - divisor)) / divisor + 1);
    return result;
  }
  __device__ __forceinline__ int divide(int n) const {
    return int((__umulhi(uint32_t(n), multiplier) + uint32_t(n)) >> shift);
  }
};

// 2^x in one MUFU instruction (relative error about 2^-22); 2^-inf = 0.
__device__ __forceinline__ float fast_exp2(float x) {
  float result;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(result) : "f"(x));
  return result;
}

// Everything the kernels read about one call. Element offsets in the cache are int64: a KV pool
// can hold more than 2^31 elements.
struct AttentionParams {
  const void* q;      // [T, Hq * D]
  void* out;          // [T, Hq * D]
  void* cache_layer;  // this layer's blocks: [num_blocks][2][Hkv][block_size][D]
  const int32_t* positions;
  const int32_t* query_start;
  const int32_t* block_table;
  int64_t max_blocks_per_sequence;
  int num_tokens;
  int block_size;
  FastDivider block_divider;  // divides by block_size
  int head_dim;
  int num_kv_heads;
  int num_q_heads;
  int group;           // Hq / Hkv
  int sliding_window;  // 0: none
  float scale_log2;    // scale * log2(e)
  // Decode only: the GQA group is processed in `head_chunks` CTAs of `heads_per_cta` heads.
  int head_chunks;
  int heads_per_cta;
  int num_splits;
  float* partial_out;   // [num_splits][T][Hq][D], when num_splits > 1
  float* partial_lse;   // [num_splits][T][Hq], log2 of each split's softmax denominator
  int* split_counters;  // [T][Hkv * head_chunks]: splits finished, when num_splits > 1
  // Decode with RoPE fused (decode_rope_attention): queries and the new token's key and value
  // come unrotated from qkv [T, (Hq + 2 Hkv) * D] instead of q and the cache; null otherwise.
  const void* qkv;
  const float* inv_freq;  // [rotary_half]
  float rope_scaling;     // multiplies cos and sin
  int rotary_half;        // rotary_dim / 2, a multiple of 8
  const int32_t* slot_mapping;
};

__device__ __forceinline__ int first_visible(int position, int sliding_window) {
  return sliding_window > 0 && position >= sliding_window ? position - sliding_window + 1 : 0;
}

// Element offset, inside the layer, of (block, key=0 / value=1, kv head, token in block, 0).
__device__ __forceinline__ int64_t cache_offset(const AttentionParams& p, int32_t block, int kv,
                                                int kv_head, int token) {
  return ((int64_t(block) * 2 + kv) * p.num_kv_heads + kv_head) * int64_t(p.block_size) *
             p.head_dim +
         int64_t(token) * p.head_dim;
}

// ---- PTX wrappers ----

__device__ __forceinline__ uint32_t shared_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// 16 bytes global -> shared without passing through registers.
__device__ __forceinline__ void copy_async_16(void* shared_destination, const void* global_source) {
  asm volatile(
      "cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared_address(shared_destination)),
      "l"(global_source)
      : "memory");
}

__device__ __forceinline__ void copy_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most kPending of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void copy_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// Four 8x8 matrices of 16-bit elements; lanes 8i..8i+7 give the row addresses of matrix i.
__device__ __forceinline__ void load_matrix_x4(uint32_t (&fragment)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(fragment[0]), "=r"(fragment[1]), "=r"(fragment[2]), "=r"(fragment[3])
               : "r"(shared_address(row))
               : "memory");
}

__device__ __forceinline__ void load_matrix_x4_transposed(uint32_t (&fragment)[4],
                                                          const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(fragment[0]), "=r"(fragment[1]), "=r"(fragment[2]), "=r"(fragment[3])
               : "r"(shared_address(row))
               : "memory");
}

// Per element type: pairs to float2, float2 to a packed pair, and the tensor-core product
// c[16x8] += a[16x16] b[16x8] (a row-major, b column-major, float32 accumulators).
template <typename Element>
struct ElementOps;

template <>
struct ElementOps<__nv_bfloat16> {
  using Pair = __nv_bfloat162;
  static __device__ __forceinline__ float2 to_float2(Pair pair) { return __bfloat1622float2(pair); }
  static __device__ __forceinline__ uint32_t pack(float low, float high) {
    const Pair pair = __floats2bfloat162_rn(low, high);
    return *reinterpret_cast<const uint32_t*>(&pair);
  }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

template <>
struct ElementOps<__half> {
  using Pair = __half2;
  static __device__ __forceinline__ float2 to_float2(Pair pair) { return __half22float2(pair); }
  static __device__ __forceinline__ uint32_t pack(float low, float high) {
    const Pair pair = __floats2half2_rn(low, high);
    return *reinterpret_cast<const uint32_t*>(&pair);
  }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// The 8 elements of a 16-byte vector as floats.
template <typename Element>
__device__ __forceinline__ void unpack8(const uint4& vector, float (&values)[8]) {
  const auto* pairs = reinterpret_cast<const typename ElementOps<Element>::Pair*>(&vector);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 pair = ElementOps<Element>::to_float2(pairs[i]);
    values[2 * i] = pair.x;
    values[2 * i + 1] = pair.y;
  }
}

// ---- decode: one CTA per (sequence, kv head, head chunk, split) ----
//
// Each thread owns 16 bytes (8 elements) of a key row: kThreadsPerKey threads read one key, the
// CTA reads kKeyLanes keys side by side and kDecodeKeysPerThread rows per lane per tile. Keys
// and values travel by cp.async into per-thread slots of a kDecodeStages-deep ring in shared
// memory (a thread reads back only what it copied, so the loop needs no barrier), keeping up to
// two tiles (32 KiB) per CTA in flight. The GQA group's query heads sit in registers and share
// every load. Each key lane keeps its own online softmax; lanes are merged at the end, first
// within the warp by shuffles, then across warps in shared memory.
//
// With several splits, each CTA writes its float32 partial result and log-sum-exp, then counts
// itself done on an atomic counter; the last CTA of a (token, kv head, head chunk) merges the
// splits (no second kernel). Splits past the context's last tile return at once and are not
// counted (a graph's grid is sized for the longest context its block table allows). With RoPE fused, each CTA rotates its queries from qkv itself, and the
// CTA whose split ends at the new token rotates that token's key, uses it and its value straight
// from qkv, and (head chunk 0) stores both in the cache: no separate RoPE kernel, no q tensor.

constexpr int kDecodeThreads = 128;
constexpr int kDecodeWarps = kDecodeThreads / 32;
constexpr int kDecodeKeysPerThread = 4;
constexpr int kDecodeStages = 3;
constexpr int kDecodeStageBytes = 2 * kDecodeKeysPerThread * kDecodeThreads * 16;  // 16 KiB
constexpr int kDecodeSharedBytes = kDecodeStages * kDecodeStageBytes;              // 48 KiB
// Query heads per CTA; larger groups take several CTAs, which read the same keys (the second
// read mostly from L2). 8 heads in registers would take over 220 registers a thread and run slower
// than two CTAs of 4 on the H100.
constexpr int kMaxDecodeHeads = 4;
constexpr int kMaxSplits = 256;

template <int kHeadDim>
struct DecodeShape {
  static constexpr int kThreadsPerKey = kHeadDim / 8;
  static constexpr int kKeyLanes = kDecodeThreads / kThreadsPerKey;
  static constexpr int kTileKeys = kKeyLanes * kDecodeKeysPerThread;
};

// RoPE of one 8-element chunk [8 part, 8 part + 8) of a head row, as rope_and_store_kv computes it:
// element i < R/2 pairs with i + R/2 (x'[i] = x[i] cos - x[i + R/2] sin), i in [R/2, R) with
// i - R/2 (x'[i] = x[i] cos + x[i - R/2] sin), the rest passes through. R/2 is a multiple of 8,
// so a chunk lies on one side and its partner chunk is whole.
struct RopeChunk {
  float cosine[8], sine[8];
  int partner_offset = 0;  // elements from the chunk to its partner; 0: passes through
  float sign = 0.0f;       // -1 for the first half, +1 for the second

  __device__ RopeChunk() {}
  __device__ RopeChunk(const AttentionParams& p, int part, int position) {
    const int first = 8 * part;
    const int half = p.rotary_half;
    if (first >= 2 * half) return;
    const bool low = first < half;
    partner_offset = low ? half : -half;
    sign = low ? -1.0f : 1.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      float s, c;
      sincosf(float(position) * p.inv_freq[(low ? first : first - half) + e], &s, &c);
      cosine[e] = c * p.rope_scaling;
      sine[e] = s * p.rope_scaling;
    }
  }

  // The chunk of `row` (a head's D elements) rotated and rounded to Element, as floats.
  template <typename Element>
  __device__ void apply(const Element* row, int part, float (&out)[8]) const {
    unpack8<Element>(*reinterpret_cast<const uint4*>(row + 8 * part), out);
    if (partner_offset == 0) return;
    float partner[8];
    unpack8<Element>(*reinterpret_cast<const uint4*>(row + 8 * part + partner_offset), partner);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float rotated = sign < 0.0f ? out[e] * cosine[e] - partner[e] * sine[e]
                                        : out[e] * cosine[e] + partner[e] * sine[e];
      out[e] = to_float(from_float<Element>(rotated));
    }
  }
};

template <typename Element>
__device__ __forceinline__ uint4 pack8(const float (&values)[8]) {
  uint4 vector;
  uint32_t* words = reinterpret_cast<uint32_t*>(&vector);
#pragma unroll
  for (int i = 0; i < 4; ++i)
    words[i] = ElementOps<Element>::pack(values[2 * i], values[2 * i + 1]);
  return vector;
}

// With several splits: counts this CTA's split as done and, in the last of the `splits` CTAs that
// hold keys to finish, merges the splits of its heads: out = sum_s w_s o_s / sum_s w_s with
// w_s = 2^(lse_s - M), M = max_s lse_s. The merge is latency-bound (a few KiB from L2 after an
// atomic), so it takes one pass with a running M: each thread owns kValues consecutive elements of
// one head and has the log-sum-exps and partial rows of kMergeBatch splits in flight at once
// (one round trip up to 8 splits). Called by every thread of the CTA; `last` is a word of dynamic
// shared memory (static shared memory would push the kernel past the 48 KiB a launch gets by
// default).
constexpr int kMergeBatch = 8;

template <int kHeadDim, int kMaxHeads>
struct MergeShape {
  static constexpr int kElements = kMaxHeads * kHeadDim;
  // 4 (16 bytes), 2 or 1 consecutive floats a thread; kValues divides kHeadDim, so one head.
  static constexpr int kValues = kElements >= 4 * kDecodeThreads   ? 4
                                 : kElements >= 2 * kDecodeThreads ? 2
                                                                   : 1;
  static_assert(kElements <= kValues * kDecodeThreads && kHeadDim % kValues == 0);
};

template <int kValues>
__device__ __forceinline__ void load_partial(const float* address, float (&values)[kValues]) {
  if constexpr (kValues == 4) {
    const float4 vector = __ldcg(reinterpret_cast<const float4*>(address));
    values[0] = vector.x, values[1] = vector.y, values[2] = vector.z, values[3] = vector.w;
  } else if constexpr (kValues == 2) {
    const float2 vector = __ldcg(reinterpret_cast<const float2*>(address));
    values[0] = vector.x, values[1] = vector.y;
  } else {
    values[0] = __ldcg(address);
  }
}

template <typename Element, int kHeadDim, int kMaxHeads>
__device__ void merge_if_last(const AttentionParams& p, int token, int first_head, int heads,
                              int counter, int splits, int& last) {
  __threadfence();  // this CTA's partial results are visible before it is counted
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(&p.split_counters[counter], 1) == splits - 1;
    // Every other split has counted: reset for the next launch.
    if (last) p.split_counters[counter] = 0;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();

  constexpr int kValues = MergeShape<kHeadDim, kMaxHeads>::kValues;
  const int element = int(threadIdx.x) * kValues;  // in [0, heads * kHeadDim)
  if (element >= heads * kHeadDim) return;
  const int64_t row = int64_t(token) * p.num_q_heads + first_head + element / kHeadDim;
  const int64_t split_stride = int64_t(p.num_tokens) * p.num_q_heads;
  const float* partial = p.partial_out + row * kHeadDim + element % kHeadDim;
  float maximum = -INFINITY, total = 0.0f, sum[kValues] = {};
  for (int first = 0; first < splits; first += kMergeBatch) {
    float lse[kMergeBatch], values[kMergeBatch][kValues];
#pragma unroll
    for (int s = 0; s < kMergeBatch; ++s) {
      const int split = first + s;
      if (split < splits) {
        lse[s] = __ldcg(p.partial_lse + split * split_stride + row);
        load_partial<kValues>(partial + split * split_stride * kHeadDim, values[s]);
      } else {
        lse[s] = -INFINITY;
      }
    }
    float batch_maximum = maximum;
#pragma unroll
    for (int s = 0; s < kMergeBatch; ++s) batch_maximum = fmaxf(batch_maximum, lse[s]);
    const float base = batch_maximum == -INFINITY ? 0.0f : batch_maximum;
    const float correction = fast_exp2(maximum - base);
    maximum = batch_maximum;
    total *= correction;
#pragma unroll
    for (int v = 0; v < kValues; ++v) sum[v] *= correction;
#pragma unroll
    for (int s = 0; s < kMergeBatch; ++s) {
      // A split of weight 0 adds nothing, whatever its row holds (unwritten rows: maybe NaN).
      const float weight = fast_exp2(lse[s] - base);
      total += weight;
#pragma unroll
      for (int v = 0; v < kValues; ++v)
        sum[v] = weight != 0.0f ? fmaf(weight, values[s][v], sum[v]) : sum[v];
    }
  }
  // Every split here holds a key of the token's context, so total >= 1.
  Element* out = static_cast<Element*>(p.out) + row * kHeadDim + element % kHeadDim;
  const float inverse_total = 1.0f / total;
#pragma unroll
  for (int v = 0; v < kValues; ++v) out[v] = from_float<Element>(sum[v] * inverse_total);
}

// kUniformSplit: the same code, an instance of its own for launch_kernel's uniform carveout
// (the carveout is a property of the kernel).
template <typename Element, int kHeadDim, int kMaxHeads, bool kUniformSplit>
__global__ void __launch_bounds__(kDecodeThreads) decode_kernel(const AttentionParams p) {
  pdl_launch_dependents();
  using Shape = DecodeShape<kHeadDim>;
  constexpr int kThreadsPerKey = Shape::kThreadsPerKey;
  constexpr int kKeyLanes = Shape::kKeyLanes;
  constexpr int kTileKeys = Shape::kTileKeys;
  constexpr int kReductionFloats = kDecodeWarps * kMaxHeads * (kHeadDim + 2);
  static_assert(kReductionFloats * 4 + 4 <= kDecodeSharedBytes);
  extern __shared__ __align__(16) unsigned char decode_shared[];
  int& merge_last = *reinterpret_cast<int*>(decode_shared + kReductionFloats * 4);

  const int sequence = blockIdx.x;
  const int kv_head = blockIdx.y / p.head_chunks;
  const int chunk = blockIdx.y % p.head_chunks;
  const int split = blockIdx.z;
  const int first_head = kv_head * p.group + chunk * p.heads_per_cta;
  const int heads = min(p.heads_per_cta, p.group - chunk * p.heads_per_cta);
  const int token = p.query_start[sequence];
  if (p.query_start[sequence + 1] == token || heads <= 0) {
    pdl_wait();  // a CTA finishes after its predecessors (launch.cuh)
    return;
  }
  const int counter = (token * p.num_kv_heads + kv_head) * p.head_chunks + chunk;

  // This split's share of the visible positions [first, position], whole tiles each. Splits past
  // the context's last tile (`splits` of num_splits hold keys) have nothing to do: the graph of a
  // step is captured for the longest context its block table allows.
  const int position = p.positions[token];
  const int first = first_visible(position, p.sliding_window);
  const int visible_tiles = (position - first + kTileKeys) / kTileKeys;
  const int split_tiles = (visible_tiles + p.num_splits - 1) / p.num_splits;
  const int splits = (visible_tiles + split_tiles - 1) / split_tiles;
  if (split >= splits) {
    pdl_wait();
    return;
  }
  const int split_begin = first + split * split_tiles * kTileKeys;
  const int split_end = min(position + 1, split_begin + split_tiles * kTileKeys);

  const int key_lane = threadIdx.x / kThreadsPerKey;
  const int part = threadIdx.x % kThreadsPerKey;  // elements [8 * part, 8 * part + 8) of a row
  auto* cache = static_cast<Element*>(p.cache_layer);
  const int32_t* block_table = p.block_table + int64_t(sequence) * p.max_blocks_per_sequence;
  const int64_t value_offset = int64_t(p.num_kv_heads) * p.block_size * kHeadDim;

  // Before the previous kernel has finished (PDL), only what no kernel of this step writes is read:
  // the step's metadata (uploaded before its first kernel) and the cache rows of earlier
  // positions (written by earlier steps). So the first tiles' loads, all but the new token's row,
  // and the RoPE angles are issued before pdl_wait(); the queries, the new token's key and value
  // and everything written come after it.
  const bool fused_rope = p.qkv != nullptr;
  const RopeChunk rope = fused_rope ? RopeChunk(p, part, position) : RopeChunk();

  // Slot of (stage, key=0 / value=1, row i) of this thread: 16 bytes, consecutive across threads.
  auto slot = [&](int stage, int kv, int i) {
    return decode_shared + stage * kDecodeStageBytes +
           ((kv * kDecodeKeysPerThread + i) * kDecodeThreads + threadIdx.x) * 16;
  };
  const int tiles = (split_end - split_begin + kTileKeys - 1) / kTileKeys;
  uint4 new_key{}, new_value{};  // RoPE fused: the new token's, once read after pdl_wait()
  // Copies tile `tile` of the split into its stage (nothing past the split) and commits a group.
  // The new token's row is left out before pdl_wait() (written into its slot right after the
  // wait, below); after it, with RoPE fused, it is written from registers.
  // This thread's 8 elements of the cached key at `key` (its value is value_offset further).
  auto cached_key_row = [&](int key) {
    const int block_index = p.block_divider.divide(key);
    return cache +
           cache_offset(p, block_table[block_index], 0, kv_head, key - block_index * p.block_size) +
           8 * part;
  };
  // The new token's key and value into row i of a tile's stage, from registers.
  auto store_new_row = [&](int tile, int i) {
    *reinterpret_cast<uint4*>(slot(tile % kDecodeStages, 0, i)) = new_key;
    *reinterpret_cast<uint4*>(slot(tile % kDecodeStages, 1, i)) = new_value;
  };
  auto issue_tile = [&](int tile, bool waited) {
    const int tile_begin = split_begin + tile * kTileKeys;
#pragma unroll
    for (int i = 0; i < kDecodeKeysPerThread; ++i) {
      const int key = tile_begin + i * kKeyLanes + key_lane;
      if (key == position && (fused_rope || !waited)) {
        if (waited) store_new_row(tile, i);
      } else if (key < split_end) {
        const Element* row = cached_key_row(key);
        copy_async_16(slot(tile % kDecodeStages, 0, i), row);
        copy_async_16(slot(tile % kDecodeStages, 1, i), row + value_offset);
      }
    }
    copy_async_commit();
  };
#pragma unroll
  for (int stage = 0; stage < kDecodeStages - 1; ++stage) issue_tile(stage, false);
  pdl_wait();

  // query[h] = (rotated) q[token, first_head + h, this thread's 8 elements] * scale * log2(e)
  const int qkv_width = (p.num_q_heads + 2 * p.num_kv_heads) * kHeadDim;
  const Element* q_row =
      fused_rope ? static_cast<const Element*>(p.qkv) + int64_t(token) * qkv_width
                 : static_cast<const Element*>(p.q) + int64_t(token) * p.num_q_heads * kHeadDim;
  float query[kMaxHeads][8];
#pragma unroll
  for (int h = 0; h < kMaxHeads; ++h) {
    if (h < heads) {
      const Element* head_row = q_row + (first_head + h) * kHeadDim;
      if (fused_rope) {
        rope.apply<Element>(head_row, part, query[h]);
      } else {
        unpack8<Element>(*reinterpret_cast<const uint4*>(head_row + 8 * part), query[h]);
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) query[h][e] *= p.scale_log2;
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) query[h][e] = 0.0f;
    }
  }

  // The new token's key and value: with RoPE fused, rotated from qkv (and stored in the cache by
  // one CTA per kv head), else as the previous kernel stored them. Into its slot, if the tiles
  // issued before pdl_wait() hold it.
  if (split_end == position + 1) {
    if (fused_rope) {
      const Element* key_row = q_row + (p.num_q_heads + kv_head) * kHeadDim;
      float key[8];
      rope.apply<Element>(key_row, part, key);
      new_key = pack8<Element>(key);
      new_value = *reinterpret_cast<const uint4*>(key_row + p.num_kv_heads * kHeadDim + 8 * part);
      const int slot = p.slot_mapping[token];
      if (chunk == 0 && key_lane == 0 && slot >= 0) {  // one store per kv head (padding: none)
        const int block = p.block_divider.divide(slot);
        Element* destination =
            cache + cache_offset(p, block, 0, kv_head, slot - block * p.block_size) + 8 * part;
        *reinterpret_cast<uint4*>(destination) = new_key;
        *reinterpret_cast<uint4*>(destination + value_offset) = new_value;
      }
    }
    const int tile = (position - split_begin) / kTileKeys;
    const int i = (position - split_begin) % kTileKeys / kKeyLanes;
    if (tile < kDecodeStages - 1 && (position - split_begin) % kKeyLanes == key_lane) {
      if (!fused_rope) {
        const Element* row = cached_key_row(position);
        new_key = __ldcg(reinterpret_cast<const uint4*>(row));
        new_value = __ldcg(reinterpret_cast<const uint4*>(row + value_offset));
      }
      // This thread reads the slot back itself: program order is enough.
      store_new_row(tile, i);
    }
  }

  float running_max[kMaxHeads], running_sum[kMaxHeads], accumulator[kMaxHeads][8];
#pragma unroll
  for (int h = 0; h < kMaxHeads; ++h) {
    running_max[h] = -INFINITY;
    running_sum[h] = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) accumulator[h][e] = 0.0f;
  }

  for (int tile = 0; tile < tiles; ++tile) {
    // The stage refilled here was read by this thread in the previous iteration.
    issue_tile(tile + kDecodeStages - 1, true);
    copy_async_wait<kDecodeStages - 1>();
    const int stage = tile % kDecodeStages;
    const int tile_begin = split_begin + tile * kTileKeys;

    // scores[i][h] = query[h] . key_i (log2 domain), -inf past the split.
    float scores[kDecodeKeysPerThread][kMaxHeads];
    bool valid[kDecodeKeysPerThread];
#pragma unroll
    for (int i = 0; i < kDecodeKeysPerThread; ++i) {
      valid[i] = tile_begin + i * kKeyLanes + key_lane < split_end;
      float key[8];
      unpack8<Element>(*reinterpret_cast<const uint4*>(slot(stage, 0, i)), key);
#pragma unroll
      for (int h = 0; h < kMaxHeads; ++h) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) dot = fmaf(query[h][e], key[e], dot);
#pragma unroll
        for (int offset = kThreadsPerKey / 2; offset > 0; offset >>= 1)
          dot += __shfl_xor_sync(0xffffffffu, dot, offset);
        scores[i][h] = valid[i] ? dot : -INFINITY;
      }
    }

    // Online softmax: m' = max(m, max_i s_i); sum = sum * 2^(m - m') + sum_i 2^(s_i - m');
    // accumulator = accumulator * 2^(m - m') + sum_i 2^(s_i - m') v_i.
#pragma unroll
    for (int h = 0; h < kMaxHeads; ++h) {
      float tile_max = scores[0][h];
#pragma unroll
      for (int i = 1; i < kDecodeKeysPerThread; ++i) tile_max = fmaxf(tile_max, scores[i][h]);
      const float new_max = fmaxf(running_max[h], tile_max);
      const float base = new_max == -INFINITY ? 0.0f : new_max;
      const float correction = fast_exp2(running_max[h] - base);
      running_max[h] = new_max;
      running_sum[h] *= correction;
#pragma unroll
      for (int e = 0; e < 8; ++e) accumulator[h][e] *= correction;
#pragma unroll
      for (int i = 0; i < kDecodeKeysPerThread; ++i) {
        scores[i][h] = fast_exp2(scores[i][h] - base);
        running_sum[h] += scores[i][h];
      }
    }
#pragma unroll
    for (int i = 0; i < kDecodeKeysPerThread; ++i) {
      float value[8];
      unpack8<Element>(*reinterpret_cast<const uint4*>(slot(stage, 1, i)), value);
      // A slot past the split holds stale bytes, maybe NaN: p = 0 there, and 0 * NaN = NaN.
#pragma unroll
      for (int e = 0; e < 8; ++e) value[e] = valid[i] ? value[e] : 0.0f;
#pragma unroll
      for (int h = 0; h < kMaxHeads; ++h) {
#pragma unroll
        for (int e = 0; e < 8; ++e)
          accumulator[h][e] = fmaf(scores[i][h], value[e], accumulator[h][e]);
      }
    }
  }
  copy_async_wait<0>();  // only empty groups can be left; the ring is reused below

  // Merge the key lanes of the warp: (m, sum, acc) + (m2, sum2, acc2) with weights 2^(m - m'),
  // 2^(m2 - m').
#pragma unroll
  for (int offset = kThreadsPerKey; offset < 32; offset <<= 1) {
#pragma unroll
    for (int h = 0; h < kMaxHeads; ++h) {
      const float other_max = __shfl_xor_sync(0xffffffffu, running_max[h], offset);
      const float other_sum = __shfl_xor_sync(0xffffffffu, running_sum[h], offset);
      const float new_max = fmaxf(running_max[h], other_max);
      const float base = new_max == -INFINITY ? 0.0f : new_max;
      const float mine = fast_exp2(running_max[h] - base);
      const float theirs = fast_exp2(other_max - base);
      running_max[h] = new_max;
      running_sum[h] = running_sum[h] * mine + other_sum * theirs;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float other = __shfl_xor_sync(0xffffffffu, accumulator[h][e], offset);
        accumulator[h][e] = accumulator[h][e] * mine + other * theirs;
      }
    }
  }

  // Then the warps, through shared memory: [warp][head][D] accumulators, [warp][head] max, sum.
  __syncthreads();
  float* warp_accumulator = reinterpret_cast<float*>(decode_shared);
  float* warp_max = warp_accumulator + kDecodeWarps * kMaxHeads * kHeadDim;
  float* warp_sum = warp_max + kDecodeWarps * kMaxHeads;
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 < kThreadsPerKey) {
#pragma unroll
    for (int h = 0; h < kMaxHeads; ++h) {
#pragma unroll
      for (int e = 0; e < 8; ++e)
        warp_accumulator[(warp * kMaxHeads + h) * kHeadDim + 8 * part + e] = accumulator[h][e];
      if (part == 0) {
        warp_max[warp * kMaxHeads + h] = running_max[h];
        warp_sum[warp * kMaxHeads + h] = running_sum[h];
      }
    }
  }
  __syncthreads();

  // out = sum_w 2^(m_w - M) acc_w / sum_w 2^(m_w - M) sum_w. A non-empty split has a key lane
  // whose maximum is M with sum >= 1, so the denominator is at least 1.
  for (int index = threadIdx.x; index < heads * kHeadDim; index += kDecodeThreads) {
    const int h = index / kHeadDim;
    const int element = index % kHeadDim;
    float maximum = -INFINITY;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) maximum = fmaxf(maximum, warp_max[w * kMaxHeads + h]);
    float denominator = 0.0f, numerator = 0.0f;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) {
      const float weight = fast_exp2(warp_max[w * kMaxHeads + h] - maximum);
      denominator += warp_sum[w * kMaxHeads + h] * weight;
      numerator += warp_accumulator[(w * kMaxHeads + h) * kHeadDim + element] * weight;
    }
    const int q_head = first_head + h;
    if (p.num_splits == 1) {
      static_cast<Element*>(p.out)[(int64_t(token) * p.num_q_heads + q_head) * kHeadDim + element] =
          from_float<Element>(numerator / denominator);
    } else {
      const int64_t row = (int64_t(split) * p.num_tokens + token) * p.num_q_heads + q_head;
      p.partial_out[row * kHeadDim + element] = numerator / denominator;
      if (element == 0) p.partial_lse[row] = maximum + log2f(denominator);
    }
  }
  if (p.num_splits > 1) {
    merge_if_last<Element, kHeadDim, kMaxHeads>(p, token, first_head, heads, counter, splits,
                                                merge_last);
  }
}

// ---- prefill: FlashAttention-2 on mma.sync, one CTA per (128 query rows, query head) ----
//
// Warp w owns 32 consecutive query rows of the CTA's 128, as two 16-row tiles. Shared memory holds
// the Q tile and a two-stage ring of (K, V) tiles of 64 keys, rows padded by 16 bytes so that
// ldmatrix is free of bank conflicts: the loads of tile j + 1 are issued as the CTA starts on tile
// j, so they have a whole tile of math to land in, and the loop has one barrier a tile. In each
// 16-row tile, thread (group g = lane / 4, t = lane % 4) holds rows g and g + 8: S and O in the mma
// accumulator layout (columns 2t, 2t + 1 of every 8-column tile), so P feeds the second product
// from registers. Each K and V fragment a warp reads from shared memory feeds both row tiles, and Q
// fragments are read from shared memory for every tile of keys (the registers hold the two tiles'
// S and O instead: 255 registers a thread at head dim 128, two CTAs an SM).
// Scores stay unscaled until the exponential, 2^(s scale log2(e) - m scale log2(e)) in one FMA;
// only tiles that cut a warp's visible range (the causal diagonal, a sliding window's edge, the
// ends of the context) are masked.
//
// Measured on an H200 (Llama-3-8B, 2048-token prefill, CUPTI trace of a whole step): 182.4 us a
// layer, against 197.6 for 8 warps of one row tile each with Q in registers (one CTA an SM, which
// read every K and V fragment for 16 rows only). On an H100 that shape had been faster than 4
// warps of one row tile with two CTAs an SM (49.2 against 51.3 ms a step) and than 8 warps reading
// Q from shared memory at 128 registers (50.6).

constexpr int kPrefillKeys = 64;
constexpr int kPrefillWarps = 4;
constexpr int kPrefillWarpTiles = 2;  // 16-row tiles a warp

template <int kHeadDim>
struct PrefillShape {
  static constexpr int kRows = 16 * kPrefillWarps * kPrefillWarpTiles;
  static constexpr int kThreads = 32 * kPrefillWarps;
  static constexpr int kRowStride = kHeadDim + 8;  // elements
  static constexpr int kChunksPerRow = kHeadDim / 8;
  static constexpr int kTileElements = kPrefillKeys * kRowStride;
  // Q, then [stage][K, V] tiles.
  static constexpr int kSharedBytes = (kRows * kRowStride + 4 * kTileElements) * 2;
};

template <typename Element, int kHeadDim>
__global__ void __launch_bounds__(32 * kPrefillWarps, 2) prefill_kernel(const AttentionParams p) {
  pdl_launch_dependents();
  pdl_wait();
  using Shape = PrefillShape<kHeadDim>;
  constexpr int kWarpTiles = kPrefillWarpTiles;
  using Ops = ElementOps<Element>;
  constexpr int kRows = Shape::kRows;
  constexpr int kThreads = Shape::kThreads;
  constexpr int kRowStride = Shape::kRowStride;
  constexpr int kChunksPerRow = Shape::kChunksPerRow;
  constexpr int kKeySteps = kHeadDim / 16;  // k-steps of S = Q K^T
  constexpr int kOutputTiles = kHeadDim / 8;
  constexpr int kScoreTiles = kPrefillKeys / 8;
  constexpr int kWarpRows = 16 * kWarpTiles;
  static_assert(kThreads >= kPrefillKeys);
  extern __shared__ __align__(16) unsigned char prefill_shared[];
  __shared__ int cta_first_key, cta_last_key;
  __shared__ int64_t row_offset[2][kPrefillKeys];
  Element* q_tile = reinterpret_cast<Element*>(prefill_shared);
  Element* kv_tiles = q_tile + kRows * kRowStride;
  auto key_tile = [&](int stage) { return kv_tiles + 2 * stage * Shape::kTileElements; };
  auto value_tile = [&](int stage) { return kv_tiles + (2 * stage + 1) * Shape::kTileElements; };

  // Tiles count back from each sequence's last row (its first tile may be partial), and the CTAs
  // start in the order of blockIdx: every head's and sequence's last tile (the most keys) first,
  // the shortest last, which keeps the last wave short.
  const int q_head = blockIdx.x;
  const int sequence = blockIdx.y;
  const int kv_head = q_head / p.group;
  const int query_begin = p.query_start[sequence];
  const int tile_end = p.query_start[sequence + 1] - int(blockIdx.z) * kRows;
  if (tile_end <= query_begin) return;
  const int row_begin = max(query_begin, tile_end - kRows);
  const int rows = tile_end - row_begin;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int group_row = lane / 4;
  const int group_column = 2 * (lane % 4);
  // CTA row of row r (0: g, 1: g + 8) of the warp's row tile m.
  auto cta_row = [&](int m, int r) { return warp * kWarpRows + m * 16 + group_row + 8 * r; };

  // Visible keys of each of this thread's rows: [first_visible(row_last), row_last]; empty
  // (row_last = -1) for padding rows. The warp sees keys in [warp_first, warp_last], all its rows
  // see [widest_first, narrowest_last].
  int row_last[kWarpTiles][2];
  int warp_first = INT_MAX, warp_last = -1, widest_first = 0, narrowest_last = INT_MAX;
#pragma unroll
  for (int m = 0; m < kWarpTiles; ++m) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = cta_row(m, r);
      row_last[m][r] = -1;
      if (row < rows) {
        row_last[m][r] = p.positions[row_begin + row];
        const int row_first = first_visible(row_last[m][r], p.sliding_window);
        warp_first = min(warp_first, row_first);
        warp_last = max(warp_last, row_last[m][r]);
        widest_first = max(widest_first, row_first);
      }
      narrowest_last = min(narrowest_last, row_last[m][r]);
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    warp_first = min(warp_first, __shfl_xor_sync(0xffffffffu, warp_first, offset));
    warp_last = max(warp_last, __shfl_xor_sync(0xffffffffu, warp_last, offset));
    widest_first = max(widest_first, __shfl_xor_sync(0xffffffffu, widest_first, offset));
    narrowest_last = min(narrowest_last, __shfl_xor_sync(0xffffffffu, narrowest_last, offset));
  }
  if (threadIdx.x == 0) {
    cta_first_key = INT_MAX;
    cta_last_key = -1;
  }
  __syncthreads();
  if (lane == 0 && warp_last >= 0) {
    atomicMin(&cta_first_key, warp_first);
    atomicMax(&cta_last_key, warp_last);
  }
  __syncthreads();
  const int first_key = cta_first_key;
  const int last_key = cta_last_key;  // >= 0: the first row sees at least its own position

  // Tile rows: row_offset[buffer][row] is the cache offset of the key at position tile_begin + row
  // (its block, kv head and slot; its value is value_offset further), -1 outside [first_key,
  // last_key], which is never read. One division and table lookup per key, shared by the K and V
  // loads; tile j uses buffer j % 2, written two tiles ahead.
  const auto* cache = static_cast<const Element*>(p.cache_layer);
  const int32_t* block_table = p.block_table + int64_t(sequence) * p.max_blocks_per_sequence;
  const int64_t value_offset = int64_t(p.num_kv_heads) * p.block_size * kHeadDim;
  const int64_t head_offset = int64_t(kv_head) * p.block_size * kHeadDim;
  auto find_rows = [&](int buffer, int tile_begin) {
    if (threadIdx.x < kPrefillKeys) {
      const int key = tile_begin + threadIdx.x;
      int64_t offset = -1;
      if (key >= first_key && key <= last_key) {
        const int block_index = p.block_divider.divide(key);
        offset = int64_t(block_table[block_index]) * 2 * value_offset + head_offset +
                 int64_t(key - block_index * p.block_size) * kHeadDim;
      }
      row_offset[buffer][threadIdx.x] = offset;
    }
  };
  // Copies the keys and values of a tile into `stage`, zeros for rows outside the range (a P of 0
  // times stale bytes could be NaN).
  auto load_tiles = [&](int stage, const int64_t* rows_of_tile) {
    constexpr int kTileChunks = kPrefillKeys * kChunksPerRow;
#pragma unroll
    for (int chunk = threadIdx.x; chunk < 2 * kTileChunks; chunk += kThreads) {
      const int kv = chunk / kTileChunks;
      const int row = chunk % kTileChunks / kChunksPerRow;
      const int column = 8 * (chunk % kChunksPerRow);
      Element* destination = (kv ? value_tile(stage) : key_tile(stage)) + row * kRowStride + column;
      const int64_t offset = rows_of_tile[row];
      if (offset >= 0) {
        copy_async_16(destination, cache + offset + kv * value_offset + column);
      } else {
        *reinterpret_cast<uint4*>(destination) = make_uint4(0, 0, 0, 0);
      }
    }
  };

  const int first_tile_begin = first_key / kPrefillKeys * kPrefillKeys;
  const int tiles = (last_key - first_tile_begin) / kPrefillKeys + 1;
  find_rows(0, first_tile_begin);
  if (tiles > 1) find_rows(1, first_tile_begin + kPrefillKeys);
  // Q rows past the sequence's tokens are zero.
  const auto* q = static_cast<const Element*>(p.q);
#pragma unroll
  for (int chunk = threadIdx.x; chunk < kRows * kChunksPerRow; chunk += kThreads) {
    const int row = chunk / kChunksPerRow;
    const int column = 8 * (chunk % kChunksPerRow);
    Element* destination = q_tile + row * kRowStride + column;
    if (row < rows) {
      copy_async_16(destination,
                    q + (int64_t(row_begin + row) * p.num_q_heads + q_head) * kHeadDim + column);
    } else {
      *reinterpret_cast<uint4*>(destination) = make_uint4(0, 0, 0, 0);
    }
  }
  __syncthreads();  // the first tiles' rows
  load_tiles(0, row_offset[0]);
  copy_async_commit();

  // The A fragment of Q for k-step `step` of row tile m, from shared memory.
  auto load_q = [&](uint32_t(&fragment)[4], int m, int step) {
    load_matrix_x4(fragment, q_tile + (warp * kWarpRows + m * 16 + (lane & 15)) * kRowStride +
                                 step * 16 + (lane >> 4) * 8);
  };
  float output[kWarpTiles][kOutputTiles][4];
#pragma unroll
  for (int m = 0; m < kWarpTiles; ++m) {
#pragma unroll
    for (int n = 0; n < kOutputTiles; ++n) {
#pragma unroll
      for (int c = 0; c < 4; ++c) output[m][n][c] = 0.0f;
    }
  }
  float row_max[kWarpTiles][2];  // unscaled scores
  float row_sum[kWarpTiles][2];  // this thread's columns only; summed over the 4 at the end
#pragma unroll
  for (int m = 0; m < kWarpTiles; ++m) {
    row_max[m][0] = row_max[m][1] = -INFINITY;
    row_sum[m][0] = row_sum[m][1] = 0.0f;
  }

  for (int tile = 0; tile < tiles; ++tile) {
    const int stage = tile & 1;
    const int tile_begin = first_tile_begin + tile * kPrefillKeys;
    // This tile's K and V (and Q) landed; every warp is done with the other stage and the
    // next tile's rows are found.
    copy_async_wait<0>();
    __syncthreads();
    if (tile + 1 < tiles) load_tiles(stage ^ 1, row_offset[stage ^ 1]);
    copy_async_commit();
    if (tile + 2 < tiles) find_rows(stage, tile_begin + 2 * kPrefillKeys);

    // A warp whose rows see no key of this tile skips it (causal diagonal, sliding window).
    const bool warp_active =
        warp_last >= 0 && tile_begin <= warp_last && tile_begin + kPrefillKeys > warp_first;
    if (!warp_active) continue;
    const Element* k_tile = key_tile(stage);
    const Element* v_tile = value_tile(stage);

    // S = Q K^T: B fragments of two 8-key tiles per ldmatrix (keys are K^T's columns).
    float score[kWarpTiles][kScoreTiles][4];
#pragma unroll
    for (int m = 0; m < kWarpTiles; ++m) {
#pragma unroll
      for (int n = 0; n < kScoreTiles; ++n) {
#pragma unroll
        for (int c = 0; c < 4; ++c) score[m][n][c] = 0.0f;
      }
    }
#pragma unroll
    for (int step = 0; step < kKeySteps; ++step) {
      uint32_t step_q[kWarpTiles][4];
#pragma unroll
      for (int m = 0; m < kWarpTiles; ++m) load_q(step_q[m], m, step);
#pragma unroll
      for (int pair = 0; pair < kScoreTiles / 2; ++pair) {
        uint32_t key_fragment[4];
        load_matrix_x4(key_fragment, k_tile +
                                         (pair * 16 + (lane & 7) + (lane >> 4) * 8) * kRowStride +
                                         step * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
        for (int m = 0; m < kWarpTiles; ++m) {
          Ops::mma(score[m][2 * pair], step_q[m], key_fragment[0], key_fragment[1]);
          Ops::mma(score[m][2 * pair + 1], step_q[m], key_fragment[2], key_fragment[3]);
        }
      }
    }

    // Mask where some row of the warp does not see the whole tile.
    if (tile_begin < widest_first || tile_begin + kPrefillKeys - 1 > narrowest_last) {
#pragma unroll
      for (int m = 0; m < kWarpTiles; ++m) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int last = row_last[m][r];
          const int first = first_visible(last, p.sliding_window);
#pragma unroll
          for (int n = 0; n < kScoreTiles; ++n) {
#pragma unroll
            for (int c = 2 * r; c < 2 * r + 2; ++c) {
              const int key = tile_begin + 8 * n + group_column + (c & 1);
              if (key < first || key > last) score[m][n][c] = -INFINITY;
            }
          }
        }
      }
    }
    // Online softmax per row: m' = max(m, max_j s_j), O *= 2^((m - m') c), p = 2^((s - m') c)
    // with c = scale log2(e).
#pragma unroll
    for (int m = 0; m < kWarpTiles; ++m) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float tile_max = -INFINITY;
#pragma unroll
        for (int n = 0; n < kScoreTiles; ++n)
          tile_max = fmaxf(tile_max, fmaxf(score[m][n][2 * r], score[m][n][2 * r + 1]));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
        const float new_max = fmaxf(row_max[m][r], tile_max);
        const float base = new_max == -INFINITY ? 0.0f : new_max * p.scale_log2;
        const float correction = fast_exp2(fmaf(row_max[m][r], p.scale_log2, -base));
        row_max[m][r] = new_max;
        row_sum[m][r] *= correction;
#pragma unroll
        for (int n = 0; n < kOutputTiles; ++n) {
          output[m][n][2 * r] *= correction;
          output[m][n][2 * r + 1] *= correction;
        }
#pragma unroll
        for (int n = 0; n < kScoreTiles; ++n) {
#pragma unroll
          for (int c = 2 * r; c < 2 * r + 2; ++c) {
            score[m][n][c] = fast_exp2(fmaf(score[m][n][c], p.scale_log2, -base));
            row_sum[m][r] += score[m][n][c];
          }
        }
      }
    }

    // O += P V: P (rounded to the element type) from the S accumulators, V^T fragments by
    // transposing ldmatrix, two 8-column output tiles per load.
#pragma unroll
    for (int step = 0; step < kPrefillKeys / 16; ++step) {
      uint32_t probability[kWarpTiles][4];
#pragma unroll
      for (int m = 0; m < kWarpTiles; ++m) {
        probability[m][0] = Ops::pack(score[m][2 * step][0], score[m][2 * step][1]);
        probability[m][1] = Ops::pack(score[m][2 * step][2], score[m][2 * step][3]);
        probability[m][2] = Ops::pack(score[m][2 * step + 1][0], score[m][2 * step + 1][1]);
        probability[m][3] = Ops::pack(score[m][2 * step + 1][2], score[m][2 * step + 1][3]);
      }
#pragma unroll
      for (int pair = 0; pair < kOutputTiles / 2; ++pair) {
        uint32_t value_fragment[4];
        load_matrix_x4_transposed(
            value_fragment, v_tile + (step * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * kRowStride +
                                pair * 16 + (lane >> 4) * 8);
#pragma unroll
        for (int m = 0; m < kWarpTiles; ++m) {
          Ops::mma(output[m][2 * pair], probability[m], value_fragment[0], value_fragment[1]);
          Ops::mma(output[m][2 * pair + 1], probability[m], value_fragment[2], value_fragment[3]);
        }
      }
    }
  }

  // out = O / sum: a real row sees at least its own position, so its sum is at least 1.
#pragma unroll
  for (int m = 0; m < kWarpTiles; ++m) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row_sum[m][r] += __shfl_xor_sync(0xffffffffu, row_sum[m][r], 1);
      row_sum[m][r] += __shfl_xor_sync(0xffffffffu, row_sum[m][r], 2);
      const int row = cta_row(m, r);
      if (row >= rows) continue;
      const float inverse = 1.0f / row_sum[m][r];
      auto* out_row = static_cast<Element*>(p.out) +
                      (int64_t(row_begin + row) * p.num_q_heads + q_head) * kHeadDim + group_column;
#pragma unroll
      for (int n = 0; n < kOutputTiles; ++n) {
        *reinterpret_cast<uint32_t*>(out_row + 8 * n) =
            Ops::pack(output[m][n][2 * r] * inverse, output[m][n][2 * r + 1] * inverse);
      }
    }
  }
}

// ---- the instance table ----

template <typename Element, int kHeadDim, bool kUniformSplit>
void launch_decode_in(const AttentionParams& p, dim3 grid, cudaStream_t stream) {
  // The fewest register-resident query heads that hold the CTA's share of the group.
  auto kernel = p.heads_per_cta == 1
                    ? decode_kernel<Element, kHeadDim, 1, kUniformSplit>
                    : decode_kernel<Element, kHeadDim, kMaxDecodeHeads, kUniformSplit>;
  if (kUniformSplit) {
    launch_kernel(kernel, grid, kDecodeThreads, kDecodeSharedBytes, stream, p);
  } else {
    launch_kernel_own_carveout(kernel, grid, kDecodeThreads, kDecodeSharedBytes, stream, p);
  }
}

// A grid of one wave at one CTA an SM (batch 1 with a short context) runs in the GEMVs' uniform
// carveout, so that its CTAs start beside the QKV GEMV's last ones and the o GEMV's start beside
// its own: an SM changes its split only once drained. Larger grids keep the driver's split, which
// fits two or more CTAs an SM (one an SM cost batch 8 3%, docs/perf/cuda_llama3_8b.md).
template <typename Element, int kHeadDim>
void launch_decode(const AttentionParams& p, dim3 grid, cudaStream_t stream) {
  const int64_t ctas = int64_t(grid.x) * grid.y * grid.z;
  if (ctas <= current_multiprocessor_count()) {
    launch_decode_in<Element, kHeadDim, true>(p, grid, stream);
  } else {
    launch_decode_in<Element, kHeadDim, false>(p, grid, stream);
  }
}

// Launched over Hq x sequences x ceil(max_query_length / rows) CTAs.
template <typename Element, int kHeadDim>
void launch_prefill(const AttentionParams& p, int64_t max_query_length, unsigned sequences,
                    cudaStream_t stream) {
  using Shape = PrefillShape<kHeadDim>;
  constexpr auto kernel = prefill_kernel<Element, kHeadDim>;
  // Per launch (the setting belongs to the current device; the call is cheap).
  KITE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       Shape::kSharedBytes));
  const int64_t tiles = (max_query_length + Shape::kRows - 1) / Shape::kRows;
  KITE_CHECK(sequences <= 65535 && tiles <= 65535);  // gridDim.y, gridDim.z
  const dim3 grid(unsigned(p.num_q_heads), sequences, unsigned(tiles));
  launch_kernel_own_carveout(kernel, grid, Shape::kThreads, Shape::kSharedBytes, stream, p);
}

using Launcher = void (*)(const AttentionParams&, dim3, cudaStream_t);
using PrefillLauncher = void (*)(const AttentionParams&, int64_t, unsigned, cudaStream_t);

struct AttentionKernels {
  DType dtype;
  int head_dim;
  Launcher decode;
  PrefillLauncher prefill;
};

template <typename Element, int kHeadDim>
constexpr AttentionKernels kernels_for(DType dtype) {
  static_assert(kHeadDim % 16 == 0 && kHeadDim <= 128);
  return {dtype, kHeadDim, &launch_decode<Element, kHeadDim>, &launch_prefill<Element, kHeadDim>};
}

// Every (dtype, head dim) the kernels are compiled for.
constexpr AttentionKernels kAttentionKernels[] = {
    kernels_for<__half, 16>(DType::kF16),         kernels_for<__half, 32>(DType::kF16),
    kernels_for<__half, 64>(DType::kF16),         kernels_for<__half, 128>(DType::kF16),
    kernels_for<__nv_bfloat16, 16>(DType::kBF16), kernels_for<__nv_bfloat16, 32>(DType::kBF16),
    kernels_for<__nv_bfloat16, 64>(DType::kBF16), kernels_for<__nv_bfloat16, 128>(DType::kBF16),
};

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

}  // namespace

int choose_attention_splits(int64_t num_sequences, int64_t num_kv_heads, int64_t context_bound,
                            int multiprocessor_count, bool multi_block_mode) {
  if (!multi_block_mode || num_sequences <= 0 || num_kv_heads <= 0) return 1;
  // A batch with a CTA for every SM already streams at nearly full bandwidth; below that, splits
  // bring it to about two CTAs per SM, which keeps enough loads in flight. A split is at least one
  // tile of keys: at batch 1 even a 256-token context is faster split into tiles than walked by one
  // CTA per kv head (H100, Llama-3-8B, 128 + 128 tokens: 161 against 155 tokens/s).
  constexpr int64_t kMinKeysPerSplit = 32;
  constexpr int64_t kMaxSplitsChosen = 64;
  const int64_t sm_count = std::max(multiprocessor_count, 1);
  const int64_t ctas = num_sequences * num_kv_heads;
  if (ctas >= sm_count) return 1;
  const int64_t wanted = ceil_div(2 * sm_count, ctas);
  const int64_t by_length = context_bound / kMinKeysPerSplit;
  return int(std::clamp<int64_t>(std::min(wanted, by_length), 1, kMaxSplitsChosen));
}

size_t split_counter_count(int64_t max_tokens, int64_t num_q_heads) {
  return size_t(max_tokens) * size_t(num_q_heads);
}

size_t attention_workspace_bytes(int64_t max_tokens, int64_t num_q_heads, int64_t head_dim,
                                 int num_splits) {
  if (num_splits <= 1) return 0;
  return size_t(num_splits) * size_t(max_tokens) * size_t(num_q_heads) * size_t(head_dim + 1) *
         sizeof(float);
}

namespace {

// The parameters every kernel shares, checked: `q_columns` is Hq * D.
AttentionParams make_params(DType dtype, int64_t q_columns, const AttentionBatch& batch,
                            const KvCacheView& cache, int64_t layer, float scale,
                            int64_t sliding_window, const DeviceTensor& out,
                            const AttentionKernels** kernels) {
  const int64_t head_dim = cache.head_dim;
  const int64_t kv_heads = cache.num_kv_heads;
  KITE_CHECK(dtype == DType::kF16 || dtype == DType::kBF16);
  KITE_CHECK(out.dtype == dtype && cache.dtype == dtype);
  KITE_CHECK(head_dim > 0 && kv_heads > 0 && cache.block_size > 0);
  KITE_CHECK(layer >= 0 && layer < cache.num_layers);
  KITE_CHECK(q_columns > 0 && q_columns % (kv_heads * head_dim) == 0);
  KITE_CHECK(out.rows() == batch.num_tokens && out.cols() == q_columns);
  KITE_CHECK(reinterpret_cast<uintptr_t>(out.data) % 16 == 0);
  KITE_CHECK(reinterpret_cast<uintptr_t>(cache.data) % 16 == 0);
  const int64_t q_heads = q_columns / head_dim;
  KITE_CHECK(q_heads <= 65535 && batch.num_sequences <= 65535);  // grid dimensions

  *kernels = nullptr;
  for (const AttentionKernels& candidate : kAttentionKernels) {
    if (candidate.dtype == dtype && candidate.head_dim == head_dim) *kernels = &candidate;
  }
  KITE_CHECK(*kernels != nullptr);  // head_dim must be 16, 32, 64 or 128

  AttentionParams p{};
  p.out = out.data;
  p.cache_layer = static_cast<char*>(cache.data) +
                  layer * cache.layer_elements() * int64_t(dtype_size(cache.dtype));
  p.positions = batch.positions;
  p.query_start = batch.query_start;
  p.block_table = batch.block_table;
  p.max_blocks_per_sequence = batch.max_blocks_per_sequence;
  p.num_tokens = int(batch.num_tokens);
  p.block_size = int(cache.block_size);
  p.block_divider = FastDivider::make(uint32_t(cache.block_size));
  p.head_dim = int(head_dim);
  p.num_kv_heads = int(kv_heads);
  p.num_q_heads = int(q_heads);
  p.group = int(q_heads / kv_heads);
  // A window longer than any position is no window.
  p.sliding_window = sliding_window > 0 && sliding_window < INT_MAX ? int(sliding_window) : 0;
  p.scale_log2 = scale * kLog2e;
  return p;
}

// The decode kernel over the first `decodes` sequences (one token each, the batch's first tokens).
void launch_decodes(AttentionParams d, const AttentionKernels& kernels, int64_t decodes,
                    int num_splits, const SplitWorkspace& workspace, cudaStream_t stream) {
  KITE_CHECK(num_splits >= 1 && num_splits <= kMaxSplits);
  d.num_tokens = int(decodes);
  d.head_chunks = int(ceil_div(d.group, kMaxDecodeHeads));
  d.heads_per_cta = int(ceil_div(d.group, d.head_chunks));
  d.num_splits = num_splits;
  if (num_splits > 1) {
    KITE_CHECK(workspace.partials != nullptr &&
               workspace.partial_bytes >=
                   attention_workspace_bytes(decodes, d.num_q_heads, d.head_dim, num_splits));
    KITE_CHECK(workspace.counters != nullptr &&
               workspace.counter_count >= split_counter_count(decodes, d.num_q_heads));
    d.partial_out = static_cast<float*>(workspace.partials);
    d.partial_lse = d.partial_out + int64_t(num_splits) * decodes * d.num_q_heads * d.head_dim;
    d.split_counters = workspace.counters;
  }
  KITE_CHECK(int64_t(d.num_kv_heads) * d.head_chunks <= 65535);
  kernels.decode(
      d, dim3(unsigned(decodes), unsigned(d.num_kv_heads * d.head_chunks), unsigned(num_splits)),
      stream);
}

}  // namespace

void attention(const DeviceTensor& q, const AttentionBatch& batch, const KvCacheView& cache,
               int64_t layer, float scale, int64_t sliding_window, DeviceTensor& out,
               int num_splits, const SplitWorkspace& workspace, cudaStream_t stream) {
  KITE_CHECK(q.rows() == batch.num_tokens && out.data != q.data);
  KITE_CHECK(reinterpret_cast<uintptr_t>(q.data) % 16 == 0);
  const AttentionKernels* kernels = nullptr;
  AttentionParams p =
      make_params(q.dtype, q.cols(), batch, cache, layer, scale, sliding_window, out, &kernels);
  p.q = q.data;
  if (batch.num_tokens == 0) return;
  KITE_CHECK(batch.num_sequences > 0 && batch.max_query_length >= 1);

  // The decode kernel takes the leading one-token sequences (all of a decode step), the prefill
  // kernel the rest: a decode among prefills would otherwise read its whole context once per
  // query head instead of once per kv head.
  const int64_t decodes =
      batch.max_query_length == 1
          ? batch.num_sequences
          : std::clamp<int64_t>(batch.num_leading_decodes, 0, batch.num_sequences);
  if (decodes > 0) launch_decodes(p, *kernels, decodes, num_splits, workspace, stream);
  if (decodes < batch.num_sequences) {
    // Sequences [decodes, S): their rows of query_start and block_table.
    p.query_start = batch.query_start + decodes;
    p.block_table = batch.block_table + decodes * batch.max_blocks_per_sequence;
    kernels->prefill(p, batch.max_query_length, unsigned(batch.num_sequences - decodes), stream);
  }
}

bool decode_rope_attention_applies(const AttentionBatch& batch, const RopeParams& rope,
                                   int64_t head_dim) {
  return batch.max_query_length == 1 && rope.rotary_dim > 0 && rope.rotary_dim % 16 == 0 &&
         rope.rotary_dim <= head_dim &&
         (head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128);
}

void decode_rope_attention(const DeviceTensor& qkv, const RopeParams& rope,
                           const AttentionBatch& batch, const KvCacheView& cache, int64_t layer,
                           float scale, int64_t sliding_window, DeviceTensor& out, int num_splits,
                           const SplitWorkspace& workspace, cudaStream_t stream) {
  KITE_CHECK(decode_rope_attention_applies(batch, rope, cache.head_dim));
  const int64_t q_columns = out.cols();
  KITE_CHECK(qkv.rows() == batch.num_tokens && qkv.dtype == out.dtype &&
             qkv.cols() == q_columns + 2 * cache.num_kv_heads * cache.head_dim);
  KITE_CHECK(reinterpret_cast<uintptr_t>(qkv.data) % 16 == 0);
  const AttentionKernels* kernels = nullptr;
  AttentionParams p =
      make_params(qkv.dtype, q_columns, batch, cache, layer, scale, sliding_window, out, &kernels);
  if (batch.num_tokens == 0) return;
  KITE_CHECK(batch.num_sequences == batch.num_tokens);
  p.qkv = qkv.data;
  p.inv_freq = rope.inv_freq;
  p.rope_scaling = rope.attention_scaling;
  p.rotary_half = int(rope.rotary_dim / 2);
  p.slot_mapping = batch.slot_mapping;
  launch_decodes(p, *kernels, batch.num_sequences, num_splits, workspace, stream);
}

}  // namespace kite::cuda
