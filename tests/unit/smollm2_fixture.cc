#include "smollm2_fixture.h"

#include <gtest/gtest.h>

#include "core/file.h"
#include "test_util.h"

namespace kite::test {

nlohmann::json smollm2_reference() {
  return nlohmann::json::parse(
      read_file(source_dir() + "/tests/fixtures/golden/llamacpp/smollm2_reference.json").value());
}

GenerationRequest smollm2_reference_request(const nlohmann::json& reference) {
  GenerationRequest request;
  request.sampling.temperature = 0.0f;
  request.stop.max_output_len = 32;  // no end ids: the reference continues past EOS
  for (const nlohmann::json& prompt : reference.at("greedy").at("prompts")) {
    request.prompts.push_back(prompt.at("prompt_tokens").get<std::vector<int32_t>>());
  }
  return request;
}

std::vector<int32_t> llama_cpp_tokens(const nlohmann::json& steps) {
  std::vector<int32_t> tokens;
  for (const nlohmann::json& step : steps) tokens.push_back(step.at("token").get<int32_t>());
  return tokens;
}

namespace {
size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return i;
}
}  // namespace

size_t llama_cpp_prefix(const std::vector<int32_t>& tokens, const nlohmann::json& steps) {
  return common_prefix(tokens, llama_cpp_tokens(steps));
}

size_t expect_parting_undecided(const std::vector<int32_t>& ours,
                                const std::vector<int32_t>& theirs, const nlohmann::json& steps,
                                size_t theirs_judged_to, const std::string& what) {
  const size_t i = common_prefix(ours, theirs);
  if (i < ours.size() && i <= theirs_judged_to) {
    EXPECT_LT(steps[i].at("margin").get<double>(), kBf16DecisiveMargin) << what << " at step " << i;
  }
  return i;
}

}  // namespace kite::test
