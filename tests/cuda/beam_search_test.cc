// Beam search on the GPU: the KV block copy against the CPU backend's, and a search on a CUDA
// engine whose beams' scores are their log-probabilities recomputed from scratch (a beam that
// read another beam's keys and values, or a stale copy, would not match). Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <span>

#include "cuda_test_util.h"
#include "engine_test_util.h"
#include "kernels/backend_factory.h"
#include "runtime/beam_search.h"
#include "runtime/engine.h"
#include "test_util.h"

namespace kite {
namespace {

TEST(CudaBeamSearch, KvBlockCopiesAreTheCpuBackends) {
  KITE_REQUIRE_GPU();
  for (const DType dtype : {DType::kBF16, DType::kF16}) {
    KvCacheView view{nullptr, dtype, 3, 7, 2, 4, 64};
    const size_t count = size_t(view.num_layers * view.layer_elements());
    const std::vector<float> values = test::random_values(count, 11);
    test::GpuTensor gpu = test::to_gpu(dtype, {int64_t(count)}, values);
    std::vector<uint8_t> host = test::encode(dtype, values);
    const std::vector<std::pair<int32_t, int32_t>> copies = {{2, 5}, {0, 6}, {5, 1}};

    auto cpu_backend = make_backend(BackendKind::kCpu, {}).value();
    KvCacheView host_view = view;
    host_view.data = host.data();
    cpu_backend->copy_kv_blocks(host_view, copies);

    BackendOptions options;
    options.activation_dtype = dtype;
    auto cuda_backend = make_backend(BackendKind::kCuda, options).value();
    KvCacheView device_view = view;
    device_view.data = gpu.tensor.data;
    cuda_backend->copy_kv_blocks(device_view, copies);
    cuda_backend->synchronize();
    EXPECT_EQ(test::to_host(gpu.tensor), test::decode(dtype, host.data(), count))
        << dtype_name(dtype);
  }
}

// Summed log-probability of `output` after `prompt`, from one prefill of both in fresh blocks.
double log_probability_from_scratch(Engine& engine, const std::vector<int32_t>& prompt,
                                    const std::vector<int32_t>& output) {
  std::vector<int32_t> tokens = prompt;
  tokens.insert(tokens.end(), output.begin(), output.end());
  // The rows that predict each output token.
  std::vector<int32_t> rows;
  for (size_t i = 0; i < output.size(); ++i) rows.push_back(int32_t(prompt.size() + i) - 1);
  const std::vector<float> logits = test::forward_from_scratch(engine, tokens, rows);
  const size_t vocab = logits.size() / output.size();
  double sum = 0;
  for (size_t i = 0; i < output.size(); ++i) {
    const std::span<const float> row(logits.data() + i * vocab, vocab);
    sum += double(row[size_t(output[i])]) - log_sum_exp(row);
  }
  return sum;
}

TEST(CudaBeamSearch, BeamScoresAreTheirLogProbabilities) {
  KITE_REQUIRE_GPU();
  const std::string checkpoint = test::make_tiny_checkpoint("bfloat16");
  ASSERT_FALSE(checkpoint.empty());
  // 4-token blocks: the beams share and copy blocks at most steps.
  const std::string engine_dir = test::build_engine(
      checkpoint,
      "--device cuda --max_batch_size 4 --max_input_len 16 --max_seq_len 40 --tokens_per_block 4");
  ASSERT_FALSE(engine_dir.empty());
  std::unique_ptr<Engine> engine = Engine::load(engine_dir).value();
  const int64_t free_before = engine->kv_cache().free_blocks();
  const std::vector<int32_t> prompt = {5, 9, 2, 7, 11};
  StopConditions stop;
  stop.max_output_len = 14;
  const std::vector<BeamHypothesis> beams =
      beam_search(*engine, prompt, {.beam_width = 4, .length_penalty = 0.0f}, stop).value();
  ASSERT_EQ(beams.size(), 4u);
  for (size_t b = 0; b < beams.size(); ++b) {
    EXPECT_EQ(beams[b].output_ids.size(), 14u);
    if (b > 0) {
      EXPECT_LE(beams[b].score, beams[b - 1].score);
    }
    // length_penalty 0: the score is the summed log-probability. Decode steps and a prefill
    // round differently in bf16; a few hundredths over 14 tokens.
    EXPECT_NEAR(beams[b].score, log_probability_from_scratch(*engine, prompt, beams[b].output_ids),
                0.05)
        << "beam " << b;
  }
  EXPECT_EQ(engine->kv_cache().free_blocks(), free_before);
}

}  // namespace
}  // namespace kite
