// GPU sampling without sorting the vocabulary. Each token is ranked by a 64-bit key (its score's
// bits, then its index, so that descending key order is the host's order: higher score first,
// higher index first among ties), and every filter and the draw itself becomes "find the first
// token, in that order, at which a running count or probability mass reaches a target".
//
// Three kernels over [slices, R] blocks (a slice is kSliceSize logits of one row); the last block
// of a row through a kernel's first part runs the row's epilogue:
//  1. penalty_and_max     repetition, presence and frequency penalties in place; max and argmax
//                         of each slice
//  2. histogram_and_plan  count and mass of the row's tokens per 11-bit key prefix (coarse bin);
//                         epilogue: greedy rows write the argmax, the others choose the bins that
//                         can hold their answer
//  3. gather_and_finish   the keys of the tokens in those bins (candidates); epilogue: filters
//                         and draw over the candidates, sorted when few, else by radix selects
// A row with filters gathers every token that may survive them (k tokens for top-k, the nucleus
// for top-p); a row with none gathers only the bin that its draw falls into.
#include "kernels/cuda/sampling.h"

#include <cmath>
#include <cstdint>

#include "core/status.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.cuh"

namespace kite::cuda {
namespace {

using Wide = unsigned long long;  // the type CUDA's 64-bit atomics take

constexpr int kSliceSize = 4096;
constexpr int kThreads = 256;  // every kernel's block
constexpr int kSlicePerThread = kSliceSize / kThreads;
constexpr int kCoarseBits = 11;
constexpr int kCoarseBins = 1 << kCoarseBits;
constexpr int kDigitBits = 8;
constexpr int kDigitBins = 1 << kDigitBits;
// The finish sorts up to kSortedCandidates candidates' keys; up to kCachedCandidates it runs radix
// selects over them in shared memory, beyond that over global memory.
constexpr int kSortedCandidates = 1024;
constexpr int kCachedCandidates = 4096;
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

// What the plan decides for one row, and the counters of its blocks.
struct RowPlan {
  float max_score;   // the largest score (penalized logit / temperature)
  uint32_t low_bin;  // candidates: tokens whose coarse bin is in [low_bin, high_bin]
  uint32_t high_bin;
  uint32_t candidate_count;  // counted by gather_and_finish
  uint32_t histogram_done;   // blocks of the row through histogram_and_plan's first part
  uint32_t gather_done;      // ... and through gather_and_finish's
  Wide total_weight;         // mass of the whole row
  Wide weight_above;         // mass of the tokens in bins above high_bin
  Wide draw;                 // rows without filters: the draw, in [0, total_weight)
};

struct Workspace {
  SliceMax* slice_max;   // [R, slices]
  uint32_t* bin_counts;  // [R, kCoarseBins]
  Wide* bin_weights;     // [R, kCoarseBins]
  RowPlan* plans;        // [R]
  Wide* candidates;      // [R, V] keys
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
  workspace.candidates = reinterpret_cast<Wide*>(take(row_count * size_t(vocab) * 8));
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

// Adds one token (count 1, weight) to `bin` of a shared-memory histogram, when `use`.
__device__ __forceinline__ void add_to_histogram(bool use, int bin, Wide weight, uint32_t* counts,
                                                 uint32_t* low, uint32_t* high) {
  if (!use) return;
  atomicAdd(&counts[bin], 1u);
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

// This thread's logits of a slice, indices begin + threadIdx.x + k * kThreads, all loads in
// flight at once; -inf past the end.
__device__ __forceinline__ void load_slice(const float* row_logits, int64_t begin, int64_t end,
                                           float (&values)[kSlicePerThread]) {
#pragma unroll
  for (int k = 0; k < kSlicePerThread; ++k) {
    const int64_t i = begin + threadIdx.x + k * kThreads;
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

__device__ Wide block_sum(Wide value, ScanScratch& scratch) {
  Wide total;
  block_exclusive_sum(value, &total, scratch);
  return total;
}

struct Crossing {
  int bin;      // -1 when above + the sum of all bins stays below the target
  Wide before;  // above + the sum of the bins above `bin`
};

// Walking the bins from the highest down, the first bin at which above + the running sum of
// bin_value(bin) reaches target (>= 1).
template <int kBins, typename BinValue>
__device__ Crossing find_crossing(BinValue bin_value, Wide target, Wide above,
                                  ScanScratch& scratch) {
  constexpr int kPerThread = (kBins + kThreads - 1) / kThreads;
  const int top = kBins - 1 - int(threadIdx.x) * kPerThread;  // this thread's highest bin
  Wide own = 0;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i)
    if (top - i >= 0) own += bin_value(top - i);
  Wide total;
  const Wide before_own = above + block_exclusive_sum(own, &total, scratch);
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

// The best (largest value, then lowest index) of the threads' candidates; every thread gets it.
__device__ SliceMax block_best(float best, int32_t best_index) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float other = __shfl_xor_sync(0xffffffffu, best, offset);
    const int32_t other_index = __shfl_xor_sync(0xffffffffu, best_index, offset);
    if (other_index != kNoIndex && better(other, other_index, best, best_index))
      best = other, best_index = other_index;
  }
  __shared__ SliceMax warp_best[kThreads / 32];
  __syncthreads();  // a previous call may still be reading
  if ((threadIdx.x & 31) == 0) warp_best[threadIdx.x >> 5] = {best, best_index};
  __syncthreads();
  for (int w = 0; w < kThreads / 32; ++w) {
    if (warp_best[w].index != kNoIndex &&
        better(warp_best[w].value, warp_best[w].index, best, best_index))
      best = warp_best[w].value, best_index = warp_best[w].index;
  }
  return {best, best_index};
}

// True in the last block of the row to arrive; that block then sees the global-memory writes of
// every block of the row before theirs (fences on both sides of the count).
__device__ bool last_block_of_row(uint32_t* done, uint32_t blocks) {
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(done, 1u) == blocks - 1;
    __threadfence();
  }
  __syncthreads();
  return last;
}

// The row's largest penalized logit and its lowest index, from the slice maxima; every thread of
// the block gets it.
__device__ SliceMax row_max(const Workspace& workspace, int64_t row, int64_t slices) {
  float best = -INFINITY;
  int32_t best_index = kNoIndex;
  for (int64_t slice = threadIdx.x; slice < slices; slice += kThreads) {
    const SliceMax other = workspace.slice_max[row * slices + slice];
    if (better(other.value, other.index, best, best_index))
      best = other.value, best_index = other.index;
  }
  return block_best(best, best_index);
}

// ---- 1. repetition penalty and slice maxima ----

__global__ void __launch_bounds__(kThreads)
    penalty_and_max_kernel(float* logits, const SamplingRow* rows, const int32_t* history,
                           const int32_t* history_length, int64_t history_stride, int64_t vocab,
                           Workspace workspace) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t row = blockIdx.y, slice = blockIdx.x, slices = gridDim.x;
  const SamplingRow config = rows[row];
  float* row_logits = logits + row * vocab;
  const int64_t begin = slice * kSliceSize, end = min(begin + kSliceSize, vocab);

