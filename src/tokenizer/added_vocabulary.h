// Added tokens of tokenizer.json ("added_tokens"): special and user-added tokens that are cut
// out of the text before the model sees it, with the Rust library's matching rules
// (leftmost-longest, single_word, lstrip, rstrip, normalized) and id assignment.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/status.h"
#include "tokenizer/bpe.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/regex.h"

namespace kite {

struct AddedToken {
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
  bool operator==(const AddedToken&) const = default;
};

// A piece of text: an added token (id >= 0) or text the model must encode (id == -1).
struct TextSegment {
  size_t start;
  size_t end;
  int32_t id;
};

class AddedVocabulary {
 public:
  // Adds the tokens of the "added_tokens" list one by one as the Rust library does when it
  // loads a tokenizer.json (ids come from the vocabulary or follow it; the "id" fields are
  // not trusted). `normalizer` may be null.
  static Result<AddedVocabulary> from_json(const nlohmann::json& list, const BpeModel& model,
                                           const Normalizer* normalizer);

  // Splits `text` on the tokens that match the raw text (`normalized_pass` false) or the
  // normalized text (true). Segments cover `text` in order.
  void split(std::string_view text, bool normalized_pass, std::vector<TextSegment>& out) const;

  std::optional<int32_t> token_to_id(std::string_view content) const;
  const AddedToken* token(int32_t id) const;
  // The string an added token decodes to: its normalized form when it is matched normalized
  // and the normalizer changes it (the Rust library's simple_id_to_token), else its content.
  const std::string* decoded_form(int32_t id) const;
  bool is_special_content(std::string_view content) const;
  // Distinct contents (what the Rust library counts).
  const TokenIdMap& ids_by_content() const { return ids_by_content_; }

 private:
  // Byte trie over the patterns of one pass, answering leftmost-longest queries.
  class Matcher {
   public:
    void add(std::string_view pattern, int32_t id);
    // The leftmost-longest match starting at or after `from`.
    bool find(std::string_view text, size_t from, size_t& start, size_t& end, int32_t& id) const;
    bool empty() const { return nodes_.size() <= 1; }

   private:
    struct Node {
      std::vector<std::pair<uint8_t, int32_t>> children;
      int32_t id = -1;  // pattern ending here
    };
    int32_t child(int32_t node, uint8_t byte) const;
    std::vector<Node> nodes_ = std::vector<Node>(1);
    std::vector<int32_t> root_children_ = std::vector<int32_t>(256, -1);
  };

  void add_token(const AddedToken& token, const BpeModel& model, const Normalizer* normalizer);
  bool is_word_character(std::string_view character) const;
  std::optional<int32_t> any_token_to_id(std::string_view content, const BpeModel& model) const;

  TokenIdMap ids_by_content_;
  std::unordered_map<int32_t, AddedToken> tokens_by_id_;
  std::unordered_map<int32_t, std::string> normalized_forms_;
  std::vector<AddedToken> special_tokens_;  // in the order given
  std::vector<AddedToken> plain_tokens_;    // non-special, in the order given
  std::unordered_set<std::string, StringHash, std::equal_to<>> special_contents_;
  Matcher raw_matcher_;
  Matcher normalized_matcher_;
  int32_t max_added_id_ = -1;
  Regex word_character_;  // \w of Rust's regex crate, anchored
};

}  // namespace kite
