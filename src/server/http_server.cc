// The HTTP routes of `kite serve`, their authentication, error bodies and request metrics.
#include "server/http_server.h"

#include <httplib.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <numeric>
#include <random>
#include <thread>

#include "server/generation.h"
#include "server/kserve_api.h"
#include "server/openai_api.h"
#include "server/response_router.h"
#include "server/server_metrics.h"

namespace kite::server {
namespace {

using Json = nlohmann::ordered_json;

// How long a handler waits for output before it looks again (at a stream's connection, at
// shutdown).
constexpr std::chrono::milliseconds kPollInterval(100);
constexpr const char* kShuttingDown = "the server is shutting down";

bool constant_time_equal(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char difference = 0;
  for (size_t i = 0; i < a.size(); ++i) difference |= static_cast<unsigned char>(a[i] ^ b[i]);
  return difference == 0;
}

bool is_health_check(const std::string& path) {
  return path == "/health" || path == "/v2/health/live" || path == "/v2/health/ready";
}

void send_json(httplib::Response& response, int status, const Json& body) {
  response.status = status;
  response.set_content(dump_json(body), "application/json");
}

void send_openai_error(httplib::Response& response, const ApiError& error) {
  send_json(response, error.http_status, openai_error_json(error));
}

void send_kserve_error(httplib::Response& response, const ApiError& error) {
  send_json(response, error.http_status, kserve_error_json(error.message));
}

void start_event_stream(httplib::Response& response) {
  response.set_header("Cache-Control", "no-cache");
  response.set_header("X-Accel-Buffering", "no");  // proxies must not hold events back
}

// The numeric host and the port of a socket address, as cpp-httplib writes them in a Request.
bool numeric_address(const sockaddr_storage& address, socklen_t length, std::string* host,
                     int* port) {
  char buffer[NI_MAXHOST];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&address), length, buffer, sizeof(buffer),
                  nullptr, 0, NI_NUMERICHOST) != 0) {
    return false;
  }
  *host = buffer;
  *port = address.ss_family == AF_INET6
              ? ntohs(reinterpret_cast<const sockaddr_in6*>(&address)->sin6_port)
              : ntohs(reinterpret_cast<const sockaddr_in*>(&address)->sin_port);
  return true;
}

// The server's socket of the connection `request` came on, or -1. cpp-httplib 0.11 gives a
// handler no socket, so this finds it among the process's sockets by its two addresses (unique
// while the handler runs: the connection stays open until the handler returns).
int connection_socket(const httplib::Request& request) {
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", error)) {
    const int fd = std::atoi(entry.path().filename().c_str());
    struct stat status {};
    if (fstat(fd, &status) != 0 || !S_ISSOCK(status.st_mode)) continue;
    sockaddr_storage local{}, peer{};
    socklen_t local_length = sizeof(local), peer_length = sizeof(peer);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_length) != 0 ||
        getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_length) != 0) {
      continue;
    }
    std::string local_host, peer_host;
    int local_port = 0, peer_port = 0;
    if (numeric_address(local, local_length, &local_host, &local_port) &&
        numeric_address(peer, peer_length, &peer_host, &peer_port) &&
        local_port == request.local_port && peer_port == request.remote_port &&
        peer_host == request.remote_addr) {
      return fd;
    }
  }
  return -1;
}

