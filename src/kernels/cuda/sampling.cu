// GPU sampling without a sort. Each token is ranked by a 64-bit key (its score's bits, then its
// index, so that descending key order is the host's order: higher score first, higher index first
// among ties), and every filter and the draw itself becomes "find the first token, in that order,
// at which a running count or probability mass reaches a target": a radix select.
//
// Kernels, in stream order (R rows of V logits; a slice is kSliceSize logits of one row):
//  1. penalty_and_max  [slices, R]  repetition penalty in place; max and argmax of each slice
//  2. coarse_histogram [slices, R]  per row: count and mass of tokens per 11-bit key prefix
//  3. plan             [R]          per row: the range of prefixes that can hold the answer
//  4. gather           [slices, R]  per row: the ids of the tokens in that range (candidates)
//  5. finish           [R]          per row: filters and draw by radix select over candidates
// A greedy row stops after 1 (its answer is the argmax). A row with filters gathers every token
// that may survive them (k tokens for top-k, the nucleus for top-p); a row with none gathers only
// the prefix that the draw falls into.
#include "kernels/cuda/sampling.h"

#include <cmath>
#include <cstdint>

#include "core/status.h"
#include "kernels/cuda/cuda_check.h"

namespace kite::cuda {
namespace {

using Wide = unsigned long long;  // the type CUDA's 64-bit atomics take

constexpr int kSliceSize = 4096;
constexpr int kSliceThreads = 256;
constexpr int kSlicePerThread = kSliceSize / kSliceThreads;
constexpr int kCoarseBits = 11;
constexpr int kCoarseBins = 1 << kCoarseBits;
constexpr int kPlanThreads = 256;
constexpr int kFinishThreads = 512;
constexpr int kDigitBits = 8;
constexpr int kDigitBins = 1 << kDigitBits;
constexpr int kCachedCandidates = 4096;  // finish() keeps up to this many keys in shared memory
constexpr int32_t kNoIndex = INT32_MAX;
// exp(score - max) in [0, 1] is counted in units of 2^-39: integer sums are exact and the same in
// any order, so every kernel sees the same masses and a replay the same draws. Tokens more than
// 27 nats below the best one weigh 0 (their share is below 2^-39); V < 2^24 keeps sums in 64 bits.
// Shared-memory histograms add a weight as two 32-bit halves (bits 0-19 and 20-38), since 64-bit
// shared atomics are compare-and-swap loops that crawl when lanes collide; 4096 additions at most
// before a flush keep each half below 2^32.
constexpr float kWeightScale = 549755813888.0f;  // 2^39
constexpr int kLowWeightBits = 20;
constexpr int kMaxAdditionsPerFlush = 4096;
constexpr int64_t kMaxVocab = int64_t(1) << 24;
static_assert(kSliceSize <= kMaxAdditionsPerFlush && kCachedCandidates <= kMaxAdditionsPerFlush);

struct SliceMax {
  float value;    // the largest penalized logit of the slice
  int32_t index;  // its lowest index
};

// What plan() decides for one row and the later kernels read.
struct RowPlan {
  float max_score;   // the largest score (penalized logit / temperature)
  int32_t argmax;    // lowest index of the largest penalized logit
  uint32_t low_bin;  // candidates: tokens whose coarse bin is in [low_bin, high_bin]
  uint32_t high_bin;
  uint32_t candidate_count;  // counted by gather()
  Wide total_weight;         // mass of the whole row
  Wide weight_above;         // mass of the tokens in bins above high_bin
  Wide draw;                 // rows without filters: the draw, in [0, total_weight)
};

struct Workspace {
  SliceMax* slice_max;   // [R, slices]
  uint32_t* bin_counts;  // [R, kCoarseBins]
  Wide* bin_weights;     // [R, kCoarseBins]
  RowPlan* plans;        // [R]
  int32_t* candidates;   // [R, V]
};

size_t align_up(size_t bytes) {
  return (bytes + 255) / 256 * 256;
}

int64_t slice_count(int64_t vocab) {
  return (vocab + kSliceSize - 1) / kSliceSize;
}

// Carves the workspace; with base == nullptr only counts the bytes.
Workspace carve(void* base, int64_t rows, int64_t vocab, size_t* bytes) {
  auto* cursor = static_cast<char*>(base);
  size_t offset = 0;
  auto take = [&](size_t size) {
    char* pointer = cursor ? cursor + offset : nullptr;
    offset += align_up(size);
    return pointer;
  };
  Workspace workspace;
  const size_t row_count = size_t(rows);
  workspace.slice_max =
      reinterpret_cast<SliceMax*>(take(row_count * size_t(slice_count(vocab)) * sizeof(SliceMax)));
  workspace.bin_counts = reinterpret_cast<uint32_t*>(take(row_count * kCoarseBins * 4));
  workspace.bin_weights = reinterpret_cast<Wide*>(take(row_count * kCoarseBins * 8));
  workspace.plans = reinterpret_cast<RowPlan*>(take(row_count * sizeof(RowPlan)));
  workspace.candidates = reinterpret_cast<int32_t*>(take(row_count * size_t(vocab) * 4));
  *bytes = offset;
  return workspace;
}

// ---- per-token quantities; every kernel computes them with these functions, so they agree ----

__device__ __forceinline__ bool is_greedy(const SamplingRow& row) {
  return row.temperature == 0.0f || row.top_k == 1;
}

__device__ __forceinline__ float score_of(float logit, float temperature) {
  return __fdiv_rn(logit, temperature);  // as the host: score /= temperature
}

// Unsigned key with the order of the float (+0 and -0 equal, like the host's comparisons).
__device__ __forceinline__ uint32_t order_key(float score) {
  const uint32_t bits = __float_as_uint(__fadd_rn(score, 0.0f));  // -0 + 0 = +0
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

__device__ __forceinline__ uint32_t coarse_bin(float score) {
  return order_key(score) >> (32 - kCoarseBits);
}

// Descending key order = higher score first, then higher index first: the reverse of the host's
// stable ascending sort by score.
__device__ __forceinline__ Wide rank_key(float score, int32_t index) {
  return Wide(order_key(score)) << 32 | uint32_t(index);
}

__device__ __forceinline__ float score_of_key(Wide key) {
  const uint32_t order = uint32_t(key >> 32);
  return __uint_as_float((order & 0x80000000u) ? order & 0x7fffffffu : ~order);
}

// exp(score - max) in units of 2^-39.
__device__ __forceinline__ Wide weight_of(float score, float max_score) {
  const float difference = __fsub_rn(score, max_score);
  if (!(difference > -100.0f)) return 0;  // -inf scores, and far below 2^-39 anyway
  return __float2ull_rn(expf(difference) * kWeightScale);  // scaling by 2^39 is exact
}

__device__ __forceinline__ void add_weight(uint32_t* low, uint32_t* high, int bin, Wide weight) {
  if (weight == 0) return;
  atomicAdd(&low[bin], uint32_t(weight) & ((1u << kLowWeightBits) - 1));
  atomicAdd(&high[bin], uint32_t(weight >> kLowWeightBits));
}

__device__ __forceinline__ Wide joined_weight(uint32_t low, uint32_t high) {
  return (Wide(high) << kLowWeightBits) + low;
}

// Philox4x32-10 (Salmon et al., 2011) of counter (step, 0) under key seed; 64 of its 128 bits.
// The same numbers as curand's Philox4_32_10 after curand_init(seed, 0, 4 * step).
__device__ Wide philox_random(uint64_t seed, uint64_t step) {
  uint32_t c0 = uint32_t(step), c1 = uint32_t(step >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Wide(c1) << 32 | c0;
}

// A uniform draw in [0, total): floor(random * total / 2^64).
__device__ __forceinline__ Wide draw_below(const SamplingRow& row, Wide total) {
  return __umul64hi(philox_random(row.seed, row.step), total);
}

// This thread's logits of a slice, indices begin + threadIdx.x + k * kSliceThreads, all loads in
// flight at once; -inf past the end.
__device__ __forceinline__ void load_slice(const float* row_logits, int64_t begin, int64_t end,
                                           float (&values)[kSlicePerThread]) {
#pragma unroll
  for (int k = 0; k < kSlicePerThread; ++k) {
    const int64_t i = begin + threadIdx.x + k * kSliceThreads;
    values[k] = i < end ? row_logits[i] : -INFINITY;
  }
}

// ---- block-wide helpers (every thread of the block calls them) ----

struct ScanScratch {
  Wide warp_sums[32];
  int bin;
  Wide before;
};

// Exclusive prefix sum of `value` in thread order; *total gets the block's sum.
template <int kThreads>
__device__ Wide block_exclusive_sum(Wide value, Wide* total, ScanScratch& scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  Wide inclusive = value;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const Wide other = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += other;
  }
  __syncthreads();  // warp_sums may still be read by a previous call
  if (lane == 31) scratch.warp_sums[warp] = inclusive;
  __syncthreads();
  Wide before = 0, sum = 0;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) {
    const Wide warp_sum = scratch.warp_sums[w];
    if (w < warp) before += warp_sum;
    sum += warp_sum;
  }
  *total = sum;
  return before + inclusive - value;
}

template <int kThreads>
__device__ Wide block_sum(Wide value, ScanScratch& scratch) {
  Wide total;
  block_exclusive_sum<kThreads>(value, &total, scratch);
  return total;
}

struct Crossing {
  int bin;      // -1 when above + the sum of all bins stays below the target
  Wide before;  // above + the sum of the bins above `bin`
};

// Walking the bins from the highest down, the first bin at which above + the running sum of
// bin_value(bin) reaches target (>= 1).
template <int kThreads, int kBins, typename BinValue>
__device__ Crossing find_crossing(BinValue bin_value, Wide target, Wide above,
                                  ScanScratch& scratch) {
  constexpr int kPerThread = (kBins + kThreads - 1) / kThreads;
  const int top = kBins - 1 - int(threadIdx.x) * kPerThread;  // this thread's highest bin
  Wide own = 0;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i)
    if (top - i >= 0) own += bin_value(top - i);
  Wide total;
  const Wide before_own = above + block_exclusive_sum<kThreads>(own, &total, scratch);
  if (threadIdx.x == 0) scratch.bin = -1;
  __syncthreads();
  if (before_own < target && before_own + own >= target) {  // exactly one thread
    Wide running = before_own;
    for (int i = 0; i < kPerThread && top - i >= 0; ++i) {
      const Wide value = bin_value(top - i);
      if (running + value >= target) {
        scratch.bin = top - i;
        scratch.before = running;
        break;
      }
      running += value;
    }
  }
  __syncthreads();
  return {scratch.bin, scratch.before};
}

__device__ __forceinline__ bool better(float value, int32_t index, float best, int32_t best_index) {
  return value > best || (value == best && index < best_index) || best_index == kNoIndex;
}

// ---- 1. repetition penalty and slice maxima ----

__global__ void __launch_bounds__(kSliceThreads)
    penalty_and_max_kernel(float* logits, const SamplingRow* rows, const int32_t* history,
                           const int32_t* history_length, int64_t history_stride, int64_t vocab,
                           Workspace workspace) {
  const int64_t row = blockIdx.y, slice = blockIdx.x, slices = gridDim.x;
  const SamplingRow config = rows[row];
  float* row_logits = logits + row * vocab;
  const int64_t begin = slice * kSliceSize, end = min(begin + kSliceSize, vocab);

  // The row's coarse histogram is filled by the next kernel; its slices clear it here.
  for (int64_t bin = slice * kSliceThreads + threadIdx.x; bin < kCoarseBins;
       bin += slices * kSliceThreads) {
    workspace.bin_counts[row * kCoarseBins + bin] = 0;
    workspace.bin_weights[row * kCoarseBins + bin] = 0;
  }

  const float penalty = config.repetition_penalty;
  if (penalty != 1.0f && history_length != nullptr) {
    // Each distinct token once, as the host does: the first thread to mark a token applies it.
    __shared__ uint32_t seen[kSliceSize / 32];
    for (int word = threadIdx.x; word < kSliceSize / 32; word += kSliceThreads) seen[word] = 0;
    __syncthreads();
    const int32_t* tokens = history + row * history_stride;
    const int64_t length = history_length[row];
    for (int64_t i = threadIdx.x; i < length; i += kSliceThreads) {
      const int32_t token = tokens[i];
      if (token < begin || token >= end) continue;
      const int offset = int(token - begin);
      const uint32_t bit = 1u << (offset & 31);
      if (atomicOr(&seen[offset >> 5], bit) & bit) continue;
      const float logit = row_logits[token];
      row_logits[token] = logit < 0.0f ? logit * penalty : __fdiv_rn(logit, penalty);
    }
    __syncthreads();  // the penalized logits are read below
  }

  float values[kSlicePerThread];
  load_slice(row_logits, begin, end, values);
  float best = -INFINITY;
  int32_t best_index = kNoIndex;
#pragma unroll
  for (int k = 0; k < kSlicePerThread; ++k) {  // in index order: ties keep the lowest index
    const int64_t i = begin + threadIdx.x + k * kSliceThreads;
    if (i < end && better(values[k], int32_t(i), best, best_index))
      best = values[k], best_index = int32_t(i);
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float other = __shfl_xor_sync(0xffffffffu, best, offset);
    const int32_t other_index = __shfl_xor_sync(0xffffffffu, best_index, offset);
    if (other_index != kNoIndex && better(other, other_index, best, best_index))
      best = other, best_index = other_index;
  }
  __shared__ SliceMax warp_best[kSliceThreads / 32];
  if ((threadIdx.x & 31) == 0) warp_best[threadIdx.x >> 5] = {best, best_index};
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kSliceThreads / 32; ++w) {
      if (warp_best[w].index != kNoIndex &&
          better(warp_best[w].value, warp_best[w].index, best, best_index))
        best = warp_best[w].value, best_index = warp_best[w].index;
    }
    workspace.slice_max[row * slices + slice] = {best, best_index};
  }
}

