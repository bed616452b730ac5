// A small Llama-family config and random float32 weights for it, shared by the model-level unit
// tests (forward pass, dumps). Weights are uniform in [-0.3, 0.3], RMSNorm scales in [0.5, 1.5],
// so that a missing scale or a wrong weight shows in the outputs.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>

#include "core/tensor.h"
#include "formats/model_config.h"
#include "kernels/cpu/rms_norm.h"
#include "model/llama.h"

namespace kite::test {

inline ModelConfig tiny_llama_config(int64_t layers = 2) {
  ModelConfig config;
  config.hidden_size = 32;
  config.intermediate_size = 48;
  config.num_hidden_layers = layers;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.head_dim = 8;
  config.vocab_size = 50;
  config.max_position_embeddings = 64;
  config.rms_norm_eps = 1e-5;
  config.rope_theta = 10000.0;
  return config;
}

inline std::map<std::string, Tensor> random_llama_weights(const ModelConfig& config,
                                                          uint32_t seed) {
  std::mt19937 generator(seed);
  std::map<std::string, Tensor> weights;
  for (const WeightInfo& info : model_weights(config)) {
    const bool norm = info.role == WeightRole::kNorm;
    std::uniform_real_distribution<float> distribution(norm ? 0.5f : -0.3f, norm ? 1.5f : 0.3f);
    Tensor tensor(DType::kF32, info.shape);
    for (int64_t i = 0; i < tensor.numel(); ++i)
      tensor.data_as<float>()[i] = distribution(generator);
    weights[info.name] = std::move(tensor);
  }
  return weights;
}

// `lookup` with the layers' RMSNorm scales folded into the q/k/v and gate/up weights, as
// `kite build` stores them in CUDA engines (cpu::fold_norm_scale), for load_llama_weights with
// norm_scales_folded; the products live as long as the returned lookup.
inline WeightLookup folded_lookup(WeightLookup lookup) {
  auto products = std::make_shared<std::map<std::string, Tensor>>();
  return [lookup = std::move(lookup), products](const std::string& name) -> Result<TensorView> {
    if (const auto found = products->find(name); found != products->end()) {
      return found->second.view();
    }
    KITE_ASSIGN_OR_RETURN(std::optional<Tensor> folded, cpu::fold_norm_scale(lookup, name));
    if (!folded) return lookup(name);
    return products->emplace(name, std::move(*folded)).first->second.view();
  };
}

}  // namespace kite::test
