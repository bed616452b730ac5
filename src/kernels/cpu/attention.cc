// Paged attention on the CPU. One task is (token, kv head): the query heads that share the kv head
// go through its keys and values together, so each cache row is read once per task. Scores are
// kept for the whole visible context (no online softmax), which makes the result exactly the
// softmax Hugging Face computes, up to float32 rounding.
#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/float_types.h"
#include "kernels/cpu/threading.h"

#if KITE_HAS_AVX2_KERNELS
#include <immintrin.h>
#endif

namespace kite::cpu {
namespace {

float dot_scalar(const float* a, const float* b, int64_t size) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < size; ++i) sum += a[i] * b[i];
  return sum;
}

// y += alpha * x
void axpy_scalar(float alpha, const float* x, float* y, int64_t size) {
#pragma omp simd
  for (int64_t i = 0; i < size; ++i) y[i] += alpha * x[i];
}

#if KITE_HAS_AVX2_KERNELS
KITE_TARGET_AVX2 float dot_avx2(const float* a, const float* b, int64_t size) {
  // Two accumulators hide the latency of the dependent FMAs.
  __m256 even = _mm256_setzero_ps();
  __m256 odd = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= size; i += 16) {
    even = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), even);
    odd = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), odd);
  }
  if (i + 8 <= size) {
    even = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), even);
    i += 8;
  }
  const __m256 both = _mm256_add_ps(even, odd);
  const __m128 halves = _mm_add_ps(_mm256_castps256_ps128(both), _mm256_extractf128_ps(both, 1));
  const __m128 pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
  float sum = _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)));
  for (; i < size; ++i) sum = std::fma(a[i], b[i], sum);
  return sum;
}

KITE_TARGET_AVX2 void axpy_avx2(float alpha, const float* x, float* y, int64_t size) {
  const __m256 alphas = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= size; i += 8) {
    _mm256_storeu_ps(y + i,
                     _mm256_fmadd_ps(alphas, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  }
  for (; i < size; ++i) y[i] = std::fma(alpha, x[i], y[i]);
}
#endif

struct VectorKernels {
  float (*dot)(const float*, const float*, int64_t);
  void (*axpy)(float, const float*, float*, int64_t);
};

VectorKernels vector_kernels(Isa isa) {
#if KITE_HAS_AVX2_KERNELS
  if (isa == Isa::kAvx2) return {&dot_avx2, &axpy_avx2};
#endif
  (void)isa;
  return {&dot_scalar, &axpy_scalar};
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
  const int64_t tokens = batch.num_tokens;
  const int64_t head_dim = cache.head_dim;
  const int64_t kv_heads = cache.num_kv_heads;
  const int64_t group = query_heads / kv_heads;
  const int64_t block_size = cache.block_size;
  const auto* cache_data = static_cast<const typename Element::Storage*>(cache.data);
  const VectorKernels kernels = vector_kernels(isa);

  std::vector<int32_t> sequence_of_token(static_cast<size_t>(tokens));
  int64_t score_count = 0;  // an upper bound of the scores of the whole batch, to size the work
  for (int64_t s = 0; s < batch.num_sequences; ++s) {
    for (int64_t t = batch.query_start[s]; t < batch.query_start[s + 1]; ++t) {
      sequence_of_token[size_t(t)] = int32_t(s);
    }
    score_count += (batch.query_start[s + 1] - batch.query_start[s]) * batch.context_length[s];
  }

#pragma omp parallel if (score_count * query_heads * head_dim >= kMinParallelWork)
  {
    std::vector<float> scores;                                        // [group, visible keys]
    std::vector<float> accumulators;                                  // [group, head_dim]
    std::vector<float> converted_row(static_cast<size_t>(head_dim));  // a cache row as float32
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tokens * kv_heads; ++task) {
      const int64_t t = task / kv_heads;
      const int64_t kv_head = task % kv_heads;
      const int64_t sequence = sequence_of_token[size_t(t)];
      const int32_t* block_table = batch.block_table + sequence * batch.max_blocks_per_sequence;
      const int64_t position = batch.positions[t];
      const int64_t first =
          sliding_window > 0 ? std::max<int64_t>(0, position - sliding_window + 1) : 0;
      const int64_t visible = position - first + 1;
      const float* query = queries + (t * query_heads + kv_head * group) * head_dim;

      // Returns cache row (key 0 / value 1) of position j as float32.
      auto cache_row = [&](int64_t kv, int64_t j) -> const float* {
        const auto* row = cache_data + cache.offset(layer, block_table[j / block_size], kv, kv_head,
                                                    j % block_size);
        if constexpr (std::is_same_v<Element, Float32>) {
          return row;
        } else {
          for (int64_t i = 0; i < head_dim; ++i) converted_row[size_t(i)] = Element::load(row[i]);
          return converted_row.data();
        }
      };

      scores.resize(size_t(group * visible));
      for (int64_t j = first; j <= position; ++j) {
        const float* key = cache_row(0, j);
        for (int64_t h = 0; h < group; ++h) {
          scores[size_t(h * visible + j - first)] =
              kernels.dot(query + h * head_dim, key, head_dim) * scale;
        }
      }
      for (int64_t h = 0; h < group; ++h) {
        float* head_scores = scores.data() + h * visible;
        const float maximum = *std::max_element(head_scores, head_scores + visible);
        float sum = 0.0f;
        for (int64_t j = 0; j < visible; ++j) {
          head_scores[j] = std::exp(head_scores[j] - maximum);
          sum += head_scores[j];
        }
        for (int64_t j = 0; j < visible; ++j) head_scores[j] /= sum;
      }
      accumulators.assign(size_t(group * head_dim), 0.0f);
      for (int64_t j = first; j <= position; ++j) {
        const float* value = cache_row(1, j);
        for (int64_t h = 0; h < group; ++h) {
          kernels.axpy(scores[size_t(h * visible + j - first)], value,
                       accumulators.data() + h * head_dim, head_dim);
        }
      }
      std::copy(accumulators.begin(), accumulators.end(),
                output + (t * query_heads + kv_head * group) * head_dim);
    }
  }
}

}  // namespace

void attention(const DeviceTensor& q, const AttentionBatch& batch, const KvCacheView& cache,
               int64_t layer, float scale, int64_t sliding_window, DeviceTensor& out, Isa isa) {
  const int64_t head_dim = cache.head_dim;
  KITE_CHECK(q.dtype == DType::kF32 && out.dtype == DType::kF32);
  KITE_CHECK(is_cpu_float_dtype(cache.dtype));
  KITE_CHECK(head_dim > 0 && cache.num_kv_heads > 0 && cache.block_size > 0);
  KITE_CHECK(layer >= 0 && layer < cache.num_layers);
  KITE_CHECK(q.rows() == batch.num_tokens && q.cols() % (cache.num_kv_heads * head_dim) == 0);
  KITE_CHECK(out.rows() == q.rows() && out.cols() == q.cols());
  KITE_CHECK(out.data != q.data || q.numel() == 0);
  check_batch(batch, cache);
  const int64_t query_heads = q.cols() / head_dim;
  dispatch_float_dtype(cache.dtype, [&](auto element) {
    attention_typed<decltype(element)>(static_cast<const float*>(q.data), batch, cache, layer,
                                       scale, sliding_window, query_heads,
                                       static_cast<float*>(out.data), isa);
  });
}

}  // namespace kite::cpu