// The row's largest penalized logit and its lowest index, from the slice maxima (slices in index
// order, so the first slice holding the maximum holds its lowest index).
__device__ SliceMax row_max(const Workspace& workspace, int64_t row, int64_t slices) {
  SliceMax best = workspace.slice_max[row * slices];
  for (int64_t slice = 1; slice < slices; ++slice) {
    const SliceMax other = workspace.slice_max[row * slices + slice];
    if (other.value > best.value) best = other;
  }
  return best;
}

// ---- 2. coarse histogram: count and mass per 11-bit key prefix ----

__global__ void __launch_bounds__(kSliceThreads)
    coarse_histogram_kernel(const float* logits, const SamplingRow* rows, int64_t vocab,
                            Workspace workspace) {
  const int64_t row = blockIdx.y, slice = blockIdx.x, slices = gridDim.x;
  const SamplingRow config = rows[row];
  if (is_greedy(config)) return;
  const int64_t begin = slice * kSliceSize, end = min(begin + kSliceSize, vocab);
  float values[kSlicePerThread];
  load_slice(logits + row * vocab, begin, end, values);
  // Every thread reads the slice maxima (the same few words): no barrier needed.
  const float max_score = score_of(row_max(workspace, row, slices).value, config.temperature);

  __shared__ uint32_t counts[kCoarseBins], low[kCoarseBins], high[kCoarseBins];
  for (int bin = threadIdx.x; bin < kCoarseBins; bin += kSliceThreads)
    counts[bin] = low[bin] = high[bin] = 0;
  __syncthreads();
#pragma unroll
  for (int k = 0; k < kSlicePerThread; ++k) {
    if (begin + threadIdx.x + k * kSliceThreads >= end) break;
    const float score = score_of(values[k], config.temperature);
    const int bin = int(coarse_bin(score));
    atomicAdd(&counts[bin], 1u);
    add_weight(low, high, bin, weight_of(score, max_score));
  }
  __syncthreads();
  for (int bin = threadIdx.x; bin < kCoarseBins; bin += kSliceThreads) {
    if (counts[bin] == 0) continue;
    atomicAdd(&workspace.bin_counts[row * kCoarseBins + bin], counts[bin]);
    const Wide weight = joined_weight(low[bin], high[bin]);
    if (weight != 0) atomicAdd(&workspace.bin_weights[row * kCoarseBins + bin], weight);
  }
}

