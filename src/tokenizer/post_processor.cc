// Post-processors (see post_processor.h). Only single sequences are encoded, so the "pair"
// templates are read for validity and otherwise unused.
#include "tokenizer/post_processor.h"

#include <string>

#include "tokenizer/json_fields.h"
#include "tokenizer/unicode.h"

namespace kite {
namespace {

using tokenizer_json::Json;

// The ids a template inserts before and after the sequence.
class SurroundProcessor final : public PostProcessor {
 public:
  SurroundProcessor(std::vector<int32_t> before, std::vector<int32_t> after)
      : before_(std::move(before)), after_(std::move(after)) {}
  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    if (!add_special_tokens) return;
    ids.insert(ids.begin(), before_.begin(), before_.end());
    ids.insert(ids.end(), after_.begin(), after_.end());
  }

 private:
  std::vector<int32_t> before_, after_;
};

class IdentityProcessor final : public PostProcessor {
 public:
  void process(std::vector<int32_t>&, bool) const override {}
};

class SequenceProcessor final : public PostProcessor {
 public:
  explicit SequenceProcessor(std::vector<std::unique_ptr<PostProcessor>> steps)
      : steps_(std::move(steps)) {}
  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    for (const auto& step : steps_) step->process(ids, add_special_tokens);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

template <typename T, typename... Args>
std::unique_ptr<PostProcessor> make(Args&&... args) {
  return std::make_unique<T>(std::forward<Args>(args)...);
}

// TemplateProcessing's "single" template: SpecialToken pieces around one Sequence "A".
Result<std::unique_ptr<PostProcessor>> parse_template(const Json& spec, const std::string& where) {
  using namespace tokenizer_json;
  KITE_ASSIGN_OR_RETURN(const Json* single, required_field(spec, "single", where));
  KITE_ASSIGN_OR_RETURN(const Json* special_tokens, required_field(spec, "special_tokens", where));
  if (!single->is_array()) {
    return field_error(where, "single", "must be a list of {\"SpecialToken\"|\"Sequence\": ...}");
  }
  if (!special_tokens->is_object())
    return field_error(where, "special_tokens", "must be an object");
  std::vector<int32_t> before, after;
  bool seen_sequence = false;
  for (const Json& piece : *single) {
    if (!piece.is_object() || piece.size() != 1) {
      return corrupt(where +
                     ": each piece of 'single' must be {\"SpecialToken\": ...} or "
                     "{\"Sequence\": ...}");
    }
    if (const Json* sequence = optional_field(piece, "Sequence")) {
      KITE_ASSIGN_OR_RETURN(const std::string id, string_field(*sequence, "id", where));
      if (id != "A") return corrupt(where + ": the single template may only use sequence A");
      if (seen_sequence) return corrupt(where + ": the single template uses sequence A twice");
      seen_sequence = true;
      continue;
    }
    const Json* special = optional_field(piece, "SpecialToken");
    if (special == nullptr) {
      return corrupt(where + ": unknown template piece " + piece.dump());
    }
    KITE_ASSIGN_OR_RETURN(const std::string name, string_field(*special, "id", where));
    const Json* entry = optional_field(*special_tokens, name);
    if (entry == nullptr) {
      return corrupt(where + ": special token " + unicode::quoted(name) +
                     " is missing from special_tokens");
    }
    KITE_ASSIGN_OR_RETURN(const Json* ids, required_field(*entry, "ids", where));
    if (!ids->is_array()) return field_error(where, "ids", "must be a list of token ids");
    for (const Json& id_value : *ids) {
      KITE_ASSIGN_OR_RETURN(const int32_t id, to_token_id(id_value, where));
      (seen_sequence ? after : before).push_back(id);
    }
  }
  if (!seen_sequence) return corrupt(where + ": the single template has no sequence A");
  return make<SurroundProcessor>(std::move(before), std::move(after));
}

// RobertaProcessing / BertProcessing: cls A sep, with "cls": ["<s>", 0], "sep": ["</s>", 2].
Result<std::unique_ptr<PostProcessor>> parse_cls_sep(const Json& spec, const std::string& where) {
  using namespace tokenizer_json;
  std::vector<int32_t> ids;
  for (const char* key : {"cls", "sep"}) {
    KITE_ASSIGN_OR_RETURN(const Json* pair, required_field(spec, key, where));
    if (!pair->is_array() || pair->size() != 2 || !(*pair)[0].is_string()) {
      return field_error(where, key, "must be a pair [token, id]");
    }
    KITE_ASSIGN_OR_RETURN(const int32_t id, to_token_id((*pair)[1], where));
    ids.push_back(id);
  }
  return make<SurroundProcessor>(std::vector<int32_t>{ids[0]}, std::vector<int32_t>{ids[1]});
}

}  // namespace

Result<std::unique_ptr<PostProcessor>> parse_post_processor(const nlohmann::json& spec) {
  const tokenizer_json::NestingGuard nesting;
  KITE_RETURN_IF_ERROR(nesting.check("post_processor"));
  using namespace tokenizer_json;
  KITE_ASSIGN_OR_RETURN(const std::string type, component_type(spec, "post_processor"));
  const std::string where = "post_processor " + type;
  if (type == "TemplateProcessing") return parse_template(spec, where);
  if (type == "RobertaProcessing" || type == "BertProcessing") return parse_cls_sep(spec, where);
  if (type == "ByteLevel") return make<IdentityProcessor>();
  if (type == "Sequence") {
    KITE_ASSIGN_OR_RETURN(auto steps, parse_component_list<PostProcessor>(
                                          spec, "processors", where, [](const Json& item) {
                                            return parse_post_processor(item);
                                          }));
    return make<SequenceProcessor>(std::move(steps));
  }
  return unsupported("post_processor type " + unicode::quoted(type) +
                     " is not supported (supported: TemplateProcessing, RobertaProcessing, "
                     "BertProcessing, ByteLevel, Sequence)");
}

}  // namespace kite
