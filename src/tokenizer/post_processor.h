// Post-processors of tokenizer.json ("post_processor"): add the special tokens around an
// encoded sequence (TemplateProcessing, RobertaProcessing, BertProcessing); ByteLevel only
// adjusts offsets and leaves ids alone.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/status.h"

namespace kite {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Adds the special tokens of a single sequence to `ids` when `add_special_tokens` is set.
  virtual void process(std::vector<int32_t>& ids, bool add_special_tokens) const = 0;
};

Result<std::unique_ptr<PostProcessor>> parse_post_processor(const nlohmann::json& spec);

}  // namespace kite