// ---- 3. plan: which coarse bins hold the candidates ----

__global__ void __launch_bounds__(kPlanThreads)
    plan_kernel(const SamplingRow* rows, int64_t vocab, int64_t slices, Workspace workspace) {
  const int64_t row = blockIdx.x;
  const SamplingRow config = rows[row];
  RowPlan& plan = workspace.plans[row];
  __shared__ ScanScratch scratch;
  const SliceMax best = row_max(workspace, row, slices);
  if (threadIdx.x == 0) {
    plan.argmax = best.index;
    plan.candidate_count = 0;
  }
  if (is_greedy(config)) return;

  const uint32_t* counts = workspace.bin_counts + row * kCoarseBins;
  const Wide* weights = workspace.bin_weights + row * kCoarseBins;
  auto count_of = [&](int bin) { return Wide(counts[bin]); };
  auto weight_of_bin = [&](int bin) { return weights[bin]; };
  const float max_score = score_of(best.value, config.temperature);
  constexpr int kPerThread = kCoarseBins / kPlanThreads;
  Wide own = 0;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) own += weights[threadIdx.x * kPerThread + i];
  const Wide total_weight = block_sum<kPlanThreads>(own, scratch);

  const bool top_k = config.top_k > 0 && config.top_k < vocab;
  const bool top_p = config.top_p < 1.0f;
  const bool min_p = config.min_p > 0.0f;
  uint32_t low_bin = 0, high_bin = kCoarseBins - 1;
  Wide weight_above = 0, draw = 0;
  if (!top_k && !top_p && !min_p) {
    // No filter: the draw is known now; only its bin needs looking into.
    draw = draw_below(config, total_weight);
    const Crossing crossing =
        find_crossing<kPlanThreads, kCoarseBins>(weight_of_bin, draw + 1, 0, scratch);
    // Not found only when every logit is -inf: finish() then falls back to the argmax.
    low_bin = high_bin = uint32_t(max(crossing.bin, 0));
    weight_above = crossing.bin >= 0 ? crossing.before : 0;
  } else {
    // Every token that survives the filters lies in a bin >= low_bin. Top-k keeps bins from the
    // one holding the k-th token up. Top-p keeps a token only if the mass above it is below
    // top_p * Z (Z: the mass after top-k, at most the row's), so bins under the one where the
    // running mass reaches top_p * total are out; but with top-k on, finish() needs all of the
    // top-k set to compute Z. Min-p keeps scores >= max + log(min_p).
    uint32_t k_bin = 0, p_bin = 0, m_bin = 0;
    if (top_k) {
      k_bin = uint32_t(max(
          find_crossing<kPlanThreads, kCoarseBins>(count_of, Wide(config.top_k), 0, scratch).bin,
          0));
    }
    if (top_p) {
      const Wide target = max(__double2ull_ru(double(config.top_p) * double(total_weight)), 1ull);
      p_bin = uint32_t(
          max(find_crossing<kPlanThreads, kCoarseBins>(weight_of_bin, target, 0, scratch).bin, 0));
    }
    if (min_p) {
      const double threshold = double(max_score) + log(double(config.min_p));
      m_bin = coarse_bin(__double2float_rd(threshold));
    }
    low_bin = top_k && top_p ? k_bin : max(k_bin, max(p_bin, m_bin));
  }
  if (threadIdx.x == 0) {
    plan.max_score = max_score;
    plan.low_bin = low_bin;
    plan.high_bin = high_bin;
    plan.total_weight = total_weight;
    plan.weight_above = weight_above;
    plan.draw = draw;
  }
}

