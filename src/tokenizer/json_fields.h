// Typed access to tokenizer.json fields that turns a missing or mistyped field into a Status
// naming the component ("pre_tokenizer Split: field 'behavior' must be a string").
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace kite::tokenizer_json {

using Json = nlohmann::json;

inline Status field_error(std::string_view where, std::string_view key, std::string_view what) {
  return corrupt(std::string(where) + ": field '" + std::string(key) + "' " + std::string(what));
}

inline Result<const Json*> required_field(const Json& object, std::string_view key,
                                          std::string_view where) {
  if (!object.is_object()) return corrupt(std::string(where) + ": expected a JSON object");
  const auto it = object.find(key);
  if (it == object.end()) return field_error(where, key, "is missing");
  return &*it;
}

// nullptr when the field is absent or null.
inline const Json* optional_field(const Json& object, std::string_view key) {
  if (!object.is_object()) return nullptr;
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

inline Result<std::string> string_field(const Json& object, std::string_view key,
                                        std::string_view where) {
  KITE_ASSIGN_OR_RETURN(const Json* value, required_field(object, key, where));
  if (!value->is_string()) return field_error(where, key, "must be a string");
  return value->get<std::string>();
}

inline Result<std::optional<std::string>> optional_string_field(const Json& object,
                                                                std::string_view key,
                                                                std::string_view where) {
  const Json* value = optional_field(object, key);
  if (value == nullptr) return std::optional<std::string>();
  if (!value->is_string()) return field_error(where, key, "must be a string or null");
  return std::optional<std::string>(value->get<std::string>());
}

inline Result<bool> bool_field(const Json& object, std::string_view key, std::string_view where,
                               bool default_value) {
  const Json* value = optional_field(object, key);
  if (value == nullptr) return default_value;
  if (!value->is_boolean()) return field_error(where, key, "must be true or false");
  return value->get<bool>();
}

inline Result<int64_t> integer_field(const Json& object, std::string_view key,
                                     std::string_view where, int64_t default_value) {
  const Json* value = optional_field(object, key);
  if (value == nullptr) return default_value;
  if (!value->is_number_integer()) return field_error(where, key, "must be an integer");
  return value->get<int64_t>();
}

// A token id: a non-negative integer that fits in int32.
inline Result<int32_t> to_token_id(const Json& value, std::string_view where) {
  if (!value.is_number_integer())
    return corrupt(std::string(where) + ": token id must be an integer");
  const int64_t id = value.get<int64_t>();
  if (id < 0 || id > INT32_MAX) {
    return corrupt(std::string(where) + ": token id " + std::to_string(id) + " is out of range");
  }
  return int32_t(id);
}

// Counts how deeply Sequence components nest while they are parsed (each level recurses), so
// that a hostile file cannot exhaust the stack.
class NestingGuard {
 public:
  static constexpr int kMaxDepth = 32;
  NestingGuard() { ++depth(); }
  ~NestingGuard() { --depth(); }
  NestingGuard(const NestingGuard&) = delete;
  NestingGuard& operator=(const NestingGuard&) = delete;
  Status check(std::string_view where) const {
    if (depth() <= kMaxDepth) return Status::ok();
    return corrupt(std::string(where) + ": Sequence components nested more than " +
                   std::to_string(kMaxDepth) + " deep");
  }

 private:
  static int& depth() {
    thread_local int value = 0;
    return value;
  }
};

// The "type" of a component object.
inline Result<std::string> component_type(const Json& object, std::string_view where) {
  if (!object.is_object()) return corrupt(std::string(where) + ": expected a JSON object");
  return string_field(object, "type", where);
}

// Parses the list `object[key]` of a Sequence component, each item with `parse_item`
// (which returns Result<std::unique_ptr<T>>).
template <typename T, typename ParseItem>
Result<std::vector<std::unique_ptr<T>>> parse_component_list(const Json& object,
                                                             std::string_view key,
                                                             std::string_view where,
                                                             const ParseItem& parse_item) {
  KITE_ASSIGN_OR_RETURN(const Json* list, required_field(object, key, where));
  if (!list->is_array()) return field_error(where, key, "must be a list");
  std::vector<std::unique_ptr<T>> items;
  for (const Json& item : *list) {
    KITE_ASSIGN_OR_RETURN(auto parsed, parse_item(item));
    items.push_back(std::move(parsed));
  }
  return items;
}

}  // namespace kite::tokenizer_json
