// GPU sampling against the host Sampler, its CPU reference: greedy ids identical to the host's,
// draws inside the support of the host's distribution (sampling_distribution) and at its
// frequencies, the same token for the same (seed, step), and the same results from a CUDA graph.
#include "kernels/cuda/sampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "runtime/sampling.h"

namespace kite {
namespace {

using cuda::SamplingRow;
using test::GpuTensor;

constexpr int64_t kLlama3Vocab = 128256;

SamplingRow make_row(float temperature, int32_t top_k = 0, float top_p = 1.0f, float min_p = 0.0f,
                     float repetition_penalty = 1.0f, uint64_t seed = 0, uint64_t step = 0) {
  return SamplingRow{temperature, top_k, top_p, min_p, repetition_penalty, seed, step};
}

SamplingConfig host_config(const SamplingRow& row) {
  SamplingConfig config;
  config.temperature = row.temperature;
  config.top_k = row.top_k;
  config.top_p = row.top_p;
  config.min_p = row.min_p;
  config.repetition_penalty = row.repetition_penalty;
  config.seed = row.seed;
  config.presence_penalty = row.presence_penalty;
  config.frequency_penalty = row.frequency_penalty;
  return config;
}

// R rows of V logits on the GPU with the buffers sample() needs. Every call starts from the
// original logits, since the repetition penalty changes them in place.
class GpuSampling {
 public:
  GpuSampling(const std::vector<float>& logits, int64_t rows, int64_t vocab,
              const std::vector<std::vector<int32_t>>& histories = {})
      : rows_(rows),
        original_(test::to_gpu(DType::kF32, {rows, vocab}, logits)),
        logits_(DType::kF32, {rows, vocab}),
        rows_on_gpu_(DType::kU8, {rows * int64_t(sizeof(SamplingRow))}),
        out_(DType::kI32, {rows}),
        workspace_(DType::kU8, {int64_t(cuda::sampling_workspace_bytes(rows, vocab))}) {
    for (const std::vector<int32_t>& history : histories)
      history_stride_ = std::max(history_stride_, int64_t(history.size()));
    std::vector<int32_t> flat(size_t(rows * history_stride_), 0), lengths(size_t(rows), 0);
    for (size_t r = 0; r < histories.size(); ++r) {
      std::copy(histories[r].begin(), histories[r].end(),
                flat.begin() + int64_t(r) * history_stride_);
      lengths[r] = int32_t(histories[r].size());
    }
    history_ = test::int_to_gpu(flat);
    history_lengths_ = test::int_to_gpu(lengths);
  }

  void set_rows(const std::vector<SamplingRow>& rows) {
    ASSERT_EQ(int64_t(rows.size()), rows_);
    ASSERT_EQ(cudaMemcpy(rows_on_gpu_.tensor.data, rows.data(), rows.size() * sizeof(SamplingRow),
                         cudaMemcpyHostToDevice),
              cudaSuccess);
  }

  // Restores the logits and samples, on `stream`, without waiting.
  void enqueue(cudaStream_t stream) {
    ASSERT_EQ(cudaMemcpyAsync(logits_.tensor.data, original_.tensor.data,
                              logits_.tensor.byte_size(), cudaMemcpyDeviceToDevice, stream),
              cudaSuccess);
    cuda::sample(logits_.tensor, rows_on_gpu_.as<SamplingRow>(), history_.as<int32_t>(),
                 history_lengths_.as<int32_t>(), history_stride_, out_.as<int32_t>(),
                 workspace_.tensor.data, workspace_.tensor.byte_size(), stream);
  }

  std::vector<int32_t> ids() {
    std::vector<int32_t> ids(static_cast<size_t>(rows_));
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(ids.data(), out_.tensor.data, ids.size() * 4, cudaMemcpyDeviceToHost),
              cudaSuccess);
    return ids;
  }

  std::vector<int32_t> sample(const std::vector<SamplingRow>& rows) {
    set_rows(rows);
    enqueue(nullptr);
    return ids();
  }

