// Decoders of tokenizer.json ("decoder"): turn the token strings of a sequence of ids back into
// text (ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, WordPiece, BPEDecoder,
// Sequence), as the Rust library's decode_chain does.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/status.h"

namespace kite {

class Decoder {
 public:
  virtual ~Decoder() = default;
  // Transforms the token strings in place (their number may change).
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

Result<std::unique_ptr<Decoder>> parse_decoder(const nlohmann::json& spec);

}  // namespace kite
