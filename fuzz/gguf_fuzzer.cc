// libFuzzer target for GGUF files: parsing, dequantizing every tensor, and turning the vocabulary
// into tokenizer.json / tokenizer_config.json. Any input must end in a Status: no crash, no
// uncaught exception (the JSON is dumped to prove it holds only valid UTF-8), no allocation
// beyond a small multiple of the input size.
#include <cstddef>
#include <cstdint>

#include "formats/gguf.h"
#include "formats/gguf_dequant.h"
#include "formats/gguf_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = kite::GgufFile::parse({data, size}, "fuzz.gguf");
  if (!file.is_ok()) return 0;
  for (const kite::GgufTensorInfo& info : file->tensors()) {
    auto tensor = kite::dequantize_tensor(*file, info);
    if (tensor.is_ok() && tensor->numel() != info.element_count()) __builtin_trap();
  }
  auto tokenizer = kite::tokenizer_json_from_gguf(*file);
  if (tokenizer.is_ok()) (void)tokenizer->dump();
  auto config = kite::tokenizer_config_from_gguf(*file);
  if (config.is_ok()) (void)config->dump();
  return 0;
}