// ---- 4. gather the candidates' ids ----

__global__ void __launch_bounds__(kSliceThreads)
    gather_kernel(const float* logits, const SamplingRow* rows, int64_t vocab,
                  Workspace workspace) {
  const int64_t row = blockIdx.y, slice = blockIdx.x;
  const SamplingRow config = rows[row];
  if (is_greedy(config)) return;
  const int64_t begin = slice * kSliceSize, end = min(begin + kSliceSize, vocab);
  float values[kSlicePerThread];
  load_slice(logits + row * vocab, begin, end, values);
  RowPlan& plan = workspace.plans[row];
  const uint32_t low_bin = plan.low_bin, high_bin = plan.high_bin;
  uint32_t taken = 0;  // bit k: this thread's k-th logit is a candidate
#pragma unroll
  for (int k = 0; k < kSlicePerThread; ++k) {
    const uint32_t bin = coarse_bin(score_of(values[k], config.temperature));
    if (begin + threadIdx.x + k * kSliceThreads < end && bin >= low_bin && bin <= high_bin)
      taken |= 1u << k;
  }
  // One atomic per block on the row's counter; the threads write in turn after it.
  __shared__ ScanScratch scratch;
  __shared__ uint32_t block_first;
  Wide block_total;
  const uint32_t offset =
      uint32_t(block_exclusive_sum<kSliceThreads>(Wide(__popc(taken)), &block_total, scratch));
  if (block_total == 0) return;
  if (threadIdx.x == 0) block_first = atomicAdd(&plan.candidate_count, uint32_t(block_total));
  __syncthreads();
  int32_t* candidates = workspace.candidates + row * vocab + block_first + offset;
  for (int k = 0; taken != 0; ++k, taken >>= 1)
    if (taken & 1) *candidates++ = int32_t(begin + threadIdx.x + k * kSliceThreads);
}

