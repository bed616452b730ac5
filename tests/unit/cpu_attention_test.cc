// Tests of RoPE + KV cache store and of paged attention on the CPU, against double-precision
// references written out plainly: several sequences per batch (prefill, chunked prefill, decode
// over long contexts), shuffled block tables, GQA ratios, block sizes, sliding windows, cache
// dtypes.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <numeric>

#include "cpu_test_util.h"
#include "kernels/cpu/dot_tiles.h"
#include "kernels/cpu/float_types.h"

namespace kite {
namespace {

using test::BackendTensor;

constexpr int64_t kLayers = 2;
constexpr int64_t kLayer = 1;  // layer 0 stays poisoned: reading it is a bug the tests catch

struct Sequence {
  int64_t context_length;  // after the step, new tokens included
  int64_t query_length;    // new tokens in this step
};

// The step metadata in backend memory, and its host copy for the references.
struct PagedBatch {
  std::vector<int32_t> positions, slot_mapping, query_start, context_length, block_table;
  std::vector<int64_t> sequence_of_token;
  int64_t max_blocks_per_sequence = 0;
  int64_t num_blocks = 0;
  BackendTensor positions_tensor, slots_tensor, query_start_tensor, context_tensor, table_tensor;
  AttentionBatch view;

  // Cache slot of position `position` of sequence s.
  int64_t slot(int64_t s, int64_t position, int64_t block_size) const {
    return int64_t(block_table[s * max_blocks_per_sequence + position / block_size]) * block_size +
           position % block_size;
  }
};

// Gives every sequence its blocks from a shuffled pool (with spare blocks nobody owns), so block
// tables are not contiguous and a wrong block lookup reads poison.
PagedBatch make_batch(Backend& backend, const std::vector<Sequence>& sequences, int64_t block_size,
                      uint32_t seed) {
  PagedBatch batch;
  int64_t needed = 0;
  for (const Sequence& sequence : sequences) {
    const int64_t blocks = (sequence.context_length + block_size - 1) / block_size;
    needed += blocks;
    batch.max_blocks_per_sequence = std::max(batch.max_blocks_per_sequence, blocks + 1);
  }
  batch.num_blocks = needed + 3;
  std::vector<int32_t> pool(size_t(batch.num_blocks));
  std::iota(pool.begin(), pool.end(), 0);
  std::mt19937 generator(seed);
  std::shuffle(pool.begin(), pool.end(), generator);
  batch.block_table.assign(sequences.size() * size_t(batch.max_blocks_per_sequence), -1);
  size_t next_block = 0;
  batch.query_start.push_back(0);
  for (size_t s = 0; s < sequences.size(); ++s) {
    const Sequence& sequence = sequences[s];
    const int64_t blocks = (sequence.context_length + block_size - 1) / block_size;
    for (int64_t i = 0; i < blocks; ++i) {
      batch.block_table[s * batch.max_blocks_per_sequence + i] = pool[next_block++];
    }
    batch.context_length.push_back(int32_t(sequence.context_length));
    for (int64_t i = 0; i < sequence.query_length; ++i) {
      const int64_t position = sequence.context_length - sequence.query_length + i;
      batch.positions.push_back(int32_t(position));
      batch.slot_mapping.push_back(int32_t(batch.slot(int64_t(s), position, block_size)));
      batch.sequence_of_token.push_back(int64_t(s));
    }
    batch.query_start.push_back(int32_t(batch.positions.size()));
  }
  batch.positions_tensor = test::int_tensor(backend, batch.positions);
  batch.slots_tensor = test::int_tensor(backend, batch.slot_mapping);
  batch.query_start_tensor = test::int_tensor(backend, batch.query_start);
  batch.context_tensor = test::int_tensor(backend, batch.context_length);
  batch.table_tensor = test::int_tensor(backend, batch.block_table);
  batch.view.num_tokens = int64_t(batch.positions.size());
  batch.view.num_sequences = int64_t(sequences.size());
  batch.view.max_blocks_per_sequence = batch.max_blocks_per_sequence;
  for (const Sequence& sequence : sequences) {
    batch.view.max_query_length = std::max(batch.view.max_query_length, sequence.query_length);
    batch.view.max_context_length =
        std::max(batch.view.max_context_length, sequence.context_length);
  }
  batch.view.positions = batch.positions_tensor.as<int32_t>();
  batch.view.slot_mapping = batch.slots_tensor.as<int32_t>();
  batch.view.query_start = batch.query_start_tensor.as<int32_t>();
  batch.view.context_length = batch.context_tensor.as<int32_t>();
  batch.view.block_table = batch.table_tensor.as<int32_t>();
  return batch;
}

struct PagedCache {
  BackendTensor storage;
  KvCacheView view;
};

PagedCache make_cache(Backend& backend, DType dtype, int64_t num_blocks, int64_t kv_heads,
                      int64_t block_size, int64_t head_dim) {
  PagedCache cache;
  cache.view.dtype = dtype;
  cache.view.num_layers = kLayers;
  cache.view.num_blocks = num_blocks;
  cache.view.num_kv_heads = kv_heads;
  cache.view.block_size = block_size;
  cache.view.head_dim = head_dim;
  cache.storage = test::make_tensor(backend, dtype, {kLayers * cache.view.layer_elements()});
  cache.view.data = cache.storage.tensor.data;
  test::poison(cache.storage.tensor);
  return cache;
}

// ---- attention ----

struct AttentionCase {
  int64_t head_dim;
  int64_t kv_heads;
  int64_t group;  // query heads per kv head
  int64_t block_size;
  int64_t sliding_window;
  DType cache_dtype;
  std::vector<Sequence> sequences;
};

std::string describe(const AttentionCase& c) {
  return "D=" + std::to_string(c.head_dim) + " Hkv=" + std::to_string(c.kv_heads) +
         " group=" + std::to_string(c.group) + " block=" + std::to_string(c.block_size) +
         " window=" + std::to_string(c.sliding_window) +
         " cache=" + std::string(dtype_name(c.cache_dtype));
}

// Runs attention over a cache filled with random keys/values (as stored in the cache dtype) and
// compares with softmax(scale q.K^T) V computed in double over each token's visible positions.
std::vector<float> check_attention(cpu::Isa isa, const AttentionCase& c, uint32_t seed) {
  CpuBackend backend(isa);
  PagedBatch batch = make_batch(backend, c.sequences, c.block_size, seed);
  PagedCache cache =
      make_cache(backend, c.cache_dtype, batch.num_blocks, c.kv_heads, c.block_size, c.head_dim);
  const int64_t D = c.head_dim;
  const int64_t query_heads = c.kv_heads * c.group;
  const int64_t tokens = batch.view.num_tokens;

  // Logical keys/values: [sequence][position][kv head][D], written to the cache at layer kLayer.
  std::vector<std::vector<float>> keys(c.sequences.size()), values(c.sequences.size());
  uint32_t fill_seed = seed * 7919;
  for (size_t s = 0; s < c.sequences.size(); ++s) {
    const int64_t context = c.sequences[s].context_length;
    keys[s] =
        test::round_all(c.cache_dtype, test::random_values(context * c.kv_heads * D, ++fill_seed));
    values[s] =
        test::round_all(c.cache_dtype, test::random_values(context * c.kv_heads * D, ++fill_seed));
    for (int64_t p = 0; p < context; ++p) {
      const int64_t slot = batch.slot(int64_t(s), p, c.block_size);
      for (int64_t h = 0; h < c.kv_heads; ++h) {
        for (int64_t kv = 0; kv < 2; ++kv) {
          const auto& source = kv == 0 ? keys[s] : values[s];
          const int64_t offset =
              cache.view.offset(kLayer, slot / c.block_size, kv, h, slot % c.block_size);
          for (int64_t d = 0; d < D; ++d) {
            store_float(c.cache_dtype, cache.storage.as<uint8_t>(), size_t(offset + d),
                        source[size_t((p * c.kv_heads + h) * D + d)]);
          }
        }
      }
    }
  }
  const auto q_values = test::random_values(tokens * query_heads * D, seed + 1, 2.0f);
  BackendTensor q = test::tensor_from(backend, DType::kF32, {tokens, query_heads * D}, q_values);
  BackendTensor out = test::make_tensor(backend, DType::kF32, {tokens, query_heads * D});
  test::poison(out.tensor);
  const float scale = 1.0f / std::sqrt(float(D));
  backend.attention(q.tensor, batch.view, cache.view, kLayer, scale, c.sliding_window, out.tensor);

  std::vector<double> expected(size_t(tokens * query_heads * D));
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t s = batch.sequence_of_token[t];
    const int64_t position = batch.positions[t];
    const int64_t first =
        c.sliding_window > 0 ? std::max<int64_t>(0, position - c.sliding_window + 1) : 0;
    for (int64_t h = 0; h < query_heads; ++h) {
      const int64_t kv_head = h / c.group;
      const float* query = q_values.data() + (t * query_heads + h) * D;
      std::vector<double> scores;
      for (int64_t j = first; j <= position; ++j) {
        double dot = 0.0;
        for (int64_t d = 0; d < D; ++d)
          dot += double(query[d]) * keys[s][(j * c.kv_heads + kv_head) * D + d];
        scores.push_back(dot * scale);
      }
      const double maximum = *std::max_element(scores.begin(), scores.end());
      double sum = 0.0;
      for (double& score : scores) sum += (score = std::exp(score - maximum));
      for (int64_t d = 0; d < D; ++d) {
        double weighted = 0.0;
        for (int64_t j = first; j <= position; ++j) {
          weighted += scores[j - first] / sum * values[s][(j * c.kv_heads + kv_head) * D + d];
        }
        expected[(t * query_heads + h) * D + d] = weighted;
      }
    }
  }
  const auto actual = test::load_floats(out.tensor);
  test::expect_close(actual, expected, 1e-5, "attention " + describe(c));
  return actual;
}

// Short prefill (inside one block), decode over several blocks, a chunked prefill, a one-token
// sequence, and a long decode (longer than the sliding windows tested).
const std::vector<Sequence> kMixedBatch = {{5, 5}, {70, 1}, {45, 13}, {1, 1}, {300, 1}};

class CpuAttention : public testing::TestWithParam<cpu::Isa> {};

TEST_P(CpuAttention, MatchesReferenceOverHeadsGroupsBlocksAndWindows) {
  uint32_t seed = 1;
  for (int64_t head_dim : {64, 128}) {
    for (int64_t group : {1, 3, 4, 8}) {
      for (int64_t block_size : {1, 16, 32}) {
        for (int64_t window : {0, 20}) {
          check_attention(GetParam(),
                          {head_dim, 2, group, block_size, window, DType::kF32, kMixedBatch},
                          seed++);
          if (HasFailure()) return;
        }
      }
    }
  }
}

TEST_P(CpuAttention, ReadsFloat16BFloat16AndFloat8Caches) {
  for (DType dtype : {DType::kF16, DType::kBF16, DType::kF8E4M3}) {
    check_attention(GetParam(), {64, 3, 3, 16, 0, dtype, kMixedBatch}, 11);
    check_attention(GetParam(), {128, 1, 4, 32, 40, dtype, kMixedBatch}, 12);
  }
}

TEST_P(CpuAttention, SingleLongPrefillAndSingleDecode) {
  check_attention(GetParam(), {64, 3, 3, 16, 0, DType::kF32, {{257, 257}}}, 21);
  check_attention(GetParam(), {64, 1, 8, 16, 0, DType::kF32, {{1000, 1}}}, 22);
  check_attention(GetParam(), {64, 1, 8, 32, 100, DType::kF32, {{1000, 1}}}, 23);
}

TEST_P(CpuAttention, SameBitsForAnyThreadCount) {
  const int saved_threads = omp_get_max_threads();
  std::vector<std::vector<float>> results;
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    results.push_back(check_attention(GetParam(), {64, 2, 3, 16, 0, DType::kF32, kMixedBatch}, 31));
  }
  omp_set_num_threads(saved_threads);
  EXPECT_TRUE(test::bitwise_equal(results[0], results[1]));
  EXPECT_TRUE(test::bitwise_equal(results[0], results[2]));
}

