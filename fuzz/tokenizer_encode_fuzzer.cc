// libFuzzer target: encode and decode arbitrary bytes with two small fixed tokenizers. For the
// byte-level one (no normalizer), decoding must give back the input, after invalid UTF-8 is
// replaced by U+FFFD; for both, streaming must reproduce decode.
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace {

// A GPT-2 style tokenizer: the 256 byte characters, a few merges, one special token.
std::string byte_level_json() {
  nlohmann::json vocab = nlohmann::json::object();
  const auto& characters = kite::unicode::byte_to_characters();
  for (int byte = 0; byte < 256; ++byte) vocab[characters[byte]] = byte;
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"\xc4\xa0", "t"}, {"h", "e"}, {"\xc4\xa0t", "he"}, {"i", "n"},
      {"\xc4\xa0", "a"}, {"e", "r"}, {"o", "n"},          {"\xc4\xa0", "\xc4\xa0"}};
  nlohmann::json merge_list = nlohmann::json::array();
  for (const auto& [left, right] : merges) {
    if (!vocab.contains(left + right)) vocab[left + right] = int(vocab.size());
    merge_list.push_back(left + " " + right);
  }
  const nlohmann::json spec = {
      {"version", "1.0"},
      {"added_tokens",
       {{{"id", int(vocab.size())},
         {"content", "<|endoftext|>"},
         {"special", true},
         {"normalized", false}}}},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}}}};
  return spec.dump();
}

// A Llama 2 style tokenizer: normalizer, byte fallback, unknown token, Strip decoder.
std::string byte_fallback_json() {
  nlohmann::json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (int byte = 0; byte < 256; ++byte) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", byte);
    vocab[name] = int(vocab.size());
  }
  for (const char* token : {"\xe2\x96\x81", "a", "b",
                            "\xe2\x96\x81"
                            "a",
                            "ab"}) {
    vocab[token] = int(vocab.size());
  }
  const nlohmann::json spec = {
      {"added_tokens",
       {{{"id", 0}, {"content", "<unk>"}, {"special", true}, {"normalized", false}},
        {{"id", 1}, {"content", "<s>"}, {"special", true}, {"normalized", false}}}},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "NFKC"}},
          {{"type", "Prepend"}, {"prepend", "\xe2\x96\x81"}},
          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xe2\x96\x81"}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"}, {"pattern", {{"String", "\xe2\x96\x81"}}}, {"content", " "}},
          {{"type", "ByteFallback"}},
          {{"type", "Fuse"}},
          {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
      {"model",
       {{"type", "BPE"},
        {"vocab", vocab},
        {"merges", {"\xe2\x96\x81 a", "a b"}},
        {"unk_token", "<unk>"},
        {"byte_fallback", true},
        {"fuse_unk", true}}}};
  return spec.dump();
}

// Built once and kept for the whole run.
const kite::Tokenizer& load(const std::string& json) {
  auto* tokenizer = new kite::Tokenizer(kite::Tokenizer::from_json(json, "fuzz").value());
  return *tokenizer;
}

void check_streaming(const kite::Tokenizer& tokenizer, const std::vector<int32_t>& ids) {
  kite::StreamingDecoder stream(tokenizer, true);
  std::string streamed;
  for (const int32_t id : ids) {
    const std::string piece = stream.push(id);
    KITE_CHECK(kite::unicode::is_valid_utf8(piece));
    streamed += piece;
  }
  streamed += stream.finish();
  KITE_CHECK(streamed == tokenizer.decode(ids, true));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const kite::Tokenizer& byte_level = load(byte_level_json());
  static const kite::Tokenizer& byte_fallback = load(byte_fallback_json());
  const std::string_view input(reinterpret_cast<const char*>(data), size);

  const std::vector<int32_t> ids = byte_level.encode(input);
  KITE_CHECK(byte_level.decode(ids, /*skip_special_tokens=*/false) ==
             kite::unicode::sanitize_utf8(input));
  check_streaming(byte_level, ids);

  const std::vector<int32_t> fallback_ids = byte_fallback.encode(input);
  KITE_CHECK(kite::unicode::is_valid_utf8(byte_fallback.decode(fallback_ids)));
  check_streaming(byte_fallback, fallback_ids);
  return 0;
}
