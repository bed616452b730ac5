// `kite tokenize`: text -> token ids, or ids -> text, with the tokenizer of a Hugging Face
// model folder or of an engine.
#include <nlohmann/json.hpp>

#include <charconv>
#include <cstdio>
#include <string>
#include <vector>

#include "core/file.h"
#include "tokenizer/tokenizer.h"
#include "tools/command.h"

namespace kite::tools {
namespace {

struct TokenizeOptions {
  std::string tokenizer_dir;
  std::string engine_dir;
  std::string text;
  std::string ids;
  std::string input_file;
  bool json = false;
  bool no_special_tokens = false;
  // Which of the inputs were given (an empty --text is a valid text to encode).
  CLI::Option* text_option = nullptr;
  CLI::Option* ids_option = nullptr;
  CLI::Option* input_file_option = nullptr;
};

// "1,2, 3" -> {1, 2, 3}; every entry must be a token id of the vocabulary.
Result<std::vector<int32_t>> parse_ids(const std::string& list, const Tokenizer& tokenizer) {
  std::vector<int32_t> ids;
  size_t start = 0;
  while (start <= list.size()) {
    size_t end = list.find(',', start);
    if (end == std::string::npos) end = list.size();
    std::string_view entry(list.data() + start, end - start);
    while (!entry.empty() && entry.front() == ' ') entry.remove_prefix(1);
    while (!entry.empty() && entry.back() == ' ') entry.remove_suffix(1);
    int64_t value = -1;
    const auto [rest, error] = std::from_chars(entry.data(), entry.data() + entry.size(), value);
    if (entry.empty() || error != std::errc() || rest != entry.data() + entry.size()) {
      return invalid_argument("--ids: '" + std::string(entry) +
                              "' is not a token id (expected a comma-separated list like 1,2,3)");
    }
    if (value < 0 || value > INT32_MAX || !tokenizer.id_to_token(int32_t(value))) {
      return invalid_argument("--ids: " + std::to_string(value) +
                              " is not a token id of this tokenizer (vocabulary size " +
                              std::to_string(tokenizer.vocab_size()) + ")");
    }
    ids.push_back(int32_t(value));
    start = end + 1;
  }
  return ids;
}

std::string dump(const nlohmann::json& value) {
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

Status run_tokenize(const TokenizeOptions& options) {
  const int sources = int(!options.tokenizer_dir.empty()) + int(!options.engine_dir.empty());
  if (sources != 1) return invalid_argument("give exactly one of --tokenizer_dir or --engine_dir");
  const bool has_ids = options.ids_option->count() > 0;
  const int inputs = int(options.text_option->count() > 0) + int(has_ids) +
                     int(options.input_file_option->count() > 0);
  if (inputs != 1) return invalid_argument("give exactly one of --text, --ids or --input_file");

  const std::string& directory =
      options.tokenizer_dir.empty() ? options.engine_dir : options.tokenizer_dir;
  KITE_ASSIGN_OR_RETURN(const Tokenizer tokenizer, Tokenizer::from_directory(directory));

  if (has_ids) {
    KITE_ASSIGN_OR_RETURN(const std::vector<int32_t> ids, parse_ids(options.ids, tokenizer));
    const std::string text =
        tokenizer.decode(ids, /*skip_special_tokens=*/options.no_special_tokens);
    if (options.json) {
      std::printf("%s\n", dump({{"ids", ids}, {"text", text}}).c_str());
    } else {
      std::printf("%s\n", text.c_str());
    }
    return Status::ok();
  }

  std::string text = options.text;
  if (!options.input_file.empty()) {
    KITE_ASSIGN_OR_RETURN(text, read_file(options.input_file));
  }
  const std::vector<int32_t> ids = tokenizer.encode(text, !options.no_special_tokens);
  if (options.json) {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (const int32_t id : ids) tokens.push_back(tokenizer.id_to_token(id).value_or(""));
    std::printf("%s\n", dump({{"text", text}, {"ids", ids}, {"tokens", tokens}}).c_str());
    return Status::ok();
  }
  std::string line;
  line.reserve(ids.size() * 6);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) line += ' ';
    line += std::to_string(ids[i]);
  }
  std::printf("%s\n", line.c_str());
  return Status::ok();
}

}  // namespace

Command add_tokenize_command(CLI::App& kite) {
  auto options = std::make_shared<TokenizeOptions>();
  CLI::App* app = kite.add_subcommand("tokenize", "Turn text into token ids or ids into text");
  app->add_option("--tokenizer_dir", options->tokenizer_dir,
                  "Folder with tokenizer.json (a Hugging Face model folder)");
  app->add_option("--engine_dir", options->engine_dir, "Engine folder (uses its tokenizer.json)");
  options->text_option = app->add_option("--text", options->text, "Text to encode; prints the ids");
  options->ids_option =
      app->add_option("--ids", options->ids, "Comma-separated ids to decode, e.g. 1,2,3");
  options->input_file_option =
      app->add_option("--input_file", options->input_file, "Encode the contents of this file");
  app->add_flag("--json", options->json,
                "Print JSON: {text, ids, tokens} when encoding, {ids, text} when decoding");
  app->add_flag("--no_special_tokens", options->no_special_tokens,
                "Encode without adding special tokens (BOS...); decode without printing them");
  return {app, [options] { return run_tokenize(*options); }};
}

}  // namespace kite::tools
