// End-to-end checks of the CUDA engine: the Hugging Face golden models (tests/fixtures/golden/hf)
// run in bfloat16 on the GPU against transformers' float32 logits and greedy tokens, and the demo
// model SmolLM2-135M built with `kite build --device cuda` against llama.cpp's greedy continuations
// and the CPU engine's. Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "core/file.h"
#include "core/half.h"
#include "cuda_test_util.h"
#include "formats/model_config.h"
#include "formats/safetensors.h"
#include "kernels/backend_factory.h"
#include "kernels/cuda/linear.h"
#include "model/llama.h"
#include "runtime/engine.h"
#include "test_util.h"
#include "unit/smollm2_fixture.h"
#include "unit/tiny_llama.h"

namespace kite {
namespace {

using Matrix = std::vector<std::vector<float>>;

// One sequence stepped through a model: on a backend with its own KV cache (blocks 0, 1, ... in
// order), or through a loaded engine's model and KV cache (blocks it lends). The CUDA backend
// computes in `dtype`, the CPU backend in float32 (its cache too). `norm_scales_folded`: the
// lookup's weights hold the norm scales (test::folded_lookup), as in CUDA engines.
class ModelRunner {
 public:
  ModelRunner(BackendKind kind, const ModelConfig& config, const WeightLookup& lookup, DType dtype,
              int64_t max_length, bool norm_scales_folded = false) {
    BackendOptions options;
    options.activation_dtype = dtype;
    backend_ = std::move(make_backend(kind, options).value());
    dtype = backend_->activation_dtype();
    owned_model_ = std::make_unique<LlamaModel>(
        *backend_, config,
        load_llama_weights(*backend_, config, lookup, "test", {}, norm_scales_folded).value());
    model_ = owned_model_.get();
    cache_ = KvCacheView{
        nullptr, dtype,          config.num_hidden_layers, 0, config.num_key_value_heads,
        16,      config.head_dim};
    cache_.num_blocks = (max_length + cache_.block_size - 1) / cache_.block_size;
    for (int32_t b = 0; b < cache_.num_blocks; ++b) blocks_.push_back(b);
    cache_buffer_ =
        backend_->allocate(size_t(cache_.num_layers * cache_.layer_elements()) * dtype_size(dtype))
            .value();
    cache_.data = cache_buffer_.data();
  }

  ModelRunner(Engine& engine, int64_t max_length)
      : model_(&engine.model()),
        cache_(engine.kv_cache().view()),
        engine_cache_(&engine.kv_cache()) {
    blocks_ =
        engine_cache_->allocate_blocks((max_length + cache_.block_size - 1) / cache_.block_size)
            .value();
  }

  ~ModelRunner() {
    if (engine_cache_) engine_cache_->free_blocks(blocks_);
  }

  // Appends `tokens` to the sequence in one step; the logits of every new token.
  Matrix step(const std::vector<int32_t>& tokens) {
    StepInput input;
    input.query_start = {0, int32_t(tokens.size())};
    for (int32_t id : tokens) {
      const int32_t position = length_++;
      input.token_ids.push_back(id);
      input.positions.push_back(position);
      input.slot_mapping.push_back(blocks_[size_t(position / cache_.block_size)] *
                                       int32_t(cache_.block_size) +
                                   int32_t(position % cache_.block_size));
      input.logit_rows.push_back(int32_t(input.logit_rows.size()));
    }
    input.context_length = {length_};
    input.block_table = blocks_;
    input.max_blocks_per_sequence = int64_t(blocks_.size());
    const std::vector<float> logits = model_->forward(input, cache_).value();
    const size_t vocab = size_t(model_->config().vocab_size);
    Matrix rows;
    for (size_t r = 0; r < tokens.size(); ++r) {
      rows.emplace_back(logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab);
    }
    return rows;
  }

