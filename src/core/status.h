// Errors in Kite come in two kinds (STYLE.md, principle 9):
//  - user-caused problems (bad paths, corrupt files, unsupported configs) travel as a Status or a
//    Result<T> whose message says what went wrong and what to do;
//  - programming errors stop the program through KITE_CHECK, naming the statement, file and line.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace kite {

enum class StatusCode {
  kOk,
  kInvalidArgument,  // the user asked for something malformed (flag value, request field)
  kNotFound,         // a file or directory does not exist
  kCorrupt,          // a file exists but its content is malformed or truncated
  kUnsupported,      // well-formed input that Kite does not handle (architecture, dtype, ...)
  kIo,               // the operating system refused a read or write
  kOutOfRange,       // a limit was exceeded (prompt too long, batch too large)
  kInternal,         // a bug or a failure of a library Kite calls
};

const char* status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok() { return Status(); }
  bool is_ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // Returns the same status with "context: " put in front of its message.
  Status with_context(const std::string& context) const {
    if (is_ok()) return *this;
    return Status(code_, context + ": " + message_);
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status invalid_argument(std::string message) {
  return Status(StatusCode::kInvalidArgument, std::move(message));
}
inline Status not_found(std::string message) {
  return Status(StatusCode::kNotFound, std::move(message));
}
inline Status corrupt(std::string message) {
  return Status(StatusCode::kCorrupt, std::move(message));
}
inline Status unsupported(std::string message) {
  return Status(StatusCode::kUnsupported, std::move(message));
}
inline Status io_error(std::string message) {
  return Status(StatusCode::kIo, std::move(message));
}
inline Status out_of_range(std::string message) {
  return Status(StatusCode::kOutOfRange, std::move(message));
}
inline Status internal_error(std::string message) {
  return Status(StatusCode::kInternal, std::move(message));
}

// A value or the Status that explains why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}         // NOLINT: implicit by design
  Result(Status status)  // NOLINT: implicit by design
      : status_(status.is_ok() ? internal_error("Result constructed from an OK status")
                               : std::move(status)) {}

  bool is_ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }
  T& value() & { return checked(), *value_; }
  const T& value() const& { return checked(), *value_; }
  T&& value() && { return checked(), std::move(*value_); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  void checked() const {
    if (!value_) {
      std::fprintf(stderr, "kite: internal error: value() on a failed Result: %s\n",
                   status_.message().c_str());
      std::abort();
    }
  }
  std::optional<T> value_;
  Status status_;
};

}  // namespace kite

#define KITE_CONCAT_INNER(a, b) a##b
#define KITE_CONCAT(a, b) KITE_CONCAT_INNER(a, b)

// Returns from the enclosing function when `expr` (a Status) is not OK.
#define KITE_RETURN_IF_ERROR(expr)                  \
  do {                                              \
    ::kite::Status kite_status_ = (expr);           \
    if (!kite_status_.is_ok()) return kite_status_; \
  } while (0)

// `KITE_ASSIGN_OR_RETURN(auto x, f());` declares x from a Result, or returns its Status.
#define KITE_ASSIGN_OR_RETURN(lhs, expr) \
  KITE_ASSIGN_OR_RETURN_IMPL(KITE_CONCAT(kite_result_, __LINE__), lhs, expr)
#define KITE_ASSIGN_OR_RETURN_IMPL(result, lhs, expr) \
  auto result = (expr);                               \
  if (!result.is_ok()) return result.status();        \
  lhs = std::move(result).value()

// Stops the program on a broken invariant (a bug, never a user error).
#define KITE_CHECK(cond)                                                                    \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      std::fprintf(stderr, "kite: check failed: %s at %s:%d\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                         \
    }                                                                                       \
  } while (0)