// ---- 5. finish: filters and draw over the candidates ----

struct FinishShared {
  Wide keys[kCachedCandidates];  // the candidates' keys when they fit
  uint32_t counts[kDigitBins];
  uint32_t low[kDigitBins];
  uint32_t high[kDigitBins];
  Wide weights[kDigitBins];
  ScanScratch scan;
  uint32_t differing_low, differing_high;
  Wide found_key;
};

struct Candidates {
  const float* logits;  // the row's
  const int32_t* ids;
  const Wide* cached_keys;  // null when the keys did not fit in shared memory
  uint32_t count;
  float temperature;
  float max_score;

  __device__ Wide key(uint32_t j) const {
    if (cached_keys) return cached_keys[j];
    const int32_t index = ids[j];
    return rank_key(score_of(logits[index], temperature), index);
  }
};

// A subset of the candidates: key >= floor, score >= min_score, and the bits of `fixed_mask`
// equal to those of prefix.
struct Eligible {
  Wide floor;
  double min_score;
  Wide fixed_mask;
  Wide prefix;

  __device__ bool contains(Wide key) const {
    return key >= floor && double(score_of_key(key)) >= min_score &&
           (key & fixed_mask) == (prefix & fixed_mask);
  }
};

struct Selection {
  bool found;
  Wide key;
};

