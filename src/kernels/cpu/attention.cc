// Paged attention on the CPU. A task is (token, kv head): the query heads sharing the kv head go
// through its cache blocks together, so each cache row is read once per task. Scores q.K^T come
// from the dot-product tiles (a block's keys of one head are contiguous rows), the softmax runs in
// float32 over the whole visible context (kept, no online softmax: the softmax Hugging Face
// computes, up to float32 rounding), then out = P V.
#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/dot_tiles.h"
#include "kernels/cpu/float_types.h"
#include "kernels/cpu/threading.h"

namespace kite::cpu {
namespace {

// accumulators[h][:] += probabilities[h * stride + j] * values[j][:] for h < heads, j < count, in
// increasing j. values: `count` contiguous rows of head_dim elements.
template <typename Element>
using AccumulateFunction = void (*)(const float* probabilities, int64_t stride, int64_t heads,
                                    const typename Element::Storage* values, int64_t count,
                                    int64_t head_dim, float* accumulators);

template <typename Element>
void accumulate_values_scalar(const float* probabilities, int64_t stride, int64_t heads,
                              const typename Element::Storage* values, int64_t count,
                              int64_t head_dim, float* accumulators) {
  for (int64_t h = 0; h < heads; ++h) {
    float* sums = accumulators + h * head_dim;
    for (int64_t j = 0; j < count; ++j) {
      const float probability = probabilities[h * stride + j];
      const auto* row = values + j * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) sums[d] += probability * Element::load(row[d]);
    }
  }
}

#if KITE_HAS_AVX2_KERNELS
template <typename Element>
KITE_TARGET_AVX2 void accumulate_values_avx2(const float* probabilities, int64_t stride,
                                             int64_t heads, const typename Element::Storage* values,
                                             int64_t count, int64_t head_dim, float* accumulators) {
  constexpr int kVectors = 8;  // 64 elements of a head stay in registers while the rows go by
  for (int64_t h = 0; h < heads; ++h) {
    float* sums = accumulators + h * head_dim;
    const float* head_probabilities = probabilities + h * stride;
    int64_t d0 = 0;
    for (; d0 + kVectors * kLanes <= head_dim; d0 += kVectors * kLanes) {
      __m256 partial[kVectors];
      for (int c = 0; c < kVectors; ++c) partial[c] = _mm256_loadu_ps(sums + d0 + c * kLanes);
      for (int64_t j = 0; j < count; ++j) {
        const __m256 probability = _mm256_set1_ps(head_probabilities[j]);
        const auto* row = values + j * head_dim + d0;
        for (int c = 0; c < kVectors; ++c) {
          partial[c] = _mm256_fmadd_ps(probability, load8<Element>(row + c * kLanes), partial[c]);
        }
      }
      for (int c = 0; c < kVectors; ++c) _mm256_storeu_ps(sums + d0 + c * kLanes, partial[c]);
    }
    for (; d0 + kLanes <= head_dim; d0 += kLanes) {
      __m256 partial = _mm256_loadu_ps(sums + d0);
      for (int64_t j = 0; j < count; ++j) {
        partial = _mm256_fmadd_ps(_mm256_set1_ps(head_probabilities[j]),
                                  load8<Element>(values + j * head_dim + d0), partial);
      }
      _mm256_storeu_ps(sums + d0, partial);
    }
    for (; d0 < head_dim; ++d0) {
      float sum = sums[d0];
      for (int64_t j = 0; j < count; ++j) {
        sum = std::fma(head_probabilities[j], Element::load(values[j * head_dim + d0]), sum);
      }
      sums[d0] = sum;
    }
  }
}
#endif

// scores = softmax(scale * scores), in place: float32, maximum subtracted, e / sum(e).
void softmax_scalar(float* scores, int64_t count, float scale) {
  for (int64_t j = 0; j < count; ++j) scores[j] *= scale;
  const float maximum = *std::max_element(scores, scores + count);
  float sum = 0.0f;
  for (int64_t j = 0; j < count; ++j) {
    scores[j] = std::exp(scores[j] - maximum);
    sum += scores[j];
  }
  for (int64_t j = 0; j < count; ++j) scores[j] /= sum;
}

#if KITE_HAS_AVX2_KERNELS
// exp(x) for x <= 0 to about 1 ulp (the Cephes expf polynomial, as in PyTorch's vectorised
// softmax): x = n ln2 + r, |r| <= ln2 / 2, exp(r) by a degree-6 polynomial, 2^n by exponent bits.
// Below -87.3 the result is not flushed to zero but stays under 1.2e-38, which no sum notices.
KITE_TARGET_AVX2 inline __m256 exp_nonpositive(__m256 x) {
  // max_ps returns its second operand when either is NaN: a NaN score stays NaN.
  x = _mm256_max_ps(_mm256_set1_ps(-87.3365447505531f), x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i exponent =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(exponent));
}

KITE_TARGET_AVX2 void softmax_avx2(float* scores, int64_t count, float scale) {
  const __m256 scales = _mm256_set1_ps(scale);
  __m256 maxima = _mm256_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + kLanes <= count; j += kLanes) {
    const __m256 scaled = _mm256_mul_ps(_mm256_loadu_ps(scores + j), scales);
    _mm256_storeu_ps(scores + j, scaled);
    maxima = _mm256_max_ps(maxima, scaled);
  }
  float lanes[kLanes];
  _mm256_storeu_ps(lanes, maxima);
  float maximum = *std::max_element(lanes, lanes + kLanes);
  for (; j < count; ++j) maximum = std::max(maximum, scores[j] *= scale);

