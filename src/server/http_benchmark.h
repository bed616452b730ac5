// `kite bench --mode serve --url`: the serving benchmark of runtime/serve_benchmark.h sent over
// HTTP to a running `kite serve` or any OpenAI-compatible server (vLLM, ...). Each request is a
// streamed /v1/completions of a token-id prompt with ignore_eos, on its own connection, timed from
// the moment it is sent to each server-sent event that carries text (docs/serving.md).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "runtime/serve_benchmark.h"

namespace kite::server {

// A server's base URL: http[s]://HOST[:PORT][/PREFIX].
struct ServerUrl {
  std::string scheme;       // "http" or "https"
  std::string host;         // a name, an IPv4 address, or an IPv6 address in brackets
  int port = 0;             // 80 or 443 when the URL has none
  std::string path_prefix;  // "" or "/prefix", no trailing '/'

  std::string origin() const;  // "http://host:port"
  // PREFIX/v1/completions; a prefix that ends in /v1 (an OpenAI client's base_url) is the API's.
  std::string completions_path() const;
};
// Errors (kInvalidArgument) name --url.
Result<ServerUrl> parse_server_url(const std::string& text);

struct HttpBenchmarkTarget {
  ServerUrl url;
  std::string api_key;  // sent as "Authorization: Bearer <key>" unless empty
  std::string model;    // the requests' "model"; empty: left out (the server's only model)
};

// The body of one benchmark request: the prompt as token ids, greedy, exactly `output_length`
// tokens (max_tokens and vLLM's ignore_eos), streamed with the usage at the end.
std::string completion_request_body(const std::vector<int32_t>& prompt, int64_t output_length,
                                    const std::string& model);

// One streamed /v1/completions response, read as its bytes arrive: when each event with text
// came, the usage of the final event, and whether the stream ended properly.
class CompletionStreamReader {
 public:
  // The next bytes of the body, received at `now`. False once the stream has failed (an error
  // event, an event that is not JSON): reading can stop.
  bool consume(std::string_view bytes, ServeClock::time_point now);
  // Once the body has ended: the request's outputs and output tokens (the usage's
  // completion_tokens, or one per event with text when the server sends no usage), or its error.
  void finish(RequestTimeline* timeline) const;
  bool done() const { return done_; }  // "data: [DONE]" came

 private:
  void handle_event(const std::string& data, ServeClock::time_point now);

  std::string line_;  // an incomplete line
  std::string data_;  // the data lines of the event being read
  std::vector<ServeClock::time_point> text_events_;
  std::optional<int64_t> completion_tokens_;
  bool finish_reason_seen_ = false;
  bool done_ = false;  // "data: [DONE]"
  std::optional<std::string> error_;
};

// The message of a request answered with HTTP `status`: the error message of an OpenAI-style
// (or vLLM, FastAPI) error body, else the start of the body.
std::string http_error_message(int status, const std::string& body);

// At most this many connections at once (one thread each).
inline constexpr int64_t kMaxBenchmarkConnections = 1024;

// Runs the benchmark against `target`: prompts as in run_serve_benchmark, one connection per
// request in flight (options.concurrency of them, or min(num_requests, kMaxBenchmarkConnections)
// without a limit). Failed requests (unreachable server, HTTP errors, error events) are counted in
// errors with the first one's message; the result is an error only when the options are bad.
Result<ServeBenchmarkResult> run_http_serve_benchmark(
    const HttpBenchmarkTarget& target, const std::vector<std::vector<int32_t>>& prompts,
    const ServeBenchmarkOptions& options, const std::function<void(int64_t)>& on_done = {});

}  // namespace kite::server
