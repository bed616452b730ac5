// The Llama-family forward pass on the CPU backend: against a plain double-precision reference
// written here (full recomputation, no cache), prefill against token-by-token decode, and against
// the Hugging Face golden references in tests/fixtures/golden/hf.
#include "model/llama.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <tuple>

#include "core/file.h"
#include "core/half.h"
#include "formats/safetensors.h"
#include "kernels/backend_factory.h"
#include "kernels/cpu/rms_norm.h"
#include "test_util.h"
#include "tiny_llama.h"

namespace kite {
namespace {

using HostWeights = std::map<std::string, Tensor>;

using test::random_llama_weights;
using test::tiny_llama_config;

// ---- the naive reference: plain loops in double, one sequence, every position recomputed ----
using Matrix = std::vector<std::vector<double>>;  // [rows][cols]

const float* values(const HostWeights& weights, const std::string& name) {
  return weights.at(name).data_as<float>();
}

Matrix matmul_transposed(const Matrix& x, const float* weight, int64_t out, const float* bias) {
  Matrix result(x.size(), std::vector<double>(size_t(out)));
  const size_t in = x.front().size();
  for (size_t t = 0; t < x.size(); ++t) {
    for (int64_t n = 0; n < out; ++n) {
      double sum = bias ? bias[n] : 0.0;
      for (size_t i = 0; i < in; ++i) sum += x[t][i] * double(weight[size_t(n) * in + i]);
      result[t][size_t(n)] = sum;
    }
  }
  return result;
}

Matrix rms_norm(const Matrix& x, const float* weight, double eps) {
  Matrix result = x;
  for (auto& row : result) {
    double sum = 0;
    for (double value : row) sum += value * value;
    const double inverse = 1.0 / std::sqrt(sum / double(row.size()) + eps);
    for (size_t i = 0; i < row.size(); ++i) row[i] *= inverse * double(weight[i]);
  }
  return result;
}

void rotate(std::vector<double>& row, int64_t heads, int64_t head_dim,
            const std::vector<float>& inverse_frequencies, int64_t position) {
  const int64_t half = head_dim / 2;
  for (int64_t head = 0; head < heads; ++head) {
    double* x = row.data() + head * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      const double angle = double(position) * double(inverse_frequencies[size_t(i)]);
      const double first = x[i], second = x[i + half];
      x[i] = first * std::cos(angle) - second * std::sin(angle);
      x[i + half] = second * std::cos(angle) + first * std::sin(angle);
    }
  }
}

// Logits [tokens][vocab] of one sequence.
Matrix reference_logits(const ModelConfig& c, const HostWeights& w,
                        const std::vector<int32_t>& ids) {
  const int64_t T = int64_t(ids.size()), H = c.hidden_size, D = c.head_dim;
  const int64_t heads = c.num_attention_heads, kv_heads = c.num_key_value_heads;
  const std::vector<float> frequencies = rope_inverse_frequencies(c, T);
  Matrix x(size_t(T), std::vector<double>(size_t(H), 0.0));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < H; ++i) {
      x[size_t(t)][size_t(i)] = values(w, "model.embed_tokens.weight")[ids[size_t(t)] * H + i];
    }
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    auto bias = [&](const std::string& name) { return w.count(name) ? values(w, name) : nullptr; };
    const Matrix h = rms_norm(x, values(w, p + "input_layernorm.weight"), c.rms_norm_eps);
    Matrix q = matmul_transposed(h, values(w, p + "self_attn.q_proj.weight"), heads * D,
                                 bias(p + "self_attn.q_proj.bias"));
    Matrix k = matmul_transposed(h, values(w, p + "self_attn.k_proj.weight"), kv_heads * D,
                                 bias(p + "self_attn.k_proj.bias"));
    const Matrix v = matmul_transposed(h, values(w, p + "self_attn.v_proj.weight"), kv_heads * D,
                                       bias(p + "self_attn.v_proj.bias"));
    for (int64_t t = 0; t < T; ++t) {
      rotate(q[size_t(t)], heads, D, frequencies, t);
      rotate(k[size_t(t)], kv_heads, D, frequencies, t);
    }
    Matrix attended(size_t(T), std::vector<double>(size_t(heads * D), 0.0));
    const int64_t window = c.sliding_window.value_or(0);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t head = 0; head < heads; ++head) {
        const int64_t kv_head = head / (heads / kv_heads);
        const int64_t first = window > 0 ? std::max<int64_t>(0, t - window + 1) : 0;
        std::vector<double> scores;
        for (int64_t j = first; j <= t; ++j) {
          double dot = 0;
          for (int64_t i = 0; i < D; ++i) {
            dot += q[size_t(t)][size_t(head * D + i)] * k[size_t(j)][size_t(kv_head * D + i)];
          }
          scores.push_back(dot / std::sqrt(double(D)));
        }
        const double largest = *std::max_element(scores.begin(), scores.end());
        double total = 0;
        for (double& score : scores) total += (score = std::exp(score - largest));
        for (int64_t j = first; j <= t; ++j) {
          for (int64_t i = 0; i < D; ++i) {
            attended[size_t(t)][size_t(head * D + i)] +=
                scores[size_t(j - first)] / total * v[size_t(j)][size_t(kv_head * D + i)];
          }
        }
      }
    }
    const Matrix o = matmul_transposed(attended, values(w, p + "self_attn.o_proj.weight"), H,
                                       bias(p + "self_attn.o_proj.bias"));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < H; ++i) x[size_t(t)][size_t(i)] += o[size_t(t)][size_t(i)];
    const Matrix h2 = rms_norm(x, values(w, p + "post_attention_layernorm.weight"), c.rms_norm_eps);
    const int64_t F = c.intermediate_size;
    const Matrix gate = matmul_transposed(h2, values(w, p + "mlp.gate_proj.weight"), F, nullptr);
    Matrix up = matmul_transposed(h2, values(w, p + "mlp.up_proj.weight"), F, nullptr);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t i = 0; i < F; ++i) {
        const double g = gate[size_t(t)][size_t(i)];
        up[size_t(t)][size_t(i)] *= g / (1.0 + std::exp(-g));
      }
    }
    const Matrix down = matmul_transposed(up, values(w, p + "mlp.down_proj.weight"), H, nullptr);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < H; ++i) x[size_t(t)][size_t(i)] += down[size_t(t)][size_t(i)];
  }
  const Matrix final_hidden = rms_norm(x, values(w, "model.norm.weight"), c.rms_norm_eps);
  const std::string head = c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  return matmul_transposed(final_hidden, values(w, head), c.vocab_size, nullptr);
}

