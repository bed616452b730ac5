// Decoders of tokenizer.json ("decoder"): turn the token strings of a sequence of ids back into
// text (ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, WordPiece, BPEDecoder,
// Sequence), as the Rust library's decode_chain does.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/status.h"

namespace kite {

class Decoder {
 public:
  virtual ~Decoder() = default;
  // Transforms the token strings in place (their number may change).
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
  // Whether consecutive "<0xNN>" tokens are decoded together (ByteFallback), so that the text
  // of such a run is known only once the run ends.
  virtual bool joins_byte_tokens() const { return false; }
  // Whether the last token of a sequence decodes differently from the same token followed by
  // more (BPEDecoder drops the last word suffix instead of turning it into a space).
  virtual bool treats_last_token_apart() const { return false; }
};

// Whether `token` is a byte token as ByteFallback reads them ("<0x41>").
bool is_byte_fallback_token(std::string_view token);

Result<std::unique_ptr<Decoder>> parse_decoder(const nlohmann::json& spec);

}  // namespace kite