 private:
  int64_t rows_;
  int64_t history_stride_ = 1;
  GpuTensor original_, logits_, rows_on_gpu_, out_, workspace_, history_, history_lengths_;
};

std::vector<float> repeat_rows(const std::vector<float>& row, int64_t rows) {
  std::vector<float> all;
  all.reserve(row.size() * size_t(rows));
  for (int64_t r = 0; r < rows; ++r) all.insert(all.end(), row.begin(), row.end());
  return all;
}

TEST(CudaSampling, GreedyIsTheHostArgmax) {
  KITE_REQUIRE_GPU();
  for (int64_t vocab : {int64_t(7), int64_t(1000), kLlama3Vocab}) {
    for (int64_t rows : {1, 3, 64}) {
      std::vector<float> logits =
          test::random_values(size_t(rows * vocab), uint32_t(vocab + rows), 3.0f);
      std::mt19937 generator(uint32_t(rows * vocab));
      std::vector<SamplingRow> configs;
      std::vector<std::vector<int32_t>> histories;
      for (int64_t r = 0; r < rows; ++r) {
        float* row = logits.data() + r * vocab;
        // Two tokens tie for the largest logit; the host takes the lower index.
        const int32_t first = int32_t(generator() % uint32_t(vocab - 1));
        const int32_t second = first + 1 + int32_t(generator() % uint32_t(vocab - 1 - first));
        const float top = *std::max_element(row, row + vocab) + 1.0f;
        row[first] = row[second] = top;
        switch (r % 4) {
          case 0:  // plain greedy
            configs.push_back(make_row(0.0f));
            histories.push_back({});
            break;
          case 1:  // top_k = 1 is greedy whatever the temperature
            configs.push_back(make_row(0.7f, 1));
            histories.push_back({});
            break;
          case 2:  // the penalty divides the first tied logit: the second wins; repeats and ids
                   // outside the vocabulary count once and not at all
            configs.push_back(make_row(0.0f, 0, 1.0f, 0.0f, 1.5f));
            histories.push_back(
                {first, first, 3 % int32_t(vocab), -1, int32_t(vocab), int32_t(vocab) + 7, first});
            break;
          default:  // all logits negative: the penalty multiplies both tied ones
            for (int64_t i = 0; i < vocab; ++i) row[i] -= 50.0f;
            configs.push_back(make_row(0.0f, 0, 1.0f, 0.0f, 2.0f));
            histories.push_back({second, first, second});
            break;
        }
      }
      GpuSampling gpu(logits, rows, vocab, histories);
      const std::vector<int32_t> ids = gpu.sample(configs);
      for (int64_t r = 0; r < rows; ++r) {
        const std::span<const float> row(logits.data() + r * vocab, size_t(vocab));
        const int32_t expected =
            Sampler(host_config(configs[size_t(r)]))
                .sample(row, histories[size_t(r)], size_t(configs[size_t(r)].output_start));
        EXPECT_EQ(ids[size_t(r)], expected) << "V " << vocab << ", R " << rows << ", row " << r;
      }
    }
  }
}

// Draws kRows x kCalls tokens from one row of logits (every draw its own step) and compares them
// with the host's distribution p:
//  - every token drawn has p > 0 (a filter that keeps too much fails here);
//  - every token with p >= 0.01 is drawn (one that removes too much fails here: a token of
//    probability 0.01 is missed by 8192 draws with probability 0.99^8192 < 1e-35);
//  - the L1 distance between the empirical and the host frequencies, over the 15 most likely
//    tokens and one category for the rest, is at most 0.1. For n draws over m categories,
//    P(L1 >= t) <= 2^m exp(-n t^2 / 2) (Bretagnolle-Huber-Carol), here 2^16 e^-40.96 < 1e-13, so
//    a correct sampler passes; a wrong temperature or renormalisation moves the frequencies of
//    these flat-ish distributions by far more than 0.1.
void expect_host_distribution(const std::string& name, const std::vector<float>& logits,
                              SamplingRow row, const std::vector<int32_t>& history = {}) {
  constexpr int64_t kRows = 64, kCalls = 128;
  const int64_t vocab = int64_t(logits.size());
  const std::vector<double> expected =
      sampling_distribution(logits, host_config(row), history, size_t(row.output_start));
  GpuSampling gpu(repeat_rows(logits, kRows), kRows, vocab,
                  std::vector<std::vector<int32_t>>(size_t(kRows), history));
  std::vector<int64_t> counts(size_t(vocab), 0);
  std::vector<SamplingRow> rows(size_t(kRows), row);
  for (int64_t call = 0; call < kCalls; ++call) {
    for (int64_t r = 0; r < kRows; ++r) rows[size_t(r)].step = uint64_t(call * kRows + r);
    for (int32_t id : gpu.sample(rows)) {
      ASSERT_TRUE(id >= 0 && id < vocab) << name << ": id " << id;
      ++counts[size_t(id)];
    }
  }
  const double draws = double(kRows * kCalls);
  int reported = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    if (counts[size_t(i)] > 0 && expected[size_t(i)] == 0.0 && reported++ < 5)
      ADD_FAILURE() << name << ": drew token " << i << " (" << counts[size_t(i)]
                    << " times), which the host removes";
    if (expected[size_t(i)] >= 0.01 && counts[size_t(i)] == 0 && reported++ < 5)
      ADD_FAILURE() << name << ": never drew token " << i << " of probability "
                    << expected[size_t(i)];
  }
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return expected[size_t(a)] > expected[size_t(b)]; });
  double distance = 0, rest_expected = 1.0, rest_drawn = 1.0;
  for (size_t i = 0; i < std::min<size_t>(15, order.size()); ++i) {
    const double p = expected[size_t(order[i])];
    const double frequency = double(counts[size_t(order[i])]) / draws;
    distance += std::fabs(frequency - p);
    rest_expected -= p;
    rest_drawn -= frequency;
  }
  distance += std::fabs(rest_drawn - rest_expected);
  EXPECT_LE(distance, 0.1) << name << ": L1 distance to the host distribution";
}

