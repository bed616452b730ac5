// Added tokens (see added_vocabulary.h).
#include "tokenizer/added_vocabulary.h"

#include <algorithm>

#include "tokenizer/json_fields.h"
#include "tokenizer/unicode.h"

namespace kite {
namespace {

using tokenizer_json::Json;

// Start of the trailing whitespace of `text` (Rust regex \s*$).
size_t trailing_whitespace_start(std::string_view text) {
  size_t end = text.size();
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
    size_t position = start;
    if (!unicode::is_whitespace(unicode::next_character(text, position))) break;
    end = start;
  }
  return end;
}

// Length of the leading whitespace of `text` (Rust regex ^\s*).
size_t leading_whitespace_length(std::string_view text) {
  size_t position = 0;
  while (position < text.size()) {
    size_t next = position;
    if (!unicode::is_whitespace(unicode::next_character(text, next))) break;
    position = next;
  }
  return position;
}

std::string_view last_character(std::string_view text) {
  if (text.empty()) return text;
  size_t start = text.size() - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  return text.substr(start);
}

std::string_view first_character(std::string_view text) {
  if (text.empty()) return text;
  return text.substr(
      0, std::min(text.size(), unicode::character_length(static_cast<unsigned char>(text[0]))));
}

}  // namespace

int32_t AddedVocabulary::Matcher::child(int32_t node, uint8_t byte) const {
  if (node == 0) return root_children_[byte];
  for (const auto& [label, target] : nodes_[size_t(node)].children) {
    if (label == byte) return target;
  }
  return -1;
}

void AddedVocabulary::Matcher::add(std::string_view pattern, int32_t id) {
  if (pattern.empty()) return;
  int32_t node = 0;
  for (char c : pattern) {
    const auto byte = static_cast<uint8_t>(c);
    int32_t next = child(node, byte);
    if (next < 0) {
      next = int32_t(nodes_.size());
      nodes_.emplace_back();
      if (node == 0) {
        root_children_[byte] = next;
      } else {
        nodes_[size_t(node)].children.emplace_back(byte, next);
      }
    }
    node = next;
  }
  // Between equal patterns the first one added wins, as in Aho-Corasick's leftmost-longest.
  if (nodes_[size_t(node)].id < 0) nodes_[size_t(node)].id = id;
}

bool AddedVocabulary::Matcher::find(std::string_view text, size_t from, size_t& start, size_t& end,
                                    int32_t& id) const {
  if (empty()) return false;
  for (size_t position = from; position < text.size(); ++position) {
    int32_t node = root_children_[static_cast<uint8_t>(text[position])];
    if (node < 0) continue;
    int32_t best_id = -1;
    size_t best_end = 0;
    size_t cursor = position + 1;
    while (true) {
      if (nodes_[size_t(node)].id >= 0) {
        best_id = nodes_[size_t(node)].id;
        best_end = cursor;
      }
      if (cursor >= text.size()) break;
      node = child(node, static_cast<uint8_t>(text[cursor]));
      if (node < 0) break;
      ++cursor;
    }
    if (best_id >= 0) {
      start = position;
      end = best_end;
      id = best_id;
      return true;
    }
  }
  return false;
}

std::optional<int32_t> AddedVocabulary::any_token_to_id(std::string_view content,
                                                        const BpeModel& model) const {
  if (const auto it = ids_by_content_.find(content); it != ids_by_content_.end()) {
    return it->second;
  }
  return model.token_to_id(content);
}

void AddedVocabulary::add_token(const AddedToken& token, const BpeModel& model,
                                const Normalizer* normalizer) {
  // AddedVocabulary::add_tokens of the Rust library, for one token.
  if (token.special && !token.content.empty() && !special_contents_.contains(token.content)) {
    special_tokens_.push_back(token);
    special_contents_.insert(token.content);
  }
  if (token.content.empty()) return;
  // An identical token already added is ignored (all contents equal map to one id).
  if (const auto known = ids_by_content_.find(token.content); known != ids_by_content_.end()) {
    const auto existing = tokens_by_id_.find(known->second);
    if (existing != tokens_by_id_.end() && existing->second == token) return;
  }
  int32_t id;
  if (const auto known = any_token_to_id(token.content, model)) {
    id = *known;
  } else {
    const int32_t model_size = int32_t(model.vocab_entries());
    if (ids_by_content_.empty()) {
      id = model_size;
    } else {
      id = (max_added_id_ >= model_size || model_size == 0) ? max_added_id_ + 1 : model_size;
    }
  }
  if (token.normalized && normalizer != nullptr) {
    std::string normalized = token.content;
    normalizer->normalize(normalized);
    if (normalized != token.content) normalized_forms_[id] = std::move(normalized);
  }
  ids_by_content_[token.content] = id;
  tokens_by_id_[id] = token;
  max_added_id_ = std::max(max_added_id_, id);
  if (!special_contents_.contains(token.content)) plain_tokens_.push_back(token);
}

