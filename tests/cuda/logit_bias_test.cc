// Logit bias and bad words on the GPU: cuda::add_logit_bias against its CPU twin over a sweep of
// shapes, inside a captured graph whose replays apply different entries, and through the model's
// decode steps (CUDA graphs) with biases and bans that change from step to step, grow past the
// buffer's capacity, or cover the whole vocabulary.
#include "kernels/cuda/logit_bias.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/half.h"
#include "cuda_test_util.h"
#include "kernels/backend_factory.h"
#include "kernels/cpu/logit_bias.h"
#include "model/llama.h"
#include "unit/tiny_llama.h"

namespace kite {
namespace {

using test::GpuTensor;

constexpr float kMinusInfinity = -std::numeric_limits<float>::infinity();

// `count` random entries of an [rows, vocab] matrix, each (row, token) once (count <= rows *
// vocab): a quarter bans (-inf), the rest biases in [-100, 100).
std::vector<LogitBiasEntry> random_entries(int64_t count, int64_t rows, int64_t vocab,
                                           uint32_t seed) {
  std::mt19937 generator(seed);
  std::uniform_real_distribution<float> bias(-100.0f, 100.0f);
  std::set<std::pair<int32_t, int32_t>> taken;
  std::vector<LogitBiasEntry> entries;
  while (int64_t(entries.size()) < count) {
    const int32_t row = int32_t(generator() % uint32_t(rows));
    const int32_t token = int32_t(generator() % uint32_t(vocab));
    if (!taken.emplace(row, token).second) continue;
    entries.push_back({row, token, generator() % 4 == 0 ? kMinusInfinity : bias(generator)});
  }
  return entries;
}

// What the CPU twin makes of `logits` with the first `count` of `entries`.
std::vector<float> cpu_biased(std::vector<float> logits, int64_t rows, int64_t vocab,
                              const std::vector<LogitBiasEntry>& entries, int32_t count) {
  DeviceTensor tensor{DType::kF32, {rows, vocab}, logits.data()};
  cpu::add_logit_bias(tensor, entries.data(), &count, int64_t(entries.size()));
  return logits;
}

// Entries in device memory.
GpuTensor entries_to_gpu(const std::vector<LogitBiasEntry>& entries) {
  GpuTensor tensor(DType::kI32, {std::max<int64_t>(1, 3 * int64_t(entries.size()))});
  EXPECT_EQ(cudaMemcpy(tensor.tensor.data, entries.data(), entries.size() * sizeof(LogitBiasEntry),
                       cudaMemcpyHostToDevice),
            cudaSuccess);
  return tensor;
}

TEST(CudaLogitBias, MatchesCpuTwin) {
  KITE_REQUIRE_GPU();
  struct Shape {
    int64_t rows, vocab, entries, count;  // `entries` fit the buffer, `count` of them apply
  };
  for (const Shape& shape : {Shape{1, 7, 1, 1}, Shape{3, 320, 256, 100}, Shape{8, 32000, 700, 513},
                             Shape{64, 128256, 4096, 4096}, Shape{5, 50, 250, 0}}) {
    const std::string what = std::to_string(shape.rows) + " x " + std::to_string(shape.vocab) +
                             ", " + std::to_string(shape.count) + " of " +
                             std::to_string(shape.entries) + " entries";
    const auto values = test::random_values(size_t(shape.rows * shape.vocab), 3, 4.0f);
    const auto entries = random_entries(shape.entries, shape.rows, shape.vocab, 4);
    GpuTensor logits = test::to_gpu(DType::kF32, {shape.rows, shape.vocab}, values);
    GpuTensor entries_gpu = entries_to_gpu(entries);
    GpuTensor count_gpu = test::int_to_gpu({int32_t(shape.count)});
    cuda::add_logit_bias(logits.tensor, entries_gpu.as<LogitBiasEntry>(), count_gpu.as<int32_t>(),
                         shape.entries, nullptr);
    const auto expected =
        cpu_biased(values, shape.rows, shape.vocab, entries, int32_t(shape.count));
    EXPECT_EQ(test::to_host(logits.tensor), expected) << what;
  }
}

TEST(CudaLogitBias, GraphReplaysApplyEachReplaysEntries) {
  KITE_REQUIRE_GPU();
  const int64_t rows = 4, vocab = 1000, capacity = 256;
  const auto values = test::random_values(size_t(rows * vocab), 5);
  GpuTensor original = test::to_gpu(DType::kF32, {rows, vocab}, values);
  GpuTensor logits(DType::kF32, {rows, vocab});
  // The count (padded to an entry), then the entries: the layout LlamaModel uploads.
  GpuTensor biases(DType::kI32, {3 * (1 + capacity)});
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(logits.tensor.data, original.tensor.data, logits.tensor.byte_size(),
                            cudaMemcpyDeviceToDevice, stream),
            cudaSuccess);
  cuda::add_logit_bias(logits.tensor, biases.as<LogitBiasEntry>() + 1, biases.as<int32_t>(),
                       capacity, stream);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t graph_exec;
  ASSERT_EQ(cudaGraphInstantiate(&graph_exec, graph, 0), cudaSuccess);
  for (const int32_t count : {3, 0, 256, 17}) {
    const auto entries = random_entries(count, rows, vocab, uint32_t(10 + count));
    std::vector<LogitBiasEntry> packed = {{count, 0, 0.0f}};
    packed.insert(packed.end(), entries.begin(), entries.end());
    ASSERT_EQ(
        cudaMemcpyAsync(biases.tensor.data, packed.data(), packed.size() * sizeof(LogitBiasEntry),
                        cudaMemcpyHostToDevice, stream),
        cudaSuccess);
    ASSERT_EQ(cudaGraphLaunch(graph_exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    EXPECT_EQ(test::to_host(logits.tensor), cpu_biased(values, rows, vocab, entries, count))
        << count << " entries";
  }
  cudaGraphExecDestroy(graph_exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// A random bfloat16 Llama on the CUDA backend with S sequences of fixed block tables, so that
// every decode step has the same shape (one captured graph per sampling mode and bias bit).
class CudaModelRunner {
 public:
  CudaModelRunner(const ModelConfig& config, int64_t sequences, int64_t max_length)
      : sequences_(sequences) {
    for (auto& [name, tensor] : test::random_llama_weights(config, 7)) {
      Tensor rounded(DType::kBF16, tensor.shape());
      auto* bits = reinterpret_cast<uint16_t*>(rounded.data());
      for (int64_t i = 0; i < tensor.numel(); ++i)
        bits[i] = float_to_bf16(tensor.data_as<float>()[i]);
      weights_.emplace(name, std::move(rounded));
    }
    const WeightLookup lookup = [this](const std::string& name) -> Result<TensorView> {
      const auto found = weights_.find(name);
      if (found == weights_.end()) return not_found("no weight " + name);
      return found->second.view();
    };
    BackendOptions options;
    options.activation_dtype = DType::kBF16;
    backend_ = std::move(make_backend(BackendKind::kCuda, options).value());
    model_ = std::make_unique<LlamaModel>(
        *backend_, config, load_llama_weights(*backend_, config, lookup, "test").value());
    cache_.dtype = DType::kBF16;
    cache_.num_layers = config.num_hidden_layers;
    cache_.num_kv_heads = config.num_key_value_heads;
    cache_.block_size = 16;
    cache_.head_dim = config.head_dim;
    blocks_per_sequence_ = (max_length + cache_.block_size - 1) / cache_.block_size;
    cache_.num_blocks = sequences * blocks_per_sequence_;
    cache_buffer_ =
        backend_->allocate(size_t(cache_.num_layers * cache_.layer_elements()) * sizeof(uint16_t))
            .value();
    cache_.data = cache_buffer_.data();
    lengths_.assign(size_t(sequences), 0);
  }

  LlamaModel& model() { return *model_; }
  const KvCacheView& cache() const { return cache_; }

  // The step that appends tokens[s] to sequence s, logits for each sequence's last token. The
  // lengths move on only with advance(), so that a step can run several times (its keys and
  // values are written again, the same).
  StepInput step(const std::vector<std::vector<int32_t>>& tokens) const {
    StepInput input;
    input.query_start.push_back(0);
    for (int64_t s = 0; s < sequences_; ++s) {
      int32_t position = lengths_[size_t(s)];
      for (int32_t id : tokens[size_t(s)]) {
        const int32_t block_size = int32_t(cache_.block_size);
        const int32_t block = int32_t(s * blocks_per_sequence_) + position / block_size;
        input.token_ids.push_back(id);
        input.positions.push_back(position);
        input.slot_mapping.push_back(block * block_size + position % block_size);
        ++position;
      }
      input.query_start.push_back(int32_t(input.token_ids.size()));
      input.context_length.push_back(position);
      input.logit_rows.push_back(int32_t(input.token_ids.size()) - 1);
      for (int64_t b = 0; b < blocks_per_sequence_; ++b)
        input.block_table.push_back(int32_t(s * blocks_per_sequence_ + b));
    }
    input.max_blocks_per_sequence = blocks_per_sequence_;
    return input;
  }
  void advance(const std::vector<std::vector<int32_t>>& tokens) {
    for (size_t s = 0; s < tokens.size(); ++s) lengths_[s] += int32_t(tokens[s].size());
  }

 private:
  int64_t sequences_;
  std::map<std::string, Tensor> weights_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<LlamaModel> model_;
  KvCacheView cache_;
  DeviceBuffer cache_buffer_;
  int64_t blocks_per_sequence_ = 0;
  std::vector<int32_t> lengths_;
};

TEST(CudaLogitBias, ModelDecodeGraphsApplyEachStepsBiasAndBans) {
  KITE_REQUIRE_GPU();
  ModelConfig config = test::tiny_llama_config();
  config.hidden_size = 64;
  config.intermediate_size = 128;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.head_dim = 16;  // a head size the CUDA attention kernels have
  config.vocab_size = 512;
  const int64_t S = 3, V = config.vocab_size;
  CudaModelRunner runner(config, S, 64);
  const std::vector<SamplingRow> greedy(size_t(S), SamplingRow{0.0f, 0, 1.0f, 0.0f, 1.0f, 0, 0});
  std::vector<std::vector<int32_t>> tokens = {{1, 2, 3, 4, 5}, {6}, {7, 8, 9}};  // prefill first
  for (int step = 0; step < 8; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    StepInput input = runner.step(tokens);
    const std::vector<float> plain = runner.model().forward(input, runner.cache()).value();
    // Row r bans its (step + r) % 4 best tokens; step 4 also bans 400 more tokens of row 0 (past
    // the buffer's first capacity of 256 entries: graphs recorded again), step 6 every token of
    // row 1 (greedy then picks token 0). On odd steps, row 2's worst token gets +1000 (greedy
    // then picks it) and its second best -0.5 (listed twice, -0.25 each).
    std::vector<std::vector<bool>> banned(size_t(S), std::vector<bool>(size_t(V), false));
    std::vector<float> expected_logits = plain;
    for (int64_t r = 0; r < S; ++r) {
      std::vector<int32_t> order(static_cast<size_t>(V));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
        return plain[size_t(r * V + a)] > plain[size_t(r * V + b)];
      });
      int64_t count = (step + r) % 4;
      if (step == 4 && r == 0) count += 400;
      if (step == 6 && r == 1) count = V;
      for (int64_t i = 0; i < count; ++i) {
        banned[size_t(r)][size_t(order[size_t(i)])] = true;
        expected_logits[size_t(r * V + order[size_t(i)])] = kMinusInfinity;
        input.logit_bias.push_back({int32_t(r), order[size_t(i)], kMinusInfinity});
      }
      if (r == 2 && step % 2 == 1) {
        const int32_t worst = order.back(), second = order[1];
        expected_logits[size_t(r * V + worst)] += 1000.0f;
        input.logit_bias.push_back({int32_t(r), worst, 1000.0f});
        if (!banned[size_t(r)][size_t(second)]) expected_logits[size_t(r * V + second)] -= 0.5f;
        input.logit_bias.push_back({int32_t(r), second, -0.25f});
        input.logit_bias.push_back({int32_t(r), second, -0.25f});
      }
    }
    // The logits: the bias added (-inf where banned), the same as without it elsewhere.
    const std::vector<float> with_bans = runner.model().forward(input, runner.cache()).value();
    ASSERT_EQ(with_bans.size(), plain.size());
    for (int64_t r = 0; r < S; ++r) {
      for (int64_t t = 0; t < V; ++t) {
        const size_t i = size_t(r * V + t);
        ASSERT_EQ(with_bans[i], expected_logits[i]) << "row " << r << " token " << t;
      }
    }
    // Greedy sampling on the GPU: the best token left (the lowest index on ties), token 0 when
    // none is.
    const std::vector<int32_t> ids =
        runner.model().forward_and_sample(input, runner.cache(), greedy, {}).value();
    std::vector<std::vector<int32_t>> next(static_cast<size_t>(S));
    for (int64_t r = 0; r < S; ++r) {
      const auto row = with_bans.begin() + r * V;
      const int32_t best = int32_t(std::max_element(row, row + V) - row);
      EXPECT_EQ(ids[size_t(r)], best) << "row " << r;
      if (step != 6 || r != 1) {
        EXPECT_FALSE(banned[size_t(r)][size_t(ids[size_t(r)])]) << "row " << r;
      }
      next[size_t(r)] = {ids[size_t(r)]};
    }
    runner.advance(tokens);
    tokens = next;
  }
}

}  // namespace
}  // namespace kite