// A reference backend must not hide bad values: a NaN in one query head makes that head's output
// NaN (as in Hugging Face), and leaves every other head finite.
TEST_P(CpuAttention, NaNInAQueryReachesItsOutputOnly) {
  CpuBackend backend(GetParam());
  const int64_t D = 64, kv_heads = 2, group = 2, block_size = 16;
  const int64_t query_heads = kv_heads * group;
  // Token 1 sees 40 positions: a multiple of the vector width, so no scalar tail rescues a NaN.
  PagedBatch batch = make_batch(backend, {{41, 3}}, block_size, 3);
  PagedCache cache = make_cache(backend, DType::kF32, batch.num_blocks, kv_heads, block_size, D);
  auto* cache_data = cache.storage.as<float>();
  for (int64_t p = 0; p < 41; ++p) {
    const int64_t slot = batch.slot(0, p, block_size);
    for (int64_t h = 0; h < kv_heads; ++h) {
      for (int64_t kv = 0; kv < 2; ++kv) {
        float* row =
            cache_data + cache.view.offset(kLayer, slot / block_size, kv, h, slot % block_size);
        for (int64_t d = 0; d < D; ++d) row[d] = 0.01f * float((p + d) % 7);
      }
    }
  }
  auto q_values = test::random_values(3 * query_heads * D, 4);
  q_values[size_t((1 * query_heads + 2) * D + 5)] = std::numeric_limits<float>::quiet_NaN();
  BackendTensor q = test::tensor_from(backend, DType::kF32, {3, query_heads * D}, q_values);
  BackendTensor out = test::make_tensor(backend, DType::kF32, {3, query_heads * D});
  backend.attention(q.tensor, batch.view, cache.view, kLayer, 0.125f, 0, out.tensor);
  const auto actual = test::load_floats(out.tensor);
  for (int64_t t = 0; t < 3; ++t) {
    for (int64_t h = 0; h < query_heads; ++h) {
      for (int64_t d = 0; d < D; ++d) {
        const bool poisoned_head = t == 1 && h == 2;
        ASSERT_EQ(std::isnan(actual[size_t((t * query_heads + h) * D + d)]), poisoned_head)
            << "token " << t << " head " << h << " element " << d;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Isas, CpuAttention, testing::ValuesIn(test::test_isas()),
                         test::isa_test_name);

// ---- RoPE and KV cache store ----

std::vector<float> default_inv_freq(int64_t rotary_dim, float theta) {
  std::vector<float> inv_freq(size_t(rotary_dim / 2));
  for (int64_t i = 0; i < rotary_dim / 2; ++i) {
    inv_freq[size_t(i)] = 1.0f / std::pow(theta, float(2 * i) / float(rotary_dim));
  }
  return inv_freq;
}

// HF rotate_half RoPE in double, from the float32 angle position * inv_freq.
std::vector<double> reference_rope(const std::vector<float>& x, int64_t heads, int64_t head_dim,
                                   const std::vector<int32_t>& positions,
                                   const std::vector<float>& inv_freq, int64_t rotary_dim,
                                   double scaling) {
  std::vector<double> out(x.begin(), x.end());
  const int64_t half = rotary_dim / 2;
  for (size_t t = 0; t < positions.size(); ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t base = (int64_t(t) * heads + h) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const float angle = float(positions[t]) * inv_freq[size_t(i)];
        const double cos_value = std::cos(double(angle)) * scaling;
        const double sin_value = std::sin(double(angle)) * scaling;
        const double first = x[size_t(base + i)], second = x[size_t(base + i + half)];
        out[size_t(base + i)] = first * cos_value - second * sin_value;
        out[size_t(base + i + half)] = second * cos_value + first * sin_value;
      }
    }
  }
  return out;
}

struct RopeCase {
  int64_t head_dim;
  int64_t rotary_dim;
  int64_t kv_heads;
  int64_t group;
  int64_t block_size;
  float attention_scaling;
  DType cache_dtype;
};

// Each token's row of the fused QKV projection: its q, k and v rows side by side.
std::vector<float> fused_qkv(const std::vector<float>& q, const std::vector<float>& k,
                             const std::vector<float>& v, int64_t tokens) {
  const size_t q_width = q.size() / size_t(tokens), kv_width = k.size() / size_t(tokens);
  std::vector<float> qkv;
  for (size_t t = 0; t < size_t(tokens); ++t) {
    qkv.insert(qkv.end(), q.begin() + t * q_width, q.begin() + (t + 1) * q_width);
    qkv.insert(qkv.end(), k.begin() + t * kv_width, k.begin() + (t + 1) * kv_width);
    qkv.insert(qkv.end(), v.begin() + t * kv_width, v.begin() + (t + 1) * kv_width);
  }
  return qkv;
}

void check_rope_and_store(const RopeCase& c, uint32_t seed) {
  CpuBackend backend;
  const std::string what = "rope D=" + std::to_string(c.head_dim) +
                           " R=" + std::to_string(c.rotary_dim) +
                           " cache=" + std::string(dtype_name(c.cache_dtype));
  // A decode at a large position, a prefill chunk, and a padding token (slot -1).
  PagedBatch batch = make_batch(backend, {{1500, 1}, {40, 9}, {3, 1}}, c.block_size, seed);
  const int64_t padding_token = batch.view.num_tokens - 1;
  batch.slot_mapping[size_t(padding_token)] = -1;
  batch.slots_tensor.as<int32_t>()[padding_token] = -1;
  PagedCache cache =
      make_cache(backend, c.cache_dtype, batch.num_blocks, c.kv_heads, c.block_size, c.head_dim);
  const auto cache_before = test::random_values(size_t(cache.storage.tensor.numel()), seed + 1);
  test::store_floats(cache.storage.tensor, cache_before);
  const auto cache_stored_before = test::load_floats(cache.storage.tensor);

  const int64_t tokens = batch.view.num_tokens;
  const int64_t D = c.head_dim;
  const int64_t query_heads = c.kv_heads * c.group;
  const auto q_values = test::random_values(tokens * query_heads * D, seed + 2);
  const auto k_values = test::random_values(tokens * c.kv_heads * D, seed + 3);
  const auto v_values = test::random_values(tokens * c.kv_heads * D, seed + 4);
  const auto qkv_values = fused_qkv(q_values, k_values, v_values, tokens);
  BackendTensor qkv = test::tensor_from(backend, DType::kF32,
                                        {tokens, (query_heads + 2 * c.kv_heads) * D}, qkv_values);
  BackendTensor q = test::make_tensor(backend, DType::kF32, {tokens, query_heads * D});
  test::poison(q.tensor);
  const auto inv_freq = default_inv_freq(c.rotary_dim, 10000.0f);
  BackendTensor inv_freq_tensor =
      test::tensor_from(backend, DType::kF32, {int64_t(inv_freq.size())}, inv_freq);
  RopeParams rope{inv_freq_tensor.as<float>(), c.rotary_dim, c.attention_scaling};
  backend.rope_and_store_kv(qkv.tensor, rope, batch.view, cache.view, kLayer, q.tensor);

  test::expect_close(test::load_floats(q.tensor),
                     reference_rope(q_values, query_heads, D, batch.positions, inv_freq,
                                    c.rotary_dim, c.attention_scaling),
                     1e-5, what + " q");
  EXPECT_TRUE(test::bitwise_equal(test::load_floats(qkv.tensor), qkv_values))
      << "qkv must not change";

  // The cache: rotated k and v at each token's slot of layer kLayer, everything else untouched.
  const auto rotated_k = reference_rope(k_values, c.kv_heads, D, batch.positions, inv_freq,
                                        c.rotary_dim, c.attention_scaling);
  const auto cache_after = test::load_floats(cache.storage.tensor);
  std::vector<bool> written(cache_after.size(), false);
  std::vector<float> stored;
  std::vector<double> expected;
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t slot = batch.slot_mapping[size_t(t)];
    if (slot < 0) continue;
    for (int64_t h = 0; h < c.kv_heads; ++h) {
      for (int64_t kv = 0; kv < 2; ++kv) {
        const int64_t offset =
            cache.view.offset(kLayer, slot / c.block_size, kv, h, slot % c.block_size);
        for (int64_t d = 0; d < D; ++d) {
          const size_t source = size_t((t * c.kv_heads + h) * D + d);
          written[size_t(offset + d)] = true;
          stored.push_back(cache_after[size_t(offset + d)]);
          expected.push_back(kv == 0 ? rotated_k[source] : double(v_values[source]));
        }
      }
    }
  }
  // Rounding to the cache's dtype: half an ulp (2^-11, 2^-8, 2^-4 relative) and a margin.
  const double cache_tolerance = c.cache_dtype == DType::kF32    ? 1e-5
                                 : c.cache_dtype == DType::kF16  ? 1e-3
                                 : c.cache_dtype == DType::kBF16 ? 8e-3
                                                                 : 7e-2;
  test::expect_close(stored, expected, cache_tolerance, what + " cache");
  int64_t changed_elsewhere = 0;
  for (size_t i = 0; i < cache_after.size(); ++i) {
    if (!written[i] && std::memcmp(&cache_after[i], &cache_stored_before[i], sizeof(float)) != 0) {
      ++changed_elsewhere;
    }
  }
  EXPECT_EQ(changed_elsewhere, 0) << what << ": cache elements outside the token slots changed";
}

