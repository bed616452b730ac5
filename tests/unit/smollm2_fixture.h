// The demo model's llama.cpp reference (tests/fixtures/golden/llamacpp/smollm2_reference.json,
// scripts/golden/llamacpp_reference.sh) for tests that compare greedy continuations of SmolLM2:
// its 8 prompts, and the rule for where two bfloat16 forms of the model may part.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/engine.h"

namespace kite::test {

// A top-2 margin of llama.cpp's above this decides the greedy token against bfloat16 noise (its
// logits are about 20 in size; a few bf16 roundings of that are tenths). Many of SmolLM2's steps
// have margins below 0.1.
inline constexpr double kBf16DecisiveMargin = 0.5;

nlohmann::json smollm2_reference();
// The 8 prompts as one greedy request of 32 tokens without end ids, as llama.cpp ran them.
GenerationRequest smollm2_reference_request(const nlohmann::json& reference);

// The length of the common prefix of two greedy continuations of prompt `steps` (the reference's
// steps of that prompt). Where they part at step i < ours.size(), llama.cpp's margin at step i must
// be below kBf16DecisiveMargin, as long as i <= theirs_judged_to: the margin speaks for a context
// only while that context is llama.cpp's own (pass the steps for which `theirs` are llama.cpp's
// tokens, llama_cpp_prefix, or SIZE_MAX when `theirs` are llama.cpp's).
size_t expect_parting_undecided(const std::vector<int32_t>& ours,
                                const std::vector<int32_t>& theirs, const nlohmann::json& steps,
                                size_t theirs_judged_to, const std::string& what);
// How many leading `tokens` are llama.cpp's tokens of `steps`.
size_t llama_cpp_prefix(const std::vector<int32_t>& tokens, const nlohmann::json& steps);
// llama.cpp's tokens of `steps`.
std::vector<int32_t> llama_cpp_tokens(const nlohmann::json& steps);

}  // namespace kite::test