  const __m256 maxima_broadcast = _mm256_set1_ps(maximum);
  __m256 sums = _mm256_setzero_ps();
  for (j = 0; j + kLanes <= count; j += kLanes) {
    const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(scores + j), maxima_broadcast));
    _mm256_storeu_ps(scores + j, e);
    sums = _mm256_add_ps(sums, e);
  }
  float sum = horizontal_sum(sums);
  for (; j < count; ++j) sum += (scores[j] = std::exp(scores[j] - maximum));

  const __m256 sum_broadcast = _mm256_set1_ps(sum);
  for (j = 0; j + kLanes <= count; j += kLanes) {
    _mm256_storeu_ps(scores + j, _mm256_div_ps(_mm256_loadu_ps(scores + j), sum_broadcast));
  }
  for (; j < count; ++j) scores[j] /= sum;
}
#endif

template <typename Element>
AccumulateFunction<Element> accumulate_values(Isa isa) {
#if KITE_HAS_AVX2_KERNELS
  if (isa == Isa::kAvx2) return &accumulate_values_avx2<Element>;
#endif
  (void)isa;
  return &accumulate_values_scalar<Element>;
}

// Programming errors in the batch metadata would make attention read outside the cache: check it
// all once per call (cheap next to the attention itself).
void check_batch(const AttentionBatch& batch, const KvCacheView& cache) {
  KITE_CHECK(batch.num_sequences >= 0 && batch.num_tokens >= 0);
  if (batch.num_sequences == 0) {
    KITE_CHECK(batch.num_tokens == 0);
    return;
  }
  KITE_CHECK(batch.query_start[0] == 0);
  for (int64_t s = 0; s < batch.num_sequences; ++s) {
    const int64_t begin = batch.query_start[s];
    const int64_t end = batch.query_start[s + 1];
    const int64_t context = batch.context_length[s];
    KITE_CHECK(begin <= end && end - begin <= context);
    const int64_t blocks = (context + cache.block_size - 1) / cache.block_size;
    KITE_CHECK(blocks <= batch.max_blocks_per_sequence);
    for (int64_t i = 0; i < blocks; ++i) {
      const int32_t block = batch.block_table[s * batch.max_blocks_per_sequence + i];
      KITE_CHECK(block >= 0 && block < cache.num_blocks);
    }
    for (int64_t t = begin; t < end; ++t) {
      KITE_CHECK(batch.positions[t] >= 0 && batch.positions[t] < context);
    }
  }
  KITE_CHECK(batch.query_start[batch.num_sequences] == batch.num_tokens);
}

