// The serving benchmark over HTTP: a pool of threads, one connection each, takes the requests in
// arrival order; each thread sends its request at its arrival time and reads the event stream
// with cpp-httplib's content receiver, stamping every event as it arrives.
#include "server/http_benchmark.h"

#include <httplib.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <system_error>
#include <thread>

namespace kite::server {
namespace {

using Json = nlohmann::ordered_json;

constexpr time_t kConnectTimeoutSeconds = 10;
// A request that receives nothing for this long fails (a server with a long queue can take a while
// before a request's first token).
constexpr time_t kReadTimeoutSeconds = 600;
// Bytes of an error body or a bad event quoted in a message, and of an error body kept to parse.
constexpr size_t kQuotedBytes = 300;
constexpr size_t kErrorBodyBytes = 64 << 10;

std::string shortened(std::string_view text) {
  std::string result(text.substr(0, kQuotedBytes));
  if (text.size() > kQuotedBytes) result += "...";
  return result;
}

// The message of an error object: OpenAI's {"error": {"message"}} (also a string "error"), vLLM's
// {"object": "error", "message"}, FastAPI's {"detail"}; nothing when `body` is none of these.
std::optional<std::string> error_message(const Json& body) {
  if (!body.is_object()) return std::nullopt;
  const auto text_of = [](const Json& value) {
    return value.is_string() ? value.get<std::string>() : value.dump();
  };
  if (const auto error = body.find("error"); error != body.end() && !error->is_null()) {
    if (error->is_object() && error->contains("message")) return text_of(error->at("message"));
    return text_of(*error);
  }
  if (body.value("object", "") == "error" && body.contains("message")) {
    return text_of(body.at("message"));
  }
  if (const auto detail = body.find("detail"); detail != body.end()) return text_of(*detail);
  return std::nullopt;
}

std::string transport_error(httplib::Error error, const std::string& origin) {
  switch (error) {
    case httplib::Error::Connection:
      return "cannot connect to " + origin + " (is the server running at that address?)";
    case httplib::Error::ConnectionTimeout:
      return "connecting to " + origin + " timed out after " +
             std::to_string(kConnectTimeoutSeconds) + " s";
    case httplib::Error::Read:
      return "reading the response from " + origin + " failed (the connection closed, or nothing " +
             "came for " + std::to_string(kReadTimeoutSeconds) + " s)";
    case httplib::Error::Write:
      return "sending the request to " + origin + " failed (the connection closed)";
    case httplib::Error::SSLConnection:
    case httplib::Error::SSLLoadingCerts:
    case httplib::Error::SSLServerVerification:
      return "the TLS connection to " + origin + " failed (" + httplib::to_string(error) + ")";
    default:
      return "the request to " + origin + " failed (" + httplib::to_string(error) + ")";
  }
}

bool is_host_character(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
}

// Each connection holds a socket: raises the soft limit on open files when it is too low for them.
Status allow_open_files(int64_t connections) {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return Status::ok();
  const rlim_t needed = rlim_t(connections) + 64;  // and stdio, the tokenizer's files, ...
  if (limit.rlim_cur >= needed) return Status::ok();
  if (limit.rlim_max == RLIM_INFINITY || limit.rlim_max >= needed) {
    limit.rlim_cur = needed;
    if (::setrlimit(RLIMIT_NOFILE, &limit) == 0) return Status::ok();
  }
  return invalid_argument(std::to_string(connections) + " connections need " +
                          std::to_string(needed) + " open files, but this process may open " +
                          std::to_string(limit.rlim_cur) +
                          " (ulimit -n): lower --concurrency (or --num_requests)");
}

std::unique_ptr<httplib::ClientImpl> make_client(const HttpBenchmarkTarget& target) {
  std::string host = target.url.host;
  if (host.starts_with('[')) host = host.substr(1, host.size() - 2);
  std::unique_ptr<httplib::ClientImpl> client;
  if (target.url.scheme == "https") {
    client = std::make_unique<httplib::SSLClient>(host, target.url.port);
  } else {
    client = std::make_unique<httplib::ClientImpl>(host, target.url.port);
  }
  // A new connection per request, as a client per user would open (and as vLLM's
  // benchmark_serving does): a kept-alive one the server has closed would fail the next request.
  client->set_keep_alive(false);
  client->set_connection_timeout(kConnectTimeoutSeconds, 0);
  client->set_read_timeout(kReadTimeoutSeconds, 0);
  client->set_write_timeout(kReadTimeoutSeconds, 0);
  if (!target.api_key.empty()) client->set_bearer_token_auth(target.api_key);
  return client;
}

// Sends one request and reads its response to the end.
RequestTimeline send_request(httplib::ClientImpl& client, const HttpBenchmarkTarget& target,
                             const std::string& body) {
  RequestTimeline timeline;
  CompletionStreamReader reader;
  int status = 0;
  std::string error_body;
  httplib::Request request;
  request.method = "POST";
  request.path = target.url.completions_path();
  // No compression: each event must reach the reader when it arrives.
  request.headers = {{"Content-Type", "application/json"},
                     {"Accept", "text/event-stream"},
                     {"Accept-Encoding", "identity"}};
  request.body = body;
  request.response_handler = [&](const httplib::Response& response) {
    status = response.status;
    return true;
  };
  request.content_receiver = [&](const char* data, size_t size, uint64_t, uint64_t) {
    const ServeClock::time_point now = ServeClock::now();
    if (status != 200) {
      error_body.append(
          data, std::min(size, kErrorBodyBytes - std::min(error_body.size(), kErrorBodyBytes)));
      return true;
    }
    return reader.consume(std::string_view(data, size), now);
  };
  timeline.sent = ServeClock::now();
  const httplib::Result result = client.send(request);
  timeline.finished = ServeClock::now();
  if (status != 0 && status != 200) {
    timeline.error = http_error_message(status, error_body);
  } else if (!result && result.error() != httplib::Error::Canceled && !reader.done()) {
    timeline.error = transport_error(result.error(), target.url.origin());
  } else {
    // Complete, or stopped by the reader (httplib says Canceled) at an error event it reports.
    reader.finish(&timeline);
  }
  return timeline;
}

}  // namespace

std::string ServerUrl::origin() const {
  return scheme + "://" + host + ":" + std::to_string(port);
}

std::string ServerUrl::completions_path() const {
  if (path_prefix.ends_with("/v1")) return path_prefix + "/completions";
  return path_prefix + "/v1/completions";
}

Result<ServerUrl> parse_server_url(const std::string& text) {
  const auto bad = [&](const std::string& why) {
    return invalid_argument("--url \"" + text + "\": " + why +
                            " (a server's address, e.g. http://127.0.0.1:8000)");
  };
  ServerUrl url;
  const size_t scheme_end = text.find("://");
  if (scheme_end == std::string::npos) return bad("not a URL: it starts with http:// or https://");
  url.scheme = text.substr(0, scheme_end);
  std::transform(url.scheme.begin(), url.scheme.end(), url.scheme.begin(),
                 [](unsigned char c) { return char(std::tolower(c)); });
  if (url.scheme != "http" && url.scheme != "https") return bad("the scheme is not http or https");
  const std::string rest = text.substr(scheme_end + 3);
  if (rest.find_first_of("?#") != std::string::npos) return bad("it has a query or fragment");
  const size_t path_start = std::min(rest.find('/'), rest.size());
  const std::string authority = rest.substr(0, path_start);
  if (authority.find('@') != std::string::npos) {
    return bad("credentials in the URL are not supported (use --api_key)");
  }
  std::optional<std::string> port_text;
  if (authority.starts_with('[')) {
    const size_t close = authority.find(']');
    if (close == std::string::npos) return bad("the IPv6 address has no closing ']'");
    url.host = authority.substr(0, close + 1);
    const bool address_ok =
        close > 1 && std::all_of(url.host.begin() + 1, url.host.end() - 1, [](char c) {
          return std::isxdigit(static_cast<unsigned char>(c)) || c == ':' || c == '.';
        });
    if (!address_ok) return bad("the IPv6 address is malformed");
    const std::string after = authority.substr(close + 1);
    if (!after.empty() && after[0] != ':') return bad("a ':' and a port may follow the ']'");
    if (!after.empty()) port_text = after.substr(1);
  } else {
    const size_t colon = authority.find(':');
    url.host = authority.substr(0, colon);
    if (colon != std::string::npos) port_text = authority.substr(colon + 1);
    if (port_text && port_text->find(':') != std::string::npos) {
      return bad("an IPv6 address goes in brackets ([::1])");
    }
    if (!std::all_of(url.host.begin(), url.host.end(), is_host_character)) {
      return bad("the host \"" + url.host + "\" is not a name or an address");
    }
  }
  if (url.host.empty()) return bad("it has no host");
  url.port = url.scheme == "https" ? 443 : 80;
  if (port_text) {
    const bool digits = !port_text->empty() && port_text->size() <= 5 &&
                        std::all_of(port_text->begin(), port_text->end(),
                                    [](char c) { return c >= '0' && c <= '9'; });
    if (!digits || std::stoi(*port_text) < 1 || std::stoi(*port_text) > 65535) {
      return bad("the port is not a number from 1 to 65535");
    }
    url.port = std::stoi(*port_text);
  }
  url.path_prefix = rest.substr(path_start);
  while (url.path_prefix.ends_with('/')) url.path_prefix.pop_back();
  return url;
}

std::string completion_request_body(const std::vector<int32_t>& prompt, int64_t output_length,
                                    const std::string& model) {
  Json body;
  if (!model.empty()) body["model"] = model;
  body["prompt"] = prompt;
  body["max_tokens"] = output_length;
  body["temperature"] = 0.0;
  body["ignore_eos"] = true;
  body["stream"] = true;
  body["stream_options"] = Json{{"include_usage", true}};
  return body.dump();
}

bool CompletionStreamReader::consume(std::string_view bytes, ServeClock::time_point now) {
  // Server-sent events: lines ending in "\n" (or "\r\n"); "data:" lines hold an event's data and
  // a blank line ends the event. Other fields and comments (":...") are ignored.
  size_t begin = 0;
  while (begin < bytes.size() && !error_) {
    const size_t end = bytes.find('\n', begin);
    if (end == std::string_view::npos) {
      line_.append(bytes.substr(begin));
      break;
    }
    line_.append(bytes.substr(begin, end - begin));
    begin = end + 1;
    if (line_.ends_with('\r')) line_.pop_back();
    if (line_.empty()) {
      if (!data_.empty()) handle_event(data_, now);
      data_.clear();
    } else if (line_.starts_with("data:")) {
      std::string_view value = std::string_view(line_).substr(5);
      if (value.starts_with(' ')) value.remove_prefix(1);
      if (!data_.empty()) data_ += '\n';
      data_ += value;
    }
    line_.clear();
  }
  return !error_;
}

void CompletionStreamReader::handle_event(const std::string& data, ServeClock::time_point now) {
  if (done_) return;
  if (data == "[DONE]") {
    done_ = true;
    return;
  }
  const Json event = Json::parse(data, nullptr, false);
  if (event.is_discarded() || !event.is_object()) {
    error_ = "the server sent an event that is not a JSON object: " + shortened(data);
    return;
  }
  if (std::optional<std::string> message = error_message(event)) {
    error_ = "the server sent an error event: " + *message;
    return;
  }
  const auto choices = event.find("choices");
  if (choices != event.end() && choices->is_array() && !choices->empty() &&
      choices->front().is_object()) {
    const Json& choice = choices->front();
    const auto text = choice.find("text");
    if (text != choice.end() && text->is_string() && !text->get_ref<const std::string&>().empty()) {
      text_events_.push_back(now);
    }
    const auto finish_reason = choice.find("finish_reason");
    if (finish_reason != choice.end() && !finish_reason->is_null()) finish_reason_seen_ = true;
  }
  const auto usage = event.find("usage");
  if (usage != event.end() && usage->is_object() && usage->contains("completion_tokens") &&
      usage->at("completion_tokens").is_number_integer()) {
    completion_tokens_ = usage->at("completion_tokens").get<int64_t>();
  }
}

void CompletionStreamReader::finish(RequestTimeline* timeline) const {
  if (error_) {
    timeline->error = *error_;
    return;
  }
  if (!done_ && !finish_reason_seen_) {
    timeline->error =
        "the stream ended before the response was complete (no finish_reason, no "
        "[DONE])";
    return;
  }
  timeline->outputs = text_events_;
  timeline->output_tokens = completion_tokens_.value_or(int64_t(text_events_.size()));
}

std::string http_error_message(int status, const std::string& body) {
  std::string message = "HTTP " + std::to_string(status);
  const Json parsed = Json::parse(body, nullptr, false);
  if (std::optional<std::string> detail = error_message(parsed)) return message + ": " + *detail;
  std::string text = body;
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  return text.empty() ? message : message + ": " + shortened(text);
}

Result<ServeBenchmarkResult> run_http_serve_benchmark(
    const HttpBenchmarkTarget& target, const std::vector<std::vector<int32_t>>& prompts,
    const ServeBenchmarkOptions& options, const std::function<void(int64_t)>& on_done) {
  KITE_RETURN_IF_ERROR(check_serve_benchmark_options(options));
  if (prompts.empty()) return invalid_argument("no benchmark prompts");
  if (options.concurrency > kMaxBenchmarkConnections) {
    return invalid_argument("--concurrency " + std::to_string(options.concurrency) + ": at most " +
                            std::to_string(kMaxBenchmarkConnections) +
                            " requests in flight with --url");
  }
  const int64_t connections =
      std::min(options.num_requests,
               options.concurrency > 0 ? options.concurrency : kMaxBenchmarkConnections);
  KITE_RETURN_IF_ERROR(allow_open_files(connections));
  std::vector<std::string> bodies;
  for (size_t i = 0; i < prompts.size() && int64_t(i) < options.num_requests; ++i) {
    bodies.push_back(completion_request_body(prompts[i], options.output_length, target.model));
  }

  const size_t count = size_t(options.num_requests);
  const std::vector<double> arrivals = arrival_offsets(options);
  std::vector<RequestTimeline> timelines(count);
  std::atomic<size_t> next_request = 0;
  std::mutex mutex;
  int64_t finished = 0;
  const ServeClock::time_point start = ServeClock::now();
  // A thread takes the next request only once its previous one is done: `connections` threads
  // keep at most that many in flight, and a request that arrives while all are busy waits.
  const auto serve_requests = [&] {
    std::unique_ptr<httplib::ClientImpl> client = make_client(target);
    for (size_t i; (i = next_request.fetch_add(1)) < count;) {
      std::this_thread::sleep_until(start + std::chrono::duration_cast<ServeClock::duration>(
                                                std::chrono::duration<double>(arrivals[i])));
      RequestTimeline timeline = send_request(*client, target, bodies[i % bodies.size()]);
      std::lock_guard lock(mutex);
      timelines[i] = std::move(timeline);
      ++finished;
      if (on_done) on_done(finished);
    }
  };
  std::vector<std::thread> threads;
  Status started = Status::ok();
  for (int64_t i = 0; i < connections; ++i) {
    try {
      threads.emplace_back(serve_requests);
    } catch (const std::system_error& error) {
      // The threads already running finish the requests they hold; no thread takes another.
      next_request = count;
      started =
          io_error("cannot start the thread of connection " + std::to_string(i + 1) + " of " +
                   std::to_string(connections) + " (" + error.what() + "): lower --concurrency");
      break;
    }
  }
  for (std::thread& thread : threads) thread.join();
  KITE_RETURN_IF_ERROR(started);
  const double seconds = std::chrono::duration<double>(ServeClock::now() - start).count();
  ServeBenchmarkResult result = summarize_serve_benchmark(options, timelines, seconds);
  result.url = target.url.origin() + target.url.path_prefix;
  return result;
}

}  // namespace kite::server