// ---- running the model: a KV cache with a fixed run of blocks per sequence ----
class ModelRunner {
 public:
  ModelRunner(const ModelConfig& config, const WeightLookup& lookup, int64_t sequences,
              int64_t max_length, const WeightOnlyConfig& weight_only = {},
              bool fold_norm_scales = false) {
    backend_ = std::move(make_backend(BackendKind::kCpu).value());
    LlamaWeights weights =
        load_llama_weights(*backend_, config,
                           fold_norm_scales ? test::folded_lookup(lookup) : lookup, "test",
                           weight_only, fold_norm_scales)
            .value();
    EXPECT_EQ(weights.norm_scales_folded, fold_norm_scales);
    model_ = std::make_unique<LlamaModel>(*backend_, config, std::move(weights));
    cache_.dtype = DType::kF32;
    cache_.num_layers = config.num_hidden_layers;
    cache_.num_kv_heads = config.num_key_value_heads;
    cache_.head_dim = config.head_dim;
    cache_.block_size = 4;
    blocks_per_sequence_ = (max_length + cache_.block_size - 1) / cache_.block_size;
    cache_.num_blocks = sequences * blocks_per_sequence_;
    cache_buffer_ =
        backend_->allocate(size_t(cache_.num_layers * cache_.layer_elements()) * sizeof(float))
            .value();
    cache_.data = cache_buffer_.data();
    lengths_.assign(size_t(sequences), 0);
  }