  // The next kernel fills the row's coarse histogram and counts its blocks; clear both here.
  for (int64_t bin = slice * kThreads + threadIdx.x; bin < kCoarseBins; bin += slices * kThreads) {
    workspace.bin_counts[row * kCoarseBins + bin] = 0;
    workspace.bin_weights[row * kCoarseBins + bin] = 0;
  }
  if (slice == 0 && threadIdx.x == 0) workspace.plans[row].histogram_done = 0;

  const float penalty = config.repetition_penalty;
  if (penalty != 1.0f && history_length != nullptr) {
    // Each distinct token once, as the host does: the first thread to mark a token applies it.
    __shared__ uint32_t seen[kSliceSize / 32];
    for (int word = threadIdx.x; word < kSliceSize / 32; word += kThreads) seen[word] = 0;
    __syncthreads();
    const int32_t* tokens = history + row * history_stride;
    const int64_t length = history_length[row];
    for (int64_t i = threadIdx.x; i < length; i += kThreads) {
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
  // OpenAI's presence and frequency penalties over the output (history from output_start): each
  // token of the slice loses count * frequency + presence, rounded as the host rounds it.
  const float presence = config.presence_penalty, frequency = config.frequency_penalty;
  if ((presence != 0.0f || frequency != 0.0f) && history_length != nullptr) {
    __shared__ uint32_t counts[kSliceSize];
    for (int i = threadIdx.x; i < kSliceSize; i += kThreads) counts[i] = 0;
    __syncthreads();
    const int32_t* tokens = history + row * history_stride;
    const int64_t length = history_length[row];
    for (int64_t i = config.output_start + threadIdx.x; i < length; i += kThreads) {
      const int32_t token = tokens[i];
      if (token >= begin && token < end) atomicAdd(&counts[token - begin], 1u);
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < end - begin; i += kThreads) {
      const uint32_t count = counts[i];
      if (count == 0) continue;
      const float penalty = __fadd_rn(__fmul_rn(float(count), frequency), presence);
      row_logits[begin + i] = __fsub_rn(row_logits[begin + i], penalty);
    }
    __syncthreads();  // the penalized logits are read below
  }

  float values[kSlicePerThread];
  load_slice(row_logits, begin, end, values);
  float best = -INFINITY;
  int32_t best_index = kNoIndex;
#pragma unroll
  for (int k = 0; k < kSlicePerThread; ++k) {  // in index order: ties keep the lowest index
    const int64_t i = begin + threadIdx.x + k * kThreads;
    if (i < end && better(values[k], int32_t(i), best, best_index))
      best = values[k], best_index = int32_t(i);
  }
  const SliceMax slice_best = block_best(best, best_index);
  if (threadIdx.x == 0) workspace.slice_max[row * slices + slice] = slice_best;
}

// ---- 2. coarse histogram, then the plan: which coarse bins hold the candidates ----

// Run by the row's last block once the row's histogram is complete; counts and weights are
// shared memory for the row's histogram.
__device__ void plan_row(const SamplingRow& config, int64_t vocab, float max_score,
                         const Workspace& workspace, int64_t row, uint32_t* counts, Wide* weights,
                         ScanScratch& scratch) {
  RowPlan& plan = workspace.plans[row];
  for (int bin = threadIdx.x; bin < kCoarseBins; bin += kThreads) {
    // Written by other blocks' atomics: read from L2.
    counts[bin] = __ldcg(&workspace.bin_counts[row * kCoarseBins + bin]);
    weights[bin] = __ldcg(&workspace.bin_weights[row * kCoarseBins + bin]);
  }
  __syncthreads();
  auto count_of = [&](int bin) { return Wide(counts[bin]); };
  auto weight_of_bin = [&](int bin) { return weights[bin]; };
  constexpr int kPerThread = kCoarseBins / kThreads;
  Wide own = 0;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) own += weight_of_bin(threadIdx.x * kPerThread + i);
  const Wide total_weight = block_sum(own, scratch);

  const bool top_k = config.top_k > 0 && config.top_k < vocab;
  const bool top_p = config.top_p < 1.0f;
  const bool min_p = config.min_p > 0.0f;
  uint32_t low_bin = 0, high_bin = kCoarseBins - 1;
  Wide weight_above = 0, draw = 0;
  if (!top_k && !top_p && !min_p) {
    // No filter: the draw is known now; only its bin needs looking into.
    draw = draw_below(config, total_weight);
    const Crossing crossing = find_crossing<kCoarseBins>(weight_of_bin, draw + 1, 0, scratch);
    // Not found only when every logit is -inf: the finish then falls back to the argmax.
    low_bin = high_bin = uint32_t(max(crossing.bin, 0));
    weight_above = crossing.bin >= 0 ? crossing.before : 0;
  } else {
    // Every token that survives the filters lies in a bin >= low_bin. Top-k keeps bins from the
    // one holding the k-th token up. Top-p keeps a token only if the mass above it is below
    // top_p * Z (Z: the mass after top-k, at most the row's), so bins under the one where the
    // running mass reaches top_p * total are out; but with top-k on, the finish needs all of the
    // top-k set to compute Z. Min-p keeps scores >= max + log(min_p).
    uint32_t k_bin = 0, p_bin = 0, m_bin = 0;
    if (top_k) {
      const Crossing crossing =
          find_crossing<kCoarseBins>(count_of, Wide(config.top_k), 0, scratch);
      k_bin = uint32_t(max(crossing.bin, 0));
    }
    if (top_p) {
      const Wide target = max(__double2ull_ru(double(config.top_p) * double(total_weight)), 1ull);
      const Crossing crossing = find_crossing<kCoarseBins>(weight_of_bin, target, 0, scratch);
      p_bin = uint32_t(max(crossing.bin, 0));
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
    plan.candidate_count = 0;  // the next kernel gathers and counts its blocks
    plan.gather_done = 0;
    plan.total_weight = total_weight;
    plan.weight_above = weight_above;
    plan.draw = draw;
  }
}

__global__ void __launch_bounds__(kThreads)
    histogram_and_plan_kernel(const float* logits, const SamplingRow* rows, int64_t vocab,
                              int32_t* out_ids, Workspace workspace) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t row = blockIdx.y, slice = blockIdx.x, slices = gridDim.x;
  const SamplingRow config = rows[row];
  const SliceMax best = row_max(workspace, row, slices);
  if (is_greedy(config)) {
    if (slice == 0 && threadIdx.x == 0) out_ids[row] = best.index;
    return;
  }
  const int64_t begin = slice * kSliceSize, end = min(begin + kSliceSize, vocab);
  float values[kSlicePerThread];
  load_slice(logits + row * vocab, begin, end, values);
  const float max_score = score_of(best.value, config.temperature);

  // The slice's histogram; the row's in the epilogue, where 64-bit weights replace the halves.
  __shared__ uint32_t counts[kCoarseBins];
  __shared__ Wide halves[kCoarseBins];
  __shared__ ScanScratch scratch;
  uint32_t* low = reinterpret_cast<uint32_t*>(halves);
  uint32_t* high = low + kCoarseBins;
  for (int bin = threadIdx.x; bin < kCoarseBins; bin += kThreads)
    counts[bin] = low[bin] = high[bin] = 0;
  __syncthreads();
#pragma unroll
  for (int k = 0; k < kSlicePerThread; ++k) {
    const float score = score_of(values[k], config.temperature);
    add_to_histogram(begin + threadIdx.x + k * kThreads < end, int(coarse_bin(score)),
                     weight_of(score, max_score), counts, low, high);
  }
  __syncthreads();
  for (int bin = threadIdx.x; bin < kCoarseBins; bin += kThreads) {
    if (counts[bin] == 0) continue;
    atomicAdd(&workspace.bin_counts[row * kCoarseBins + bin], counts[bin]);
    const Wide weight = joined_weight(low[bin], high[bin]);
    if (weight != 0) atomicAdd(&workspace.bin_weights[row * kCoarseBins + bin], weight);
  }
  if (last_block_of_row(&workspace.plans[row].histogram_done, uint32_t(slices)))
    plan_row(config, vocab, max_score, workspace, row, counts, halves, scratch);
}

// ---- 3. gather the candidates, then the finish: filters and draw over them ----

struct FinishShared {
  Wide keys[kCachedCandidates];  // the candidates' keys when they fit
  uint32_t counts[kDigitBins];
  uint32_t low[kDigitBins];
  uint32_t high[kDigitBins];
  Wide weights[kDigitBins];
  ScanScratch scan;
  uint32_t differing_low, differing_high;
  uint32_t first_candidate;
  Wide found_key;
};

// The candidates' keys, in gathering order.
struct Candidates {
  const Wide* keys;  // global memory (the row's gathered keys) or a copy in shared memory
  bool in_shared_memory;
  uint32_t count;
  float max_score;

