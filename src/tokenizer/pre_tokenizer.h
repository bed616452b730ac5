// Pre-tokenizers of tokenizer.json ("pre_tokenizer"): split normalized text into the words the
// model encodes one by one, transforming them on the way (ByteLevel, Metaspace).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/status.h"

namespace kite {

// One word in the making. `at_text_start` records whether it begins at offset 0 of the original
// input, which Metaspace's prepend_scheme "first" looks at.
struct Piece {
  std::string text;
  bool at_text_start = false;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `pieces` by their splits. Empty pieces are dropped, as in the Rust library.
  virtual void pre_tokenize(std::vector<Piece>& pieces) const = 0;
};

Result<std::unique_ptr<PreTokenizer>> parse_pre_tokenizer(const nlohmann::json& spec);

}  // namespace kite