// OpenAI's presence and frequency penalties count the history from output_start only, each
// occurrence for frequency and once for presence, after the repetition penalty; greedy picks and
// filtered distributions are the host's.
TEST(CudaSampling, PresenceAndFrequencyPenaltiesAreTheHosts) {
  KITE_REQUIRE_GPU();
  for (int64_t vocab : {int64_t(50), int64_t(5000), kLlama3Vocab}) {
    const int64_t rows = 8;
    std::vector<float> logits = test::random_values(size_t(rows * vocab), uint32_t(vocab), 2.0f);
    std::vector<SamplingRow> configs;
    std::vector<std::vector<int32_t>> histories;
    for (int64_t r = 0; r < rows; ++r) {
      float* row = logits.data() + r * vocab;
      // The best token, repeated in the output: the penalties must move the pick elsewhere.
      const int32_t best = int32_t(std::max_element(row, row + vocab) - row);
      const int32_t other = (best + 1 + int32_t(r)) % int32_t(vocab);
      SamplingRow config = make_row(0.0f);
      // The prompt (before output_start) holds tokens the penalties must not see.
      histories.push_back({other, other, other, best, other, best, best, int32_t(vocab - 1), -3,
                           int32_t(vocab) + 2});
      config.output_start = 3;
      config.presence_penalty = r % 2 ? 0.0f : 0.4f + 0.1f * float(r);
      config.frequency_penalty = r % 3 == 0 ? -0.2f : 0.75f;
      if (r == 5) config.repetition_penalty = 1.3f;
      if (r >= 6) config.temperature = 0.9f, config.top_k = 40, config.seed = uint64_t(r);
      configs.push_back(config);
    }
    GpuSampling gpu(logits, rows, vocab, histories);
    const std::vector<int32_t> ids = gpu.sample(configs);
    for (int64_t r = 0; r < 6; ++r) {  // the greedy rows
      const std::span<const float> row(logits.data() + r * vocab, size_t(vocab));
      const int32_t expected =
          Sampler(host_config(configs[size_t(r)])).sample(row, histories[size_t(r)], 3);
      EXPECT_EQ(ids[size_t(r)], expected) << "V " << vocab << ", row " << r;
    }
    if (vocab == 5000) {
      expect_host_distribution(
          "penalties, top-k 40",
          std::vector<float>(logits.begin() + 6 * vocab, logits.begin() + 7 * vocab), configs[6],
          histories[6]);
    }
  }
}