// Where the candidates' keys start to differ: the first digit window of select_candidate covers
// their highest differing bit, and the bits above it are common to all.
struct KeyRange {
  int start_shift;
  Wide common_mask;  // the bits above the first window
  Wide common_prefix;
};

__device__ KeyRange key_range(const Candidates& candidates, FinishShared& shared) {
  if (threadIdx.x == 0) shared.differing_low = shared.differing_high = 0;
  __syncthreads();
  const Wide first = candidates.key(0);
  Wide differing = 0;
  for (uint32_t j = threadIdx.x; j < candidates.count; j += kFinishThreads)
    differing |= candidates.key(j) ^ first;
  const uint32_t low = __reduce_or_sync(0xffffffffu, uint32_t(differing));
  const uint32_t high = __reduce_or_sync(0xffffffffu, uint32_t(differing >> 32));
  if ((threadIdx.x & 31) == 0) {
    atomicOr(&shared.differing_low, low);
    atomicOr(&shared.differing_high, high);
  }
  __syncthreads();
  differing = Wide(shared.differing_high) << 32 | shared.differing_low;
  const int highest_bit = differing == 0 ? 0 : 63 - __clzll(differing);
  KeyRange range;
  range.start_shift = max(highest_bit - (kDigitBits - 1), 0);
  range.common_mask =
      range.start_shift + kDigitBits >= 64 ? 0 : ~0ull << (range.start_shift + kDigitBits);
  range.common_prefix = first & range.common_mask;
  return range;
}

