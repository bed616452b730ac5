// The vocabulary embedded in a GGUF file (tokenizer.ggml.* metadata) written out as Hugging Face
// tokenizer files, so that a GGUF model tokenizes through the same code as any HF model, the way
// llama.cpp tokenizes it:
//  - tokenizer.ggml.model "gpt2": byte-level BPE; the split regexes follow tokenizer.ggml.pre
//    as llama.cpp's llama-vocab.cpp maps it (in the regexes' original tokenizer.json spelling);
//  - tokenizer.ggml.model "llama": SentencePiece BPE with byte fallback; merges from the file
//    or, when absent, derived from the vocabulary and scores as transformers' generate_merges()
//    does; the prefix space comes from a Prepend("▁") normalizer, as in Llama 2's tokenizer.json.
// Tokens typed control (3) or unknown (2) become special added tokens, user-defined ones (4)
// plain added tokens. A BOS/EOS post-processor follows tokenizer.ggml.add_bos_token /
// add_eos_token, or llama.cpp's defaults for the vocabulary when those keys are absent.
#pragma once

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "formats/gguf.h"

namespace kite {

// tokenizer.json. kUnsupported for other tokenizer models (bert, t5, ...) and for pre-tokenizer
// names without a plain-regex equivalent; kCorrupt for inconsistent vocabularies (mismatched
// array lengths, invalid UTF-8, malformed merges). Errors name the file.
Result<nlohmann::json> tokenizer_json_from_gguf(const GgufFile& gguf);

// tokenizer_config.json: bos/eos/unk/pad token strings, add_bos_token / add_eos_token,
// clean_up_tokenization_spaces, chat_template (tokenizer.chat_template) and model_max_length
// (<architecture>.context_length) where the file has them.
Result<nlohmann::json> tokenizer_config_from_gguf(const GgufFile& gguf);

}  // namespace kite