  __device__ Wide key(uint32_t j) const {
    return in_shared_memory ? keys[j] : __ldcg(&keys[j]);  // gathered by other blocks: from L2
  }

  // Calls f(valid, key) for this thread's share of candidates [begin, end), loading 16 keys at a
  // time; every thread of the block makes the same number of calls, valid or not.
  template <typename Function>
  __device__ void for_each(uint32_t begin, uint32_t end, Function&& f) const {
    constexpr int kBatch = 16;
    for (uint32_t first = begin; first < end; first += kBatch * kThreads) {
      Wide batch[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const uint32_t j = first + b * kThreads + threadIdx.x;
        batch[b] = j < end ? key(j) : 0;
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) f(first + b * kThreads + threadIdx.x < end, batch[b]);
    }
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
  candidates.for_each(0, candidates.count, [&](bool valid, Wide key) {
    if (valid) differing |= key ^ first;
  });
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
    for (int bin = threadIdx.x; bin < kDigitBins; bin += kThreads) {
      shared.counts[bin] = shared.low[bin] = shared.high[bin] = 0;
      shared.weights[bin] = 0;
    }
    // Histogram of the digit at `shift`, its weights flushed to 64 bits every
    // kMaxAdditionsPerFlush candidates.
    for (uint32_t chunk = 0; chunk < candidates.count; chunk += kMaxAdditionsPerFlush) {
      __syncthreads();
      const uint32_t chunk_end = min(chunk + kMaxAdditionsPerFlush, candidates.count);
      candidates.for_each(chunk, chunk_end, [&](bool valid, Wide key) {
        add_to_histogram(valid && eligible.contains(key), int(key >> shift) & (kDigitBins - 1),
                         by_weight ? weight_of(score_of_key(key), candidates.max_score) : 0,
                         shared.counts, shared.low, shared.high);
      });
      __syncthreads();
      if (by_weight) {
        for (int bin = threadIdx.x; bin < kDigitBins; bin += kThreads) {
          shared.weights[bin] += joined_weight(shared.low[bin], shared.high[bin]);
          shared.low[bin] = shared.high[bin] = 0;
        }
      }
    }
    __syncthreads();
    const Crossing crossing = find_crossing<kDigitBins>(
        [&](int bin) { return by_weight ? shared.weights[bin] : Wide(shared.counts[bin]); }, target,
        above, shared.scan);
    if (crossing.bin < 0) return {false, 0};
    above = crossing.before;
    eligible.prefix = (eligible.prefix & eligible.fixed_mask) | Wide(crossing.bin) << shift;
    eligible.fixed_mask = ~0ull << shift;
    if (shared.counts[crossing.bin] == 1 || shift == 0) break;
  }
  // One eligible candidate matches the prefix now (keys are unique); fetch it.
  candidates.for_each(0, candidates.count, [&](bool valid, Wide key) {
    if (valid && eligible.contains(key)) shared.found_key = key;
  });
  __syncthreads();
  return {true, shared.found_key};
}

// Sum of the weights of the candidates with key >= floor and score >= min_score.
__device__ Wide kept_weight(const Candidates& candidates, Wide floor, double min_score,
                            FinishShared& shared) {
  const Eligible eligible{floor, min_score, 0, 0};
  Wide own = 0;
  candidates.for_each(0, candidates.count, [&](bool valid, Wide key) {
    if (valid && eligible.contains(key)) own += weight_of(score_of_key(key), candidates.max_score);
  });
  return block_sum(own, shared.scan);
}

// Which filters a row uses, and their parameters in the form the finish needs.
struct Filters {
  bool top_k, top_p, min_p;
  double min_score;  // min-p: p >= min_p * p_max, that is score >= max + log(min_p)

