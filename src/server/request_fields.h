// Reading the fields of a JSON request body with the checks every API needs (type, range), and the
// error a bad request gets back: an HTTP status and the fields of OpenAI's error object.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace kite::server {

struct ApiError {
  int http_status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // the request field at fault; empty: null
  std::string code;   // empty: null
};

// {"error": {"message", "type", "param", "code"}}, as OpenAI's API answers errors.
nlohmann::ordered_json openai_error_json(const ApiError& error);

// Parses a request body that must be a JSON object; nullopt and `error` set otherwise.
std::optional<nlohmann::ordered_json> parse_json_object(const std::string& body, ApiError* error);

// Reads optional fields: a field that is absent or null leaves the value as it is. The first
// problem (a wrong type, a value out of range) is kept in error(); later reads then do nothing.
class FieldReader {
 public:
  explicit FieldReader(const nlohmann::ordered_json& body) : body_(body) {}

  bool has(const std::string& name) const;
  // Integers; a float with an integral value (16.0) counts as one.
  void integer(const std::string& name, int64_t* value, int64_t minimum, int64_t maximum);
  // Numbers in [minimum, maximum].
  void number(const std::string& name, double* value, double minimum, double maximum);
  void boolean(const std::string& name, bool* value);
  void string(const std::string& name, std::string* value);
  // A string or an array of strings (an empty string stands for none).
  void string_list(const std::string& name, std::vector<std::string>* value);
  // A number or an array of numbers, each in [minimum, maximum].
  void number_list(const std::string& name, std::vector<double>* value, double minimum,
                   double maximum);

  void fail(const std::string& param, const std::string& message);
  bool ok() const { return !error_.has_value(); }
  const std::optional<ApiError>& error() const { return error_; }

 private:
  const nlohmann::ordered_json* field(const std::string& name) const;

  const nlohmann::ordered_json& body_;
  std::optional<ApiError> error_;
};

// One server-sent event carrying `data`: "data: <data>\n\n".
std::string sse_event(const std::string& data);
// JSON text of `value`, with invalid UTF-8 replaced (text decoded from tokens is valid, but a
// single token's text can end inside a character).
std::string dump_json(const nlohmann::ordered_json& value);

}  // namespace kite::server
