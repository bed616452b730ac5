// Tokenizer: reads tokenizer.json and runs the encode pipeline of the Rust tokenizers library
// (added tokens -> normalizer -> added tokens on normalized text -> pre-tokenizer -> BPE ->
// post-processor) and its decode pipeline (ids -> token strings -> decoder).
#include "tokenizer/tokenizer.h"

#include <nlohmann/json.hpp>

#include "core/file.h"
#include "tokenizer/added_vocabulary.h"
#include "tokenizer/bpe.h"
#include "tokenizer/decoder.h"
#include "tokenizer/json_fields.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/post_processor.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/unicode.h"

namespace kite {

class TokenizerImpl {
 public:
  static Result<Tokenizer> parse(std::string_view json_text);

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const;
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const;
  std::optional<std::string> id_to_token(int32_t id) const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  int32_t vocab_size() const;
  bool is_special(int32_t id) const;
  // Whether streaming must wait for the id after `id` before its text is final: `id` is a
  // byte token, or decodes to nothing, inside what may be a run of ByteFallback bytes.
  bool continues_byte_run(int32_t id, bool skip_special_tokens) const;
  // Whether the text of `ids` ends in a run of ByteFallback bytes (maybe followed by tokens that
  // decode to nothing) that further byte tokens would join, changing its text.
  bool ends_in_byte_run(std::span<const int32_t> ids, bool skip_special_tokens) const;
  // Two ids of ordinary tokens whose texts start differently, appended to a sequence to find
  // the part of its text that further ids leave alone; only for decoders that need it.
  const std::optional<std::pair<int32_t, int32_t>>& streaming_probes() const {
    return streaming_probes_;
  }

 private:
  void encode_text(std::string_view text, bool at_text_start, std::vector<int32_t>& ids) const;

  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<PostProcessor> post_processor_;
  std::unique_ptr<Decoder> decoder_;
  AddedVocabulary added_;
  int32_t vocab_size_ = 0;
  std::optional<std::pair<int32_t, int32_t>> streaming_probes_;
};

namespace {

using tokenizer_json::Json;

// A component that may be absent or null.
const Json* component(const Json& root, std::string_view key) {
  return tokenizer_json::optional_field(root, key);
}

}  // namespace

Result<Tokenizer> TokenizerImpl::parse(std::string_view json_text) {
  Json root;
  try {
    root = Json::parse(json_text);
  } catch (const nlohmann::json::exception& error) {
    // The library's message names the byte offset; drop its "[json.exception...]" prefix.
    std::string message = error.what();
    if (const size_t bracket = message.find("] "); bracket != std::string::npos) {
      message = message.substr(bracket + 2);
    }
    return corrupt("not valid JSON: " + message);
  }
  if (!root.is_object()) return corrupt("expected a JSON object at the top level");
  try {
    auto impl = std::make_unique<TokenizerImpl>();
    if (const Json* version = component(root, "version")) {
      if (!version->is_string() || version->get<std::string>() != "1.0") {
        return unsupported("tokenizer.json version " + version->dump() +
                           " is not supported (1.0 is)");
      }
    }
    const Json* model = component(root, "model");
    if (model == nullptr) return corrupt("the 'model' section is missing");
    if (!model->is_object()) return corrupt("the 'model' section must be an object");
    // Files from old versions of the library may leave out the type of a BPE model.
    std::string model_type = "BPE";
    if (const Json* type = component(*model, "type")) {
      if (!type->is_string()) return corrupt("model: field 'type' must be a string");
      model_type = type->get<std::string>();
    } else if (component(*model, "merges") == nullptr) {
      return corrupt("model: field 'type' is missing");
    }
    if (model_type != "BPE") {
      return unsupported("model type " + unicode::quoted(model_type) +
                         " is not supported (Kite supports BPE models)");
    }
    KITE_ASSIGN_OR_RETURN(impl->model_, BpeModel::from_json(*model));
    if (const Json* spec = component(root, "normalizer")) {
      KITE_ASSIGN_OR_RETURN(impl->normalizer_, parse_normalizer(*spec));
    }
    if (const Json* spec = component(root, "pre_tokenizer")) {
      KITE_ASSIGN_OR_RETURN(impl->pre_tokenizer_, parse_pre_tokenizer(*spec));
    }
    if (const Json* spec = component(root, "post_processor")) {
      KITE_ASSIGN_OR_RETURN(impl->post_processor_, parse_post_processor(*spec));
    }
    if (const Json* spec = component(root, "decoder")) {
      KITE_ASSIGN_OR_RETURN(impl->decoder_, parse_decoder(*spec));
    }
    const Json empty_list = Json::array();
    const Json* added_tokens = component(root, "added_tokens");
    KITE_ASSIGN_OR_RETURN(impl->added_,
                          AddedVocabulary::from_json(added_tokens ? *added_tokens : empty_list,
                                                     *impl->model_, impl->normalizer_.get()));
    // Like get_vocab_size(with_added_tokens=True): distinct token strings of both vocabularies.
    size_t size = impl->model_->vocab_entries();
    for (const auto& [content, id] : impl->added_.ids_by_content()) {
      if (!impl->model_->token_to_id(content)) ++size;
    }
    impl->vocab_size_ = int32_t(size);
    if (impl->decoder_ && impl->decoder_->treats_last_token_apart()) {
      std::optional<int32_t> first;
      for (const auto& [token, id] : impl->model_->vocab()) {
        if (impl->added_.token(id) != nullptr) continue;
        const std::string text = impl->decode(std::vector<int32_t>{id}, false);
        if (text.empty()) continue;
        if (!first) {
          first = id;
        } else if (impl->decode(std::vector<int32_t>{*first}, false)[0] != text[0]) {
          impl->streaming_probes_ = std::make_pair(*first, id);
          break;
        }
      }
    }
    return Tokenizer(std::move(impl));
  } catch (const nlohmann::json::exception& error) {
    return corrupt(std::string("unexpected JSON structure: ") + error.what());
  }
}

void TokenizerImpl::encode_text(std::string_view text, bool at_text_start,
                                std::vector<int32_t>& ids) const {
  auto tokenize = [&](Piece&& word) { model_->tokenize(word.text, ids); };
  Piece piece{std::string(text), at_text_start};
  if (pre_tokenizer_) {
    pre_tokenizer_->split(piece, PieceSink(tokenize));
  } else {
    tokenize(std::move(piece));
  }
}

std::vector<int32_t> TokenizerImpl::encode(std::string_view input, bool add_special_tokens) const {
  const std::string text = unicode::sanitize_utf8(input);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 8);
  std::vector<TextSegment> raw_segments, normalized_segments;
  added_.split(text, /*normalized_pass=*/false, raw_segments);
  std::string normalized;
  for (const TextSegment& raw : raw_segments) {
    if (raw.id >= 0) {
      ids.push_back(raw.id);
      continue;
    }
    if (raw.end <= raw.start) continue;
    normalized.assign(text, raw.start, raw.end - raw.start);
    if (normalizer_) normalizer_->normalize(normalized);
    if (normalized.empty()) continue;
    normalized_segments.clear();
    added_.split(normalized, /*normalized_pass=*/true, normalized_segments);
    for (const TextSegment& segment : normalized_segments) {
      if (segment.id >= 0) {
        ids.push_back(segment.id);
      } else if (segment.end > segment.start) {
        encode_text(std::string_view(normalized).substr(segment.start, segment.end - segment.start),
                    raw.start == 0 && segment.start == 0, ids);
      }
    }
  }
  if (post_processor_) post_processor_->process(ids, add_special_tokens);
  return ids;
}

