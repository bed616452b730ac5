// Normalizers of tokenizer.json ("normalizer"): text -> text before pre-tokenization. Offsets
// are not tracked: Kite needs the ids, not the alignments.
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "core/status.h"

namespace kite {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& text) const = 0;
};

// Builds the normalizer described by `spec` (a JSON object with a "type"), or says which
// component is unsupported or malformed.
Result<std::unique_ptr<Normalizer>> parse_normalizer(const nlohmann::json& spec);

}  // namespace kite