  // Appends `new_tokens[s]` to each sequence s (empty: the sequence sits out) in one step and
  // returns the logits of every new token, per sequence. `logit_bias`: StepInput's entries, rows
  // counted over the whole step.
  std::vector<Matrix> step(const std::vector<std::vector<int32_t>>& new_tokens,
                           const std::vector<LogitBiasEntry>& logit_bias = {}) {
    return try_step(new_tokens, logit_bias).value();
  }
  Result<std::vector<Matrix>> try_step(const std::vector<std::vector<int32_t>>& new_tokens,
                                       const std::vector<LogitBiasEntry>& logit_bias) {
    StepInput input;
    input.logit_bias = logit_bias;
    input.query_start.push_back(0);
    std::vector<std::pair<size_t, int32_t>> row_owner;
    for (size_t s = 0; s < new_tokens.size(); ++s) {
      if (new_tokens[s].empty()) continue;
      for (int32_t id : new_tokens[s]) {
        const int32_t position = lengths_[s]++;
        input.token_ids.push_back(id);
        input.positions.push_back(position);
        const int32_t block =
            int32_t(s) * int32_t(blocks_per_sequence_) + position / int32_t(cache_.block_size);
        input.slot_mapping.push_back(block * int32_t(cache_.block_size) +
                                     position % int32_t(cache_.block_size));
        input.logit_rows.push_back(int32_t(input.token_ids.size()) - 1);
        row_owner.emplace_back(s, id);
      }
      input.query_start.push_back(int32_t(input.token_ids.size()));
      input.context_length.push_back(lengths_[s]);
      // Blocks listed in reverse sequence order would work as well; the order is the table's.
      for (int64_t b = 0; b < blocks_per_sequence_; ++b) {
        input.block_table.push_back(int32_t(int64_t(s) * blocks_per_sequence_ + b));
      }
    }
    input.max_blocks_per_sequence = blocks_per_sequence_;
    KITE_ASSIGN_OR_RETURN(const std::vector<float> logits, model_->forward(input, cache_));
    std::vector<Matrix> result(new_tokens.size());
    const int64_t vocab = model_->config().vocab_size;
    for (size_t r = 0; r < row_owner.size(); ++r) {
      result[row_owner[r].first].emplace_back(logits.begin() + int64_t(r) * vocab,
                                              logits.begin() + int64_t(r + 1) * vocab);
    }
    return result;
  }

 private:
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<LlamaModel> model_;
  KvCacheView cache_;
  DeviceBuffer cache_buffer_;
  int64_t blocks_per_sequence_ = 0;
  std::vector<int32_t> lengths_;
};

WeightLookup lookup_in(const HostWeights& weights) {
  return [&weights](const std::string& name) -> Result<TensorView> {
    auto found = weights.find(name);
    if (found == weights.end()) return not_found("no weight " + name);
    return found->second.view();
  };
}

// max |a - b| / max(1, max |b|) over the row.
double relative_difference(const std::vector<double>& a, const std::vector<double>& b) {
  double difference = 0, largest = 1;
  for (size_t i = 0; i < a.size(); ++i) {
    difference = std::max(difference, std::abs(a[i] - b[i]));
    largest = std::max(largest, std::abs(b[i]));
  }
  return difference / largest;
}

std::vector<std::vector<int32_t>> test_prompts(int64_t vocab) {
  std::mt19937 generator(7);
  std::vector<std::vector<int32_t>> prompts;
  for (int length : {11, 3, 19}) {
    std::vector<int32_t>& prompt = prompts.emplace_back();
    for (int i = 0; i < length; ++i) prompt.push_back(int32_t(generator() % uint32_t(vocab)));
  }
  return prompts;
}

void check_against_reference(const ModelConfig& config, bool fold);

// Prefill and decode against the naive reference, with the norm scales apart and folded into the
// weights (the fused ops' CPU twins).
void check_against_reference(const ModelConfig& config) {
  for (const bool fold : {false, true}) {
    SCOPED_TRACE(fold ? "norm scales folded" : "norm scales apart");
    check_against_reference(config, fold);
  }
}

void check_against_reference(const ModelConfig& config, bool fold) {
  const HostWeights weights = random_llama_weights(config, 3);
  const auto prompts = test_prompts(config.vocab_size);
  ModelRunner batched(config, lookup_in(weights), int64_t(prompts.size()), 32, {}, fold);
  const std::vector<Matrix> prefill = batched.step(prompts);
  ModelRunner one_by_one(config, lookup_in(weights), int64_t(prompts.size()), 32, {}, fold);
  std::vector<Matrix> decoded(prompts.size());
  for (size_t position = 0; position < 19; ++position) {
    std::vector<std::vector<int32_t>> tokens(prompts.size());
    for (size_t s = 0; s < prompts.size(); ++s) {
      if (position < prompts[s].size()) tokens[s] = {prompts[s][position]};
    }
    const std::vector<Matrix> step = one_by_one.step(tokens);
    for (size_t s = 0; s < prompts.size(); ++s) {
      for (const auto& row : step[s]) decoded[s].push_back(row);
    }
  }
  for (size_t s = 0; s < prompts.size(); ++s) {
    const Matrix expected = reference_logits(config, weights, prompts[s]);
    ASSERT_EQ(prefill[s].size(), prompts[s].size());
    ASSERT_EQ(decoded[s].size(), prompts[s].size());
    for (size_t t = 0; t < prompts[s].size(); ++t) {
      EXPECT_LT(relative_difference(prefill[s][t], expected[t]), 1e-4)
          << "sequence " << s << " token " << t;
      EXPECT_LT(relative_difference(decoded[s][t], prefill[s][t]), 1e-5)
          << "sequence " << s << " token " << t;
    }
  }
}