template <typename Element>
void attention_typed(const float* queries, const AttentionBatch& batch, const KvCacheView& cache,
                     int64_t layer, float scale, int64_t sliding_window, int64_t query_heads,
                     float* output, Isa isa) {
  using Storage = typename Element::Storage;
  const int64_t tokens = batch.num_tokens;
  const int64_t head_dim = cache.head_dim;
  const int64_t kv_heads = cache.num_kv_heads;
  const int64_t group = query_heads / kv_heads;
  const int64_t block_size = cache.block_size;
  const auto* cache_data = static_cast<const Storage*>(cache.data);
  const AccumulateFunction<Element> accumulate = accumulate_values<Element>(isa);
#if KITE_HAS_AVX2_KERNELS
  const auto softmax = isa == Isa::kAvx2 ? &softmax_avx2 : &softmax_scalar;
#else
  const auto softmax = &softmax_scalar;
#endif

  std::vector<int32_t> sequence_of_token(static_cast<size_t>(tokens));
  int64_t score_count = 0;  // an upper bound of the scores of the whole batch, to size the work
  for (int64_t s = 0; s < batch.num_sequences; ++s) {
    for (int64_t t = batch.query_start[s]; t < batch.query_start[s + 1]; ++t) {
      sequence_of_token[size_t(t)] = int32_t(s);
    }
    score_count += (batch.query_start[s + 1] - batch.query_start[s]) * batch.context_length[s];
  }
  // One task per (token, kv head), never split further: splitting the query heads of a group
  // would read the group's keys and values once per part, and decode attention is memory bound.
  const int64_t tasks = tokens * kv_heads;

#pragma omp parallel if (score_count * query_heads * head_dim >= kMinParallelWork)
  {
    std::vector<float> scores;        // [group, visible positions]
    std::vector<float> accumulators;  // [group, head_dim]
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t t = task / kv_heads;
      const int64_t kv_head = task % kv_heads;
      const int64_t first_head = kv_head * group;
      const int32_t* block_table =
          batch.block_table + sequence_of_token[size_t(t)] * batch.max_blocks_per_sequence;
      const int64_t position = batch.positions[t];
      const int64_t first =
          sliding_window > 0 ? std::max<int64_t>(0, position - sliding_window + 1) : 0;
      const int64_t visible = position - first + 1;
      const float* query = queries + (t * query_heads + first_head) * head_dim;

      // Calls visit(rows, count, index) for each run of positions [first, position] that is
      // contiguous in one cache block: `count` rows of head_dim, the first at visible index
      // `index`.
      auto for_each_block = [&](int64_t kv, auto&& visit) {
        for (int64_t j = first; j <= position;) {
          const int64_t in_block = j % block_size;
          const int64_t count = std::min(block_size - in_block, position + 1 - j);
          visit(
              cache_data + cache.offset(layer, block_table[j / block_size], kv, kv_head, in_block),
              count, j - first);
          j += count;
        }
      };

      scores.resize(size_t(group * visible));
      for_each_block(0, [&](const Storage* keys, int64_t count, int64_t index) {
        for (int64_t h0 = 0; h0 < group; h0 += kMaxTileTokens) {
          const int64_t tile_heads = std::min<int64_t>(kMaxTileTokens, group - h0);
          // Tile shapes that keep accumulators and operands in the 16 vector registers.
          const int64_t tile_keys = tile_heads == 1 ? 8 : tile_heads == 4 ? 3 : 4;
          for (int64_t r0 = 0; r0 < count; r0 += tile_keys) {
            const int64_t rows = std::min(tile_keys, count - r0);
            const DotTileArguments arguments{query + h0 * head_dim,
                                             head_dim,
                                             keys + r0 * head_dim,
                                             head_dim,
                                             head_dim,
                                             scores.data() + h0 * visible + index + r0,
                                             visible,
                                             nullptr};
            dot_tile<Element>(isa, tile_heads, rows)(arguments);
          }
        }
      });
      for (int64_t h = 0; h < group; ++h) {
        softmax(scores.data() + h * visible, visible, scale);
      }
      accumulators.assign(size_t(group * head_dim), 0.0f);
      for_each_block(1, [&](const Storage* values, int64_t count, int64_t index) {
        accumulate(scores.data() + index, visible, group, values, count, head_dim,
                   accumulators.data());
      });
      std::copy(accumulators.begin(), accumulators.end(),
                output + (t * query_heads + first_head) * head_dim);
    }
  }
}

}  // namespace

void attention(const DeviceTensor& q, const AttentionBatch& batch, const KvCacheView& cache,
               int64_t layer, float scale, int64_t sliding_window, DeviceTensor& out, Isa isa) {
  const int64_t head_dim = cache.head_dim;
  KITE_CHECK(q.dtype == DType::kF32 && out.dtype == DType::kF32);
  KITE_CHECK(is_cpu_cache_dtype(cache.dtype));
  KITE_CHECK(head_dim > 0 && cache.num_kv_heads > 0 && cache.block_size > 0);
  KITE_CHECK(layer >= 0 && layer < cache.num_layers);
  KITE_CHECK(q.rows() == batch.num_tokens && q.cols() % (cache.num_kv_heads * head_dim) == 0);
  KITE_CHECK(out.rows() == q.rows() && out.cols() == q.cols());
  KITE_CHECK(out.data != q.data || q.numel() == 0);
  check_batch(batch, cache);
  const int64_t query_heads = q.cols() / head_dim;
  dispatch_cache_dtype(cache.dtype, [&](auto element) {
    attention_typed<decltype(element)>(static_cast<const float*>(q.data), batch, cache, layer,
                                       scale, sliding_window, query_heads,
                                       static_cast<float*>(out.data), isa);
  });
}

}  // namespace kite::cpu