// Whether the client closed its end of the connection (end of file waiting on the socket).
bool client_gone(int socket_fd) {
  if (socket_fd < 0) return false;
  char byte;
  const ssize_t received = ::recv(socket_fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return received == 0 || (received < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

// The status a request whose client went away is counted under (nginx's "client closed request").
constexpr int kClientClosedRequest = 499;

// A non-streaming answer's whole output.
struct WholeOutput {
  GenerationOutput output;  // every update's text and log-probs, the finish reason, token counts
  std::vector<BeamText> beams;       // beam search: every finished beam, best first
  std::optional<std::string> error;  // the generation failed (the server shutting down): a 503
};

// Waits for the whole output of `generation`. nullopt when the client on `socket_fd` went away
// first: `response` then has the status 499, and the caller returns, dropping the generation,
// which cancels its request.
std::optional<WholeOutput> await_whole_output(Generation& generation, int socket_fd,
                                              httplib::Response& response) {
  WholeOutput whole;
  for (;;) {
    GenerationUpdate update = generation.next(kPollInterval);
    whole.output.text += update.text;
    for (TokenLogProb& entry : update.log_probs) whole.output.log_probs.push_back(std::move(entry));
    if (!update.prompt_log_probs.empty()) {
      whole.output.prompt_log_probs = std::move(update.prompt_log_probs);
    }
    if (update.finished) {
      whole.output.finish_reason = std::move(update.finish_reason);
      whole.output.prompt_tokens = generation.prompt_tokens();
      whole.output.completion_tokens = generation.completion_tokens();
      whole.beams = std::move(update.beams);
      whole.error = std::move(update.error);
      return whole;
    }
    if (client_gone(socket_fd)) {
      response.status = kClientClosedRequest;
      return std::nullopt;
    }
  }
}

ApiError server_error(const std::string& message) {
  return ApiError{.http_status = 503, .message = message, .type = "server_error"};
}

}  // namespace

class HttpServer::Impl {
 public:
  Impl(executor::Executor& executor, ServedModel model, ServerOptions options)
      : executor_(executor),
        model_(std::move(model)),
        options_(std::move(options)),
        router_(executor),
        random_(std::random_device()()) {
    install_routes();
  }

  Result<int> bind() {
    const int port = options_.port == 0
                         ? http_.bind_to_any_port(options_.host)
                         : (http_.bind_to_port(options_.host, options_.port) ? options_.port : -1);
    if (port < 0) {
      return io_error("cannot listen on " + options_.host + ":" + std::to_string(options_.port) +
                      " (is the port in use, or the address not this machine's?)");
    }
    // httplib listens with a backlog of 5: more clients connecting at once than that see their
    // connections dropped. Listening again raises the backlog (Linux allows it).
    if (::listen(listening_socket_, SOMAXCONN) != 0) {
      return io_error("cannot listen on " + options_.host + ":" + std::to_string(port));
    }
    return port;
  }

  void serve() {
    {
      std::lock_guard<std::mutex> lock(state_mutex_);
      if (stopped_) return;
      serving_ = true;
    }
    http_.listen_after_bind();
    std::lock_guard<std::mutex> lock(state_mutex_);
    serving_ = false;
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(state_mutex_);
      if (stopped_) return;
      stopped_ = true;
    }
    router_.close(kShuttingDown);
    // Every open stream now ends with an error event; httplib stops calling a response's content
    // provider once stop() runs, so give the handlers a moment to send those events (clients would
    // otherwise see a closed connection instead of the reason).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (router_.open_streams() > 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    // httplib's stop() reaches only a server already listening: wait for serve() to get there.
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(state_mutex_);
        if (!serving_ || http_.is_running()) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    http_.stop();
  }

 private:
  void install_routes();
  void handle_openai(const httplib::Request& request, httplib::Response& response, bool chat);
  // vLLM's use_beam_search: one search of beam width n, its beams the n choices.
  void answer_beam_search(const httplib::Request& request, httplib::Response& response,
                          const OpenAiRequest& parsed, bool chat, Clock::time_point arrival);
  void handle_kserve(const httplib::Request& request, httplib::Response& response,
                     bool streaming_endpoint);
  // Starts a checked request; sets `error` when the Executor refuses it or the server is closing.
  std::unique_ptr<Generation> start(const GenerationSpec& spec, Clock::time_point arrival,
                                    ApiError* error);
  uint64_t random_number() {
    std::lock_guard<std::mutex> lock(random_mutex_);
    return random_();
  }
  std::string request_id(const char* prefix) {
    char id[64];
    std::snprintf(id, sizeof(id), "%s%016llx%08llx", prefix,
                  static_cast<unsigned long long>(random_number()),
                  static_cast<unsigned long long>(next_request_.fetch_add(1) & 0xffffffffu));
    return id;
  }

  executor::Executor& executor_;
  ServedModel model_;
  ServerOptions options_;
  ServerMetrics metrics_;
  ResponseRouter router_;
  httplib::Server http_;
  socket_t listening_socket_ = -1;
  std::mutex state_mutex_;
  bool stopped_ = false;
  bool serving_ = false;  // in serve()
  std::mutex random_mutex_;
  std::mt19937_64 random_;
  std::atomic<uint64_t> next_request_{0};
};

void HttpServer::Impl::install_routes() {
  const size_t threads = options_.http_threads;
  http_.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  // httplib's default options include SO_REUSEPORT, which would let a second server bind the same
  // port and take half the connections: SO_REUSEADDR only (a restart need not wait for TIME_WAIT).
  // TCP_NODELAY (inherited by accepted sockets) sends each event at once, not after Nagle's wait.
  http_.set_socket_options([this](socket_t socket) {
    const int yes = 1;
    ::setsockopt(socket, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    ::setsockopt(socket, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof(yes));
    listening_socket_ = socket;  // the last one created is the one bound
  });
  http_.set_payload_max_length(options_.max_body_bytes);
  http_.set_keep_alive_max_count(1000);

  http_.set_pre_routing_handler(
      [this](const httplib::Request& request, httplib::Response& response) {
        if (options_.api_key.empty() || is_health_check(request.path) ||
            constant_time_equal(request.get_header_value("Authorization"),
                                "Bearer " + options_.api_key)) {
          return httplib::Server::HandlerResponse::Unhandled;
        }
        response.set_header("WWW-Authenticate", "Bearer");
        send_openai_error(response, ApiError{.http_status = 401,
                                             .message = "missing or wrong API key: send the header "
                                                        "'Authorization: Bearer <key>'",
                                             .code = "invalid_api_key"});
        return httplib::Server::HandlerResponse::Handled;
      });
  // Errors without a body of their own: unknown routes (404), bodies over the limit (413).
  http_.set_error_handler(httplib::Server::HandlerWithResponse(
      [this](const httplib::Request& request, httplib::Response& response) {
        if (!response.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        ApiError error{.http_status = response.status};
        if (response.status == 404) {
          error.message = "no route " + request.method + " " + request.path;
          error.code = "not_found";
        } else if (response.status == 413) {
          error.message = "the request body is larger than the limit of " +
                          std::to_string(options_.max_body_bytes) + " bytes";
        } else {
          error.message = "HTTP error " + std::to_string(response.status);
        }
        send_openai_error(response, error);
        return httplib::Server::HandlerResponse::Handled;
      }));
  http_.set_exception_handler([](const httplib::Request&, httplib::Response& response,
                                 std::exception_ptr exception) {
    std::string what = "unknown exception";
    try {
      std::rethrow_exception(exception);
    } catch (const std::exception& error) {
      what = error.what();
    } catch (...) {
    }
    send_openai_error(
        response,
        ApiError{.http_status = 500, .message = "internal error: " + what, .type = "server_error"});
  });
  // Counted before the response is written (a logger runs after it, so a client could read
  // /metrics before its own request was counted).
  http_.set_post_routing_handler(
      [this](const httplib::Request& request, httplib::Response& response) {
        metrics_.count_request(endpoint_label(request.path), response.status);
      });

  const auto ok = [](const httplib::Request&, httplib::Response& response) {
    response.set_content("", "text/plain");
  };
  http_.Get("/health", ok);
  http_.Get("/v2/health/live", ok);
  http_.Get("/v2/health/ready", ok);
  http_.Get("/v2/models/([^/]+)/ready",
            [this](const httplib::Request& request, httplib::Response& response) {
              response.status = request.matches[1] == model_.name ? 200 : 404;
              response.set_content("", "text/plain");
            });
  http_.Get("/metrics", [this](const httplib::Request&, httplib::Response& response) {
    response.set_content(metrics_.render(executor_.stats()),
                         "text/plain; version=0.0.4; charset=utf-8");
  });
  http_.Get("/v1/models", [this](const httplib::Request&, httplib::Response& response) {
    send_json(response, 200, models_list_json(model_));
  });
  http_.Get(
      "/v1/models/(.+)", [this](const httplib::Request& request, httplib::Response& response) {
        if (request.matches[1] != model_.name) {
          return send_openai_error(
              response,
              ApiError{.http_status = 404,
                       .message = "The model `" + request.matches[1].str() + "` does not exist.",
                       .param = "model",
                       .code = "model_not_found"});
        }
        send_json(response, 200, model_json(model_));
      });
  http_.Post("/v1/completions",
             [this](const httplib::Request& request, httplib::Response& response) {
               handle_openai(request, response, false);
             });
  http_.Post("/v1/chat/completions",
             [this](const httplib::Request& request, httplib::Response& response) {
               handle_openai(request, response, true);
             });
  const std::string model_path = "/v2/models/([^/]+)(?:/versions/[^/]+)?";
  http_.Post(model_path + "/generate",
             [this](const httplib::Request& request, httplib::Response& response) {
               handle_kserve(request, response, false);
             });
  http_.Post(model_path + "/generate_stream",
             [this](const httplib::Request& request, httplib::Response& response) {
               handle_kserve(request, response, true);
             });
}

std::unique_ptr<Generation> HttpServer::Impl::start(const GenerationSpec& spec,
                                                    Clock::time_point arrival, ApiError* error) {
  if (std::optional<std::string> refused = executor_.check_request(spec.request)) {
    *error = ApiError{.message = *refused};
    return nullptr;
  }
  std::unique_ptr<Generation> generation =
      Generation::start(router_, model_.tokenizer, spec, metrics_, arrival);
  if (!generation) {
    *error = server_error(kShuttingDown);
  }
  return generation;
}

void HttpServer::Impl::handle_openai(const httplib::Request& request, httplib::Response& response,
                                     bool chat) {
  const Clock::time_point arrival = Clock::now();
  OpenAiRequest parsed;
  const uint64_t seed = random_number();
  if (std::optional<ApiError> error =
          chat ? parse_chat_request(request.body, model_, seed, &parsed)
               : parse_completion_request(request.body, model_, seed, &parsed)) {
    return send_openai_error(response, *error);
  }
  if (parsed.beam_search) return answer_beam_search(request, response, parsed, chat, arrival);
  // One Executor request per choice (best_of of them, n or more), all in flight together; a
  // choice's seed is the request's + i.
  std::vector<std::unique_ptr<Generation>> generations;
  const bool ranked = parsed.best_of > parsed.n;  // not streamed (refused when parsed)
  for (int64_t i = 0; i < parsed.best_of; ++i) {
    GenerationSpec spec = parsed.generation;
    spec.request.sampling.seed += uint64_t(i);
    if (ranked) spec.request.return_log_probs = true;  // the ranking's scores
    ApiError error;
    std::unique_ptr<Generation> generation = start(spec, arrival, &error);
    if (!generation) return send_openai_error(response, error);  // the others are cancelled
    generations.push_back(std::move(generation));
  }
  OpenAiFormatter formatter(parsed, request_id(chat ? "chatcmpl-" : "cmpl-"), model_.name,
                            std::time(nullptr));

  if (!parsed.stream) {
    // A client that goes away before the whole answer is ready cancels its requests (dropping the
    // generations does).
    const int socket_fd = connection_socket(request);
    std::vector<GenerationOutput> outputs;
    for (const std::unique_ptr<Generation>& generation : generations) {
      std::optional<WholeOutput> whole = await_whole_output(*generation, socket_fd, response);
      if (!whole) return;
      if (whole->error) return send_openai_error(response, server_error(*whole->error));
      outputs.push_back(std::move(whole->output));
    }
    int64_t unreturned_tokens = 0;
    if (ranked) {
      // The n of highest summed log-probability, most likely first (ties: in seed order).
      std::vector<double> scores;
      for (const GenerationOutput& output : outputs) {
        double score = 0;
        for (const TokenLogProb& entry : output.log_probs) score += entry.log_prob;
        scores.push_back(score);
      }
      std::vector<size_t> order(outputs.size());
      std::iota(order.begin(), order.end(), size_t{0});
      std::stable_sort(order.begin(), order.end(),
                       [&](size_t a, size_t b) { return scores[a] > scores[b]; });
      std::vector<GenerationOutput> best;
      for (size_t rank = 0; rank < order.size(); ++rank) {
        GenerationOutput& output = outputs[order[rank]];
        if (int64_t(rank) < parsed.n) {
          best.push_back(std::move(output));
        } else {
          unreturned_tokens += output.completion_tokens;
        }
      }
      outputs = std::move(best);
    }
    return send_json(response, 200, formatter.response(outputs, unreturned_tokens));
  }

  struct Stream {
    std::vector<std::unique_ptr<Generation>> generations;
    OpenAiFormatter formatter;
    bool started = false;
    int64_t completion_tokens = 0;  // of the finished choices
  };
  auto stream = std::make_shared<Stream>(Stream{std::move(generations), std::move(formatter)});
  start_event_stream(response);
  response.set_chunked_content_provider(
      "text/event-stream",
      [stream](size_t, httplib::DataSink& sink) {
        std::string events;
        if (!stream->started) {
          events = stream->formatter.stream_start();
          stream->started = true;
        }
        // Every unfinished choice, each waited on for a share of the poll interval (the choices
        // advance in the same steps, so one that has news usually means all have).
        int64_t unfinished = 0;
        for (const auto& generation : stream->generations) unfinished += !generation->finished();
        const auto share = std::max(std::chrono::milliseconds(1), kPollInterval / unfinished);
        bool failed = false;
        for (size_t i = 0; i < stream->generations.size() && !failed; ++i) {
          Generation& generation = *stream->generations[i];
          if (generation.finished()) continue;
          const GenerationUpdate update = generation.next(share);
          events += stream->formatter.stream_update(update, int64_t(i));
          if (!update.finished) continue;
          if (update.error) {
            events += stream->formatter.stream_error(server_error(*update.error));
            failed = true;
          } else {
            events += stream->formatter.stream_choice_end(update.finish_reason, int64_t(i));
            stream->completion_tokens += generation.completion_tokens();
            --unfinished;
          }
        }
        const bool done = failed || unfinished == 0;
        if (done && !failed) {
          events += stream->formatter.stream_done(stream->generations.front()->prompt_tokens(),
                                                  stream->completion_tokens);
        }
        // A failed write means the client went away: returning false ends the response, and the
        // releaser below cancels the requests.
        if (!events.empty() && !sink.write(events.data(), events.size())) return false;
        if (done) sink.done();
        return true;
      },
      [stream](bool) { stream->generations.clear(); });
}

void HttpServer::Impl::answer_beam_search(const httplib::Request& request,
                                          httplib::Response& response, const OpenAiRequest& parsed,
                                          bool chat, Clock::time_point arrival) {
  // The search ends beams at the stop texts' token sequences; the texts are cut below.
  GenerationSpec spec = parsed.generation;
  spec.stop_texts.clear();
  ApiError error;
  std::unique_ptr<Generation> generation = start(spec, arrival, &error);
  if (!generation) return send_openai_error(response, error);
  std::optional<WholeOutput> whole =
      await_whole_output(*generation, connection_socket(request), response);
  if (!whole) return;
  if (whole->error) return send_openai_error(response, server_error(*whole->error));
  // A choice per beam, best first, its text cut before the first stop text (as without beams).
  // A beam width of 1 is greedy decoding: its one output is the beam.
  std::vector<BeamText> beams = std::move(whole->beams);
  if (beams.empty()) {
    beams.push_back(
        {whole->output.text, whole->output.finish_reason, whole->output.completion_tokens});
  }
  std::vector<GenerationOutput> outputs;
  for (const BeamText& beam : beams) {
    GenerationOutput& output = outputs.emplace_back();
    output.text = beam.text;
    output.finish_reason = beam.finish_reason;
    if (const StopTextMatch stop = find_stop_text(output.text, parsed.generation.stop_texts);
        stop.at != std::string::npos) {
      output.text.resize(stop.at);
      output.finish_reason = "stop";
    }
    output.prompt_tokens = whole->output.prompt_tokens;
    output.completion_tokens = beam.tokens;
  }
  const OpenAiFormatter formatter(parsed, request_id(chat ? "chatcmpl-" : "cmpl-"), model_.name,
                                  std::time(nullptr));
  send_json(response, 200, formatter.response(outputs));
}

void HttpServer::Impl::handle_kserve(const httplib::Request& request, httplib::Response& response,
                                     bool streaming_endpoint) {
  const Clock::time_point arrival = Clock::now();
  if (request.matches[1] != model_.name) {
    return send_kserve_error(
        response, ApiError{.http_status = 404,
                           .message = "Request for unknown model: '" + request.matches[1].str() +
                                      "' is not found"});
  }
  KServeRequest parsed;
  if (std::optional<ApiError> error =
          parse_kserve_request(request.body, model_, streaming_endpoint, &parsed)) {
    return send_kserve_error(response, *error);
  }
  ApiError error;
  std::unique_ptr<Generation> generation = start(parsed.generation, arrival, &error);
  if (!generation) return send_kserve_error(response, error);
  const std::string prefix = parsed.exclude_input_in_output ? "" : parsed.text_input;

  if (!parsed.stream) {
    std::optional<WholeOutput> whole =
        await_whole_output(*generation, connection_socket(request), response);
    if (!whole) return;
    if (whole->error) {
      return send_kserve_error(response, server_error(*whole->error));  // its body has no type
    }
    std::vector<std::string> beam_texts;  // beam search: every beam, after the same prefix
    for (const BeamText& beam : whole->beams) beam_texts.push_back(prefix + beam.text);
    const Json output = kserve_output_json(
        model_, prefix + whole->output.text,
        parsed.return_log_probs ? &whole->output.log_probs : nullptr, &beam_texts);
    // generate_stream with "stream": false answers with one event holding the whole output.
    if (!streaming_endpoint) return send_json(response, 200, output);
    response.set_content(sse_event(dump_json(output)), "text/event-stream");
    return;
  }

  // Streaming: one event per piece of new text (TensorRT-LLM streams only the new tokens).
  struct Stream {
    std::unique_ptr<Generation> generation;
    bool return_log_probs;
  };
  auto stream = std::make_shared<Stream>(Stream{std::move(generation), parsed.return_log_probs});
  start_event_stream(response);
  response.set_chunked_content_provider(
      "text/event-stream",
      [this, stream](size_t, httplib::DataSink& sink) {
        const GenerationUpdate update = stream->generation->next(kPollInterval);
        std::string events;
        if (!update.text.empty() || (stream->return_log_probs && !update.log_probs.empty())) {
          events = sse_event(dump_json(kserve_output_json(
              model_, update.text, stream->return_log_probs ? &update.log_probs : nullptr)));
        }
        if (update.error) events += sse_event(dump_json(kserve_error_json(*update.error)));
        if (!events.empty() && !sink.write(events.data(), events.size())) return false;
        if (update.finished) sink.done();
        return true;
      },
      [stream](bool) { stream->generation.reset(); });
}

HttpServer::HttpServer(executor::Executor& executor, ServedModel model, ServerOptions options)
    : impl_(std::make_unique<Impl>(executor, std::move(model), std::move(options))) {}

HttpServer::~HttpServer() {
  stop();
}

Result<int> HttpServer::bind() {
  return impl_->bind();
}

void HttpServer::serve() {
  impl_->serve();
}

void HttpServer::stop() {
  impl_->stop();
}

}  // namespace kite::server