TEST(LlamaForward, MatchesNaiveReferenceGqa) {
  check_against_reference(tiny_llama_config());
}

TEST(LlamaForward, MatchesNaiveReferenceBiasesTiedSlidingWindow) {
  ModelConfig config = tiny_llama_config();
  config.architecture = Architecture::kQwen2;
  config.attention_bias = true;
  config.tie_word_embeddings = true;
  config.sliding_window = 5;
  check_against_reference(config);
}

TEST(LlamaForward, MatchesNaiveReferenceOutputBiasLinearRope) {
  ModelConfig config = tiny_llama_config();
  config.num_key_value_heads = 4;
  config.attention_bias = true;
  config.attention_output_bias = true;
  config.rope_scaling.type = RopeScalingType::kLinear;
  config.rope_scaling.factor = 2.0;
  check_against_reference(config);
}

TEST(LlamaForward, LogitBiasIsAddedAndNothingElseChanges) {
  const ModelConfig config = tiny_llama_config();
  const HostWeights weights = random_llama_weights(config, 3);
  const auto prompts = test_prompts(config.vocab_size);  // 11, 3 and 19 tokens: rows 0..32
  ModelRunner plain(config, lookup_in(weights), int64_t(prompts.size()), 32);
  ModelRunner biased(config, lookup_in(weights), int64_t(prompts.size()), 32);
  const float minus_infinity = -std::numeric_limits<float>::infinity();
  // A bias at (sequence, token in it, vocabulary id); its logit row is the step's row of that
  // token. A (row, token) listed twice gets the sum (exact here); -inf on top of a bias bans.
  struct Bias {
    int32_t sequence, index, token;
    float bias;
  };
  const std::vector<Bias> prefill_biases = {{0, 0, 5, minus_infinity}, {1, 1, 49, 1.5f},
                                            {1, 1, 0, -100.0f},        {2, 18, 17, 2.0f},
                                            {1, 1, 49, 2.25f},         {2, 18, 17, minus_infinity}};
  const std::vector<Bias> decode_biases = {
      {1, 0, 3, minus_infinity}, {2, 0, 3, 0.5f}, {2, 0, 4, minus_infinity}, {0, 0, 4, 100.0f}};
  for (const bool prefill : {true, false}) {
    const auto& biases = prefill ? prefill_biases : decode_biases;
    std::vector<std::vector<int32_t>> tokens = prompts;
    if (!prefill) tokens = {{1}, {2}, {3}};
    std::vector<LogitBiasEntry> entries;
    std::map<std::tuple<int32_t, int32_t, int32_t>, float> summed;
    for (const Bias& bias : biases) {
      int32_t row = bias.index;
      for (int32_t s = 0; s < bias.sequence; ++s) row += int32_t(tokens[size_t(s)].size());
      entries.push_back({row, bias.token, bias.bias});
      summed[{bias.sequence, bias.index, bias.token}] += bias.bias;
    }
    std::vector<Matrix> expected = plain.step(tokens);
    for (const auto& [at, bias] : summed) {
      auto& logit =
          expected[size_t(std::get<0>(at))][size_t(std::get<1>(at))][size_t(std::get<2>(at))];
      logit = double(float(logit) + bias);
    }
    // The same computation otherwise: bit for bit on the CPU.
    EXPECT_EQ(biased.step(tokens, entries), expected) << (prefill ? "prefill" : "decode");
  }
  // Entries outside the logits, NaN and +inf are refused before the step runs.
  for (const LogitBiasEntry& bad :
       std::vector<LogitBiasEntry>{{0, 50, 1.0f},
                                   {0, -1, 1.0f},
                                   {3, 0, 1.0f},
                                   {-1, 0, 1.0f},
                                   {0, 1, std::numeric_limits<float>::quiet_NaN()},
                                   {0, 1, std::numeric_limits<float>::infinity()}}) {
    ModelRunner runner(config, lookup_in(weights), 1, 8);
    const auto result = runner.try_step({{1, 2, 3}}, {bad});
    ASSERT_FALSE(result.is_ok());
    EXPECT_EQ(result.status().code(), StatusCode::kInvalidArgument);
  }
}

