// JSON request fields and API errors.
#include "server/request_fields.h"

#include <cmath>
#include <limits>

namespace kite::server {
namespace {

const char* json_type_name(const nlohmann::ordered_json& value) {
  if (value.is_number()) return "a number";
  if (value.is_string()) return "a string";
  if (value.is_boolean()) return "a boolean";
  if (value.is_array()) return "an array";
  if (value.is_object()) return "an object";
  return "null";
}

std::string format_number(double value) {
  if (value == std::floor(value) && std::fabs(value) < 1e15) {
    return std::to_string(static_cast<long long>(value));
  }
  return nlohmann::json(value).dump();
}

}  // namespace

nlohmann::ordered_json openai_error_json(const ApiError& error) {
  nlohmann::ordered_json body;
  body["message"] = error.message;
  body["type"] = error.type;
  body["param"] =
      error.param.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(error.param);
  body["code"] = error.code.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(error.code);
  return nlohmann::ordered_json{{"error", body}};
}

std::optional<nlohmann::ordered_json> parse_json_object(const std::string& body, ApiError* error) {
  nlohmann::ordered_json json;
  try {
    json = nlohmann::ordered_json::parse(body);
  } catch (const nlohmann::json::parse_error& exception) {
    // nlohmann's message names the byte and what it expected there.
    *error =
        ApiError{.message = std::string("the request body is not valid JSON: ") + exception.what()};
    return std::nullopt;
  }
  if (!json.is_object()) {
    *error = ApiError{.message = std::string("the request body must be a JSON object, not ") +
                                 json_type_name(json)};
    return std::nullopt;
  }
  return json;
}

const nlohmann::ordered_json* FieldReader::field(const std::string& name) const {
  if (error_) return nullptr;
  const auto found = body_.find(name);
  if (found == body_.end() || found->is_null()) return nullptr;
  return &*found;
}

bool FieldReader::has(const std::string& name) const {
  const auto found = body_.find(name);
  return found != body_.end() && !found->is_null();
}

void FieldReader::fail(const std::string& param, const std::string& message) {
  if (!error_) error_ = ApiError{.message = message, .param = param};
}

void FieldReader::integer(const std::string& name, int64_t* value, int64_t minimum,
                          int64_t maximum) {
  const nlohmann::ordered_json* json = field(name);
  if (!json) return;
  int64_t parsed = 0;
  if (json->is_number_integer()) {
    if (json->is_number_unsigned() &&
        json->get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())) {
      return fail(name, "'" + name + "' is too large");
    }
    parsed = json->get<int64_t>();
  } else if (json->is_number_float() && std::isfinite(json->get<double>()) &&
             json->get<double>() == std::floor(json->get<double>()) &&
             std::fabs(json->get<double>()) < 9e18) {
    parsed = static_cast<int64_t>(json->get<double>());
  } else {
    return fail(name, "'" + name + "' must be an integer, not " + json_type_name(*json));
  }
  if (parsed < minimum || parsed > maximum) {
    return fail(name, "'" + name + "' must be between " + std::to_string(minimum) + " and " +
                          std::to_string(maximum) + "; got " + std::to_string(parsed));
  }
  *value = parsed;
}

void FieldReader::number(const std::string& name, double* value, double minimum, double maximum) {
  const nlohmann::ordered_json* json = field(name);
  if (!json) return;
  if (!json->is_number()) {
    return fail(name, "'" + name + "' must be a number, not " + json_type_name(*json));
  }
  const double parsed = json->get<double>();
  if (!(parsed >= minimum && parsed <= maximum)) {
    return fail(name, "'" + name + "' must be between " + format_number(minimum) + " and " +
                          format_number(maximum) + "; got " + format_number(parsed));
  }
  *value = parsed;
}

void FieldReader::boolean(const std::string& name, bool* value) {
  const nlohmann::ordered_json* json = field(name);
  if (!json) return;
  if (!json->is_boolean()) {
    return fail(name, "'" + name + "' must be a boolean, not " + json_type_name(*json));
  }
  *value = json->get<bool>();
}

void FieldReader::string(const std::string& name, std::string* value) {
  const nlohmann::ordered_json* json = field(name);
  if (!json) return;
  if (!json->is_string()) {
    return fail(name, "'" + name + "' must be a string, not " + json_type_name(*json));
  }
  *value = json->get<std::string>();
}

void FieldReader::string_list(const std::string& name, std::vector<std::string>* value) {
  const nlohmann::ordered_json* json = field(name);
  if (!json) return;
  std::vector<std::string> strings;
  if (json->is_string()) {
    strings.push_back(json->get<std::string>());
  } else if (json->is_array()) {
    for (const auto& element : *json) {
      if (!element.is_string()) {
        return fail(name, "'" + name + "' must be a string or an array of strings; it holds " +
                              json_type_name(element));
      }
      strings.push_back(element.get<std::string>());
    }
  } else {
    return fail(name, "'" + name + "' must be a string or an array of strings, not " +
                          json_type_name(*json));
  }
  value->clear();
  for (std::string& string : strings) {
    if (!string.empty()) value->push_back(std::move(string));
  }
}

void FieldReader::number_list(const std::string& name, std::vector<double>* value, double minimum,
                              double maximum) {
  const nlohmann::ordered_json* json = field(name);
  if (!json) return;
  std::vector<double> numbers;
  if (json->is_number()) {
    numbers.push_back(json->get<double>());
  } else if (json->is_array()) {
    for (const auto& element : *json) {
      if (!element.is_number()) {
        return fail(name, "'" + name + "' must be a number or an array of numbers; it holds " +
                              json_type_name(element));
      }
      numbers.push_back(element.get<double>());
    }
  } else {
    return fail(name, "'" + name + "' must be a number or an array of numbers, not " +
                          json_type_name(*json));
  }
  for (const double number : numbers) {
    if (!(number >= minimum && number <= maximum)) {
      return fail(name, "'" + name + "' values must be between " + format_number(minimum) +
                            " and " + format_number(maximum) + "; got " + format_number(number));
    }
  }
  *value = std::move(numbers);
}

std::string sse_event(const std::string& data) {
  return "data: " + data + "\n\n";
}

std::string dump_json(const nlohmann::ordered_json& value) {
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace kite::server