TEST(CpuRope, RotatesQueriesAndStoresKeysAndValues) {
  uint32_t seed = 100;
  for (int64_t head_dim : {64, 128}) {
    for (int64_t group : {1, 3, 4, 8}) {
      for (int64_t block_size : {1, 16, 32}) {
        check_rope_and_store({head_dim, head_dim, 2, group, block_size, 1.0f, DType::kF32}, seed++);
      }
    }
  }
}

TEST(CpuRope, ScalingPartialRotaryHalfPrecisionAndFloat8Caches) {
  check_rope_and_store({64, 64, 3, 3, 16, 1.25f, DType::kF32}, 200);
  check_rope_and_store({128, 64, 1, 4, 16, 1.0f, DType::kF32}, 201);
  check_rope_and_store({64, 64, 3, 3, 16, 1.0f, DType::kF16}, 202);
  check_rope_and_store({64, 64, 3, 3, 16, 1.0f, DType::kBF16}, 203);
  check_rope_and_store({64, 64, 3, 3, 16, 1.0f, DType::kF8E4M3}, 204);
}

// Prefill in chunks, then decode token by token, through rope_and_store_kv and attention: every
// token's output must equal one causal attention over the whole sequence.
TEST_P(CpuAttention, ChunkedPrefillThenDecodeEqualsFullCausalAttention) {
  CpuBackend backend(GetParam());
  const int64_t D = 64, kv_heads = 2, group = 3, block_size = 16, total = 40;
  const int64_t query_heads = kv_heads * group;
  const auto q_all = test::random_values(total * query_heads * D, 1);
  const auto k_all = test::random_values(total * kv_heads * D, 2);
  const auto v_all = test::random_values(total * kv_heads * D, 3);
  const auto inv_freq = default_inv_freq(D, 10000.0f);
  BackendTensor inv_freq_tensor =
      test::tensor_from(backend, DType::kF32, {int64_t(inv_freq.size())}, inv_freq);
  const RopeParams rope{inv_freq_tensor.as<float>(), D, 1.0f};
  // Blocks for the whole sequence, reused by every step.
  PagedBatch full = make_batch(backend, {{total, total}}, block_size, 5);
  PagedCache cache = make_cache(backend, DType::kF32, full.num_blocks, kv_heads, block_size, D);

  std::vector<float> outputs;
  int64_t done = 0;
  for (int64_t chunk : {11, 17, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}) {
    PagedBatch step = make_batch(backend, {{done + chunk, chunk}}, block_size, 5);
    std::copy(full.block_table.begin(), full.block_table.end(), step.table_tensor.as<int32_t>());
    step.block_table = full.block_table;
    for (int64_t i = 0; i < chunk; ++i) {
      step.slots_tensor.as<int32_t>()[i] = int32_t(full.slot(0, done + i, block_size));
    }
    step.view.max_blocks_per_sequence = full.max_blocks_per_sequence;
    auto slice = [&](const std::vector<float>& all, int64_t width) {
      return std::vector<float>(all.begin() + done * width, all.begin() + (done + chunk) * width);
    };
    BackendTensor qkv =
        test::tensor_from(backend, DType::kF32, {chunk, (query_heads + 2 * kv_heads) * D},
                          fused_qkv(slice(q_all, query_heads * D), slice(k_all, kv_heads * D),
                                    slice(v_all, kv_heads * D), chunk));
    BackendTensor q = test::make_tensor(backend, DType::kF32, {chunk, query_heads * D});
    BackendTensor out = test::make_tensor(backend, DType::kF32, {chunk, query_heads * D});
    test::poison(out.tensor);
    backend.rope_and_store_kv(qkv.tensor, rope, step.view, cache.view, kLayer, q.tensor);
    backend.attention(q.tensor, step.view, cache.view, kLayer, 0.125f, 0, out.tensor);
    const auto values = test::load_floats(out.tensor);
    outputs.insert(outputs.end(), values.begin(), values.end());
    done += chunk;
  }
  ASSERT_EQ(done, total);

  std::vector<int32_t> positions(static_cast<size_t>(total));
  std::iota(positions.begin(), positions.end(), 0);
  const auto q_rotated = reference_rope(q_all, query_heads, D, positions, inv_freq, D, 1.0);
  const auto k_rotated = reference_rope(k_all, kv_heads, D, positions, inv_freq, D, 1.0);
  std::vector<double> expected(outputs.size());
  for (int64_t t = 0; t < total; ++t) {
    for (int64_t h = 0; h < query_heads; ++h) {
      const int64_t kv_head = h / group;
      std::vector<double> weights;
      double maximum = -1e300, sum = 0.0;
      for (int64_t j = 0; j <= t; ++j) {
        double dot = 0.0;
        for (int64_t d = 0; d < D; ++d) {
          dot += q_rotated[(t * query_heads + h) * D + d] *
                 k_rotated[(j * kv_heads + kv_head) * D + d];
        }
        weights.push_back(dot * 0.125);
        maximum = std::max(maximum, weights.back());
      }
      for (double& weight : weights) sum += (weight = std::exp(weight - maximum));
      for (int64_t d = 0; d < D; ++d) {
        double value = 0.0;
        for (int64_t j = 0; j <= t; ++j)
          value += weights[j] / sum * v_all[(j * kv_heads + kv_head) * D + d];
        expected[(t * query_heads + h) * D + d] = value;
      }
    }
  }
  test::expect_close(outputs, expected, 1e-5, "chunked prefill + decode");
}