// Among the candidates with key >= floor and score >= min_score, in descending key order, the
// first at which the running weight (or count) reaches target: a radix select, 8 bits of the key
// per pass from the first bit where candidates differ, that stops as soon as the chosen digit
// holds one candidate. Not found when the candidates' total stays below the target.
__device__ Selection select_candidate(const Candidates& candidates, const KeyRange& range,
                                      bool by_weight, Wide target, Wide floor, double min_score,
                                      FinishShared& shared) {
  Eligible eligible{floor, min_score, range.common_mask, range.common_prefix};
  Wide above = 0;
  for (int shift = range.start_shift;; shift = max(shift - kDigitBits, 0)) {
    __syncthreads();  // the previous pass's bins may still be read
    for (int bin = threadIdx.x; bin < kDigitBins; bin += kFinishThreads) {
      shared.counts[bin] = shared.low[bin] = shared.high[bin] = 0;
      shared.weights[bin] = 0;
    }
    // Histogram of the digit at `shift`, its weights flushed to 64 bits every
    // kMaxAdditionsPerFlush candidates.
    for (uint32_t chunk = 0; chunk < candidates.count; chunk += kMaxAdditionsPerFlush) {
      __syncthreads();
      const uint32_t chunk_end = min(chunk + kMaxAdditionsPerFlush, candidates.count);
      for (uint32_t j = chunk + threadIdx.x; j < chunk_end; j += kFinishThreads) {
        const Wide key = candidates.key(j);
        if (!eligible.contains(key)) continue;
        const int digit = int(key >> shift) & (kDigitBins - 1);
        atomicAdd(&shared.counts[digit], 1u);
        if (by_weight)
          add_weight(shared.low, shared.high, digit,
                     weight_of(score_of_key(key), candidates.max_score));
      }
      __syncthreads();
      if (by_weight) {
        for (int bin = threadIdx.x; bin < kDigitBins; bin += kFinishThreads) {
          shared.weights[bin] += joined_weight(shared.low[bin], shared.high[bin]);
          shared.low[bin] = shared.high[bin] = 0;
        }
      }
    }
    __syncthreads();
    const Crossing crossing = find_crossing<kFinishThreads, kDigitBins>(
        [&](int bin) { return by_weight ? shared.weights[bin] : Wide(shared.counts[bin]); }, target,
        above, shared.scan);
    if (crossing.bin < 0) return {false, 0};
    above = crossing.before;
    eligible.prefix = (eligible.prefix & eligible.fixed_mask) | Wide(crossing.bin) << shift;
    eligible.fixed_mask = ~0ull << shift;
    if (shared.counts[crossing.bin] == 1 || shift == 0) break;
  }
  // One eligible candidate matches the prefix now (keys are unique); fetch it.
  for (uint32_t j = threadIdx.x; j < candidates.count; j += kFinishThreads) {
    const Wide key = candidates.key(j);
    if (eligible.contains(key)) shared.found_key = key;
  }
  __syncthreads();
  return {true, shared.found_key};
}

// Sum of the weights of the candidates with key >= floor and score >= min_score.
__device__ Wide kept_weight(const Candidates& candidates, Wide floor, double min_score,
                            FinishShared& shared) {
  const Eligible eligible{floor, min_score, 0, 0};
  Wide own = 0;
  for (uint32_t j = threadIdx.x; j < candidates.count; j += kFinishThreads) {
    const Wide key = candidates.key(j);
    if (eligible.contains(key)) own += weight_of(score_of_key(key), candidates.max_score);
  }
  return block_sum<kFinishThreads>(own, shared.scan);
}

