// Tests of the CUDA attention kernels against their CPU twin (cpu::attention) on the same float16 /
// bfloat16 inputs: decode with and without split-KV, prefill, chunked prefill and mixed batches
// over shuffled block tables with NaN-poisoned spare blocks, GQA ratios, head dims, block sizes and
// sliding windows; and a CUDA graph of the decode path replayed while the contexts grow.
#include "kernels/cuda/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/cpu/attention.h"
#include "kernels/cuda/rope.h"

namespace kite {
namespace {

using test::GpuTensor;

constexpr int64_t kLayers = 2;
constexpr int64_t kLayer = 1;         // layer 0 stays poisoned: reading it is a bug the tests catch
constexpr int64_t kSpareBlocks = 3;   // blocks nobody owns, poisoned
constexpr uint16_t kPoison = 0xffff;  // NaN as float16 and as bfloat16

struct Sequence {
  int64_t context_length;  // after the step, new tokens included
  int64_t query_length;    // new tokens in this step
};

// The step metadata on the host; the CPU twin reads it directly.
struct HostBatch {
  std::vector<int32_t> positions, query_start, context_length, block_table;
  int64_t max_blocks_per_sequence = 0;
  int64_t num_blocks = 0;
  int64_t max_query_length = 0;
  int64_t max_context_length = 0;

  int64_t num_sequences() const { return int64_t(context_length.size()); }
  int64_t num_tokens() const { return int64_t(positions.size()); }
  int32_t block(int64_t sequence, int64_t position, int64_t block_size) const {
    return block_table[size_t(sequence * max_blocks_per_sequence + position / block_size)];
  }
  AttentionBatch view() const {
    AttentionBatch view;
    view.num_tokens = num_tokens();
    view.num_sequences = num_sequences();
    view.max_blocks_per_sequence = max_blocks_per_sequence;
    view.max_query_length = max_query_length;
    view.max_context_length = max_context_length;
    while (view.num_leading_decodes < view.num_sequences &&
           query_start[size_t(view.num_leading_decodes) + 1] -
                   query_start[size_t(view.num_leading_decodes)] ==
               1) {
      ++view.num_leading_decodes;
    }
    view.positions = positions.data();
    view.query_start = query_start.data();
    view.context_length = context_length.data();
    view.block_table = block_table.data();
    return view;
  }
};

// Gives every sequence its blocks from a shuffled pool, so block tables are not contiguous; table
// entries past a sequence's blocks name a spare block, so a read past the context reads NaN.
HostBatch make_batch(const std::vector<Sequence>& sequences, int64_t block_size, uint32_t seed,
                     int64_t max_blocks_per_sequence = 0) {
  HostBatch batch;
  int64_t needed = 0;
  batch.max_blocks_per_sequence = max_blocks_per_sequence;
  for (const Sequence& sequence : sequences) {
    const int64_t blocks = (sequence.context_length + block_size - 1) / block_size;
    needed += blocks;
    batch.max_blocks_per_sequence = std::max(batch.max_blocks_per_sequence, blocks + 1);
    batch.max_query_length = std::max(batch.max_query_length, sequence.query_length);
    batch.max_context_length = std::max(batch.max_context_length, sequence.context_length);
  }
  batch.num_blocks = needed + kSpareBlocks;
  std::vector<int32_t> pool(size_t(batch.num_blocks));
  std::iota(pool.begin(), pool.end(), 0);
  std::mt19937 generator(seed);
  std::shuffle(pool.begin(), pool.end(), generator);
  batch.block_table.assign(sequences.size() * size_t(batch.max_blocks_per_sequence),
                           pool[size_t(needed)]);
  size_t next_block = 0;
  batch.query_start.push_back(0);
  for (size_t s = 0; s < sequences.size(); ++s) {
    const Sequence& sequence = sequences[s];
    const int64_t blocks = (sequence.context_length + block_size - 1) / block_size;
    for (int64_t i = 0; i < blocks; ++i) {
      batch.block_table[s * size_t(batch.max_blocks_per_sequence) + size_t(i)] = pool[next_block++];
    }
    batch.context_length.push_back(int32_t(sequence.context_length));
    for (int64_t i = 0; i < sequence.query_length; ++i) {
      batch.positions.push_back(int32_t(sequence.context_length - sequence.query_length + i));
    }
    batch.query_start.push_back(int32_t(batch.positions.size()));
  }
  return batch;
}

// The same metadata in GPU memory.
struct DeviceBatch {
  GpuTensor positions, query_start, context_length, block_table;
  AttentionBatch view;