TEST(CudaSampling, FiltersDrawFromTheHostDistribution) {
  KITE_REQUIRE_GPU();
  const std::vector<float> small = test::random_values(1000, 5, 2.0f);
  expect_host_distribution("top_k", small, make_row(1.0f, 5));
  expect_host_distribution("top_p", small, make_row(0.7f, 0, 0.8f));
  expect_host_distribution("min_p", small, make_row(1.5f, 0, 1.0f, 0.1f));
  expect_host_distribution("temperature only", small, make_row(0.6f));
  std::vector<int32_t> likely(small.size());
  std::iota(likely.begin(), likely.end(), 0);
  std::partial_sort(likely.begin(), likely.begin() + 10, likely.end(),
                    [&](int32_t a, int32_t b) { return small[size_t(a)] > small[size_t(b)]; });
  likely.resize(10);
  likely.push_back(likely[0]);  // a repeat, penalized once
  expect_host_distribution("all filters and a penalty on the 10 most likely", small,
                           make_row(0.9f, 40, 0.9f, 0.02f, 1.3f), likely);

  const std::vector<float> large = test::random_values(size_t(kLlama3Vocab), 6, 3.0f);
  expect_host_distribution("temperature only, V 128256", large, make_row(1.0f));
  expect_host_distribution("top_p, V 128256", large, make_row(0.8f, 0, 0.9f));
  expect_host_distribution("top_k and top_p, V 128256", large, make_row(1.0f, 50, 0.95f));
  expect_host_distribution("min_p, V 128256", large, make_row(1.2f, 0, 1.0f, 0.05f));
  expect_host_distribution("top_k 2000, V 128256", large, make_row(1.0f, 2000));
  // More candidates than the finish keeps in shared memory (4096).
  expect_host_distribution("top_p 0.99 at temperature 1.5, V 128256", large,
                           make_row(1.5f, 0, 0.99f));
  expect_host_distribution("top_k 20000, V 128256", large, make_row(1.0f, 20000));
  const std::vector<float> flat = test::random_values(size_t(kLlama3Vocab), 7, 0.5f);
  expect_host_distribution("temperature only, flat, V 128256", flat, make_row(1.0f));
}

TEST(CudaSampling, TiesFollowTheHostOrder) {
  KITE_REQUIRE_GPU();
  // Ten equal logits, top_p 0.35: the host sorts ascending (stable) and drops the first six;
  // the four with the highest indices stay.
  expect_host_distribution("equal logits, top_p", std::vector<float>(10, 1.0f),
                           make_row(1.0f, 0, 0.35f));
  // Ties with the k-th largest score stay.
  expect_host_distribution("ties at the k-th score", {3, 2, 2, 2, 1, 0, 0, 1}, make_row(1.0f, 2));
  // top_k 6 keeps the 2s and the 1s (ties at the 6th); top_p 0.75 then cuts the 1s in two:
  // index 3 stays (mass above it 0.73), 0 to 2 go.
  expect_host_distribution("top_p splits a tie after top_k", {1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0, 0},
                           make_row(1.0f, 6, 0.75f));
}

TEST(CudaSampling, TemperatureScalesTheOdds) {
  KITE_REQUIRE_GPU();
  // Two tokens with logits 1 and 0: P(first) = 1 / (1 + e^(-1 / T)), 0.88 at T 0.5 and 0.62 at
  // T 2. 8192 draws put the frequency within 0.03 (5.4 standard deviations) of it.
  for (float temperature : {0.5f, 2.0f}) {
    constexpr int64_t kRows = 64;
    GpuSampling gpu(repeat_rows({1.0f, 0.0f}, kRows), kRows, 2);
    std::vector<SamplingRow> rows(kRows, make_row(temperature, 0, 1.0f, 0.0f, 1.0f, 99));
    int64_t first = 0;
    for (int64_t call = 0; call < 128; ++call) {
      for (int64_t r = 0; r < kRows; ++r) rows[size_t(r)].step = uint64_t(call * kRows + r);
      for (int32_t id : gpu.sample(rows)) first += id == 0;
    }
    EXPECT_NEAR(double(first) / 8192.0, 1.0 / (1.0 + std::exp(-1.0 / temperature)), 0.03)
        << "temperature " << temperature;
  }
}