  __device__ Filters(const SamplingRow& config, int64_t vocab, float max_score)
      : top_k(config.top_k > 0 && config.top_k < vocab),
        top_p(config.top_p < 1.0f),
        min_p(config.min_p > 0.0f),
        min_score(min_p ? double(max_score) + log(double(config.min_p)) : -double(INFINITY)) {}
  __device__ bool any() const { return top_k || top_p || min_p; }
};

// Top-p keeps a token while the mass above it is below top_p * mass: the last kept one is where
// the running mass first reaches this target.
__device__ Wide top_p_target(float top_p, Wide mass) {
  return min(max(__double2ull_ru(double(top_p) * double(mass)), 1ull), mass);
}

// The finish over more than kSortedCandidates candidates: radix selects over their keys. Returns
// the token, or -1 when the row has no finite logit.
__device__ int64_t finish_by_selection(const SamplingRow& config, const Filters& filters,
                                       const Candidates& candidates, const RowPlan& plan,
                                       FinishShared& shared) {
  const KeyRange range = key_range(candidates, shared);
  Selection drawn{false, 0};
  if (!filters.any()) {
    // The candidates are the draw's bin; the plan counted the mass of the bins above it.
    drawn = select_candidate(candidates, range, true, plan.draw + 1 - plan.weight_above, 0,
                             -INFINITY, shared);
  } else {
    // The kept tokens are a prefix of the descending key order, cut by each filter in turn.
    Wide floor = 0;
    if (filters.top_k) {
      // Ties with the k-th token stay: the floor is its score with the lowest possible index.
      const Selection kth =
          select_candidate(candidates, range, false, Wide(config.top_k), 0, -INFINITY, shared);
      if (kth.found) floor = kth.key >> 32 << 32;  // else the k-th token is below every candidate
    }
    if (filters.top_p) {
      const Wide mass =
          filters.top_k ? kept_weight(candidates, floor, -INFINITY, shared) : plan.total_weight;
      const Selection last = select_candidate(
          candidates, range, true, top_p_target(config.top_p, mass), floor, -INFINITY, shared);
      if (last.found) floor = max(floor, last.key);  // else min-p cut higher than top-p does
    }
    const Wide mass = kept_weight(candidates, floor, filters.min_score, shared);
    if (mass > 0) {
      drawn = select_candidate(candidates, range, true, draw_below(config, mass) + 1, floor,
                               filters.min_score, shared);
    }
  }
  return drawn.found ? int64_t(uint32_t(drawn.key)) : -1;
}

// ---- the finish over at most kSortedCandidates candidates: sort the keys, then scan ----

// Sorts keys[0, count) into descending order in shared memory: a bitonic sort over the next
// power of two, padded with 0 (below every key).
__device__ void sort_descending(Wide* keys, uint32_t count) {
  uint32_t size = 1;
  while (size < count) size <<= 1;
  for (uint32_t j = count + threadIdx.x; j < size; j += kThreads) keys[j] = 0;
  __syncthreads();
  for (uint32_t block = 2; block <= size; block <<= 1) {
    for (uint32_t stride = block / 2; stride > 0; stride >>= 1) {
      for (uint32_t i = threadIdx.x; i < size / 2; i += kThreads) {
        const uint32_t first = 2 * i - (i & (stride - 1)), second = first + stride;
        const bool descending = (first & block) == 0;
        const Wide a = keys[first], b = keys[second];
        if ((a < b) == descending) keys[first] = b, keys[second] = a;
      }
      __syncthreads();
    }
  }
}

// This thread's positions of [0, n): one contiguous run per thread, in thread order.
struct Run {
  uint32_t begin, end;
  __device__ explicit Run(uint32_t n) {
    const uint32_t per_thread = (n + kThreads - 1) / kThreads;
    begin = min(threadIdx.x * per_thread, n);
    end = min(begin + per_thread, n);
  }
};

// Over the sorted keys[0, n): the first position at which the running weight reaches target
// (>= 1), or -1.
__device__ int first_reaching(const Wide* keys, uint32_t n, float max_score, Wide target,
                              ScanScratch& scratch) {
  const Run run(n);
  Wide own = 0;
  for (uint32_t j = run.begin; j < run.end; ++j) own += weight_of(score_of_key(keys[j]), max_score);
  Wide total;
  const Wide before = block_exclusive_sum(own, &total, scratch);
  if (threadIdx.x == 0) scratch.bin = -1;
  __syncthreads();
  if (before < target && before + own >= target) {  // exactly one thread
    Wide running = before;
    for (uint32_t j = run.begin; j < run.end; ++j) {
      running += weight_of(score_of_key(keys[j]), max_score);
      if (running >= target) {
        scratch.bin = int(j);
        break;
      }
    }
  }
  __syncthreads();
  return scratch.bin;
}

__device__ Wide weight_sum(const Wide* keys, uint32_t n, float max_score, ScanScratch& scratch) {
  const Run run(n);
  Wide own = 0;
  for (uint32_t j = run.begin; j < run.end; ++j) own += weight_of(score_of_key(keys[j]), max_score);
  return block_sum(own, scratch);
}

// How many of the sorted keys[0, n) satisfy keep, which holds on a prefix.
template <typename Keep>
__device__ uint32_t kept_count(const Wide* keys, uint32_t n, Keep keep, ScanScratch& scratch) {
  Wide own = 0;
  for (uint32_t j = threadIdx.x; j < n; j += kThreads) own += keep(keys[j]) ? 1 : 0;
  return uint32_t(block_sum(own, scratch));
}

// Returns the token, or -1 when the row has no finite logit.
__device__ int64_t finish_sorted(const SamplingRow& config, const Filters& filters, Wide* keys,
                                 uint32_t count, const RowPlan& plan, ScanScratch& scratch) {
  sort_descending(keys, count);
  const float max_score = plan.max_score;
  uint32_t kept = count;  // the kept tokens are keys[0, kept)
  Wide target;
  if (!filters.any()) {
    // The candidates are the draw's bin; the plan counted the mass of the bins above it.
    target = plan.draw + 1 - plan.weight_above;
  } else {
    if (filters.top_k && uint32_t(config.top_k) <= count) {
      // Ties with the k-th token stay. (A k-th token below every candidate cuts nothing.)
      const Wide floor = keys[config.top_k - 1] >> 32 << 32;
      kept = kept_count(
          keys, kept, [&](Wide key) { return key >= floor; }, scratch);
    }
    if (filters.top_p) {
      const Wide mass =
          filters.top_k ? weight_sum(keys, kept, max_score, scratch) : plan.total_weight;
      const int last =
          first_reaching(keys, kept, max_score, top_p_target(config.top_p, mass), scratch);
      if (last >= 0) kept = uint32_t(last) + 1;  // else min-p cut higher than top-p does
    }
    if (filters.min_p) {
      kept = kept_count(
          keys, kept, [&](Wide key) { return double(score_of_key(key)) >= filters.min_score; },
          scratch);
    }
    const Wide mass = weight_sum(keys, kept, max_score, scratch);
    if (mass == 0) return -1;
    target = draw_below(config, mass) + 1;
  }
  const int drawn = first_reaching(keys, kept, max_score, target, scratch);
  return drawn >= 0 ? int64_t(uint32_t(keys[drawn])) : -1;
}

// Run by the row's last block once every candidate is gathered; returns the token.
__device__ int32_t finish_row(const SamplingRow& config, const Wide* keys, int64_t vocab,
                              const RowPlan& plan, int32_t argmax, FinishShared& shared) {
  const uint32_t count = __ldcg(&plan.candidate_count);  // counted by other blocks
  const Filters filters(config, vocab, plan.max_score);
  int64_t token = -1;  // none only when no logit is finite; the argmax is then as good as any
  if (count > kCachedCandidates) {
    token = finish_by_selection(config, filters, Candidates{keys, false, count, plan.max_score},
                                plan, shared);
  } else if (count > 0) {
    for (uint32_t j = threadIdx.x; j < count; j += kThreads) shared.keys[j] = __ldcg(&keys[j]);
    if (count <= kSortedCandidates) {
      token = finish_sorted(config, filters, shared.keys, count, plan, shared.scan);
    } else {
      __syncthreads();
      token = finish_by_selection(
          config, filters, Candidates{shared.keys, true, count, plan.max_score}, plan, shared);
    }
  }
  return token >= 0 ? int32_t(token) : argmax;
}

__global__ void __launch_bounds__(kThreads)
    gather_and_finish_kernel(const float* logits, const SamplingRow* rows, int64_t vocab,
                             int32_t* out_ids, Workspace workspace) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t row = blockIdx.y, slice = blockIdx.x, slices = gridDim.x;
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
    values[k] = score_of(values[k], config.temperature);
    const uint32_t bin = coarse_bin(values[k]);
    if (begin + threadIdx.x + k * kThreads < end && bin >= low_bin && bin <= high_bin)
      taken |= 1u << k;
  }
  // One atomic per block on the row's counter; then each thread writes its keys in turn.
  __shared__ FinishShared shared;
  Wide block_total;
  const uint32_t offset =
      uint32_t(block_exclusive_sum(Wide(__popc(taken)), &block_total, shared.scan));
  if (block_total != 0) {
    if (threadIdx.x == 0)
      shared.first_candidate = atomicAdd(&plan.candidate_count, uint32_t(block_total));
    __syncthreads();
    Wide* keys = workspace.candidates + row * vocab + shared.first_candidate + offset;
#pragma unroll
    for (int k = 0; k < kSlicePerThread; ++k)
      if (taken >> k & 1)
        *keys++ = rank_key(values[k], int32_t(begin + threadIdx.x + k * kThreads));
  }
  if (!last_block_of_row(&plan.gather_done, uint32_t(slices))) return;
  const int32_t argmax = row_max(workspace, row, slices).index;
  const int32_t token =
      finish_row(config, workspace.candidates + row * vocab, vocab, plan, argmax, shared);
  if (threadIdx.x == 0) out_ids[row] = token;
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
  const dim3 grid{unsigned(slice_count(vocab)), unsigned(row_count)};

  launch_kernel(penalty_and_max_kernel, grid, kThreads, 0, stream, values, rows, history,
                history_length, history_stride, vocab, parts);
  launch_kernel(histogram_and_plan_kernel, grid, kThreads, 0, stream, values, rows, vocab, out_ids,
                parts);
  launch_kernel(gather_and_finish_kernel, grid, kThreads, 0, stream, values, rows, vocab, out_ids,
                parts);
}

}  // namespace kite::cuda
