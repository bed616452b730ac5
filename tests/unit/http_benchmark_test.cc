// `kite bench --mode serve --url`: server URLs, the request body, the event stream reader, error
// messages, and the benchmark end to end against the HTTP server over a FakeExecutor (tokens,
// ignore_eos, API key, unreachable server, HTTP 400, error events) and through the kite binary.
#include "server/http_benchmark.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <set>
#include <sstream>
#include <thread>

#include "server_test_util.h"

namespace kite::server {
namespace {

using Json = nlohmann::json;
using namespace std::chrono_literals;
using test::TestServer;

TEST(HttpBenchmarkUrl, ParsesServerAddresses) {
  struct Case {
    std::string text;
    std::string scheme, host;
    int port;
    std::string completions_path;
  };
  for (const Case& c : std::vector<Case>{
           {"http://127.0.0.1:8000", "http", "127.0.0.1", 8000, "/v1/completions"},
           {"http://localhost:8000/", "http", "localhost", 8000, "/v1/completions"},
           {"HTTPS://api.example.com", "https", "api.example.com", 443, "/v1/completions"},
           {"http://gpu-box", "http", "gpu-box", 80, "/v1/completions"},
           {"http://[::1]:9000", "http", "[::1]", 9000, "/v1/completions"},
           {"http://host:8000/v1", "http", "host", 8000, "/v1/completions"},
           {"http://host/proxy/kite/", "http", "host", 80, "/proxy/kite/v1/completions"},
       }) {
    const Result<ServerUrl> url = parse_server_url(c.text);
    ASSERT_TRUE(url.is_ok()) << c.text << ": " << url.status().message();
    EXPECT_EQ(url->scheme, c.scheme) << c.text;
    EXPECT_EQ(url->host, c.host) << c.text;
    EXPECT_EQ(url->port, c.port) << c.text;
    EXPECT_EQ(url->completions_path(), c.completions_path) << c.text;
  }
  EXPECT_EQ(parse_server_url("http://127.0.0.1:8000/")->origin(), "http://127.0.0.1:8000");
  EXPECT_EQ(parse_server_url("https://h")->origin(), "https://h:443");

  for (const char* bad :
       {"", "127.0.0.1:8000", "localhost", "ftp://host", "http://", "http://:8000",
        "http://host:", "http://host:0", "http://host:70000", "http://host:80a", "http://::1:8000",
        "http://[::1", "http://[zz]:80", "http://[::1]8000", "http://user:secret@host",
        "http://host/?a=1", "http://host#x", "http://ho st:80"}) {
    const Result<ServerUrl> url = parse_server_url(bad);
    ASSERT_FALSE(url.is_ok()) << bad;
    EXPECT_EQ(url.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_TRUE(url.status().message().starts_with("--url \"" + std::string(bad) + "\": "))
        << url.status().message();
  }
}

TEST(HttpBenchmarkRequest, AsksForExactlyTheOutputLengthAsTokenIds) {
  const Json body = Json::parse(completion_request_body({5, 6, 7}, 12, "llama"));
  EXPECT_EQ(body, (Json{{"model", "llama"},
                        {"prompt", {5, 6, 7}},
                        {"max_tokens", 12},
                        {"temperature", 0.0},
                        {"ignore_eos", true},
                        {"stream", true},
                        {"stream_options", {{"include_usage", true}}}}));
  EXPECT_FALSE(Json::parse(completion_request_body({5}, 1, "")).contains("model"));
}

// A completion stream as kite serve and vLLM write it: text events (one may be empty, for a token
// that ends inside a character), the finish reason, the usage, [DONE].
const std::string kStream =
    "data: {\"choices\":[{\"index\":0,\"text\":\"He\",\"finish_reason\":null}],\"usage\":null}\n\n"
    "data: {\"choices\":[{\"index\":0,\"text\":\"\",\"finish_reason\":null}],\"usage\":null}\n\n"
    "data: {\"choices\":[{\"index\":0,\"text\":\"llo\",\"finish_reason\":null}],\"usage\":null}\n\n"
    "data: {\"choices\":[{\"index\":0,\"text\":\"\",\"finish_reason\":\"length\"}],\"usage\":null}"
    "\n\n"
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,"
    "\"total_tokens\":7}}\n\n"
    "data: [DONE]\n\n";

ServeClock::time_point at(int milliseconds) {
  return ServeClock::time_point(std::chrono::milliseconds(milliseconds));
}

TEST(HttpBenchmarkStream, StampsEachTextEventWhenItEnds) {
  // Fed in pieces of every size: an event is stamped with the time of the piece that ends it.
  for (size_t piece = 1; piece <= kStream.size(); ++piece) {
    CompletionStreamReader reader;
    std::vector<ServeClock::time_point> expected;
    for (size_t begin = 0; begin < kStream.size(); begin += piece) {
      const std::string_view bytes = std::string_view(kStream).substr(begin, piece);
      const ServeClock::time_point now = at(int(begin));
      // The ends of the two events with text.
      for (const char* text : {"\"He\"", "\"llo\""}) {
        const size_t end = kStream.find("\n\n", kStream.find(text)) + 1;
        if (end >= begin && end < begin + bytes.size()) expected.push_back(now);
      }
      ASSERT_TRUE(reader.consume(bytes, now)) << piece;
    }
    EXPECT_TRUE(reader.done());
    RequestTimeline timeline;
    reader.finish(&timeline);
    ASSERT_FALSE(timeline.error) << *timeline.error;
    EXPECT_EQ(timeline.outputs, expected) << piece;
    EXPECT_EQ(timeline.output_tokens, 4) << "the usage counts the tokens";
  }
}

TEST(HttpBenchmarkStream, CountsTextEventsWithoutUsageAndTakesCrLf) {
  std::string stream =
      "data: {\"choices\":[{\"text\":\"a\",\"finish_reason\":null}]}\r\n\r\n"
      ": a comment\r\n"
      "event: message\r\n"
      "data: {\"choices\":[{\"text\":\"b\",\"finish_reason\":\"length\"}]}\r\n\r\n";
  CompletionStreamReader reader;
  ASSERT_TRUE(reader.consume(stream, at(1)));
  EXPECT_FALSE(reader.done());
  RequestTimeline timeline;
  reader.finish(&timeline);  // a finish reason without [DONE] is complete too
  ASSERT_FALSE(timeline.error) << *timeline.error;
  EXPECT_EQ(timeline.outputs.size(), 2u);
  EXPECT_EQ(timeline.output_tokens, 2);
}

TEST(HttpBenchmarkStream, ReportsBrokenStreams) {
  struct Case {
    std::string stream;
    bool stops;  // consume() says stop
    std::string error;
  };
  for (const Case& c : std::vector<Case>{
           {"data: {\"choices\":[{\"text\":\"a\",\"finish_reason\":null}]}\n\n", false,
            "the stream ended before the response was complete (no finish_reason, no [DONE])"},
           {"data: {\"choices\":[{\"text\":\"a\",\"finish_reason\":null}]}\n\n"
            "data: {\"error\":{\"message\":\"the server is shutting down\",\"type\":\"server_"
            "error\"}}\n\ndata: [DONE]\n\n",
            true, "the server sent an error event: the server is shutting down"},
           {"data: {\"object\":\"error\",\"message\":\"out of memory\",\"code\":500}\n\n", true,
            "the server sent an error event: out of memory"},
           {"data: not json\n\n", true,
            "the server sent an event that is not a JSON object: not json"},
       }) {
    CompletionStreamReader reader;
    EXPECT_EQ(reader.consume(c.stream, at(0)), !c.stops) << c.stream;
    RequestTimeline timeline;
    reader.finish(&timeline);
    ASSERT_TRUE(timeline.error) << c.stream;
    EXPECT_EQ(*timeline.error, c.error);
  }
}

TEST(HttpBenchmarkStream, ErrorMessagesOfHttpStatuses) {
  EXPECT_EQ(http_error_message(401, R"({"error":{"message":"missing or wrong API key",)"
                                    R"("type":"invalid_request_error"}})"),
            "HTTP 401: missing or wrong API key");
  EXPECT_EQ(http_error_message(400, R"({"object":"error","message":"bad prompt","code":400})"),
            "HTTP 400: bad prompt");
  EXPECT_EQ(http_error_message(422, R"({"detail":"Field required"})"), "HTTP 422: Field required");
  EXPECT_EQ(http_error_message(502, "Bad Gateway\n"), "HTTP 502: Bad Gateway");
  EXPECT_EQ(http_error_message(503, ""), "HTTP 503");
  EXPECT_EQ(http_error_message(500, std::string(1000, 'x')),
            "HTTP 500: " + std::string(300, 'x') + "...");
}

// ---- against `kite serve`'s HTTP server over a FakeExecutor ----

// A script that would end early at the end id, were ignore_eos not sent.
std::vector<int32_t> script_with_end_id() {
  std::vector<int32_t> script =
      test::test_served_model().tokenizer.encode("Hello world, a test", false);
  script.insert(script.begin() + 2, test::FakeExecutor::kEndId);
  return script;
}

std::vector<std::vector<int32_t>> prompts(size_t count) {
  std::vector<std::vector<int32_t>> result;
  for (size_t i = 0; i < count; ++i) result.push_back({int32_t(10 + i), 11, 12, 13});
  return result;
}

HttpBenchmarkTarget target_of(const TestServer& server, const std::string& api_key = "") {
  return {.url = *parse_server_url("http://127.0.0.1:" + std::to_string(server.port)),
          .api_key = api_key};
}

TEST(HttpBenchmark, RunsEveryRequestToItsLength) {
  TestServer server(script_with_end_id());
  const auto inputs = prompts(5);
  for (const auto& [rate, concurrency] :
       {std::pair{0.0, int64_t(0)}, {0.0, int64_t(3)}, {500.0, int64_t(0)}}) {
    const size_t seen_before = server.executor.requests_seen().size();
    ServeBenchmarkOptions options{.num_requests = 12,
                                  .input_length = 4,
                                  .output_length = 6,
                                  .request_rate = rate,
                                  .concurrency = concurrency};
    int64_t last_done = 0;
    const auto result = run_http_serve_benchmark(target_of(server), inputs, options,
                                                 [&](int64_t done) { last_done = done; });
    ASSERT_TRUE(result.is_ok()) << result.status().message();
    EXPECT_EQ(result->errors, 0) << result->first_error;
    EXPECT_EQ(result->completed, 12);
    EXPECT_EQ(result->output_tokens, 12 * 6);
    EXPECT_EQ(last_done, 12);
    EXPECT_EQ(result->url, "http://127.0.0.1:" + std::to_string(server.port));
    EXPECT_GT(result->output_tokens_per_second, 0);
    EXPECT_GT(result->time_to_first_token.p50, 0);
    EXPECT_GT(result->inter_token_latency.p50, 0);
    EXPECT_LE(result->time_to_first_token.p50, result->request_latency.p50);
    EXPECT_LE(result->request_latency.p50, result->request_latency.p99);
    const std::string line = serve_benchmark_line(*result);
    EXPECT_TRUE(line.starts_with("[BENCHMARK] mode serve url " + result->url + " requests 12 "))
        << line;
    // The server saw the prompts as ids, greedy, with no end ids (ignore_eos) and max_tokens.
    const std::vector<executor::Request> seen = server.executor.requests_seen();
    ASSERT_EQ(seen.size(), seen_before + 12);
    std::multiset<std::vector<int32_t>> expected_inputs, seen_inputs;
    for (size_t i = 0; i < 12; ++i) {
      const executor::Request& request = seen[seen_before + i];
      expected_inputs.insert(inputs[i % inputs.size()]);
      seen_inputs.insert(request.input_ids);
      EXPECT_EQ(request.max_new_tokens, 6);
      EXPECT_EQ(request.end_ids, std::vector<int32_t>());
      EXPECT_EQ(request.sampling.temperature, 0.0f);
    }
    EXPECT_EQ(seen_inputs, expected_inputs);
  }
}

TEST(HttpBenchmark, CountsRefusedRequestsAsErrors) {
  ServerOptions options;
  options.api_key = "secret";
  TestServer server(script_with_end_id(), options);
  const ServeBenchmarkOptions benchmark{.num_requests = 4, .input_length = 4, .output_length = 3};

  Result<ServeBenchmarkResult> result =
      run_http_serve_benchmark(target_of(server, "wrong"), prompts(4), benchmark);
  ASSERT_TRUE(result.is_ok()) << result.status().message();
  EXPECT_EQ(result->completed, 0);
  EXPECT_EQ(result->errors, 4);
  EXPECT_EQ(result->output_tokens, 0);
  EXPECT_EQ(result->first_error,
            "HTTP 401: missing or wrong API key: send the header 'Authorization: Bearer <key>'");
  EXPECT_EQ(serve_benchmark_json(*result).at("first_error"), result->first_error);

  result = run_http_serve_benchmark(target_of(server, "secret"), prompts(4), benchmark);
  ASSERT_TRUE(result.is_ok()) << result.status().message();
  EXPECT_EQ(result->completed, 4);
  EXPECT_EQ(result->errors, 0);
  EXPECT_FALSE(serve_benchmark_json(*result).contains("first_error"));

  // Ids outside the vocabulary: 400, for the one bad prompt of two.
  result =
      run_http_serve_benchmark(target_of(server, "secret"), {{10, 11}, {10, 99999}}, benchmark);
  ASSERT_TRUE(result.is_ok()) << result.status().message();
  EXPECT_EQ(result->completed, 2);
  EXPECT_EQ(result->errors, 2);
  EXPECT_EQ(result->output_tokens, 2 * 3);
  EXPECT_EQ(result->first_error, "HTTP 400: token id 99999 is not in the vocabulary");
}

TEST(HttpBenchmark, CountsStreamsEndedByAnErrorEvent) {
  // 20 ms a token: 100 tokens take 2 s, and the server stops long before.
  auto server = std::make_unique<TestServer>(script_with_end_id(), ServerOptions{}, 20ms);
  Result<ServeBenchmarkResult> result = invalid_argument("not run");
  std::thread benchmark([&] {
    result = run_http_serve_benchmark(
        target_of(*server), prompts(3),
        {.num_requests = 3, .input_length = 4, .output_length = 100, .concurrency = 3});
  });
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (server->executor.active_requests() < 3 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_EQ(server->executor.active_requests(), 3u);
  std::this_thread::sleep_for(100ms);
  server->shutdown();
  benchmark.join();
  ASSERT_TRUE(result.is_ok()) << result.status().message();
  EXPECT_EQ(result->completed, 0);
  EXPECT_EQ(result->errors, 3);
  EXPECT_EQ(result->first_error, "the server sent an error event: the server is shutting down");
}

// A port on which nothing listens.
int closed_port() {
  const int socket = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(socket, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  socklen_t length = sizeof(address);
  ::getsockname(socket, reinterpret_cast<sockaddr*>(&address), &length);
  ::close(socket);
  return ntohs(address.sin_port);
}

TEST(HttpBenchmark, CountsAnUnreachableServer) {
  const std::string origin = "http://127.0.0.1:" + std::to_string(closed_port());
  const Result<ServeBenchmarkResult> result = run_http_serve_benchmark(
      {.url = *parse_server_url(origin)}, prompts(2),
      {.num_requests = 3, .input_length = 4, .output_length = 2, .concurrency = 2});
  ASSERT_TRUE(result.is_ok()) << result.status().message();
  EXPECT_EQ(result->completed, 0);
  EXPECT_EQ(result->errors, 3);
  EXPECT_EQ(result->first_error,
            "cannot connect to " + origin + " (is the server running at that address?)");

  // Bad options are refused before anything is sent.
  for (const ServeBenchmarkOptions& bad :
       std::vector<ServeBenchmarkOptions>{{.num_requests = 0},
                                          {.output_length = 0},
                                          {.concurrency = kMaxBenchmarkConnections + 1}}) {
    const auto refused =
        run_http_serve_benchmark({.url = *parse_server_url(origin)}, prompts(1), bad);
    ASSERT_FALSE(refused.is_ok());
    EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  }
}

// ---- the kite binary ----

TEST(HttpBenchmarkCommand, MeasuresAServerAtUrl) {
  TestServer server(script_with_end_id());
  const std::string url = "http://127.0.0.1:" + std::to_string(server.port);
  // Without --engine_dir the prompt ids are in [100, 1000): beyond the tiny vocabulary, refused.
  test::CommandResult bench = test::run_kite("bench --mode serve --url " + url +
                                             " --input_output_len 4,3 --num_requests 5 --json");
  EXPECT_EQ(bench.exit_code, 1) << bench.output;
  EXPECT_NE(bench.output.find("kite bench: error: 5 of 5 requests failed, the first with: HTTP "
                              "400: token id "),
            std::string::npos)
      << bench.output;
  Json record;
  std::istringstream lines(bench.output);
  for (std::string line; std::getline(lines, line);) {
    if (line.starts_with("{")) record = Json::parse(line);
  }
  EXPECT_EQ(record.value("url", ""), url) << bench.output;
  EXPECT_EQ(record.value("errors", -1), 5) << bench.output;
  EXPECT_EQ(record.value("completed", -1), 0) << bench.output;
}

TEST(HttpBenchmarkCommand, RefusesBadFlags) {
  struct Case {
    std::string arguments;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{
           {"--mode serve --url localhost:8000 --input_output_len 4,2", "--url \"localhost:8000\""},
           {"--mode serve --url http://h:99999 --input_output_len 4,2", "the port"},
           {"--url http://127.0.0.1:8000 --batch_size 1 --input_output_len 4,2", "--mode serve"},
           {"--mode serve --url http://127.0.0.1:8000 --input_output_len 4,2 --max_batch_size 8",
            "--max_batch_size configures the in-process engine"},
           {"--mode serve --url http://127.0.0.1:8000 --input_output_len 4,2 --concurrency 2000",
            "at most 1024 requests in flight"},
           {"--mode serve --url http://127.0.0.1:8000 --input_output_len 4", "--input_output_len"},
           {"--mode serve --input_output_len 4,2", "--engine_dir is required"},
       }) {
    const test::CommandResult result = test::run_kite("bench " + c.arguments);
    EXPECT_EQ(result.exit_code, 2) << c.arguments << "\n" << result.output;
    EXPECT_NE(result.output.find(c.message), std::string::npos) << c.arguments << "\n"
                                                                << result.output;
    EXPECT_EQ(result.output.find("[BENCHMARK]"), std::string::npos) << result.output;
  }
}

}  // namespace
}  // namespace kite::server