// float8 e4m3 (fp8 KV caches): the table holds torch's values of the 256 codes, store and load
// round-trip every finite code, and the AVX2 load (through float16) gives the table's bits.
#if KITE_HAS_AVX2_KERNELS
KITE_TARGET_AVX2 void load_float8_avx2(const uint8_t* bytes, float* out) {
  _mm256_storeu_ps(out, cpu::load8<cpu::Float8E4M3>(bytes));
}
#endif

TEST(CpuFloat8, LoadsAndStoresEveryCode) {
  EXPECT_EQ(cpu::Float8E4M3::load(0x38), 1.0f);
  EXPECT_EQ(cpu::Float8E4M3::load(0x7e), 448.0f);
  EXPECT_EQ(cpu::Float8E4M3::load(0x01), std::ldexp(1.0f, -9));  // the smallest subnormal
  EXPECT_TRUE(std::isnan(cpu::Float8E4M3::load(0x7f)));
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7f) == 0x7f) continue;  // NaN
    EXPECT_EQ(cpu::Float8E4M3::store(cpu::Float8E4M3::load(uint8_t(code))), code) << code;
  }
  EXPECT_EQ(cpu::Float8E4M3::store(1000.0f), 0x7e);  // saturates
#if KITE_HAS_AVX2_KERNELS
  if (cpu::detect_isa() != cpu::Isa::kAvx2) GTEST_SKIP() << "no AVX2 on this machine";
  for (int first = 0; first < 256; first += 8) {
    uint8_t bytes[8];
    float loaded[8];
    for (int i = 0; i < 8; ++i) bytes[i] = uint8_t(first + i);
    load_float8_avx2(bytes, loaded);
    for (int i = 0; i < 8; ++i) {
      const int code = first + i;
      if ((code & 0x7f) == 0x7f) {
        EXPECT_TRUE(std::isnan(loaded[i])) << code;
      } else {
        EXPECT_EQ(std::bit_cast<uint32_t>(loaded[i]),
                  std::bit_cast<uint32_t>(cpu::Float8E4M3::load(uint8_t(code))))
            << code;
      }
    }
  }
#endif
}

}  // namespace
}  // namespace kite