  explicit DeviceBatch(const HostBatch& host)
      : positions(test::int_to_gpu(host.positions)),
        query_start(test::int_to_gpu(host.query_start)),
        context_length(test::int_to_gpu(host.context_length)),
        block_table(test::int_to_gpu(host.block_table)),
        view(host.view()) {
    view.positions = positions.as<int32_t>();
    view.query_start = query_start.as<int32_t>();
    view.context_length = context_length.as<int32_t>();
    view.block_table = block_table.as<int32_t>();
  }
};

// The cache image on the host: keys and values of every sequence position at layer kLayer, NaN
// everywhere else (layer 0, spare blocks, block slots past a context). `absolute_bits` is the same
// image with |v| for every value: the CPU twin over it gives sum_j p_j |v_j|, the weight of the
// error that rounding P brings.
struct HostCache {
  KvCacheView view;  // data: null; each use points it at one of the images
  std::vector<uint16_t> bits;
  std::vector<uint16_t> absolute_bits;
  float max_abs_value = 0.0f;

  KvCacheView with_data(const std::vector<uint16_t>& image) const {
    KvCacheView result = view;
    result.data = const_cast<uint16_t*>(image.data());
    return result;
  }
};

uint16_t encode_element(DType dtype, float value) {
  return dtype == DType::kF16 ? float_to_fp16(value) : float_to_bf16(value);
}

float decode_element(DType dtype, uint16_t bits) {
  return dtype == DType::kF16 ? fp16_to_float(bits) : bf16_to_float(bits);
}

HostCache make_cache(DType dtype, const HostBatch& batch, int64_t kv_heads, int64_t block_size,
                     int64_t head_dim, uint32_t seed) {
  HostCache cache;
  cache.view.dtype = dtype;
  cache.view.num_layers = kLayers;
  cache.view.num_blocks = batch.num_blocks;
  cache.view.num_kv_heads = kv_heads;
  cache.view.block_size = block_size;
  cache.view.head_dim = head_dim;
  cache.bits.assign(size_t(kLayers * cache.view.layer_elements()), kPoison);
  std::mt19937 generator(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t s = 0; s < batch.num_sequences(); ++s) {
    for (int64_t position = 0; position < batch.context_length[size_t(s)]; ++position) {
      const int32_t block = batch.block(s, position, block_size);
      for (int64_t kv = 0; kv < 2; ++kv) {
        for (int64_t head = 0; head < kv_heads; ++head) {
          const int64_t offset = cache.view.offset(kLayer, block, kv, head, position % block_size);
          for (int64_t d = 0; d < head_dim; ++d) {
            const uint16_t bits = encode_element(dtype, normal(generator));
            cache.bits[size_t(offset + d)] = bits;
            if (kv == 1) {
              cache.max_abs_value =
                  std::max(cache.max_abs_value, std::fabs(decode_element(dtype, bits)));
            }
          }
        }
      }
    }
  }
  // |v|: clear the sign bit of every value element (NaN poison stays NaN).
  cache.absolute_bits = cache.bits;
  for (int64_t layer = 0; layer < kLayers; ++layer) {
    for (int64_t block = 0; block < batch.num_blocks; ++block) {
      const int64_t begin = cache.view.offset(layer, block, 1, 0, 0);
      const int64_t count = kv_heads * block_size * head_dim;
      for (int64_t i = begin; i < begin + count; ++i) cache.absolute_bits[size_t(i)] &= 0x7fff;
    }
  }
  return cache;
}

GpuTensor upload_cache(const HostCache& cache) {
  GpuTensor result(cache.view.dtype, {int64_t(cache.bits.size())});
  EXPECT_EQ(cudaMemcpy(result.tensor.data, cache.bits.data(), cache.bits.size() * 2,
                       cudaMemcpyHostToDevice),
            cudaSuccess);
  return result;
}

// Split-KV scratch for `tokens` query tokens: partial results and zeroed counters.
struct DeviceSplitWorkspace {
  GpuTensor partials, counters;
  cuda::SplitWorkspace view;