std::string TokenizerImpl::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int32_t id : ids) {
    const std::string* token = added_.decoded_form(id);
    if (token == nullptr) token = model_->id_to_token(id);
    if (token == nullptr) continue;
    if (skip_special_tokens && added_.is_special_content(*token)) continue;
    tokens.push_back(*token);
  }
  if (decoder_ == nullptr) {
    std::string joined;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) joined += ' ';
      joined += tokens[i];
    }
    return joined;
  }
  decoder_->decode_chain(tokens);
  std::string text;
  for (const std::string& token : tokens) text += token;
  return text;
}

std::optional<std::string> TokenizerImpl::id_to_token(int32_t id) const {
  if (const std::string* token = added_.decoded_form(id)) return *token;
  if (const std::string* token = model_->id_to_token(id)) return *token;
  return std::nullopt;
}

std::optional<int32_t> TokenizerImpl::token_to_id(std::string_view token) const {
  if (const auto id = added_.token_to_id(token)) return id;
  return model_->token_to_id(token);
}

int32_t TokenizerImpl::vocab_size() const {
  return vocab_size_;
}

bool TokenizerImpl::is_special(int32_t id) const {
  const AddedToken* added = added_.token(id);
  return added != nullptr && added->special;
}

bool TokenizerImpl::continues_byte_run(int32_t id, bool skip_special_tokens) const {
  if (decoder_ == nullptr || !decoder_->joins_byte_tokens()) return false;
  const std::string* token = added_.decoded_form(id);
  if (token == nullptr) token = model_->id_to_token(id);
  if (token == nullptr) return true;  // skipped by decode
  if (skip_special_tokens && added_.is_special_content(*token)) return true;
  return is_byte_fallback_token(*token);
}

bool TokenizerImpl::ends_in_byte_run(std::span<const int32_t> ids, bool skip_special_tokens) const {
  for (auto id = ids.rbegin(); id != ids.rend(); ++id) {
    if (!continues_byte_run(*id, skip_special_tokens)) return false;
    const std::string* token = added_.decoded_form(*id);
    if (token == nullptr) token = model_->id_to_token(*id);
    if (token != nullptr && is_byte_fallback_token(*token)) return true;
  }
  return false;
}