TEST(LlamaWeights, FoldedNormOfNamesTheNormBeforeEachProjection) {
  for (const char* projection : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}) {
    EXPECT_EQ(folded_norm_of("model.layers.3." + std::string(projection) + ".weight"),
              "model.layers.3.input_layernorm.weight");
  }
  for (const char* projection : {"mlp.gate_proj", "mlp.up_proj"}) {
    EXPECT_EQ(folded_norm_of("model.layers.12." + std::string(projection) + ".weight"),
              "model.layers.12.post_attention_layernorm.weight");
  }
  for (const char* other :
       {"model.layers.3.self_attn.o_proj.weight", "model.layers.3.mlp.down_proj.weight",
        "model.layers.3.self_attn.q_proj.bias", "model.layers.3.input_layernorm.weight",
        "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
        "model.layers.self_attn.q_proj.weight"}) {
    EXPECT_EQ(folded_norm_of(other), "") << other;
  }
}

// Each product rounded once to the weight's dtype: bf16(w * s) from the bf16 values.
TEST(LlamaWeights, FoldNormScaleRoundsEachProductOnce) {
  const ModelConfig config = tiny_llama_config();
  std::map<std::string, Tensor> weights;
  for (const auto& [name, tensor] : random_llama_weights(config, 3)) {
    Tensor rounded(DType::kBF16, tensor.shape());
    for (int64_t i = 0; i < tensor.numel(); ++i) {
      rounded.data_as<uint16_t>()[i] = float_to_bf16(tensor.data_as<float>()[i]);
    }
    weights.emplace(name, std::move(rounded));
  }
  const WeightLookup lookup = [&weights](const std::string& name) -> Result<TensorView> {
    return weights.at(name).view();
  };
  const std::string name = "model.layers.1.mlp.up_proj.weight";
  const std::optional<Tensor> folded = cpu::fold_norm_scale(lookup, name).value();
  ASSERT_TRUE(folded.has_value());
  const Tensor& weight = weights.at(name);
  const Tensor& scale = weights.at("model.layers.1.post_attention_layernorm.weight");
  ASSERT_EQ(folded->shape(), weight.shape());
  for (int64_t i = 0; i < weight.numel(); ++i) {
    const float product = bf16_to_float(weight.data_as<uint16_t>()[i]) *
                          bf16_to_float(scale.data_as<uint16_t>()[i % config.hidden_size]);
    ASSERT_EQ(folded->data_as<uint16_t>()[i], float_to_bf16(product)) << i;
  }
  EXPECT_FALSE(cpu::fold_norm_scale(lookup, "model.layers.1.mlp.down_proj.weight")->has_value());
  // A norm of another dtype than the weight's cannot be folded in.
  weights.at("model.layers.1.post_attention_layernorm.weight") =
      Tensor(DType::kF32, {config.hidden_size});
  EXPECT_EQ(cpu::fold_norm_scale(lookup, name).status().code(), StatusCode::kUnsupported);
}

TEST(LlamaForward, RefusesWeightsOfTheWrongShape) {
  const ModelConfig config = tiny_llama_config();
  HostWeights weights = random_llama_weights(config, 1);
  weights["model.layers.1.mlp.up_proj.weight"] = Tensor(DType::kF32, {48, 31});
  auto backend = std::move(make_backend(BackendKind::kCpu).value());
  Result<LlamaWeights> loaded = load_llama_weights(*backend, config, lookup_in(weights), "m");
  ASSERT_FALSE(loaded.is_ok());
  EXPECT_NE(loaded.status().message().find("model.layers.1.mlp.up_proj.weight"), std::string::npos);
}