  DeviceSplitWorkspace(int64_t tokens, int64_t q_heads, int64_t head_dim, int splits)
      : partials(DType::kU8,
                 {int64_t(std::max<size_t>(
                     cuda::attention_workspace_bytes(tokens, q_heads, head_dim, splits), 1))}),
        counters(DType::kI32, {int64_t(cuda::split_counter_count(tokens, q_heads))}) {
    EXPECT_EQ(cudaMemset(counters.tensor.data, 0, counters.tensor.byte_size()), cudaSuccess);
    view = {partials.tensor.data, cuda::attention_workspace_bytes(tokens, q_heads, head_dim, splits),
            counters.as<int32_t>(), cuda::split_counter_count(tokens, q_heads)};
  }
};

// q [T, Hq*D] (already rounded to the dtype) through the CPU twin over `image`.
std::vector<float> cpu_attention(const std::vector<float>& q, int64_t q_heads,
                                 const HostBatch& batch, const HostCache& cache,
                                 const std::vector<uint16_t>& image, float scale,
                                 int64_t sliding_window) {
  const int64_t width = q_heads * cache.view.head_dim;
  DeviceTensor q_tensor{DType::kF32, {batch.num_tokens(), width}, const_cast<float*>(q.data())};
  std::vector<float> out(q.size());
  DeviceTensor out_tensor{DType::kF32, {batch.num_tokens(), width}, out.data()};
  cpu::attention(q_tensor, batch.view(), cache.with_data(image), kLayer, scale, sliding_window,
                 out_tensor, cpu::detect_isa());
  return out;
}

// Tolerance, per element, for outputs rounded to the dtype (unit roundoff u: 2^-8 for bfloat16,
// 2^-11 for float16):
//   u |out|                   the rounding of the output;
//   1.25 u sum_j p_j |v_j|    prefill kernel only: P is rounded to the dtype before P V on the
//                             tensor cores, a relative error of at most u per probability;
//   1e-4 max |V|              float32 arithmetic in another order.
// The decode kernel computes in float32 throughout, so only the first and last terms apply. A
// wrong mask or a wrong block moves an output by p_j |v_j - out| for a whole key, far above this.
void expect_match(const std::vector<float>& actual, const std::vector<float>& expected,
                  const std::vector<float>& expected_absolute, DType dtype, bool tensor_cores,
                  float max_abs_value, const std::string& what) {
  const double u = test::unit_roundoff(dtype);
  test::expect_within(
      actual, expected,
      [&](size_t i) {
        return u * std::fabs(expected[i]) + (tensor_cores ? 1.25 * u * expected_absolute[i] : 0.0) +
               1e-4 * max_abs_value;
      },
      what);
}

struct AttentionCase {
  DType dtype;
  int64_t head_dim;
  int64_t kv_heads;
  int64_t group;  // query heads per kv head
  int64_t block_size;
  int64_t sliding_window;
  int num_splits;
  std::vector<Sequence> sequences;
};

std::string describe(const AttentionCase& c) {
  std::string sequences;
  for (const Sequence& sequence : c.sequences) {
    sequences += " (" + std::to_string(sequence.context_length) + "," +
                 std::to_string(sequence.query_length) + ")";
  }
  return std::string(dtype_name(c.dtype)) + " D=" + std::to_string(c.head_dim) +
         " Hkv=" + std::to_string(c.kv_heads) + " group=" + std::to_string(c.group) +
         " block=" + std::to_string(c.block_size) + " window=" + std::to_string(c.sliding_window) +
         " splits=" + std::to_string(c.num_splits) + " sequences" + sequences;
}

// Runs cuda::attention on GPU copies of q, batch and cache; returns the output as floats.
std::vector<float> gpu_attention(const AttentionCase& c, const std::vector<float>& q,
                                 const HostBatch& batch, const HostCache& cache, float scale) {
  const int64_t q_heads = c.kv_heads * c.group;
  const int64_t tokens = batch.num_tokens();
  DeviceBatch device_batch(batch);
  GpuTensor device_cache = upload_cache(cache);
  KvCacheView view = cache.view;
  view.data = device_cache.tensor.data;
  GpuTensor q_tensor = test::to_gpu(c.dtype, {tokens, q_heads * c.head_dim}, q);
  GpuTensor out(c.dtype, {tokens, q_heads * c.head_dim});
  DeviceSplitWorkspace workspace(tokens, q_heads, c.head_dim, c.num_splits);
  cuda::attention(q_tensor.tensor, device_batch.view, view, kLayer, scale, c.sliding_window,
                  out.tensor, c.num_splits, workspace.view, nullptr);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  return test::to_host(out.tensor);
}

void check_attention(const AttentionCase& c, uint32_t seed) {
  const HostBatch batch = make_batch(c.sequences, c.block_size, seed);
  const HostCache cache =
      make_cache(c.dtype, batch, c.kv_heads, c.block_size, c.head_dim, seed * 7919u);
  const int64_t q_heads = c.kv_heads * c.group;
  // Queries of standard deviation 2 make the softmax peaked: single keys carry visible weight.
  const std::vector<float> q = test::random_values(
      size_t(batch.num_tokens() * q_heads * c.head_dim), seed + 1, 2.0f, c.dtype);
  const float scale = 1.0f / std::sqrt(float(c.head_dim));
  const auto expected =
      cpu_attention(q, q_heads, batch, cache, cache.bits, scale, c.sliding_window);
  const auto expected_absolute =
      cpu_attention(q, q_heads, batch, cache, cache.absolute_bits, scale, c.sliding_window);
  const auto actual = gpu_attention(c, q, batch, cache, scale);
  expect_match(actual, expected, expected_absolute, c.dtype, batch.max_query_length > 1,
               cache.max_abs_value, describe(c));
}

constexpr DType kDTypes[] = {DType::kBF16, DType::kF16};

// Decode tokens only: a one-token context, contexts inside one block, past one block and past the
// windows; 64 splits is more splits than most of these contexts have blocks (empty splits).
const std::vector<Sequence> kDecodeBatch = {{1, 1}, {37, 1}, {300, 1}, {65, 1}, {129, 1}, {700, 1}};

TEST(CudaAttention, DecodeMatchesCpuTwin) {
  KITE_REQUIRE_GPU();
  uint32_t seed = 1;
  for (DType dtype : kDTypes) {
    for (int64_t head_dim : {16, 64, 128}) {
      for (int64_t group : {1, 4, 8}) {
        for (int64_t block_size : {16, 32, 64}) {
          for (int64_t window : {0, 50}) {
            for (int splits : {1, 5, 64}) {
              check_attention({dtype, head_dim, 2, group, block_size, window, splits, kDecodeBatch},
                              seed++);
              if (HasFailure()) return;
            }
          }
        }
      }
    }
  }
}

// Whole prompts of odd lengths, one and several query tiles (128 rows; a sequence's first tile is
// the partial one), and a chunk of 61 tokens whose sequence already holds 139 in the cache.
const std::vector<Sequence> kPrefillBatch = {{77, 77}, {5, 5}, {130, 130}, {64, 64}, {200, 61}};

TEST(CudaAttention, PrefillMatchesCpuTwin) {
  KITE_REQUIRE_GPU();
  uint32_t seed = 1000;
  for (DType dtype : kDTypes) {
    for (int64_t head_dim : {16, 64, 128}) {
      for (int64_t group : {1, 4, 8}) {
        for (int64_t block_size : {16, 32, 64}) {
          for (int64_t window : {0, 50}) {
            check_attention({dtype, head_dim, 2, group, block_size, window, 1, kPrefillBatch},
                            seed++);
            if (HasFailure()) return;
          }
        }
      }
    }
  }
}

// Prefill, decode and chunked prefill in one step (through the prefill kernel), and a sequence
// with no token in this step.
const std::vector<Sequence> kMixedBatch = {{5, 5},   {70, 1},   {45, 13}, {1, 1},
                                           {300, 1}, {200, 70}, {50, 0},  {129, 65}};

TEST(CudaAttention, MixedPrefillAndDecodeMatchesCpuTwin) {
  KITE_REQUIRE_GPU();
  uint32_t seed = 2000;
  for (DType dtype : kDTypes) {
    for (int64_t head_dim : {16, 32, 64, 128}) {
      for (int64_t group : {1, 3, 8}) {
        for (int64_t window : {0, 20}) {
          check_attention({dtype, head_dim, 3, group, 32, window, 1, kMixedBatch}, seed++);
          if (HasFailure()) return;
        }
      }
    }
  }
}

// An in-flight batch: decodes first (the decode kernel, split or not), then prefills, chunks and
// a sequence with no token (the prefill kernel).
const std::vector<Sequence> kDecodesFirstBatch = {{70, 1},  {1, 1},    {300, 1}, {5, 5},
                                                  {45, 13}, {200, 70}, {50, 0},  {129, 65}};

TEST(CudaAttention, DecodesFirstThenPrefillsMatchCpuTwin) {
  KITE_REQUIRE_GPU();
  uint32_t seed = 2500;
  for (DType dtype : kDTypes) {
    for (int64_t head_dim : {64, 128}) {
      for (int64_t group : {1, 4, 8}) {
        for (int splits : {1, 5}) {
          check_attention({dtype, head_dim, 2, group, 16, 0, splits, kDecodesFirstBatch}, seed++);
          if (HasFailure()) return;
        }
      }
    }
  }
}

// Groups larger than the decode kernel's 4 register-resident heads take several CTAs per kv head
// (12 = 3 x 4, 32 = 8 x 4, 5 = 3 + 2); head dim 32, block sizes 8 and 128 on the decode path.
TEST(CudaAttention, LargeGroupsAndSmallBlocks) {
  KITE_REQUIRE_GPU();
  uint32_t seed = 3000;
  for (DType dtype : kDTypes) {
    for (int splits : {1, 3}) {
      check_attention({dtype, 64, 2, 12, 16, 0, splits, kDecodeBatch}, seed++);
      check_attention({dtype, 128, 1, 32, 32, 0, splits, kDecodeBatch}, seed++);
      check_attention({dtype, 32, 2, 2, 8, 30, splits, kDecodeBatch}, seed++);
      check_attention({dtype, 128, 2, 5, 128, 0, splits, {{1000, 1}, {3, 1}}}, seed++);
    }
    check_attention({dtype, 64, 1, 12, 16, 0, 1, kMixedBatch}, seed++);
    check_attention({dtype, 32, 2, 2, 8, 30, 1, kPrefillBatch}, seed++);
    check_attention({dtype, 128, 2, 4, 128, 0, 1, kPrefillBatch}, seed++);
    if (HasFailure()) return;
  }
}

// Llama-3-8B's attention shape (32 query heads, 8 kv heads, D 128): a 1024-token prompt, with and
// without a window, and a long chunk at the end of a 1500-token sequence.
TEST(CudaAttention, LongPrefillOfLlamaShape) {
  KITE_REQUIRE_GPU();
  check_attention({DType::kBF16, 128, 8, 4, 32, 0, 1, {{1024, 1024}}}, 4000);
  check_attention({DType::kBF16, 128, 8, 4, 32, 300, 1, {{1024, 1024}}}, 4001);
  check_attention({DType::kF16, 128, 8, 4, 32, 0, 1, {{1500, 500}, {700, 1}}}, 4002);
  check_attention({DType::kBF16, 128, 8, 4, 32, 0, 16, {{4000, 1}, {2500, 1}}}, 4003);
}

// Only positions inside each token's window are read: the blocks that lie wholly before every
// window are replaced by a NaN-poisoned spare block, as are the table entries past each context
// (every test has those) and layer 0. Any read of them would make outputs NaN.
TEST(CudaAttention, NeverReadsBlocksOutsideTheWindows) {
  KITE_REQUIRE_GPU();
  constexpr int64_t kBlockSize = 16, kWindow = 40;
  for (DType dtype : kDTypes) {
    for (const std::vector<Sequence>& sequences : std::vector<std::vector<Sequence>>{
             {{500, 1}, {260, 1}}, {{500, 61}, {260, 1}, {90, 90}}}) {
      for (int splits : {1, 4}) {
        const AttentionCase c{dtype, 64, 2, 4, kBlockSize, kWindow, splits, sequences};
        HostBatch batch = make_batch(c.sequences, kBlockSize, 77);
        const HostCache cache = make_cache(dtype, batch, c.kv_heads, kBlockSize, c.head_dim, 78);
        const int32_t poisoned_block = batch.block_table.back();  // a spare block
        for (int64_t s = 0; s < batch.num_sequences(); ++s) {
          const int64_t first_position = batch.positions[size_t(batch.query_start[size_t(s)])];
          const int64_t first_visible = std::max<int64_t>(0, first_position - kWindow + 1);
          for (int64_t i = 0; i < first_visible / kBlockSize; ++i) {
            batch.block_table[size_t(s * batch.max_blocks_per_sequence + i)] = poisoned_block;
          }
        }
        const int64_t q_heads = c.kv_heads * c.group;
        const auto q =
            test::random_values(size_t(batch.num_tokens() * q_heads * c.head_dim), 79, 2.0f, dtype);
        const float scale = 0.125f;
        const auto expected = cpu_attention(q, q_heads, batch, cache, cache.bits, scale, kWindow);
        const auto expected_absolute =
            cpu_attention(q, q_heads, batch, cache, cache.absolute_bits, scale, kWindow);
        const auto actual = gpu_attention(c, q, batch, cache, scale);
        expect_match(actual, expected, expected_absolute, dtype, batch.max_query_length > 1,
                     cache.max_abs_value, "poisoned blocks " + describe(c));
        if (HasFailure()) return;
      }
    }
  }
}

// The decode path captured once in a CUDA graph (batch.max_context_length as at capture) stays
// right when the runtime rewrites positions and context lengths in device memory and replays it.
TEST(CudaAttention, DecodeGraphReplaysWhileContextsGrow) {
  KITE_REQUIRE_GPU();
  constexpr int64_t kBlockSize = 32, kHeadDim = 128, kKvHeads = 2, kGroup = 4;
  constexpr int kSplits = 8;
  const DType dtype = DType::kBF16;
  // The blocks of the longest contexts are allocated from the start; the contexts grow into them.
  const std::vector<Sequence> longest = {{1200, 1}, {700, 1}, {390, 1}};
  const HostBatch final_batch = make_batch(longest, kBlockSize, 5);
  const HostCache cache = make_cache(dtype, final_batch, kKvHeads, kBlockSize, kHeadDim, 6);
  GpuTensor device_cache = upload_cache(cache);
  KvCacheView view = cache.view;
  view.data = device_cache.tensor.data;

  auto batch_at = [&](int64_t step) {
    HostBatch batch = final_batch;
    for (size_t s = 0; s < longest.size(); ++s) {
      const int32_t context = int32_t(longest[s].context_length - 300 + 100 * step);
      batch.context_length[s] = context;
      batch.positions[s] = context - 1;
    }
    return batch;
  };
  const int64_t q_heads = kKvHeads * kGroup;
  const int64_t tokens = int64_t(longest.size());
  const auto q = test::random_values(size_t(tokens * q_heads * kHeadDim), 7, 2.0f, dtype);
  GpuTensor q_tensor = test::to_gpu(dtype, {tokens, q_heads * kHeadDim}, q);
  GpuTensor out(dtype, {tokens, q_heads * kHeadDim});
  DeviceSplitWorkspace workspace(tokens, q_heads, kHeadDim, kSplits);
  const HostBatch first_batch = batch_at(0);
  DeviceBatch device_batch(first_batch);

  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  cuda::attention(q_tensor.tensor, device_batch.view, view, kLayer, 0.1f, 0, out.tensor, kSplits,
                  workspace.view, stream);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t graph_exec;
  ASSERT_EQ(cudaGraphInstantiate(&graph_exec, graph, 0), cudaSuccess);

  for (int64_t step = 0; step <= 3; ++step) {
    const HostBatch batch = batch_at(step);
    ASSERT_EQ(cudaMemcpy(device_batch.positions.tensor.data, batch.positions.data(),
                         batch.positions.size() * 4, cudaMemcpyHostToDevice),
              cudaSuccess);
    ASSERT_EQ(cudaMemcpy(device_batch.context_length.tensor.data, batch.context_length.data(),
                         batch.context_length.size() * 4, cudaMemcpyHostToDevice),
              cudaSuccess);
    ASSERT_EQ(cudaMemset(out.tensor.data, 0xff, out.tensor.byte_size()), cudaSuccess);
    ASSERT_EQ(cudaGraphLaunch(graph_exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    const auto expected = cpu_attention(q, q_heads, batch, cache, cache.bits, 0.1f, 0);
    const auto expected_absolute =
        cpu_attention(q, q_heads, batch, cache, cache.absolute_bits, 0.1f, 0);
    expect_match(test::to_host(out.tensor), expected, expected_absolute, dtype, false,
                 cache.max_abs_value, "graph replay, step " + std::to_string(step));
  }
  EXPECT_EQ(cudaGraphExecDestroy(graph_exec), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(stream), cudaSuccess);
}

// The prefill path (which sets its shared-memory limit on every call) can be captured too.
TEST(CudaAttention, PrefillCanBeCapturedInAGraph) {
  KITE_REQUIRE_GPU();
  const AttentionCase c{DType::kBF16, 128, 2, 4, 32, 0, 1, kMixedBatch};
  const HostBatch batch = make_batch(c.sequences, c.block_size, 8);
  const HostCache cache = make_cache(c.dtype, batch, c.kv_heads, c.block_size, c.head_dim, 9);
  const int64_t q_heads = c.kv_heads * c.group;
  const int64_t width = q_heads * c.head_dim;
  const auto q = test::random_values(size_t(batch.num_tokens() * width), 10, 2.0f, c.dtype);
  DeviceBatch device_batch(batch);
  GpuTensor device_cache = upload_cache(cache);
  KvCacheView view = cache.view;
  view.data = device_cache.tensor.data;
  GpuTensor q_tensor = test::to_gpu(c.dtype, {batch.num_tokens(), width}, q);
  GpuTensor out(c.dtype, {batch.num_tokens(), width});

  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  cuda::attention(q_tensor.tensor, device_batch.view, view, kLayer, 0.1f, 0, out.tensor, 1, {},
                  stream);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t graph_exec;
  ASSERT_EQ(cudaGraphInstantiate(&graph_exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(graph_exec, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  expect_match(test::to_host(out.tensor),
               cpu_attention(q, q_heads, batch, cache, cache.bits, 0.1f, 0),
               cpu_attention(q, q_heads, batch, cache, cache.absolute_bits, 0.1f, 0), c.dtype, true,
               cache.max_abs_value, "prefill graph");
  EXPECT_EQ(cudaGraphExecDestroy(graph_exec), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(stream), cudaSuccess);
}

// Host-side policy: no GPU needed.
TEST(CudaAttention, ChoosesSplitsFromTheBatchAndTheLimits) {
  EXPECT_EQ(cuda::choose_attention_splits(1, 8, 8192, 132, false), 1);
  // One sequence, 8 kv heads, long contexts allowed: enough splits to give every SM work.
  const int splits = cuda::choose_attention_splits(1, 8, 8192, 132, true);
  EXPECT_GE(splits * 8, 132);
  EXPECT_LE(splits, 64);
  // A batch with a CTA for every SM already streams at full speed; short contexts are not worth
  // splitting.
  EXPECT_EQ(cuda::choose_attention_splits(64, 8, 8192, 132, true), 1);
  EXPECT_EQ(cuda::choose_attention_splits(17, 8, 8192, 132, true), 1);
  EXPECT_GT(cuda::choose_attention_splits(8, 8, 8192, 132, true), 1);
  // Short contexts split down to one 32-key tile per split, none below that.
  EXPECT_EQ(cuda::choose_attention_splits(1, 8, 32, 132, true), 1);
  EXPECT_EQ(cuda::choose_attention_splits(1, 8, 128, 132, true), 4);
  EXPECT_EQ(cuda::choose_attention_splits(1, 8, 512, 132, true), 16);
  EXPECT_GE(cuda::choose_attention_splits(1, 1, 1 << 20, 132, true), 1);
  EXPECT_LE(cuda::choose_attention_splits(1, 1, 1 << 20, 132, true), 64);
}

// decode_rope_attention (RoPE, the KV store and attention in one kernel) against
// rope_and_store_kv + attention on the GPU (both tested against their CPU twins): the same output
// within the dtype's rounding, the same cache image; twice in a row, so that the split counters
// are seen to reset themselves.
void check_fused_rope(DType dtype, int64_t head_dim, int64_t group, int64_t block_size,
                      int64_t window, int splits, int64_t rotary_dim, uint32_t seed) {
  constexpr int64_t kKvHeads = 2;
  const std::vector<Sequence> sequences = {{1, 1}, {31, 1}, {33, 1}, {100, 1}, {300, 1}};
  const HostBatch batch = make_batch(sequences, block_size, seed);
  const HostCache cache = make_cache(dtype, batch, kKvHeads, block_size, head_dim, seed * 31u);
  const int64_t q_heads = kKvHeads * group;
  const int64_t tokens = batch.num_tokens();
  const int64_t width = (q_heads + 2 * kKvHeads) * head_dim;
  const auto qkv = test::random_values(size_t(tokens * width), seed + 3, 2.0f, dtype);
  std::vector<float> inv_freq(size_t(rotary_dim / 2));
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    inv_freq[i] = std::pow(10000.0f, -2.0f * float(i) / float(rotary_dim));
  }
  std::vector<int32_t> slots;
  for (int64_t s = 0; s < batch.num_sequences(); ++s) {
    const int32_t position = batch.positions[size_t(s)];
    slots.push_back(batch.block(s, position, block_size) * int32_t(block_size) +
                    position % int32_t(block_size));
  }
  GpuTensor device_slots = test::int_to_gpu(slots);
  GpuTensor device_inv_freq = test::to_gpu(DType::kF32, {int64_t(inv_freq.size())}, inv_freq);
  DeviceBatch device_batch(batch);
  device_batch.view.slot_mapping = device_slots.as<int32_t>();
  // Every other seed scales cos and sin (YaRN's attention factor).
  const RopeParams rope{device_inv_freq.as<float>(), rotary_dim, seed % 2 ? 1.1386f : 1.0f};
  GpuTensor qkv_tensor = test::to_gpu(dtype, {tokens, width}, qkv);
  const float scale = 1.0f / std::sqrt(float(head_dim));
  DeviceSplitWorkspace workspace(tokens, q_heads, head_dim, splits);
  const std::string what = std::string(dtype_name(dtype)) + " D=" + std::to_string(head_dim) +
                           " group=" + std::to_string(group) + " block=" +
                           std::to_string(block_size) + " window=" + std::to_string(window) +
                           " splits=" + std::to_string(splits) + " rotary=" +
                           std::to_string(rotary_dim);

  // Two kernels.
  GpuTensor cache_a = upload_cache(cache);
  KvCacheView view_a = cache.view;
  view_a.data = cache_a.tensor.data;
  GpuTensor q(dtype, {tokens, q_heads * head_dim});
  GpuTensor expected(dtype, {tokens, q_heads * head_dim});
  cuda::rope_and_store_kv(qkv_tensor.tensor, rope, device_batch.view, view_a, kLayer, q.tensor,
                          nullptr);
  cuda::attention(q.tensor, device_batch.view, view_a, kLayer, scale, window, expected.tensor,
                  splits, workspace.view, nullptr);
  const std::vector<float> expected_out = test::to_host(expected.tensor);

  // One kernel, twice.
  GpuTensor cache_b = upload_cache(cache);
  KvCacheView view_b = cache.view;
  view_b.data = cache_b.tensor.data;
  std::vector<float> first;
  for (int run = 0; run < 2; ++run) {
    GpuTensor out(dtype, {tokens, q_heads * head_dim});
    cuda::decode_rope_attention(qkv_tensor.tensor, rope, device_batch.view, view_b, kLayer, scale,
                                window, out.tensor, splits, workspace.view, nullptr);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << what;
    const std::vector<float> actual = test::to_host(out.tensor);
    // A rotated query or key may round the other way (float32 contraction): scores move by
    // about u |q||k|, far less than a wrong key, a missing new token or a wrong merge move them.
    const double u = test::unit_roundoff(dtype);
    test::expect_within(
        actual, expected_out,
        [&](size_t i) { return 2 * u * std::fabs(expected_out[i]) + 5e-3 * cache.max_abs_value; },
        what);
    if (run == 0) {
      first = actual;
    } else {
      EXPECT_EQ(actual, first) << what << ": the second call differs (split counters)";
    }
  }
  // The stored keys and values: the same bits, or one unit in the last place for a key.
  std::vector<uint16_t> image_a(cache.bits.size()), image_b(cache.bits.size());
  ASSERT_EQ(cudaMemcpy(image_a.data(), cache_a.tensor.data, image_a.size() * 2,
                       cudaMemcpyDeviceToHost),
            cudaSuccess);
  ASSERT_EQ(cudaMemcpy(image_b.data(), cache_b.tensor.data, image_b.size() * 2,
                       cudaMemcpyDeviceToHost),
            cudaSuccess);
  int64_t differences = 0;
  for (size_t i = 0; i < image_a.size(); ++i) {
    if (image_a[i] == image_b[i]) continue;
    ++differences;
    EXPECT_LE(std::abs(int(image_a[i]) - int(image_b[i])), 1) << what << " cache element " << i;
    if (::testing::Test::HasFailure()) return;
  }
  EXPECT_LE(differences, int64_t(slots.size()) * kKvHeads * head_dim / 16) << what;
}

TEST(CudaAttention, FusedRopeDecodeMatchesTwoKernels) {
  KITE_REQUIRE_GPU();
  uint32_t seed = 4000;
  for (DType dtype : kDTypes) {
    for (int64_t head_dim : {64, 128}) {
      for (int64_t group : {1, 4, 8}) {
        for (int64_t block_size : {16, 32}) {
          for (int64_t window : {0, 40}) {
            for (int splits : {1, 4, 16}) {
              check_fused_rope(dtype, head_dim, group, block_size, window, splits, head_dim,
                               seed++);
              if (HasFailure()) return;
            }
          }
        }
      }
    }
  }
  // Partial rotary (the rest of each head passes through).
  check_fused_rope(DType::kBF16, 128, 4, 32, 0, 4, 64, seed++);
  check_fused_rope(DType::kBF16, 64, 1, 16, 0, 1, 32, seed++);
}

TEST(CudaAttention, FusedRopeAppliesToDecodeStepsOnly) {
  AttentionBatch decode;
  decode.max_query_length = 1;
  AttentionBatch prefill;
  prefill.max_query_length = 7;
  const RopeParams full{nullptr, 128, 1.0f};
  const RopeParams odd{nullptr, 24, 1.0f};
  EXPECT_TRUE(cuda::decode_rope_attention_applies(decode, full, 128));
  EXPECT_FALSE(cuda::decode_rope_attention_applies(prefill, full, 128));
  EXPECT_FALSE(cuda::decode_rope_attention_applies(decode, odd, 128));
  EXPECT_FALSE(cuda::decode_rope_attention_applies(decode, full, 96));
}

TEST(CudaAttention, WorkspaceHoldsPartialOutputsOfEverySplit) {
  EXPECT_EQ(cuda::attention_workspace_bytes(64, 32, 128, 1), 0u);
  EXPECT_EQ(cuda::attention_workspace_bytes(4, 32, 128, 8), size_t(8) * 4 * 32 * (128 + 1) * 4);
}

}  // namespace
}  // namespace kite