// --- Tokenizer ---

Tokenizer::Tokenizer(std::unique_ptr<TokenizerImpl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Result<Tokenizer> Tokenizer::from_json(std::string_view json_text, const std::string& source) {
  Result<Tokenizer> tokenizer = TokenizerImpl::parse(json_text);
  if (!tokenizer.is_ok()) return tokenizer.status().with_context(source);
  return tokenizer;
}

Result<Tokenizer> Tokenizer::from_file(const std::string& tokenizer_json_path) {
  KITE_ASSIGN_OR_RETURN(const std::string text, read_file(tokenizer_json_path));
  return from_json(text, tokenizer_json_path);
}

Result<Tokenizer> Tokenizer::from_directory(const std::string& directory) {
  if (!is_directory(directory)) {
    return not_found(directory + " is not a directory (expected a folder with tokenizer.json)");
  }
  const std::string path = directory + "/tokenizer.json";
  if (!path_exists(path)) {
    return not_found(directory +
                     " has no tokenizer.json (Kite reads the Hugging Face tokenizer "
                     "format)");
  }
  return from_file(path);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  return impl_->encode(text, add_special_tokens);
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  return impl_->decode(ids, skip_special_tokens);
}

int32_t Tokenizer::vocab_size() const {
  return impl_->vocab_size();
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  return impl_->token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  return impl_->id_to_token(id);
}

bool Tokenizer::is_special(int32_t id) const {
  return impl_->is_special(id);
}

// --- StreamingDecoder ---

StreamingDecoder::StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens,
                                   std::span<const int32_t> context)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {
  context = context.subspan(context.size() - std::min(context.size(), kContextIds));
  if (context.empty()) return;
  // Only a context whose text is final: nothing a further id could change (an incomplete
  // character, a run of byte tokens that more bytes would join, a decoder's rendering of the last
  // token). Otherwise part of its text would come out with the first new id, or the new text
  // would not extend it.
  const std::string text = tokenizer_.decode(context, skip_special_tokens_);
  if (text.ends_with("\xEF\xBF\xBD") ||  // maybe an incomplete character
      tokenizer_.impl_->ends_in_byte_run(context, skip_special_tokens_) ||
      stable_decode(context) != text) {
    return;
  }
  ids_.assign(context.begin(), context.end());
  read_offset_ = ids_.size();
}

std::string StreamingDecoder::stable_decode(std::span<const int32_t> ids) const {
  std::string text = tokenizer_.decode(ids, skip_special_tokens_);
  const auto& probes = tokenizer_.impl_->streaming_probes();
  if (!probes || ids.empty()) return text;
  // Keep what the text has in common with its continuations by two tokens that start
  // differently: that part no further id can change.
  std::vector<int32_t> extended(ids.begin(), ids.end());
  size_t common = text.size();
  for (const int32_t probe : {probes->first, probes->second}) {
    extended.push_back(probe);
    const std::string longer = tokenizer_.decode(extended, skip_special_tokens_);
    extended.pop_back();
    size_t same = 0;
    while (same < common && same < longer.size() && text[same] == longer[same]) ++same;
    common = same;
  }
  while (common > 0 && common < text.size() && (text[common] & 0xC0) == 0x80) --common;
  text.resize(common);
  return text;
}

std::string StreamingDecoder::push(int32_t id) {
  ids_.push_back(id);
  if (tokenizer_.impl_->continues_byte_run(id, skip_special_tokens_)) return {};
  const std::span<const int32_t> all(ids_);
  // Decode a window that starts a few tokens back, so that decoders treating the first token
  // specially (leading-space strip) affect both texts alike, and emit what the new id added.
  const std::string prefix_text =
      stable_decode(all.subspan(prefix_offset_, read_offset_ - prefix_offset_));
  const std::string new_text = stable_decode(all.subspan(prefix_offset_));
  // Hold back while the text ends in an incomplete character (decoded as U+FFFD) or does not
  // extend what was already emitted.
  if (new_text.size() <= prefix_text.size() || !new_text.starts_with(prefix_text) ||
      new_text.ends_with("\xEF\xBF\xBD")) {
    return {};
  }
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  return new_text.substr(prefix_text.size());
}

std::string StreamingDecoder::finish() {
  std::string rest = pending();
  prefix_offset_ = read_offset_ = ids_.size();
  return rest;
}

std::string StreamingDecoder::pending() const {
  const std::span<const int32_t> all(ids_);
  const std::string prefix_text =
      stable_decode(all.subspan(prefix_offset_, read_offset_ - prefix_offset_));
  const std::string new_text = tokenizer_.decode(all.subspan(prefix_offset_), skip_special_tokens_);
  if (!new_text.starts_with(prefix_text)) return {};
  return new_text.substr(prefix_text.size());
}

}  // namespace kite