// Weight-only quantization swaps the linear weights at load time and nothing else: a model with
// quantized weights gives, bit for bit, the logits of the same model whose float32 weights are the
// dequantized values; and those stay close to the unquantized model's.
TEST(LlamaForward, WeightOnlyQuantizedModelIsItsDequantizedModel) {
  ModelConfig config = tiny_llama_config();
  config.attention_bias = true;  // a bias after a quantized weight
  const HostWeights original = random_llama_weights(config, 5);
  const auto prompts = test_prompts(config.vocab_size);
  ModelRunner plain(config, lookup_in(original), int64_t(prompts.size()), 32);
  const std::vector<Matrix> plain_logits = plain.step(prompts);
  for (const WeightOnlyConfig& weight_only : {WeightOnlyConfig{WeightOnlyPrecision::kInt8, 0},
                                              WeightOnlyConfig{WeightOnlyPrecision::kInt4, 16}}) {
    HostWeights quantized, dequantized;
    for (const WeightInfo& info : model_weights(config)) {
      const Tensor& weight = original.at(info.name);
      if (!is_weight_only_quantized(info, weight_only)) {
        quantized[info.name] = Tensor::copy_of(weight.view());
        dequantized[info.name] = Tensor::copy_of(weight.view());
        continue;
      }
      QuantizedWeight parts = quantize_weight_only(weight.view(), DType::kF32, weight_only).value();
      dequantized[info.name] =
          dequantize_weight_only(parts.values.view(), parts.scales.view(), weight_only);
      quantized[info.name] = std::move(parts.values);
      quantized[weight_scale_name(info.name)] = std::move(parts.scales);
    }
    ModelRunner runner(config, lookup_in(quantized), int64_t(prompts.size()), 32, weight_only);
    ModelRunner reference(config, lookup_in(dequantized), int64_t(prompts.size()), 32);
    const std::vector<Matrix> logits = runner.step(prompts);
    EXPECT_EQ(logits, reference.step(prompts)) << describe_weight_only(weight_only);
    // A decode step of every sequence too (the few-token path of the quantized linear).
    EXPECT_EQ(runner.step({{1}, {2}, {3}}), reference.step({{1}, {2}, {3}}));
    // The tiny model's weights are uniform in [-0.3, 0.3]: an int8 step is 0.3 / 127 and an int4
    // step 0.3 / 7, whose errors, over two layers, move its logits by about 2.5% and 35%.
    const double tolerance = weight_only.precision == WeightOnlyPrecision::kInt8 ? 0.05 : 0.6;
    double worst = 0;
    for (size_t s = 0; s < prompts.size(); ++s) {
      for (size_t row = 0; row < logits[s].size(); ++row) {
        worst = std::max(worst, relative_difference(logits[s][row], plain_logits[s][row]));
      }
    }
    EXPECT_GT(worst, 0.0) << describe_weight_only(weight_only) << " changed nothing";
    EXPECT_LT(worst, tolerance) << describe_weight_only(weight_only);
  }
  // Quantized tensors under a config that does not say so are refused, and so is the reverse.
  auto backend = std::move(make_backend(BackendKind::kCpu).value());
  HostWeights quantized;
  const WeightOnlyConfig int8{WeightOnlyPrecision::kInt8, 0};
  for (const WeightInfo& info : model_weights(config)) {
    quantized[info.name] = Tensor::copy_of(original.at(info.name).view());
  }
  const Result<LlamaWeights> floats_as_int8 =
      load_llama_weights(*backend, config, lookup_in(quantized), "m", int8);
  ASSERT_FALSE(floats_as_int8.is_ok());
  EXPECT_NE(floats_as_int8.status().message().find("stores it as int8"), std::string::npos)
      << floats_as_int8.status().message();
}

TEST(RopeFrequencies, FollowTransformersRules) {
  ModelConfig config = tiny_llama_config();
  config.head_dim = 4;
  std::vector<float> plain = rope_inverse_frequencies(config, 1);
  ASSERT_EQ(plain.size(), 2u);
  EXPECT_FLOAT_EQ(plain[0], 1.0f);
  EXPECT_FLOAT_EQ(plain[1], 0.01f);  // 1 / 10000^(2/4)
  config.rope_scaling.type = RopeScalingType::kDynamic;
  config.rope_scaling.factor = 2.0;
  EXPECT_EQ(rope_inverse_frequencies(config, 64), plain);  // within max_position_embeddings
  // Past it: base = 10000 * (2 * 128 / 64 - 1)^(4 / 2) = 90000.
  EXPECT_NEAR(rope_inverse_frequencies(config, 128)[1], 1.0 / 300.0, 1e-7);
}

