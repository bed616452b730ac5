// libFuzzer target: arbitrary bytes as tokenizer.json. Loading must either succeed or return a
// Status; a tokenizer that loads must encode and decode without crashing.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  kite::Result<kite::Tokenizer> tokenizer = kite::Tokenizer::from_json(text, "fuzz.json");
  if (!tokenizer.is_ok()) {
    KITE_CHECK(!tokenizer.status().message().empty());
    return 0;
  }
  // Encode a few fixed strings and a slice of the input itself.
  for (std::string_view sample : {std::string_view("Hello world! 123 \xe4\xbd\xa0\xe5\xa5\xbd"),
                                  std::string_view(""), text.substr(0, 256)}) {
    const std::vector<int32_t> ids = tokenizer->encode(sample);
    (void)tokenizer->decode(ids, true);
    kite::StreamingDecoder stream(*tokenizer, false);
    std::string streamed;
    for (const int32_t id : ids) streamed += stream.push(id);
    streamed += stream.finish();
    KITE_CHECK(streamed == tokenizer->decode(ids, false));
  }
  for (int32_t id = -1; id < 8; ++id) {
    (void)tokenizer->id_to_token(id);
    (void)tokenizer->is_special(id);
  }
  return 0;
}
