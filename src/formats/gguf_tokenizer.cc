// GGUF vocabulary -> Hugging Face tokenizer.json. See gguf_tokenizer.h for the mapping; the
// pre-tokenizer table below follows llama.cpp's llama-vocab.cpp (names -> regexes and the
// ignore_merges / add_bos / clean_spaces flags), with each regex in the spelling of the
// tokenizer.json it came from where llama.cpp rewrote it for its own regex engine.
#include "formats/gguf_tokenizer.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kite {
namespace {

using json = nlohmann::json;

// llama.cpp's token types (tokenizer.ggml.token_type).
constexpr int64_t kTokenNormal = 1;
constexpr int64_t kTokenUnknown = 2;
constexpr int64_t kTokenControl = 3;
constexpr int64_t kTokenUserDefined = 4;

// Merges are derived only for pieces up to this many bytes. SentencePiece pieces are at most 16
// characters by default; the cap keeps hostile files from costing quadratic time.
constexpr size_t kMaxDerivedMergePieceBytes = 256;

// --- Pre-tokenizer regexes ------------------------------------------------------------------

constexpr std::string_view kGpt2Split =
    R"re('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)re";
constexpr std::string_view kLlama3Split =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
constexpr std::string_view kQwen2Split =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
constexpr std::string_view kQwen35Split =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
constexpr std::string_view kJais2Split =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1})re";
constexpr std::string_view kTekkenSplit =
    R"re([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
constexpr std::string_view kGpt4oSplit =
    R"re([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
constexpr std::string_view kDeepseek3Split =
    R"re([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
constexpr std::string_view kCjkSplit =
    R"re([\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+)re";
constexpr std::string_view kHanKanaSplit =
    R"re([\x{4E00}-\x{9FA5}\x{3040}-\x{309F}\x{30A0}-\x{30FF}]+)re";
constexpr std::string_view kPoroSplit =
    R"re( ?[^(\s|.,!?\x{2026}\x{3002}\x{FF0C}\x{3001}\x{964}\x{6D4}\x{60C})]+)re";

struct PreTokenizerRecipe {
  std::vector<std::string_view> names;   // tokenizer.ggml.pre values
  std::vector<std::string_view> splits;  // applied in order, each keeping matches and gaps
  bool ignore_merges = false;            // a word that is itself a token is not merged up again
  bool add_bos = false;      // llama.cpp's default when tokenizer.ggml.add_bos_token is absent
  bool clean_spaces = true;  // llama.cpp's clean_spaces: drop spaces before punctuation on decode
};