// YaRN: transformers' _compute_yarn_parameters for three configs, as
// scripts/golden/yarn_reference.py records them (float32; within a few ulps of pow's rounding).
TEST(RopeFrequencies, YarnFollowsTransformers) {
  struct Case {
    int64_t head_dim;
    double theta;
    RopeScaling scaling;
    double attention_factor;
    std::vector<float> expected;
  };
  RopeScaling first{.type = RopeScalingType::kYarn, .factor = 4.0};
  first.original_max_position_embeddings = 8192;
  RopeScaling second{.type = RopeScalingType::kYarn, .factor = 16.0};
  second.original_max_position_embeddings = 4096;
  second.beta_fast = 16.0;
  second.beta_slow = 2.0;
  second.mscale = 0.707;
  second.mscale_all_dim = 1.0;
  second.truncate = false;
  RopeScaling third{.type = RopeScalingType::kYarn, .factor = 2.0};
  third.original_max_position_embeddings = 1024;
  third.attention_factor = 1.25;
  const std::vector<Case> cases = {
      {64,
       1000000.0,
       first,
       1.138629436111989,
       {1.0f,
        0.649381638f,
        0.421696514f,
        0.273841977f,
        0.177827939f,
        0.115478203f,
        0.0749894157f,
        0.0486967526f,
        0.0316227786f,
        0.0188239794f,
        0.0111126788f,
        0.00649473211f,
        0.00374894217f,
        0.00213018246f,
        0.00118568679f,
        0.000641636085f,
        0.000333333359f,
        0.000162345415f,
        0.000105424137f,
        6.84604893e-05f,
        4.44569851e-05f,
        2.88695519e-05f,
        1.87473561e-05f,
        1.21741887e-05f,
        7.90569356e-06f,
        5.13381246e-06f,
        3.33380399e-06f,
        2.16491071e-06f,
        1.40585337e-06f,
        9.12935377e-07f,
        5.92843435e-07f,
        3.84981632e-07f}},
      {128,
       10000.0,
       second,
       0.9363975061530204,
       {1.0f,
        0.865964353f,
        0.749894202f,
        0.649381638f,
        0.562341332f,
        0.486967534f,
        0.421696514f,
        0.365174115f,
        0.316227764f,
        0.273841977f,
        0.237137392f,
        0.2053525f,
        0.177827939f,
        0.153992653f,
        0.133352146f,
        0.115478203f,
        0.100000001f,
        0.0865964293f,
        0.0749894157f,
        0.0649381652f,
        0.0562341288f,
        0.0486967526f,
        0.0421696492f,
        0.0365174115f,
        0.0316227786f,
        0.0273841973f,
        0.0233459547f,
        0.0188844092f,
        0.0151994536f,
        0.0121630579f,
        0.00966756698f,
        0.00762252882f,
        0.0059520239f,
        0.00459239073f,
        0.00349030481f,
        0.00260115135f,
        0.0018876493f,
        0.00131868559f,
        0.00086833199f,
        0.000515014457f,
        0.000240811118f,
        0.00017115123f,
        0.000148210864f,
        0.000128345317f,
        0.000111142464f,
        9.62454142e-05f,
        8.33450904e-05f,
        7.21738688e-05f,
        6.2500003e-05f,
        5.4122771e-05f,
        4.68683866e-05f,
        4.05863539e-05f,
        3.51463314e-05f,
        3.04354689e-05f,
        2.63560341e-05f,
        2.28233821e-05f,
        1.97642366e-05f,
        1.71151223e-05f,
        1.48210866e-05f,
        1.28345328e-05f,
        1.11142463e-05f,
        9.62454033e-06f,
        8.3345094e-06f,
        7.21738797e-06f}},
      {32,
       500000.0,
       third,
       1.25,
       {1.0f, 0.440366626f, 0.177762523f, 0.0711642504f, 0.028204523f, 0.0110402945f,
        0.00425405474f, 0.00160572305f, 0.000707106723f, 0.000311386219f, 0.000137124094f,
        6.03848712e-05f, 2.65914823e-05f, 1.17099989e-05f, 5.15669262e-06f, 2.27083524e-06f}},
  };
  for (const Case& c : cases) {
    ModelConfig config = tiny_llama_config();
    config.head_dim = c.head_dim;
    config.rope_theta = c.theta;
    config.rope_scaling = c.scaling;
    const std::vector<float> frequencies = rope_inverse_frequencies(config, 1);
    ASSERT_EQ(frequencies.size(), c.expected.size()) << c.head_dim;
    for (size_t i = 0; i < frequencies.size(); ++i) {
      EXPECT_NEAR(frequencies[i], c.expected[i], 4e-7 * c.expected[i]) << c.head_dim << " " << i;
    }
    EXPECT_FLOAT_EQ(rope_attention_scaling(config), float(c.attention_factor)) << c.head_dim;
  }
  EXPECT_EQ(rope_attention_scaling(tiny_llama_config()), 1.0f);
}