 private:
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<LlamaModel> owned_model_;
  LlamaModel* model_ = nullptr;
  KvCacheView cache_;
  DeviceBuffer cache_buffer_;
  KvCache* engine_cache_ = nullptr;  // the engine's, whose blocks_ are lent
  std::vector<int32_t> blocks_;
  int32_t length_ = 0;
};

// A golden model's float32 weights (model.safetensors in `directory`) rounded to bfloat16, as
// `kite convert --dtype bfloat16` does.
std::map<std::string, Tensor> bf16_weights(const std::string& directory) {
  const SafetensorsFile file = SafetensorsFile::open(directory + "/model.safetensors").value();
  std::map<std::string, Tensor> weights;
  for (const std::string& name : file.names()) {
    const std::vector<float> values = to_float32(file.tensor(name).value()).value();
    Tensor tensor(DType::kBF16, file.tensor(name)->shape);
    auto* bits = reinterpret_cast<uint16_t*>(tensor.data());
    for (size_t i = 0; i < values.size(); ++i) bits[i] = float_to_bf16(values[i]);
    weights.emplace(name, std::move(tensor));
  }
  return weights;
}

WeightLookup lookup_in(const std::map<std::string, Tensor>& weights) {
  return [&weights](const std::string& name) -> Result<TensorView> {
    auto found = weights.find(name);
    if (found == weights.end()) return not_found("no weight " + name);
    return found->second.view();
  };
}

// The golden model folders (tests/fixtures/golden/hf/<model>/reference.json), sorted.
std::vector<std::string> golden_models() {
  std::vector<std::string> models;
  const std::string root = test::source_dir() + "/tests/fixtures/golden/hf";
  for (const auto& entry : std::filesystem::directory_iterator(root)) {
    if (path_exists(entry.path().string() + "/reference.json")) {
      models.push_back(entry.path().string());
    }
  }
  std::sort(models.begin(), models.end());
  return models;
}

// max |a - b| / max(1, max |b|).
double relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double difference = 0, largest = 1;
  for (size_t i = 0; i < a.size(); ++i) {
    difference = std::max(difference, std::abs(double(a[i]) - double(b[i])));
    largest = std::max(largest, std::abs(double(b[i])));
  }
  return difference / largest;
}

// The golden models' weights are N(0, 0.2^2) in float32, and their logits are sums with much
// cancellation: rounding the weights to bfloat16 alone moves the logits by up to 7% of their
// largest magnitude (the CPU engine on the rounded weights shows it; measured on an H100: 0.067),
// and bfloat16 activations move them by as much again (GPU against the CPU engine on the same
// weights: at most 0.083; transformers' own bf16 mode rounds the same way). The bounds, of the
// logit scale: 0.1 for the activations (GPU against the CPU engine), and the two errors together
// for GPU against transformers (the weight rounding as the CPU engine measures it, plus 0.1):
// YaRN's attention factor sharpens the attention and both errors with it (qwen2_yarn, 60-token
// prompt: 0.077 and 0.065, 0.134 together on an H100). A greedy step may legitimately differ where
// the reference's top-2 margin is within twice 0.1; 485 of 511 greedy tokens agree.
constexpr double kBf16ActivationTolerance = 0.1;
constexpr double kBf16LogitTolerance = 0.1;

TEST(CudaGolden, Bf16MatchesTransformers) {
  KITE_REQUIRE_GPU();
  const std::vector<std::string> models = golden_models();
  ASSERT_FALSE(models.empty()) << "no golden models";
  int compared_tokens = 0, total_tokens = 0;
  for (const std::string& directory : models) {
    SCOPED_TRACE(directory);
    const ModelConfig config = read_hf_config(directory + "/config.json").value();
    const std::map<std::string, Tensor> weights = bf16_weights(directory);
    const WeightLookup lookup = lookup_in(weights);
    // The GPU runs the weights as `kite build` stores them for CUDA: the norm scales folded in.
    const WeightLookup folded = test::folded_lookup(lookup);
    const SafetensorsFile logits_file =
        SafetensorsFile::open(directory + "/reference.safetensors").value();
    const auto reference = nlohmann::json::parse(read_file(directory + "/reference.json").value());
    const auto& prompts = reference.at("prompts");
    for (size_t p = 0; p < prompts.size(); ++p) {
      const auto prompt = prompts[p].at("prompt").get<std::vector<int32_t>>();
      const auto greedy = prompts[p].at("greedy_tokens").get<std::vector<int32_t>>();
      const int64_t max_length = int64_t(prompt.size() + greedy.size()) + 1;
      ModelRunner runner(BackendKind::kCuda, config, folded, DType::kBF16, max_length, true);
      const Matrix prefill = runner.step(prompt);
      ModelRunner cpu_runner(BackendKind::kCpu, config, lookup, DType::kF32, max_length);
      const Matrix cpu_prefill = cpu_runner.step(prompt);
      const std::vector<float> expected =
          to_float32(logits_file.tensor("logits_" + std::to_string(p)).value()).value();
      const size_t vocab = size_t(config.vocab_size);
      double worst = 0, worst_cpu = 0, worst_weights = 0;
      for (size_t t = 0; t < prompt.size(); ++t) {
        const std::vector<float> expected_row(expected.begin() + t * vocab,
                                              expected.begin() + (t + 1) * vocab);
        worst = std::max(worst, relative_difference(prefill[t], expected_row));
        worst_cpu = std::max(worst_cpu, relative_difference(prefill[t], cpu_prefill[t]));
        worst_weights = std::max(worst_weights, relative_difference(cpu_prefill[t], expected_row));
      }
      EXPECT_LT(worst, worst_weights + kBf16ActivationTolerance) << "prompt " << p;
      EXPECT_LT(worst_cpu, kBf16ActivationTolerance) << "prompt " << p;
      std::printf(
          "[ LOGITS   ] %s prompt %zu: max error of the logit scale: GPU vs transformers "
          "%.4f, GPU vs CPU (same bf16 weights) %.4f, CPU (bf16 weights) vs "
          "transformers %.4f\n",
          std::filesystem::path(directory).filename().c_str(), p, worst, worst_cpu, worst_weights);
      // Greedy continuation, one decode step per token (the decode attention kernel).
      const auto& steps = prompts[p].at("steps");
      std::vector<float> last = prefill.back();
      for (size_t k = 0; k < greedy.size(); ++k) {
        ++total_tokens;
        const int32_t chosen = int32_t(std::max_element(last.begin(), last.end()) - last.begin());
        if (chosen != greedy[k]) {
          double scale = 1;
          for (float value : last) scale = std::max(scale, double(std::abs(value)));
          EXPECT_LT(steps[k].at("margin").get<double>(), 2 * kBf16LogitTolerance * scale)
              << "prompt " << p << " step " << k << ": " << chosen << " vs " << greedy[k];
          break;
        }
        ++compared_tokens;
        last = runner.step({chosen}).front();
      }
    }
  }
  std::printf("[ TOKENS   ] %d of %d greedy tokens identical to transformers (bf16 engine)\n",
              compared_tokens, total_tokens);
  EXPECT_GE(compared_tokens, total_tokens * 3 / 4);
}

// The engines `kite build` makes, loaded as `kite run` loads them: each golden model converted to
// bfloat16 and built for both devices. The CUDA engine stores the norm scales folded into its
// weights, the CPU engine keeps them apart; fed the same tokens (the prompt, then 8 greedy steps of
// the CPU engine), the GPU's logits stay within the bf16 activation bound of the CPU's. The CUDA
// engines are built with --tune_decode, so the choices it keeps are checked too.
// Each golden model converted with `convert_flags`, built for the CPU and for the GPU (with
// `gpu_flags`): the GPU engine's logits over the prompts and 8 greedy steps against the CPU
// engine's, within the bf16 activations' error. `folded`: whether the GPU engine folds the norm
// scales (floating weights) or not (quantized ones).
void expect_built_engines_match(const std::string& convert_flags, const std::string& gpu_flags,
                                bool folded, const std::string& what) {
  const std::vector<std::string> models = golden_models();
  ASSERT_FALSE(models.empty()) << "no golden models";
  LoadOptions options;
  options.kv_cache_free_gpu_mem_fraction = 0.05;
  const std::string limits =
      " --max_batch_size 1 --max_input_len 64 --max_seq_len 96 --max_num_tokens 64";
  for (const std::string& directory : models) {
    SCOPED_TRACE(directory);
    const std::string checkpoint = test::temp_dir() + "/checkpoint";
    const test::CommandResult convert = test::run_kite(
        "convert --model_dir " + directory + " --output_dir " + checkpoint + " " + convert_flags);
    ASSERT_EQ(convert.exit_code, 0) << convert.output;
    const std::string cpu_dir = test::build_engine(checkpoint, "--device cpu" + limits);
    const std::string gpu_dir = test::build_engine(checkpoint, gpu_flags + limits);
    ASSERT_FALSE(cpu_dir.empty() || gpu_dir.empty());
    auto cpu = Engine::load(cpu_dir);
    ASSERT_TRUE(cpu.is_ok()) << cpu.status().message();
    auto gpu = Engine::load(gpu_dir, options);
    ASSERT_TRUE(gpu.is_ok()) << gpu.status().message();
    EXPECT_FALSE((*cpu)->config().norm_scales_folded);
    EXPECT_EQ((*gpu)->config().norm_scales_folded, folded);

    const auto reference = nlohmann::json::parse(read_file(directory + "/reference.json").value());
    double worst = 0;
    for (const auto& entry : reference.at("prompts")) {
      const auto prompt = entry.at("prompt").get<std::vector<int32_t>>();
      const int64_t max_length = int64_t(prompt.size()) + 9;
      ModelRunner gpu_runner(**gpu, max_length), cpu_runner(**cpu, max_length);
      Matrix gpu_rows = gpu_runner.step(prompt), cpu_rows = cpu_runner.step(prompt);
      for (int k = 0;; ++k) {
        for (size_t t = 0; t < cpu_rows.size(); ++t) {
          worst = std::max(worst, relative_difference(gpu_rows[t], cpu_rows[t]));
        }
        if (k == 8) break;
        const std::vector<float>& last = cpu_rows.back();
        const int32_t next = int32_t(std::max_element(last.begin(), last.end()) - last.begin());
        gpu_rows = gpu_runner.step({next});
        cpu_rows = cpu_runner.step({next});
      }
    }
    EXPECT_LT(worst, kBf16ActivationTolerance);
    std::printf(
        "[ LOGITS   ] %s: built CUDA engine vs CPU engine (%s), max error of the logit scale "
        "%.4f\n",
        std::filesystem::path(directory).filename().c_str(), what.c_str(), worst);
  }
}

TEST(CudaGolden, BuiltEnginesMatchTheCpuEngine) {
  KITE_REQUIRE_GPU();
  expect_built_engines_match("--dtype bfloat16", "--device cuda --tune_decode", true, "bf16");
}

// Weight-only quantized checkpoints (W8A16 per channel, W4A16 in groups of 32): the same quantized
// weights on both engines, so only the activations' rounding tells them apart. Prompts of more
// than 8 tokens run the dequantized copy, decode steps the GEMV.
TEST(CudaGolden, WeightOnlyEnginesMatchTheCpuEngine) {
  KITE_REQUIRE_GPU();
  expect_built_engines_match("--dtype bfloat16 --use_weight_only", "--device cuda", false,
                             "int8 per channel");
  expect_built_engines_match(
      "--dtype bfloat16 --use_weight_only --weight_only_precision int4 --per_group "
      "--group_size 32",
      "--device cuda", false, "int4, groups of 32");
}

// `kite build --tune_decode` times the one-row GEMMs' runners-up in the decode step: it reports
// each candidate's speed beside the current choices' and what the kept changes gained, and the
// engine it leaves keeps one choice per tuned shape, each a candidate the GEMM tuning timed.
TEST(CudaBuild, TuneDecodeTimesCandidatesInTheDecodeStep) {
  KITE_REQUIRE_GPU();
  const std::vector<std::string> models = golden_models();
  ASSERT_FALSE(models.empty()) << "no golden models";
  const std::string checkpoint = test::temp_dir() + "/checkpoint";
  const test::CommandResult convert =
      test::run_kite("convert --model_dir " + models.front() + " --output_dir " + checkpoint +
                     " --dtype bfloat16");
  ASSERT_EQ(convert.exit_code, 0) << convert.output;
  const std::string engine = test::temp_dir() + "/engine";
  const std::string log = test::temp_dir() + "/tuning.csv";
  const test::CommandResult build =
      test::run_kite("build --checkpoint_dir " + checkpoint + " --output_dir " + engine +
                     " --device cuda --tune_decode --tuning_log " + log +
                     " --max_batch_size 1 --max_input_len 64 --max_seq_len 96 --max_num_tokens 64");
  ASSERT_EQ(build.exit_code, 0) << build.output;
  EXPECT_NE(build.output.find("decode tuning: batch 1, 64 / 32 tokens, 3 runs of each candidate"),
            std::string::npos)
      << build.output;
  EXPECT_NE(build.output.find("tokens/s against"), std::string::npos) << build.output;
  EXPECT_NE(build.output.find("decode tuning: the kept changes gained"), std::string::npos)
      << build.output;
  const EngineConfig tuned = read_engine_config(engine).value();
  const std::string csv = read_file(log).value();
  for (const GemmChoice& choice : tuned.gemm_choices) {
    const std::string kernel =
        cuda::gemm_tactic_name({cuda::GemmAlgorithm(choice.algorithm), choice.variant});
    const std::string row = std::to_string(choice.max_tokens) + "," + std::to_string(choice.n) +
                            "," + std::to_string(choice.k) + ",";
    bool timed = false;
    for (size_t at = csv.find("\n" + row); at != std::string::npos;
         at = csv.find("\n" + row, at + 1)) {
      const size_t end = csv.find('\n', at + 1);
      timed = timed || csv.substr(at, end - at).find("," + kernel + ",") != std::string::npos;
    }
    EXPECT_TRUE(timed) << row << kernel;
  }
}

// The 8 reference prompts of SmolLM2 as one greedy batch on a CUDA engine and a CPU engine built by
// the commands from `checkpoint` (with `cpu_flags`): each continuation is compared up to its first
// difference, which must come at a step where llama.cpp's top-2 margin is within bf16 noise
// (test::expect_parting_undecided): against the CPU engine only while the CPU engine follows
// llama.cpp. Returns the CUDA engine (null after a failure).
std::unique_ptr<Engine> compare_smollm2_greedy(const nlohmann::json& fixture,
                                               const std::string& checkpoint,
                                               const std::string& cpu_flags) {
  const std::string limits = " --max_batch_size 8 --max_input_len 256 --max_seq_len 320";
  const std::string cpu_engine =
      test::build_engine(checkpoint, "--device cpu " + cpu_flags + limits);
  const std::string gpu_engine = test::build_engine(checkpoint, "--device cuda" + limits);
  if (cpu_engine.empty() || gpu_engine.empty()) return nullptr;
  auto cpu = Engine::load(cpu_engine);
  auto gpu = Engine::load(gpu_engine);
  EXPECT_TRUE(cpu.is_ok() && gpu.is_ok());
  if (!cpu.is_ok() || !gpu.is_ok()) return nullptr;
  const GenerationRequest request = test::smollm2_reference_request(fixture);
  // All 8 prompts as one batch on the GPU (prefill of different lengths, then batched decode).
  const auto gpu_results = generate(**gpu, request).value();
  const auto cpu_results = generate(**cpu, request).value();
  int same_as_cpu = 0, same_as_llama_cpp = 0;
  for (size_t p = 0; p < gpu_results.size(); ++p) {
    const auto& ours = gpu_results[p].output_ids;
    const auto& steps = fixture.at("greedy").at("prompts")[p].at("steps");
    const std::string what = "prompt " + std::to_string(p) + " parts from ";
    same_as_cpu += int(test::expect_parting_undecided(
        ours, cpu_results[p].output_ids, steps,
        test::llama_cpp_prefix(cpu_results[p].output_ids, steps), what + "the CPU engine"));
    same_as_llama_cpp += int(test::expect_parting_undecided(ours, test::llama_cpp_tokens(steps),
                                                            steps, SIZE_MAX, what + "llama.cpp"));
    std::printf("[ PROMPT %zu ] %s\n", p, (*gpu)->tokenizer().decode(ours).c_str());
    if (cpu_results[p].output_ids != ours) {
      std::printf("[ CPU    %zu ] %s\n", p,
                  (*cpu)->tokenizer().decode(cpu_results[p].output_ids).c_str());
    }
  }
  std::printf(
      "[ TOKENS   ] GPU bf16 vs CPU bf16-weight engine: %d of 256 leading tokens equal; vs "
      "llama.cpp f32: %d of 256\n",
      same_as_cpu, same_as_llama_cpp);
  return std::move(*gpu);
}

// SmolLM2-135M as `kite run --model` builds it: converted at its own precision (float32, the GGUF's
// dequantized values) and built for CUDA (bfloat16 by `--dtype auto`, the norm scales folded in
// float32 and rounded once; GEMM tuning) and for the CPU with the same bfloat16 weights unfolded;
// the 8 reference prompts greedily (compare_smollm2_greedy); then sampling.
TEST(CudaSmolLM2, GreedyTokensMatchCpuEngineAndLlamaCpp) {
  KITE_REQUIRE_GPU();
  if (test::demo_model().empty()) GTEST_SKIP() << "demo model not fetched";
  const nlohmann::json fixture = test::smollm2_reference();
  const std::string checkpoint = test::convert_demo_model("float32");
  ASSERT_FALSE(checkpoint.empty());
  std::unique_ptr<Engine> gpu = compare_smollm2_greedy(fixture, checkpoint, "--dtype bfloat16");
  ASSERT_TRUE(gpu);

  // Sampling on the GPU: the same seed repeats itself exactly (graphs replayed, counter-based
  // random stream), another seed gives another continuation; a repetition penalty runs too.
  GenerationRequest request = test::smollm2_reference_request(fixture);
  request.sampling = SamplingConfig{.temperature = 0.8f,
                                    .top_k = 40,
                                    .top_p = 0.95f,
                                    .min_p = 0.02f,
                                    .repetition_penalty = 1.1f,
                                    .seed = 7};
  const auto first = generate(*gpu, request).value();
  const auto second = generate(*gpu, request).value();
  request.sampling.seed = 8;
  const auto other = generate(*gpu, request).value();
  int differing = 0;
  for (size_t p = 0; p < first.size(); ++p) {
    EXPECT_EQ(first[p].output_ids, second[p].output_ids) << "prompt " << p;
    differing += first[p].output_ids != other[p].output_ids;
  }
  EXPECT_GE(differing, 4);
}

// A bfloat16 checkpoint (as most Hugging Face models are): the CUDA engine's folded weights are
// rounded twice (the checkpoint's value, then the product), under the same rule
// (docs/perf/cuda_llama3_8b.md, 2026-12-06, afternoon).
TEST(CudaSmolLM2, FromBfloat16CheckpointMatchesCpuEngineAndLlamaCpp) {
  KITE_REQUIRE_GPU();
  if (test::demo_model().empty()) GTEST_SKIP() << "demo model not fetched";
  const nlohmann::json fixture = test::smollm2_reference();
  const std::string checkpoint = test::convert_demo_model("bfloat16");
  ASSERT_FALSE(checkpoint.empty());
  EXPECT_TRUE(compare_smollm2_greedy(fixture, checkpoint, ""));
}

}  // namespace
}  // namespace kite