Result<AddedVocabulary> AddedVocabulary::from_json(const nlohmann::json& list,
                                                   const BpeModel& model,
                                                   const Normalizer* normalizer) {
  using namespace tokenizer_json;
  AddedVocabulary vocabulary;
  KITE_ASSIGN_OR_RETURN(vocabulary.word_character_,
                        Regex::from_pcre2("\\A[" + rust_regex_word_class_contents() + "]"));
  if (!list.is_null() && !list.is_array()) {
    return corrupt("added_tokens must be a list");
  }
  if (list.is_array()) {
    for (size_t index = 0; index < list.size(); ++index) {
      const Json& item = list[index];
      const std::string where = "added_tokens[" + std::to_string(index) + "]";
      AddedToken token;
      KITE_ASSIGN_OR_RETURN(token.content, string_field(item, "content", where));
      KITE_ASSIGN_OR_RETURN(token.special, bool_field(item, "special", where, false));
      KITE_ASSIGN_OR_RETURN(token.single_word, bool_field(item, "single_word", where, false));
      KITE_ASSIGN_OR_RETURN(token.lstrip, bool_field(item, "lstrip", where, false));
      KITE_ASSIGN_OR_RETURN(token.rstrip, bool_field(item, "rstrip", where, false));
      KITE_ASSIGN_OR_RETURN(token.normalized,
                            bool_field(item, "normalized", where, !token.special));
      if (const Json* id = optional_field(item, "id")) {
        KITE_RETURN_IF_ERROR(to_token_id(*id, where).status());
      }
      vocabulary.add_token(token, model, normalizer);
    }
  }
  // Special tokens first, then the others, each set in the order given (refresh_added_tokens).
  std::vector<const AddedToken*> ordered;
  for (const auto& token : vocabulary.special_tokens_) ordered.push_back(&token);
  for (const auto& token : vocabulary.plain_tokens_) ordered.push_back(&token);
  for (const AddedToken* token : ordered) {
    const int32_t id = *vocabulary.any_token_to_id(token->content, model);
    if (!token->normalized) {
      vocabulary.raw_matcher_.add(token->content, id);
    } else {
      std::string pattern = token->content;
      if (normalizer != nullptr) normalizer->normalize(pattern);
      vocabulary.normalized_matcher_.add(pattern, id);
    }
  }
  return vocabulary;
}

bool AddedVocabulary::is_word_character(std::string_view character) const {
  return !character.empty() && word_character_.matches_at_start(character);
}

void AddedVocabulary::split(std::string_view text, bool normalized_pass,
                            std::vector<TextSegment>& out) const {
  // find_matches of the Rust library.
  const Matcher& matcher = normalized_pass ? normalized_matcher_ : raw_matcher_;
  if (text.empty()) {
    out.push_back({0, 0, -1});
    return;
  }
  size_t start_offset = 0;
  size_t search_from = 0;
  size_t match_start, match_end;
  int32_t id;
  while (matcher.find(text, search_from, match_start, match_end, id)) {
    search_from = match_end;
    size_t start = match_start, stop = match_end;
    const AddedToken& token = tokens_by_id_.at(id);
    if (token.single_word) {
      const bool start_space =
          start == 0 || !is_word_character(last_character(text.substr(0, start)));
      const bool stop_space =
          stop == text.size() || !is_word_character(first_character(text.substr(stop)));
      if (!start_space || !stop_space) continue;
    }
    if (token.lstrip) {
      start = std::max(trailing_whitespace_start(text.substr(0, start)), start_offset);
    }
    if (token.rstrip) stop += leading_whitespace_length(text.substr(stop));
    if (start_offset < start) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, id});
    start_offset = stop;
  }
  if (start_offset != text.size()) out.push_back({start_offset, text.size(), -1});
}

std::optional<int32_t> AddedVocabulary::token_to_id(std::string_view content) const {
  const auto it = ids_by_content_.find(content);
  if (it == ids_by_content_.end()) return std::nullopt;
  return it->second;
}

const AddedToken* AddedVocabulary::token(int32_t id) const {
  const auto it = tokens_by_id_.find(id);
  return it == tokens_by_id_.end() ? nullptr : &it->second;
}

const std::string* AddedVocabulary::decoded_form(int32_t id) const {
  const auto token = tokens_by_id_.find(id);
  if (token == tokens_by_id_.end()) return nullptr;
  const auto normalized = normalized_forms_.find(id);
  return normalized != normalized_forms_.end() ? &normalized->second : &token->second.content;
}

bool AddedVocabulary::is_special_content(std::string_view content) const {
  return special_contents_.find(content) != special_contents_.end();
}

}  // namespace kite