__global__ void __launch_bounds__(kFinishThreads)
    finish_kernel(const float* logits, const SamplingRow* rows, int64_t vocab, int32_t* out_ids,
                  Workspace workspace) {
  const int64_t row = blockIdx.x;
  const SamplingRow config = rows[row];
  const RowPlan& plan = workspace.plans[row];
  const uint32_t count = plan.candidate_count;
  if (is_greedy(config) || count == 0) {  // no candidates only when no logit is finite
    if (threadIdx.x == 0) out_ids[row] = plan.argmax;
    return;
  }
  __shared__ FinishShared shared;
  Candidates candidates{
      logits + row * vocab, workspace.candidates + row * vocab, nullptr, count, config.temperature,
      plan.max_score};
  if (count <= kCachedCandidates) {
    for (uint32_t j = threadIdx.x; j < count; j += kFinishThreads)
      shared.keys[j] = candidates.key(j);
    candidates.cached_keys = shared.keys;
    __syncthreads();
  }
  const KeyRange range = key_range(candidates, shared);
  const bool top_k = config.top_k > 0 && config.top_k < vocab;
  const bool top_p = config.top_p < 1.0f;
  const bool min_p = config.min_p > 0.0f;
  Selection drawn{false, 0};
  if (!top_k && !top_p && !min_p) {
    // The candidates are the draw's bin; plan() counted the mass of the bins above it.
    drawn = select_candidate(candidates, range, true, plan.draw + 1 - plan.weight_above, 0,
                             -INFINITY, shared);
  } else {
    // The kept tokens are a prefix of the descending key order, cut by each filter in turn.
    Wide floor = 0;
    if (top_k) {
      // Ties with the k-th token stay: the floor is its score with the lowest possible index.
      const Selection kth =
          select_candidate(candidates, range, false, Wide(config.top_k), 0, -INFINITY, shared);
      if (kth.found) floor = kth.key >> 32 << 32;  // else the k-th token is below every candidate
    }
    if (top_p) {
      // Keep a token while the mass above it is below top_p * (mass after top-k): the last kept
      // one is where the running mass first reaches that target.
      const Wide mass =
          top_k ? kept_weight(candidates, floor, -INFINITY, shared) : plan.total_weight;
      const Wide target =
          min(max(__double2ull_ru(double(config.top_p) * double(mass)), 1ull), mass);
      const Selection last =
          select_candidate(candidates, range, true, target, floor, -INFINITY, shared);
      if (last.found) floor = max(floor, last.key);  // else min-p cut higher than top-p does
    }
    // min-p: p >= min_p * p_max, that is exp(score - max) >= min_p.
    const double min_score =
        min_p ? double(plan.max_score) + log(double(config.min_p)) : -double(INFINITY);
    const Wide mass = kept_weight(candidates, floor, min_score, shared);
    if (mass > 0) {
      drawn = select_candidate(candidates, range, true, draw_below(config, mass) + 1, floor,
                               min_score, shared);
    }
  }
  // Not found only when the row has no finite logit; the argmax is as good an answer as any.
  if (threadIdx.x == 0) out_ids[row] = drawn.found ? int32_t(uint32_t(drawn.key)) : plan.argmax;
}

}  // namespace

size_t sampling_workspace_bytes(int64_t rows, int64_t vocab_size) {
  size_t bytes = 0;
  carve(nullptr, rows, vocab_size, &bytes);
  return bytes;
}

void sample(const DeviceTensor& logits, const SamplingRow* rows, const int32_t* history,
            const int32_t* history_length, int64_t history_stride, int32_t* out_ids,
            void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  KITE_CHECK(logits.dtype == DType::kF32);
  const int64_t row_count = logits.rows(), vocab = logits.cols();
  if (row_count == 0) return;
  KITE_CHECK(vocab > 0 && vocab < kMaxVocab);
  KITE_CHECK(row_count <= 65535);  // grid.y
  size_t needed = 0;
  const Workspace parts = carve(workspace, row_count, vocab, &needed);
  KITE_CHECK(workspace != nullptr && workspace_bytes >= needed);
  auto* values = static_cast<float*>(logits.data);
  const int64_t slices = slice_count(vocab);
  const dim3 slice_grid{unsigned(slices), unsigned(row_count)};

  penalty_and_max_kernel<<<slice_grid, kSliceThreads, 0, stream>>>(
      values, rows, history, history_length, history_stride, vocab, parts);
  KITE_CUDA_CHECK_LAUNCH();
  coarse_histogram_kernel<<<slice_grid, kSliceThreads, 0, stream>>>(values, rows, vocab, parts);
  KITE_CUDA_CHECK_LAUNCH();
  plan_kernel<<<unsigned(row_count), kPlanThreads, 0, stream>>>(rows, vocab, slices, parts);
  KITE_CUDA_CHECK_LAUNCH();
  gather_kernel<<<slice_grid, kSliceThreads, 0, stream>>>(values, rows, vocab, parts);
  KITE_CUDA_CHECK_LAUNCH();
  finish_kernel<<<unsigned(row_count), kFinishThreads, 0, stream>>>(values, rows, vocab, out_ids,
                                                                    parts);
  KITE_CUDA_CHECK_LAUNCH();
}

}  // namespace kite::cuda