// ---- Hugging Face golden references ----
// Each model as loaded (the CPU backend keeps the norm scales apart) and with the scales folded
// into the QKV and gate/up weights, as CUDA runs it (the fused ops' CPU twins).
class LlamaGolden : public testing::TestWithParam<bool> {};

TEST_P(LlamaGolden, MatchesTransformers) {
  const bool fold = GetParam();
  const std::string root = test::source_dir() + "/tests/fixtures/golden/hf";
  std::vector<std::string> models;
  if (is_directory(root)) {
    for (const auto& entry : std::filesystem::directory_iterator(root)) {
      if (path_exists(entry.path().string() + "/reference.json")) {
        models.push_back(entry.path().string());
      }
    }
  }
  if (models.empty()) GTEST_SKIP() << "no golden models in " << root;
  std::sort(models.begin(), models.end());
  for (const std::string& directory : models) {
    SCOPED_TRACE(directory);
    const ModelConfig config = read_hf_config(directory + "/config.json").value();
    const SafetensorsFile file = SafetensorsFile::open(directory + "/model.safetensors").value();
    const SafetensorsFile logits_file =
        SafetensorsFile::open(directory + "/reference.safetensors").value();
    const auto reference = nlohmann::json::parse(read_file(directory + "/reference.json").value());
    const auto& prompts = reference.at("prompts");
    const int64_t new_tokens = reference.at("new_tokens").get<int64_t>();
    int64_t longest = 0;
    for (const auto& prompt : prompts)
      longest = std::max<int64_t>(longest, prompt.at("prompt").size());
    const WeightLookup lookup = [&file](const std::string& name) { return file.tensor(name); };
    // Each prompt alone, like the reference: dynamic NTK RoPE depends on the step's longest
    // sequence.
    for (size_t p = 0; p < prompts.size(); ++p) {
      ModelRunner runner(config, lookup, 1, longest + new_tokens, {}, fold);
      const auto prompt = prompts[p].at("prompt").get<std::vector<int32_t>>();
      const Matrix prefill = runner.step({prompt}).front();
      const std::vector<float> expected =
          to_float32(logits_file.tensor("logits_" + std::to_string(p)).value()).value();
      const int64_t vocab = config.vocab_size;
      for (size_t t = 0; t < prompt.size(); ++t) {
        std::vector<double> expected_row(expected.begin() + int64_t(t) * vocab,
                                         expected.begin() + int64_t(t + 1) * vocab);
        EXPECT_LT(relative_difference(prefill[t], expected_row), 1e-4)
            << "prompt " << p << " token " << t;
      }
      // Greedy continuation; a step whose top-2 margin is within float32 noise may flip, after
      // which the rest of the sequence is not comparable.
      const auto greedy = prompts[p].at("greedy_tokens").get<std::vector<int32_t>>();
      const auto& steps = prompts[p].at("steps");
      std::vector<double> last = prefill.back();
      for (size_t k = 0; k < greedy.size(); ++k) {
        const int32_t chosen = int32_t(std::max_element(last.begin(), last.end()) - last.begin());
        if (chosen != greedy[k]) {
          EXPECT_LT(steps[k].at("margin").get<double>(), 1e-3)
              << "prompt " << p << " step " << k << ": " << chosen << " vs " << greedy[k];
          break;
        }
        last = runner.step({{chosen}}).front().front();
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(NormScales, LlamaGolden, testing::Bool(),
                         [](const testing::TestParamInfo<bool>& param_info) {
                           return param_info.param ? "folded" : "apart";
                         });

}  // namespace
}  // namespace kite