TEST(CudaSampling, SameSeedAndStepSameToken) {
  KITE_REQUIRE_GPU();
  constexpr int64_t kVocab = 1000, kRows = 8;
  const std::vector<float> logits = test::random_values(size_t(kVocab), 8, 1.0f);
  GpuSampling batch(repeat_rows(logits, kRows), kRows, kVocab);
  auto sequence = [&](uint64_t seed) {
    std::vector<int32_t> tokens;
    std::vector<SamplingRow> rows(kRows, make_row(1.0f, 0, 0.95f, 0.0f, 1.0f, seed));
    for (int64_t call = 0; call < 8; ++call) {
      for (int64_t r = 0; r < kRows; ++r) rows[size_t(r)].step = uint64_t(call * kRows + r);
      const std::vector<int32_t> ids = batch.sample(rows);
      tokens.insert(tokens.end(), ids.begin(), ids.end());
    }
    return tokens;
  };
  const std::vector<int32_t> first = sequence(42);
  EXPECT_EQ(first, sequence(42));
  EXPECT_NE(first, sequence(43));
  EXPECT_GT(std::set<int32_t>(first.begin(), first.end()).size(), 10u);  // steps differ

  // A row's token does not depend on the rest of the batch.
  std::vector<SamplingRow> rows;
  for (int64_t r = 0; r < kRows; ++r)
    rows.push_back(make_row(1.0f, 0, 1.0f, 0.0f, 1.0f, uint64_t(100 + r), 7));
  const std::vector<int32_t> together = batch.sample(rows);
  GpuSampling alone(logits, 1, kVocab);
  for (int64_t r = 0; r < kRows; ++r)
    EXPECT_EQ(alone.sample({rows[size_t(r)]})[0], together[size_t(r)]) << "row " << r;
}

TEST(CudaSampling, MixedBatch) {
  KITE_REQUIRE_GPU();
  constexpr int64_t kVocab = 1000;
  const std::vector<SamplingRow> configs = {
      make_row(0.0f),
      make_row(1.0f, 20),
      make_row(0.8f, 0, 0.7f),
      make_row(0.0f, 0, 1.0f, 0.0f, 1.4f),
      make_row(1.0f, 0, 1.0f, 0.2f),
      make_row(1.3f),
  };
  const int64_t rows = int64_t(configs.size());
  const std::vector<float> logits = test::random_values(size_t(rows * kVocab), 9, 2.0f);
  std::vector<std::vector<int32_t>> histories(size_t(rows), {1, 2, 3});
  for (int64_t r = 0; r < rows; ++r) {  // the penalty on the greedy row hits its argmax
    const float* row = logits.data() + r * kVocab;
    histories[size_t(r)].push_back(int32_t(std::max_element(row, row + kVocab) - row));
  }
  GpuSampling gpu(logits, rows, kVocab, histories);
  std::vector<std::vector<double>> expected;
  for (int64_t r = 0; r < rows; ++r) {
    expected.push_back(sampling_distribution(
        std::span<const float>(logits.data() + r * kVocab, kVocab), host_config(configs[size_t(r)]),
        histories[size_t(r)], size_t(configs[size_t(r)].output_start)));
  }
  std::vector<SamplingRow> steps = configs;
  for (uint64_t step = 0; step < 50; ++step) {
    for (SamplingRow& row : steps) row.step = step;
    const std::vector<int32_t> ids = gpu.sample(steps);
    for (int64_t r = 0; r < rows; ++r) {
      ASSERT_TRUE(ids[size_t(r)] >= 0 && ids[size_t(r)] < kVocab);
      EXPECT_GT(expected[size_t(r)][size_t(ids[size_t(r)])], 0.0)
          << "row " << r << " step " << step << " drew " << ids[size_t(r)];
    }
  }
}

TEST(CudaSampling, CudaGraphReplayGivesTheSameTokens) {
  KITE_REQUIRE_GPU();
  constexpr int64_t kRows = 4;
  const std::vector<float> logits = test::random_values(size_t(kRows * kLlama3Vocab), 10, 3.0f);
  const std::vector<SamplingRow> rows = {make_row(0.0f), make_row(1.0f, 0, 0.9f, 0.0f, 1.0f, 1, 5),
                                         make_row(0.7f, 40, 1.0f, 0.0f, 1.0f, 2, 6),
                                         make_row(1.0f, 0, 1.0f, 0.0f, 1.2f, 3, 7)};
  GpuSampling gpu(logits, kRows, kLlama3Vocab, {{}, {}, {}, {5, 6, 7}});
  const std::vector<int32_t> direct = gpu.sample(rows);

  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  gpu.enqueue(stream);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t graph_exec;
  ASSERT_EQ(cudaGraphInstantiate(&graph_exec, graph, 0), cudaSuccess);
  for (int replay = 0; replay < 2; ++replay) {
    ASSERT_EQ(cudaGraphLaunch(graph_exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    EXPECT_EQ(gpu.ids(), direct) << "replay " << replay;
  }
  cudaGraphExecDestroy(graph_exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace kite