const std::vector<PreTokenizerRecipe>& pre_tokenizer_recipes() {
  static const std::vector<PreTokenizerRecipe> recipes = {
      {.names = {"default"},
       .splits = {R"re([\p{P}\$\+<=>\^~\|]+)re", kGpt2Split, R"re(\p{N}+)re",
                  R"re([0-9][0-9][0-9])re"}},
      {.names = {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                 "lfm2", "jina-v5-nano"},
       .splits = {kLlama3Split},
       .ignore_merges = true,
       .add_bos = true},
      {.names = {"dbrx", "smaug-bpe"}, .splits = {kLlama3Split}},
      {.names = {"chatglm-bpe"}, .splits = {kLlama3Split}},
      {.names = {"glm4", "glm5"}, .splits = {kLlama3Split}, .ignore_merges = true},
      {.names = {"jais-2"}, .splits = {kJais2Split}},
      {.names = {"minicpm5"},
       .splits =
           {R"re(\p{N}{1,3})re",
            R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re"},
       .ignore_merges = true},
      {.names = {"deepseek-llm"},
       .splits =
           {R"re([\r\n])re",
            R"re(\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+)re",
            R"re(\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+)re",
            R"re(\s+$)re", kCjkSplit, R"re(\p{N}+)re"},
       .clean_spaces = false},
      {.names = {"deepseek-coder"},
       .splits = {R"re([\r\n])re", R"re(\s?\p{L}+)re", R"re(\s?\p{P}+)re", kCjkSplit,
                  R"re(\p{N})re"},
       .clean_spaces = false},
      {.names = {"deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"},
       .splits = {R"re(\p{N}{1,3})re", kHanKanaSplit, kDeepseek3Split},
       .clean_spaces = false},
      {.names = {"spark2_5"},
       .splits =
           {R"re(\p{N}{1,3})re", kHanKanaSplit,
            R"re([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+)re",
            R"re(\p{N})re"},
       .clean_spaces = false},
      {.names = {"youtu"},
       .splits =
           {R"re([\x{AC00}-\x{D7A3}\x{3131}-\x{318E}]+|[\x{FF01}\x{2026}\x{201C}\x{201D}\x{2018}\x{2019}\x{2014}\x{FF1A}\x{FF1B}\x{FF0C}\x{3001}-\x{303F}\x{FE30}-\x{FE4F}]+|[\x{3105}-\x{312F}]+|[\x{4E00}-\x{9FA5}\x{3040}-\x{309F}\x{30A0}-\x{30FF}]+)re",
            R"re([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)re"},
       .ignore_merges = true,
       .clean_spaces = false},
      {.names = {"falcon"},
       .splits = {R"re([\p{P}\$\+<=>\^~\|`]+)re", kGpt2Split, R"re([0-9][0-9][0-9])re"}},
      {.names = {"gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
                 "a.x-4.0", "mellum", "modern-bert", "mpt", "olmo", "jais", "exaone4"},
       .splits = {kGpt2Split}},
      {.names = {"trillion", "granite-docling"}, .splits = {kGpt2Split}, .clean_spaces = false},
      {.names = {"starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2"},
       .splits = {R"re(\p{N})re", kGpt2Split}},
      {.names = {"command-r", "smollm"},
       .splits = {R"re(\p{N})re", kGpt2Split},
       .clean_spaces = false},
      {.names = {"qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open",
                 "grok-2"},
       .splits = {kQwen2Split},
       .clean_spaces = false},
      {.names = {"megrez", "stablelm2"}, .splits = {kQwen2Split}},
      {.names = {"qwen35"}, .splits = {kQwen35Split}, .clean_spaces = false},
      {.names = {"laguna"}, .splits = {R"re([^\n]+|[\n]+)re", kQwen2Split}, .clean_spaces = false},
      {.names = {"ufakzeka"},
       .splits =
           {R"re([^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re"},
       .clean_spaces = false},
      {.names = {"poro-chat"}, .splits = {kPoroSplit}, .clean_spaces = false},
      {.names = {"bloom", "gpt3-finnish"}, .splits = {kPoroSplit}},
      {.names = {"viking"}, .splits = {kPoroSplit, R"re(\p{N})re"}, .clean_spaces = false},
      {.names = {"tekken"},
       .splits = {kTekkenSplit},
       .ignore_merges = true,
       .add_bos = true,
       .clean_spaces = false},
      {.names = {"chameleon"},
       .splits = {R"re(<sentinel:[0-9]+>)re", R"re((IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z)re",
                  R"re(([\t\n]|    |  ))re", R"re(\p{N})re", R"re([\p{P}!-/:-@\[-`{-~])re",
                  kGpt2Split},
       .add_bos = true,
       .clean_spaces = false},
      {.names = {"gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"},
       .splits = {kGpt4oSplit},
       .clean_spaces = false},
      {.names = {"tiny_aya", "cohere2moe"},
       .splits = {R"re(\d{1,3}(?=(?:\d{3})*\b))re", kGpt4oSplit},
       .clean_spaces = false},
      {.names = {"bailingmoe", "bailingmoe2", "llada-moe"},
       .splits =
           {R"re('(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+)re"},
       .clean_spaces = false},
      {.names = {"seed-coder"},
       .splits =
           {R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+)re"},
       .clean_spaces = false},
      {.names = {"exaone-moe"},
       .splits =
           {R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+)re"}},
  };
  return recipes;
}

const PreTokenizerRecipe* find_recipe(std::string_view name) {
  for (const PreTokenizerRecipe& recipe : pre_tokenizer_recipes()) {
    if (std::find(recipe.names.begin(), recipe.names.end(), name) != recipe.names.end()) {
      return &recipe;
    }
  }
  return nullptr;
}

std::string known_pre_tokenizer_names() {
  std::string names;
  for (const PreTokenizerRecipe& recipe : pre_tokenizer_recipes()) {
    for (std::string_view name : recipe.names) {
      if (!names.empty()) names += ", ";
      names += name;
    }
  }
  return names;
}

// --- Reading the vocabulary -------------------------------------------------------------------

// Length of the UTF-8 sequence starting at text[at], or 0 when it is not valid UTF-8 (overlong
// forms, surrogates and code points above U+10FFFF included).
size_t utf8_sequence_length(std::string_view text, size_t at) {
  const auto byte = [&](size_t i) { return uint8_t(text[i]); };
  const uint8_t lead = byte(at);
  if (lead < 0x80) return 1;
  size_t length;
  uint32_t code_point;
  if (lead >= 0xc2 && lead <= 0xdf) {
    length = 2;
    code_point = lead & 0x1f;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    length = 3;
    code_point = lead & 0x0f;
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    length = 4;
    code_point = lead & 0x07;
  } else {
    return 0;
  }
  if (at + length > text.size()) return 0;
  for (size_t i = 1; i < length; ++i) {
    if ((byte(at + i) & 0xc0) != 0x80) return 0;
    code_point = (code_point << 6) | (byte(at + i) & 0x3f);
  }
  if ((length == 3 && code_point < 0x800) || (length == 4 && code_point < 0x10000) ||
      (code_point >= 0xd800 && code_point <= 0xdfff) || code_point > 0x10ffff) {
    return 0;
  }
  return length;
}

bool is_valid_utf8(std::string_view text) {
  for (size_t at = 0; at < text.size();) {
    const size_t length = utf8_sequence_length(text, at);
    if (length == 0) return false;
    at += length;
  }
  return true;
}

size_t code_point_count(std::string_view text) {
  return size_t(
      std::count_if(text.begin(), text.end(), [](char c) { return (uint8_t(c) & 0xc0) != 0x80; }));
}

enum class VocabularyKind { kByteLevelBpe, kSentencePieceBpe };

struct Vocabulary {
  VocabularyKind kind = VocabularyKind::kByteLevelBpe;
  const PreTokenizerRecipe* recipe = nullptr;  // byte-level only
  std::vector<std::string> tokens;
  std::vector<int64_t> token_types;  // one per token
  std::vector<float> scores;         // empty when the file has none
  std::vector<std::pair<std::string, std::string>> merges;
  bool has_merges = false;
  std::optional<int64_t> bos_id, eos_id, unk_id, pad_id;
  bool add_bos = false;
  bool add_eos = false;
  bool add_space_prefix = true;  // SentencePiece only
  bool clean_spaces = true;
};

Status vocabulary_error(const GgufFile& gguf, const std::string& problem) {
  return corrupt(gguf.path() + ": " + problem);
}

// A flag from the file, or `fallback` when absent.
Result<bool> flag_or(const GgufFile& gguf, std::string_view key, bool fallback) {
  if (!gguf.contains(key)) return fallback;
  return gguf.get_bool(key);
}

// A special token id from the file, else `fallback`; ids outside the vocabulary are dropped, as
// llama.cpp drops them.
Result<std::optional<int64_t>> special_id(const GgufFile& gguf, std::string_view key,
                                          std::optional<int64_t> fallback, size_t vocab_size) {
  std::optional<int64_t> id = fallback;
  if (gguf.contains(key)) {
    KITE_ASSIGN_OR_RETURN(const int64_t value, gguf.get_int(key));
    id = value;
  }
  if (id && (*id < 0 || uint64_t(*id) >= vocab_size)) return std::optional<int64_t>();
  return id;
}

Result<Vocabulary> read_vocabulary(const GgufFile& gguf) {
  Vocabulary vocab;
  KITE_ASSIGN_OR_RETURN(const std::string model, gguf.get_string("tokenizer.ggml.model"));
  if (model == "gpt2") {
    vocab.kind = VocabularyKind::kByteLevelBpe;
  } else if (model == "llama") {
    vocab.kind = VocabularyKind::kSentencePieceBpe;
  } else {
    return unsupported(gguf.path() + ": tokenizer model '" + model +
                       "' is not supported (Kite converts 'gpt2' byte-level BPE and 'llama' " +
                       "SentencePiece vocabularies)");
  }

  KITE_ASSIGN_OR_RETURN(vocab.tokens, gguf.get_string_array("tokenizer.ggml.tokens"));
  const size_t count = vocab.tokens.size();
  if (count == 0) return vocabulary_error(gguf, "tokenizer.ggml.tokens is empty");
  for (size_t id = 0; id < count; ++id) {
    if (!is_valid_utf8(vocab.tokens[id])) {
      return vocabulary_error(gguf, "token " + std::to_string(id) + " is not valid UTF-8");
    }
  }

  if (gguf.contains("tokenizer.ggml.token_type")) {
    KITE_ASSIGN_OR_RETURN(vocab.token_types, gguf.get_int_array("tokenizer.ggml.token_type"));
    if (vocab.token_types.size() < count) {
      return vocabulary_error(gguf, "tokenizer.ggml.token_type has " +
                                        std::to_string(vocab.token_types.size()) + " entries for " +
                                        std::to_string(count) + " tokens");
    }
    vocab.token_types.resize(count);
  } else {
    vocab.token_types.assign(count, kTokenNormal);
  }

  if (gguf.contains("tokenizer.ggml.scores")) {
    KITE_ASSIGN_OR_RETURN(vocab.scores, gguf.get_float_array("tokenizer.ggml.scores"));
    if (vocab.scores.size() < count) {
      return vocabulary_error(gguf, "tokenizer.ggml.scores has " +
                                        std::to_string(vocab.scores.size()) + " entries for " +
                                        std::to_string(count) + " tokens");
    }
    vocab.scores.resize(count);
    for (float score : vocab.scores) {
      if (std::isnan(score)) return vocabulary_error(gguf, "tokenizer.ggml.scores holds NaN");
    }
  }

  if (gguf.contains("tokenizer.ggml.merges")) {
    KITE_ASSIGN_OR_RETURN(const std::vector<std::string> merges,
                          gguf.get_string_array("tokenizer.ggml.merges"));
    vocab.has_merges = true;
    vocab.merges.reserve(merges.size());
    for (size_t i = 0; i < merges.size(); ++i) {
      // As llama.cpp splits them: at the first space after the first byte.
      const size_t space = merges[i].size() > 1 ? merges[i].find(' ', 1) : std::string::npos;
      if (space == std::string::npos || !is_valid_utf8(merges[i])) {
        return vocabulary_error(
            gguf, "merge " + std::to_string(i) + " is not two UTF-8 pieces separated by a space");
      }
      vocab.merges.emplace_back(merges[i].substr(0, space), merges[i].substr(space + 1));
    }
  } else if (vocab.kind == VocabularyKind::kByteLevelBpe) {
    return vocabulary_error(gguf,
                            "tokenizer.ggml.merges is missing (a 'gpt2' vocabulary needs it)");
  } else if (vocab.scores.empty()) {
    return vocabulary_error(gguf,
                            "a 'llama' vocabulary without tokenizer.ggml.merges needs "
                            "tokenizer.ggml.scores to derive them");
  }

  bool default_add_bos = false;
  if (vocab.kind == VocabularyKind::kByteLevelBpe) {
    // Files without the key get GPT-2's split, as Hugging Face transformers' GGUF conversion does
    // (llama.cpp falls back to its "default" split instead, and warns that it is a guess).
    std::string pre = "gpt-2";
    if (gguf.contains("tokenizer.ggml.pre")) {
      KITE_ASSIGN_OR_RETURN(pre, gguf.get_string("tokenizer.ggml.pre"));
    }
    vocab.recipe = find_recipe(pre);
    if (!vocab.recipe) {
      return unsupported(gguf.path() + ": pre-tokenizer '" + pre +
                         "' (tokenizer.ggml.pre) is not supported; Kite knows " +
                         known_pre_tokenizer_names());
    }
    default_add_bos = vocab.recipe->add_bos;
    vocab.clean_spaces = vocab.recipe->clean_spaces;
  } else {
    default_add_bos = true;
    vocab.clean_spaces = false;
    KITE_ASSIGN_OR_RETURN(vocab.add_space_prefix,
                          flag_or(gguf, "tokenizer.ggml.add_space_prefix", true));
  }
  KITE_ASSIGN_OR_RETURN(vocab.add_bos,
                        flag_or(gguf, "tokenizer.ggml.add_bos_token", default_add_bos));
  KITE_ASSIGN_OR_RETURN(vocab.add_eos, flag_or(gguf, "tokenizer.ggml.add_eos_token", false));

  // llama.cpp's defaults: SentencePiece <unk>=0, <s>=1, </s>=2; byte-level BPE bos=eos=11.
  const bool sentencepiece = vocab.kind == VocabularyKind::kSentencePieceBpe;
  const std::optional<int64_t> none;
  KITE_ASSIGN_OR_RETURN(
      vocab.bos_id, special_id(gguf, "tokenizer.ggml.bos_token_id", sentencepiece ? 1 : 11, count));
  KITE_ASSIGN_OR_RETURN(
      vocab.eos_id, special_id(gguf, "tokenizer.ggml.eos_token_id", sentencepiece ? 2 : 11, count));
  KITE_ASSIGN_OR_RETURN(vocab.unk_id, special_id(gguf, "tokenizer.ggml.unknown_token_id",
                                                 sentencepiece ? 0 : none, count));
  KITE_ASSIGN_OR_RETURN(vocab.pad_id,
                        special_id(gguf, "tokenizer.ggml.padding_token_id", none, count));
  if (vocab.add_bos && !vocab.bos_id) {
    return vocabulary_error(gguf, "the vocabulary adds a BOS token but has no valid bos_token_id");
  }
  if (vocab.add_eos && !vocab.eos_id) {
    return vocabulary_error(gguf, "the vocabulary adds an EOS token but has no valid eos_token_id");
  }
  return vocab;
}

// --- Deriving merges ----------------------------------------------------------------------------

// transformers' generate_merges(vocab, vocab_scores): every split of every token into two tokens
// is a merge, ranked by the merged token's score (highest first), then by the lengths in
// characters of the left and right pieces (longest first); ties keep vocabulary order, and
// within one token the splits are ordered by the ids of their pieces.
std::vector<std::pair<std::string, std::string>> derive_merges(const Vocabulary& vocab) {
  // Like Python dicts built from the token list: the last id of a repeated token wins, and the
  // first occurrence fixes its position.
  std::unordered_map<std::string_view, size_t> id_of;
  std::vector<size_t> first_occurrences;
  for (size_t id = 0; id < vocab.tokens.size(); ++id) {
    const auto [it, inserted] = id_of.insert_or_assign(vocab.tokens[id], id);
    if (inserted) first_occurrences.push_back(id);
  }
  struct Candidate {
    std::string_view left, right;
    float score;
    size_t left_length, right_length;  // in code points
  };
  std::vector<Candidate> candidates;
  std::vector<std::pair<std::pair<size_t, size_t>, Candidate>> local;
  for (size_t first : first_occurrences) {
    const std::string_view token = vocab.tokens[first];
    if (token.size() > kMaxDerivedMergePieceBytes) continue;
    const float score = vocab.scores[id_of.at(token)];
    local.clear();
    size_t left_length = 0;
    const size_t total_length = code_point_count(token);
    for (size_t split = 0; split < token.size();) {
      split += utf8_sequence_length(token, split);
      ++left_length;
      if (split >= token.size()) break;
      const std::string_view left = token.substr(0, split);
      const std::string_view right = token.substr(split);
      const auto left_id = id_of.find(left);
      const auto right_id = id_of.find(right);
      if (left_id == id_of.end() || right_id == id_of.end()) continue;
      local.push_back({{left_id->second, right_id->second},
                       {left, right, score, left_length, total_length - left_length}});
    }
    std::stable_sort(local.begin(), local.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    for (const auto& entry : local) candidates.push_back(entry.second);
  }
  std::stable_sort(candidates.begin(), candidates.end(),
                   [](const Candidate& a, const Candidate& b) {
                     if (a.score != b.score) return a.score > b.score;
                     if (a.left_length != b.left_length) return a.left_length > b.left_length;
                     return a.right_length > b.right_length;
                   });
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(candidates.size());
  for (const Candidate& candidate : candidates) {
    merges.emplace_back(std::string(candidate.left), std::string(candidate.right));
  }
  return merges;
}

// --- Writing tokenizer.json ---------------------------------------------------------------------

json split_pre_tokenizer(std::string_view regex) {
  return {{"type", "Split"},
          {"pattern", {{"Regex", std::string(regex)}}},
          {"behavior", "Isolated"},
          {"invert", false}};
}

json added_tokens(const Vocabulary& vocab) {
  json added = json::array();
  for (size_t id = 0; id < vocab.tokens.size(); ++id) {
    const int64_t type = vocab.token_types[id];
    // The declared BOS/EOS/UNK/PAD tokens are special even where the file types them as normal
    // (older byte-level GGUFs such as Aquila's), as in transformers' GGUF conversion.
    const auto is_id = [&](const std::optional<int64_t>& special_token) {
      return special_token && *special_token == int64_t(id);
    };
    const bool special = type == kTokenControl || type == kTokenUnknown || is_id(vocab.bos_id) ||
                         is_id(vocab.eos_id) || is_id(vocab.unk_id) || is_id(vocab.pad_id);
    if (!special && type != kTokenUserDefined) continue;
    if (vocab.tokens[id].empty()) continue;  // nothing to match in text
    added.push_back({{"id", id},
                     {"content", vocab.tokens[id]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", special}});
  }
  return added;
}

// BOS/EOS around each sequence, as transformers' update_post_processor writes them.
json post_processor(const Vocabulary& vocab) {
  if (!vocab.add_bos && !vocab.add_eos) return nullptr;
  json single = json::array();
  json pair = json::array();
  json special_tokens = json::object();
  const auto special = [&](int64_t id, int type_id) {
    const std::string& token = vocab.tokens[size_t(id)];
    special_tokens[token] = {{"id", token}, {"ids", {id}}, {"tokens", {token}}};
    return json{{"SpecialToken", {{"id", token}, {"type_id", type_id}}}};
  };
  const auto sequence = [](const char* name, int type_id) {
    return json{{"Sequence", {{"id", name}, {"type_id", type_id}}}};
  };
  for (int type_id = 0; type_id < 2; ++type_id) {
    json& pieces = type_id == 0 ? single : pair;
    if (vocab.add_bos) pieces.push_back(special(*vocab.bos_id, 0));
    pieces.push_back(sequence("A", 0));
    if (vocab.add_eos) pieces.push_back(special(*vocab.eos_id, 0));
  }
  if (vocab.add_bos) pair.push_back(special(*vocab.bos_id, 1));
  pair.push_back(sequence("B", 1));
  if (vocab.add_eos) pair.push_back(special(*vocab.eos_id, 1));
  return {{"type", "TemplateProcessing"},
          {"single", single},
          {"pair", pair},
          {"special_tokens", special_tokens}};
}

json bpe_model(const Vocabulary& vocab,
               const std::vector<std::pair<std::string, std::string>>& merges) {
  json token_ids = json::object();
  for (size_t id = 0; id < vocab.tokens.size(); ++id) token_ids[vocab.tokens[id]] = id;
  json merge_pairs = json::array();
  for (const auto& [left, right] : merges) merge_pairs.push_back({left, right});
  const bool sentencepiece = vocab.kind == VocabularyKind::kSentencePieceBpe;
  json unk_token = nullptr;
  if (sentencepiece && vocab.unk_id) unk_token = vocab.tokens[size_t(*vocab.unk_id)];
  return {{"type", "BPE"},
          {"dropout", nullptr},
          {"unk_token", unk_token},
          {"continuing_subword_prefix", nullptr},
          {"end_of_word_suffix", nullptr},
          {"fuse_unk", sentencepiece},
          {"byte_fallback", sentencepiece},
          {"ignore_merges", !sentencepiece && vocab.recipe->ignore_merges},
          {"vocab", std::move(token_ids)},
          {"merges", std::move(merge_pairs)}};
}

json byte_level_tokenizer(const Vocabulary& vocab) {
  json pre_tokenizers = json::array();
  for (std::string_view regex : vocab.recipe->splits) {
    pre_tokenizers.push_back(split_pre_tokenizer(regex));
  }
  pre_tokenizers.push_back({{"type", "ByteLevel"},
                            {"add_prefix_space", false},
                            {"trim_offsets", true},
                            {"use_regex", false}});
  return {{"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", pre_tokenizers}}},
          {"decoder",
           {{"type", "ByteLevel"},
            {"add_prefix_space", true},
            {"trim_offsets", true},
            {"use_regex", true}}},
          {"model", bpe_model(vocab, vocab.merges)}};
}

json sentencepiece_tokenizer(const Vocabulary& vocab) {
  const std::string kSpace = "\xe2\x96\x81";  // U+2581, SentencePiece's visible space
  json normalizers = json::array();
  if (vocab.add_space_prefix) normalizers.push_back({{"type", "Prepend"}, {"prepend", kSpace}});
  normalizers.push_back({{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSpace}});
  json decoders = json::array();
  decoders.push_back({{"type", "Replace"}, {"pattern", {{"String", kSpace}}}, {"content", " "}});
  decoders.push_back({{"type", "ByteFallback"}});
  decoders.push_back({{"type", "Fuse"}});
  if (vocab.add_space_prefix) {
    decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  }
  return {{"normalizer", {{"type", "Sequence"}, {"normalizers", normalizers}}},
          {"pre_tokenizer", nullptr},
          {"decoder", {{"type", "Sequence"}, {"decoders", decoders}}},
          {"model", bpe_model(vocab, vocab.has_merges ? vocab.merges : derive_merges(vocab))}};
}

}  // namespace

Result<nlohmann::json> tokenizer_json_from_gguf(const GgufFile& gguf) {
  KITE_ASSIGN_OR_RETURN(const Vocabulary vocab, read_vocabulary(gguf));
  json tokenizer = vocab.kind == VocabularyKind::kByteLevelBpe ? byte_level_tokenizer(vocab)
                                                               : sentencepiece_tokenizer(vocab);
  tokenizer["version"] = "1.0";
  tokenizer["truncation"] = nullptr;
  tokenizer["padding"] = nullptr;
  tokenizer["added_tokens"] = added_tokens(vocab);
  tokenizer["post_processor"] = post_processor(vocab);
  return tokenizer;
}

Result<nlohmann::json> tokenizer_config_from_gguf(const GgufFile& gguf) {
  KITE_ASSIGN_OR_RETURN(const Vocabulary vocab, read_vocabulary(gguf));
  const auto token_or_null = [&](const std::optional<int64_t>& id) -> json {
    if (!id) return nullptr;
    return vocab.tokens[size_t(*id)];
  };
  json config = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                 {"bos_token", token_or_null(vocab.bos_id)},
                 {"eos_token", token_or_null(vocab.eos_id)},
                 {"unk_token", token_or_null(vocab.unk_id)},
                 {"pad_token", token_or_null(vocab.pad_id)},
                 {"add_bos_token", vocab.add_bos},
                 {"add_eos_token", vocab.add_eos},
                 {"clean_up_tokenization_spaces", vocab.clean_spaces}};
  if (gguf.contains("tokenizer.chat_template")) {
    KITE_ASSIGN_OR_RETURN(const std::string chat_template,
                          gguf.get_string("tokenizer.chat_template"));
    if (!is_valid_utf8(chat_template)) {
      return vocabulary_error(gguf, "tokenizer.chat_template is not valid UTF-8");
    }
    config["chat_template"] = chat_template;
  }
  if (gguf.contains("general.architecture")) {
    KITE_ASSIGN_OR_RETURN(const std::string architecture, gguf.get_string("general.architecture"));
    const std::string key = architecture + ".context_length";
    if (gguf.contains(key)) {
      KITE_ASSIGN_OR_RETURN(const uint64_t context_length, gguf.get_uint(key));
      config["model_max_length"] = context_length;
    }
  }
  return config;
}

}  // namespace kite
