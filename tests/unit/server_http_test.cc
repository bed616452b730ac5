// The HTTP server end to end over a FakeExecutor, through real sockets: OpenAI and KServe routes,
// streaming, stop texts, log-probs, errors (400/401/404/413), metrics, a client that disconnects
// mid-stream, shutdown with streams open, and many clients at once.
#include "server/http_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "server/text_stream.h"
#include "server_test_util.h"
#include "tokenizer/unicode.h"

namespace kite::server {
namespace {

using Json = nlohmann::json;
using namespace std::chrono_literals;
using test::TestServer;

const char* const kScriptText = "Hello world! This is a test of the server.";

std::vector<int32_t> encode(const std::string& text) {
  static const ServedModel model = test::test_served_model();
  return model.tokenizer.encode(text, false);
}

std::string decode(const std::vector<int32_t>& ids) {
  static const ServedModel model = test::test_served_model();
  return model.tokenizer.decode(ids);
}

// The data of each server-sent event of a body.
std::vector<std::string> sse_data(const std::string& body) {
  std::vector<std::string> events;
  size_t start = 0;
  for (size_t end; (end = body.find("\n\n", start)) != std::string::npos; start = end + 2) {
    const std::string event = body.substr(start, end - start);
    EXPECT_TRUE(event.starts_with("data: ")) << event;
    events.push_back(event.substr(6));
  }
  EXPECT_EQ(start, body.size()) << "the body does not end with a complete event";
  return events;
}

// The text of an OpenAI stream, checking its framing: JSON chunks, then [DONE] last.
struct OpenAiStream {
  std::string text;
  std::string finish_reason;
  Json usage;
  std::vector<Json> chunks;
};
OpenAiStream read_openai_stream(const std::string& body, bool chat) {
  OpenAiStream stream;
  const std::vector<std::string> events = sse_data(body);
  EXPECT_FALSE(events.empty());
  if (events.empty()) return stream;
  EXPECT_EQ(events.back(), "[DONE]");
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const Json chunk = Json::parse(events[i]);
    stream.chunks.push_back(chunk);
    EXPECT_EQ(chunk.at("object"), chat ? "chat.completion.chunk" : "text_completion");
    if (chunk.contains("usage") && !chunk.at("usage").is_null()) stream.usage = chunk.at("usage");
    if (chunk.at("choices").empty()) continue;
    const Json& choice = chunk.at("choices")[0];
    stream.text +=
        chat ? choice.at("delta").value("content", "") : choice.at("text").get<std::string>();
    if (!choice.at("finish_reason").is_null()) {
      EXPECT_TRUE(stream.finish_reason.empty()) << "two finish reasons";
      stream.finish_reason = choice.at("finish_reason");
    }
  }
  return stream;
}

// vLLM's use_beam_search: one Executor request of beam width n, not streamed, its beams the
// choices (best first), each cut before the first stop text; usage counts every beam's tokens.
TEST(ServerHttp, CompletionBeamSearch) {
  const std::vector<int32_t> script = encode(kScriptText);
  TestServer server(script);
  auto response = server.post("/v1/completions", {{"prompt", "Say hi"},
                                                  {"max_tokens", 6},
                                                  {"n", 3},
                                                  {"use_beam_search", true},
                                                  {"length_penalty", 0.5}});
  ASSERT_TRUE(response);
  ASSERT_EQ(response->status, 200) << response->body;
  ASSERT_EQ(server.executor.requests_seen().size(), 1u);
  const executor::Request seen = server.executor.requests_seen().back();
  EXPECT_EQ(seen.sampling.beam_width, 3);
  EXPECT_FLOAT_EQ(seen.sampling.length_penalty, 0.5f);
  EXPECT_FALSE(seen.streaming);
  Json body = Json::parse(response->body);
  ASSERT_EQ(body.at("choices").size(), 3u);
  for (size_t b = 0; b < 3; ++b) {
    const Json& choice = body.at("choices")[b];
    EXPECT_EQ(choice.at("index"), b);
    EXPECT_EQ(choice.at("text"), decode({script.begin(), script.begin() + ptrdiff_t(6 - b)}));
    EXPECT_EQ(choice.at("finish_reason"), "length");
  }
  EXPECT_EQ(body.at("usage").at("completion_tokens"), 6 + 5 + 4);

  // Chat, with a stop text: the search gets it as a token sequence, and each beam's text is cut
  // before it.
  const std::string whole = decode({script.begin(), script.begin() + 6});
  const std::string stop = decode({script.begin() + 4, script.begin() + 5});
  ASSERT_FALSE(stop.empty());
  response = server.post("/v1/chat/completions",
                         {{"messages", Json::array({{{"role", "user"}, {"content", "hi"}}})},
                          {"max_tokens", 6},
                          {"n", 2},
                          {"use_beam_search", true},
                          {"stop", stop}});
  ASSERT_TRUE(response);
  ASSERT_EQ(response->status, 200) << response->body;
  EXPECT_EQ(server.executor.requests_seen().back().stop_words,
            (std::vector<std::vector<int32_t>>{encode(stop)}));
  body = Json::parse(response->body);
  ASSERT_EQ(body.at("choices").size(), 2u);
  for (size_t b = 0; b < 2; ++b) {
    std::string text = decode({script.begin(), script.begin() + ptrdiff_t(6 - b)});
    const size_t at = text.find(stop);
    const Json& choice = body.at("choices")[b];
    EXPECT_EQ(choice.at("message").at("content"),
              at == std::string::npos ? text : text.substr(0, at));
    EXPECT_EQ(choice.at("finish_reason"), at == std::string::npos ? "length" : "stop");
  }
  EXPECT_NE(whole.find(stop), std::string::npos);

  // n = 1: greedy decoding, its output the one choice.
  response = server.post("/v1/completions",
                         {{"prompt", "a"}, {"max_tokens", 3}, {"use_beam_search", true}});
  ASSERT_TRUE(response);
  ASSERT_EQ(response->status, 200) << response->body;
  EXPECT_FLOAT_EQ(server.executor.requests_seen().back().sampling.temperature, 0.0f);
  body = Json::parse(response->body);
  ASSERT_EQ(body.at("choices").size(), 1u);
  EXPECT_EQ(body.at("choices")[0].at("text"), decode({script.begin(), script.begin() + 3}));
  EXPECT_EQ(body.at("choices")[0].at("finish_reason"), "length");
  EXPECT_EQ(body.at("usage").at("completion_tokens"), 3);

  // Not streamed, no log-probs.
  for (const Json& refused : {Json{{"prompt", "a"}, {"use_beam_search", true}, {"stream", true}},
                              Json{{"prompt", "a"}, {"use_beam_search", true}, {"logprobs", 1}}}) {
    response = server.post("/v1/completions", refused);
    ASSERT_TRUE(response);
    EXPECT_EQ(response->status, 400) << refused.dump();
  }
}

TEST(ServerHttp, CompletionNonStreaming) {
  const std::vector<int32_t> script = encode(kScriptText);
  TestServer server(script);
  auto response =
      server.post("/v1/completions", {{"model", "tiny"}, {"prompt", "Say hi"}, {"max_tokens", 5}});
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 200) << response->body;
  EXPECT_EQ(response->get_header_value("Content-Type"), "application/json");
  const Json body = Json::parse(response->body);
  EXPECT_TRUE(body.at("id").get<std::string>().starts_with("cmpl-"));
  EXPECT_EQ(body.at("object"), "text_completion");
  EXPECT_EQ(body.at("model"), "tiny");
  const Json& choice = body.at("choices")[0];
  EXPECT_EQ(choice.at("text"), decode({script.begin(), script.begin() + 5}));
  EXPECT_EQ(choice.at("finish_reason"), "length");
  EXPECT_TRUE(choice.at("logprobs").is_null());
  const int64_t prompt_tokens =
      int64_t(test::test_served_model().tokenizer.encode("Say hi").size());
  EXPECT_EQ(body.at("usage"), (Json{{"prompt_tokens", prompt_tokens},
                                    {"completion_tokens", 5},
                                    {"total_tokens", prompt_tokens + 5}}));
  // The Executor got the request as parsed, streamed.
  const executor::Request seen = server.executor.requests_seen().back();
  EXPECT_EQ(seen.max_new_tokens, 5);
  EXPECT_TRUE(seen.streaming);
}

// echo: the prompt (as sent, or its token ids decoded) before each choice's text, whole or as
// each choice's first streamed chunk.
TEST(ServerHttp, CompletionEcho) {
  const std::vector<int32_t> script = encode(kScriptText);
  TestServer server(script);
  const std::string output = decode({script.begin(), script.begin() + 4});
  for (const Json& prompt : {Json("Say hi"), Json::array({"Say hi"}), Json(encode("Say hi"))}) {
    const std::string echoed = prompt.is_string() || prompt[0].is_string()
                                   ? std::string("Say hi")
                                   : decode(encode("Say hi"));
    const Json request = {{"prompt", prompt}, {"max_tokens", 4}, {"echo", true}, {"n", 2}};
    auto response = server.post("/v1/completions", request);
    ASSERT_TRUE(response);
    ASSERT_EQ(response->status, 200) << response->body;
    const Json body = Json::parse(response->body);
    ASSERT_EQ(body.at("choices").size(), 2u);
    for (const Json& choice : body.at("choices")) {
      EXPECT_EQ(choice.at("text"), echoed + output) << prompt.dump();
    }
    EXPECT_EQ(body.at("usage").at("completion_tokens"), 8);  // the prompt is not output
    Json streaming = request;
    streaming["stream"] = true;
    streaming["n"] = 1;
    response = server.post("/v1/completions", streaming);
    ASSERT_TRUE(response);
    const OpenAiStream stream = read_openai_stream(response->body, false);
    EXPECT_EQ(stream.text, echoed + output) << prompt.dump();
    EXPECT_EQ(stream.chunks.front().at("choices")[0].at("text"), echoed);
  }
}

// The prompt's log-probs. echo with logprobs: each choice's log-probs begin with the prompt's
// tokens (the fake executor's -0.5 p for prompt token p, the first null), then the output's, whose
// offsets follow the echo; not streamed. vLLM's prompt_logprobs, on both routes.
TEST(ServerHttp, PromptLogProbs) {
  const std::vector<int32_t> script = encode(kScriptText);
  TestServer server(script);
  const std::vector<int32_t> prompt = encode("Say hi");
  ASSERT_GE(prompt.size(), 2u);
  const Json request = {
      {"prompt", "Say hi"}, {"max_tokens", 3}, {"echo", true}, {"logprobs", 1}, {"n", 2}};
  const Json body = server.post_ok("/v1/completions", request);
  ASSERT_EQ(body.at("choices").size(), 2u);
  for (const Json& choice : body.at("choices")) {
    const Json& log_probs = choice.at("logprobs");
    const size_t total = prompt.size() + 3;
    ASSERT_EQ(log_probs.at("tokens").size(), total) << log_probs.dump();
    ASSERT_EQ(log_probs.at("token_logprobs").size(), total);
    ASSERT_EQ(log_probs.at("top_logprobs").size(), total);
    EXPECT_TRUE(log_probs.at("token_logprobs")[0].is_null());
    EXPECT_TRUE(log_probs.at("top_logprobs")[0].is_null());
    std::string joined;
    for (size_t p = 0; p < prompt.size(); ++p) {
      EXPECT_EQ(log_probs.at("tokens")[p], decode({prompt[p]}));
      EXPECT_EQ(log_probs.at("text_offset")[p], int64_t(joined.size()));  // ASCII here
      joined += decode({prompt[p]});
      if (p == 0) continue;
      EXPECT_FLOAT_EQ(log_probs.at("token_logprobs")[p].get<float>(), -0.5f * float(p));
      EXPECT_EQ(log_probs.at("top_logprobs")[p].size(), 1u);
    }
    EXPECT_EQ(joined, "Say hi");
    EXPECT_EQ(log_probs.at("text_offset")[prompt.size()], int64_t(joined.size()));
    EXPECT_EQ(choice.at("text").get<std::string>().substr(0, joined.size()), "Say hi");
  }
  Json streaming = request;
  streaming["stream"] = true;
  auto response = server.post("/v1/completions", streaming);
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 400) << response->body;

  // vLLM's prompt_logprobs 2: per prompt token after the first, the token (rank p here) and the
  // next id down (the fake's second most likely, rank 2); chat puts them beside the choices.
  const Json vllm =
      server
          .post_ok("/v1/completions",
                   Json{{"prompt", "Say hi"}, {"max_tokens", 2}, {"prompt_logprobs", 2}})
          .at("choices")[0]
          .at("prompt_logprobs");
  ASSERT_EQ(vllm.size(), prompt.size()) << vllm.dump();
  EXPECT_TRUE(vllm[0].is_null());
  for (size_t p = 1; p < prompt.size(); ++p) {
    const Json& chosen = vllm[p].at(std::to_string(prompt[p]));
    EXPECT_FLOAT_EQ(chosen.at("logprob").get<float>(), -0.5f * float(p));
    EXPECT_EQ(chosen.at("rank"), int64_t(p));
    EXPECT_EQ(chosen.at("decoded_token"), decode({prompt[p]}));
    EXPECT_EQ(vllm[p].at(std::to_string(prompt[p] - 1)).at("rank"), 2);
  }
  const Json chat =
      server
          .post_ok("/v1/chat/completions",
                   Json{{"messages", Json::array({{{"role", "user"}, {"content", "hi"}}})},
                        {"max_tokens", 2},
                        {"prompt_logprobs", 0}})
          .at("prompt_logprobs");
  ASSERT_GE(chat.size(), 2u) << chat.dump();
  EXPECT_TRUE(chat[0].is_null());
  EXPECT_EQ(chat[1].size(), 1u);  // the prompt token alone
}

// best_of: that many requests (seeds + 0, 1, ...), ranked by summed log-probability (asked of the
// Executor for the ranking, not shown unless the request asks); the n best come back, and usage
// counts every generated token.
TEST(ServerHttp, CompletionBestOf) {
  const std::vector<int32_t> script = encode(kScriptText);
  TestServer server(script);
  auto response = server.post("/v1/completions", {{"prompt", "Say hi"},
                                                  {"max_tokens", 4},
                                                  {"n", 2},
                                                  {"best_of", 3},
                                                  {"seed", 10},
                                                  {"temperature", 0.5}});
  ASSERT_TRUE(response);
  ASSERT_EQ(response->status, 200) << response->body;
  const std::vector<executor::Request>& seen = server.executor.requests_seen();
  ASSERT_EQ(seen.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(seen[i].sampling.seed, 10u + i);
    EXPECT_TRUE(seen[i].return_log_probs);
  }
  const Json body = Json::parse(response->body);
  ASSERT_EQ(body.at("choices").size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(body.at("choices")[i].at("index"), i);
    EXPECT_EQ(body.at("choices")[i].at("text"), decode({script.begin(), script.begin() + 4}));
    EXPECT_TRUE(body.at("choices")[i].at("logprobs").is_null());
  }
  EXPECT_EQ(body.at("usage").at("completion_tokens"), 12);
}

TEST(ServerHttp, CompletionStreamingGivesTheSameText) {
  const std::vector<int32_t> script = encode(kScriptText);
  TestServer server(script);
  const Json request = {{"prompt", "x"}, {"max_tokens", 12}, {"temperature", 0}};
  auto whole = server.post("/v1/completions", request);
  ASSERT_TRUE(whole);
  Json streaming = request;
  streaming["stream"] = true;
  streaming["stream_options"] = {{"include_usage", true}};
  auto response = server.post("/v1/completions", streaming);
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->get_header_value("Content-Type"), "text/event-stream");
  const OpenAiStream stream = read_openai_stream(response->body, false);
  EXPECT_EQ(stream.text, Json::parse(whole->body).at("choices")[0].at("text").get<std::string>());
  EXPECT_EQ(stream.finish_reason, "length");
  EXPECT_EQ(stream.usage.at("completion_tokens"), 12);
  // Every chunk carries "usage" (null but the last), and the last has no choices.
  for (const Json& chunk : stream.chunks) EXPECT_TRUE(chunk.contains("usage"));
  EXPECT_TRUE(stream.chunks.back().at("choices").empty());
  EXPECT_GT(stream.chunks.size(), 3u);  // several pieces, not one at the end

  // Without include_usage there is no usage chunk.
  streaming.erase("stream_options");
  response = server.post("/v1/completions", streaming);
  ASSERT_TRUE(response);
  const OpenAiStream plain = read_openai_stream(response->body, false);
  EXPECT_TRUE(plain.usage.is_null());
  EXPECT_FALSE(plain.chunks.back().contains("usage"));
  EXPECT_EQ(plain.text, stream.text);
}

// n: a request of its own per choice (seeds seed, seed + 1, ...), answered together; streamed,
// the choices' chunks interleave, each choice ends with its finish reason, one usage and [DONE].
TEST(ServerHttp, SeveralChoices) {
  const std::vector<int32_t> script = encode(kScriptText);
  TestServer server(script);
  const Json request = {{"prompt", "x"}, {"max_tokens", 4}, {"n", 3}, {"seed", 10}};
  auto response = server.post("/v1/completions", request);
  ASSERT_TRUE(response);
  ASSERT_EQ(response->status, 200) << response->body;
  const Json body = Json::parse(response->body);
  ASSERT_EQ(body.at("choices").size(), 3u);
  for (int64_t i = 0; i < 3; ++i) {
    EXPECT_EQ(body.at("choices")[size_t(i)].at("index"), i);
    EXPECT_EQ(body.at("choices")[size_t(i)].at("text"),
              decode({script.begin(), script.begin() + 4}));
  }
  EXPECT_EQ(body.at("usage").at("completion_tokens"), 12);
  const std::vector<executor::Request> seen = server.executor.requests_seen();
  ASSERT_EQ(seen.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(seen[i].sampling.seed, 10 + i);

  Json streaming = request;
  streaming["stream"] = true;
  streaming["stream_options"] = {{"include_usage", true}};
  response = server.post("/v1/completions", streaming);
  ASSERT_TRUE(response);
  const std::vector<std::string> events = sse_data(response->body);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back(), "[DONE]");
  std::vector<std::string> texts(3);
  std::vector<int> finishes(3, 0);
  Json usage;
  for (size_t e = 0; e + 1 < events.size(); ++e) {
    const Json chunk = Json::parse(events[e]);
    if (!chunk.at("usage").is_null()) usage = chunk.at("usage");
    for (const Json& choice : chunk.at("choices")) {
      const size_t index = choice.at("index").get<size_t>();
      ASSERT_LT(index, 3u);
      texts[index] += choice.at("text").get<std::string>();
      finishes[index] += !choice.at("finish_reason").is_null();
    }
  }
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(texts[i], body.at("choices")[i].at("text").get<std::string>()) << i;
    EXPECT_EQ(finishes[i], 1) << i;
  }
  EXPECT_EQ(usage.at("completion_tokens"), 12);
}

TEST(ServerHttp, ChatCompletions) {
  const std::vector<int32_t> script = encode(kScriptText);
  TestServer server(script);
  const Json messages = Json::array({{{"role", "user"}, {"content", "Hi"}}});
  const Json body =
      server.post_ok("/v1/chat/completions", {{"messages", messages}, {"max_tokens", 4}});
  EXPECT_TRUE(body.at("id").get<std::string>().starts_with("chatcmpl-"));
  EXPECT_EQ(body.at("object"), "chat.completion");
  EXPECT_EQ(
      body.at("choices")[0].at("message"),
      (Json{{"role", "assistant"}, {"content", decode({script.begin(), script.begin() + 4})}}));
  // The prompt is the rendered template.
  const std::string prompt = "<s>user\nHi</s>\n<s>assistant\n";
  EXPECT_EQ(server.executor.requests_seen().back().input_ids,
            test::test_served_model().tokenizer.encode(prompt, false));

  auto response = server.post("/v1/chat/completions",
                              {{"messages", messages}, {"max_tokens", 4}, {"stream", true}});
  ASSERT_TRUE(response);
  const OpenAiStream stream = read_openai_stream(response->body, true);
  EXPECT_EQ(stream.text, body.at("choices")[0].at("message").at("content").get<std::string>());
  EXPECT_EQ(stream.chunks.front().at("choices")[0].at("delta"),
            (Json{{"role", "assistant"}, {"content", ""}}));
  EXPECT_EQ(stream.chunks.back().at("choices")[0].at("delta"), Json::object());
  EXPECT_EQ(stream.finish_reason, "length");
}

TEST(ServerHttp, StopTextsCutTheOutputAndCancelTheRequest) {
  const std::vector<int32_t> script = encode(kScriptText);
  TestServer server(script);
  const std::string full = decode(script);
  for (const bool stream : {false, true}) {
    SCOPED_TRACE(stream);
    auto response = server.post("/v1/completions", {{"prompt", "x"},
                                                    {"max_tokens", 100},
                                                    {"stop", Json::array({"zzz", "is a"})},
                                                    {"stream", stream}});
    ASSERT_TRUE(response);
    ASSERT_EQ(response->status, 200) << response->body;
    std::string text, finish_reason;
    SCOPED_TRACE(response->body);
    if (stream) {
      const OpenAiStream parsed = read_openai_stream(response->body, false);
      text = parsed.text;
      finish_reason = parsed.finish_reason;
    } else {
      const Json choice = Json::parse(response->body).at("choices")[0];
      text = choice.at("text");
      finish_reason = choice.at("finish_reason");
    }
    EXPECT_EQ(text, full.substr(0, full.find("is a")));
    EXPECT_EQ(finish_reason, "stop");
  }
  // Both requests were cancelled once the stop text appeared, long before 100 tokens.
  EXPECT_EQ(server.executor.cancelled().size(), 2u);
}

TEST(ServerHttp, EndIdFinishesWithStop) {
  std::vector<int32_t> script = encode("Done now");
  script.push_back(test::FakeExecutor::kEndId);
  TestServer server(script);
  const Json body = server.post_ok("/v1/completions", {{"prompt", "x"}, {"max_tokens", 50}});
  EXPECT_EQ(body.at("choices")[0].at("text"), "Done now");  // the end token is not text
  EXPECT_EQ(body.at("choices")[0].at("finish_reason"), "stop");
  EXPECT_EQ(body.at("usage").at("completion_tokens"), int64_t(script.size()));
  // ignore_eos runs on to max_tokens.
  EXPECT_EQ(
      server.post_ok("/v1/completions", {{"prompt", "x"}, {"max_tokens", 20}, {"ignore_eos", true}})
          .at("choices")[0]
          .at("finish_reason"),
      "length");
}

// vLLM's skip_special_tokens (false: the end token's text too), include_stop_str_in_output and
// stop_token_ids (the output ends after the token, which stays in it).
TEST(ServerHttp, VllmOutputOptions) {
  std::vector<int32_t> script = encode("Done now");
  script.push_back(test::FakeExecutor::kEndId);
  TestServer server(script);
  auto text_of = [&](const Json& body) {
    auto response = server.post("/v1/completions", body);
    EXPECT_TRUE(response);
    return response ? Json::parse(response->body).at("choices")[0].at("text").get<std::string>()
                    : std::string();
  };
  const ServedModel model = test::test_served_model();
  EXPECT_EQ(text_of({{"prompt", "x"}, {"max_tokens", 50}, {"skip_special_tokens", false}}),
            model.tokenizer.decode(script, /*skip_special_tokens=*/false));
  EXPECT_NE(model.tokenizer.decode(script, false), "Done now");
  EXPECT_EQ(text_of({{"prompt", "x"}, {"max_tokens", 50}, {"stop", "now"}}), "Done ");
  EXPECT_EQ(text_of({{"prompt", "x"},
                     {"max_tokens", 50},
                     {"stop", "now"},
                     {"include_stop_str_in_output", true}}),
            "Done now");
  const std::vector<int32_t> stop_ids = {script[1], 1000000};
  auto response = server.post("/v1/completions",
                              {{"prompt", "x"}, {"max_tokens", 50}, {"stop_token_ids", stop_ids}});
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 400);  // 1000000 is outside the vocabulary
  response = server.post("/v1/completions",
                         {{"prompt", "x"}, {"max_tokens", 50}, {"stop_token_ids", {script[1]}}});
  ASSERT_TRUE(response);
  EXPECT_EQ(server.executor.requests_seen().back().stop_words,
            (std::vector<std::vector<int32_t>>{{script[1]}}));
}

TEST(ServerHttp, LogProbs) {
  const std::vector<int32_t> script = encode("abc");
  TestServer server(script);
  const Json log_probs =
      server.post_ok("/v1/completions", {{"prompt", "x"}, {"max_tokens", 3}, {"logprobs", 1}})
          .at("choices")[0]
          .at("logprobs");
  ASSERT_EQ(log_probs.at("token_logprobs").size(), 3u);
  EXPECT_EQ(log_probs.at("token_logprobs"), (Json{-0.25, -0.5, -0.75}));  // the fake's values
  EXPECT_EQ(log_probs.at("tokens").size(), 3u);
  EXPECT_EQ(log_probs.at("text_offset")[0], 0);
  EXPECT_TRUE(server.executor.requests_seen().back().return_log_probs);

  const Json content =
      server
          .post_ok("/v1/chat/completions",
                   {{"messages", Json::array({{{"role", "user"}, {"content", "x"}}})},
                    {"max_tokens", 2},
                    {"logprobs", true}})
          .at("choices")[0]
          .at("logprobs")
          .at("content");
  ASSERT_EQ(content.size(), 2u);
  EXPECT_EQ(content[1].at("logprob"), -0.5);
  EXPECT_EQ(content[0].at("top_logprobs"), Json::array());
  EXPECT_EQ(server.executor.requests_seen().back().top_log_probs, 0);

  // The most likely tokens: completions' {text: log-probability} per position, chat's lists.
  const Json top =
      server.post_ok("/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}, {"logprobs", 3}})
          .at("choices")[0]
          .at("logprobs")
          .at("top_logprobs");
  ASSERT_EQ(top.size(), 2u);
  ASSERT_EQ(top[0].size(), 3u);
  EXPECT_EQ(top[0].at("a"), -0.25);  // the script's "a", then two other tokens (the fake's)
  std::vector<double> values;
  for (const auto& [text, log_prob] : top[1].items()) values.push_back(log_prob.get<double>());
  std::ranges::sort(values, std::greater<>());  // (parsed into a key-sorted object)
  EXPECT_EQ(values, (std::vector<double>{-0.5, -1.5, -2.5}));
  EXPECT_EQ(server.executor.requests_seen().back().top_log_probs, 3);
  auto response = server.post("/v1/chat/completions",
                              {{"messages", Json::array({{{"role", "user"}, {"content", "x"}}})},
                               {"max_tokens", 2},
                               {"logprobs", true},
                               {"top_logprobs", 2},
                               {"stream", true}});
  ASSERT_TRUE(response);
  const OpenAiStream stream = read_openai_stream(response->body, true);
  ASSERT_FALSE(stream.chunks.empty());
  Json streamed_top = Json::array();
  for (const Json& chunk : stream.chunks) {
    const Json& choice = chunk.at("choices")[0];
    if (!choice.contains("logprobs") || choice.at("logprobs").is_null()) continue;
    for (const Json& entry : choice.at("logprobs").at("content")) streamed_top.push_back(entry);
  }
  ASSERT_EQ(streamed_top.size(), 2u);
  EXPECT_EQ(streamed_top[1].at("top_logprobs").size(), 2u);
  EXPECT_EQ(streamed_top[1].at("top_logprobs")[0].at("token"), streamed_top[1].at("token"));
  EXPECT_EQ(streamed_top[1].at("top_logprobs")[1].at("logprob"), -1.5);
}

TEST(ServerHttp, StreamingNeverSplitsCharacters) {
  const std::string text = "héllo wörld 日本語 😀!";
  const std::vector<int32_t> script = encode(text);
  ASSERT_GT(script.size(), count_characters(text));  // byte-level: some characters take 2+ tokens
  TestServer server(script);
  auto response =
      server.post("/v1/completions",
                  {{"prompt", "x"}, {"max_tokens", int64_t(script.size())}, {"stream", true}});
  ASSERT_TRUE(response);
  const OpenAiStream stream = read_openai_stream(response->body, false);
  EXPECT_EQ(stream.text, text);
  for (const Json& chunk : stream.chunks) {
    if (chunk.at("choices").empty()) continue;
    const std::string piece = chunk.at("choices")[0].at("text");
    EXPECT_TRUE(unicode::is_valid_utf8(piece));
    EXPECT_EQ(piece.find("\xEF\xBF\xBD"), std::string::npos) << "a replacement character";
  }
}

TEST(ServerHttp, KServeGenerate) {
  const std::vector<int32_t> script = encode(kScriptText);
  TestServer server(script);
  const std::string full = decode(script);
  auto response = server.post(
      "/v2/models/tiny/generate",
      {{"text_input", "Q: "}, {"max_tokens", 6}, {"bad_words", ""}, {"stop_words", ""}});
  ASSERT_TRUE(response);
  ASSERT_EQ(response->status, 200) << response->body;
  const std::string output = decode({script.begin(), script.begin() + 6});
  EXPECT_EQ(
      Json::parse(response->body),
      (Json{{"model_name", "tiny"}, {"model_version", "1"}, {"text_output", "Q: " + output}}));
  // TensorRT-LLM's stop words stay in the output; exclude_input_in_output drops the prompt.
  response = server.post("/v2/models/tiny/generate", {{"text_input", "Q: "},
                                                      {"max_tokens", 60},
                                                      {"stop_words", Json::array({"is a"})},
                                                      {"exclude_input_in_output", true}});
  ASSERT_TRUE(response);
  EXPECT_EQ(Json::parse(response->body).at("text_output"), full.substr(0, full.find("is a") + 4));
  // Versioned path.
  response = server.post("/v2/models/tiny/versions/1/generate", {{"text_input", "Q"}});
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 200);

  // generate_stream: an event per piece, no prompt, no [DONE].
  response = server.post("/v2/models/tiny/generate_stream",
                         {{"text_input", "Q: "}, {"max_tokens", 6}, {"return_log_probs", true}});
  ASSERT_TRUE(response);
  ASSERT_EQ(response->status, 200);
  std::string streamed;
  size_t log_probs = 0;
  const std::vector<std::string> events = sse_data(response->body);
  EXPECT_GT(events.size(), 1u);
  for (const std::string& event : events) {
    const Json chunk = Json::parse(event);
    EXPECT_EQ(chunk.at("model_name"), "tiny");
    streamed += chunk.at("text_output").get<std::string>();
    log_probs += chunk.at("output_log_probs").size();
  }
  EXPECT_EQ(streamed, output);
  EXPECT_EQ(log_probs, 6u);
  // "stream": false on generate_stream: one event with everything.
  response = server.post("/v2/models/tiny/generate_stream",
                         {{"text_input", "Q: "}, {"max_tokens", 6}, {"stream", false}});
  ASSERT_TRUE(response);
  EXPECT_EQ(sse_data(response->body).size(), 1u);

  // Triton's errors.
  response = server.post("/v2/models/other/generate", {{"text_input", "Q"}});
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 404);
  EXPECT_EQ(Json::parse(response->body),
            (Json{{"error", "Request for unknown model: 'other' is not found"}}));
  // Beam search: one answer with every beam's text (after the input, unless excluded); its stop
  // words reach the Executor as token sequences; never streamed.
  response = server.post("/v2/models/tiny/generate", {{"text_input", "Q: "},
                                                      {"max_tokens", 4},
                                                      {"beam_width", 3},
                                                      {"length_penalty", 0.5},
                                                      {"stop_words", Json::array({"zz"})}});
  ASSERT_TRUE(response);
  ASSERT_EQ(response->status, 200) << response->body;
  const executor::Request beam_request = server.executor.requests_seen().back();
  EXPECT_EQ(beam_request.sampling.beam_width, 3);
  EXPECT_FLOAT_EQ(beam_request.sampling.length_penalty, 0.5f);
  EXPECT_FALSE(beam_request.streaming);
  EXPECT_EQ(beam_request.stop_words, (std::vector<std::vector<int32_t>>{encode("zz")}));
  Json beams = Json::array();
  for (size_t b = 0; b < 3; ++b) {
    beams.push_back("Q: " +
                    test::test_served_model().tokenizer.decode(std::span(script).first(4 - b)));
  }
  EXPECT_EQ(Json::parse(response->body).at("text_output"), beams);
  for (const Json& body : {Json{{"text_input", "Q"}, {"beam_width", 2}}}) {
    response = server.post("/v2/models/tiny/generate_stream", body);
    ASSERT_TRUE(response);
    EXPECT_EQ(response->status, 400);
    EXPECT_NE(Json::parse(response->body).at("error").get<std::string>().find("beam"),
              std::string::npos);
  }

  // Bad words reach the Executor as token sequences.
  response = server.post("/v2/models/tiny/generate",
                         {{"text_input", "Q"}, {"bad_words", Json::array({"x", "is a"})}});
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 200) << response->body;
  EXPECT_EQ(server.executor.requests_seen().back().bad_words,
            (std::vector<std::vector<int32_t>>{encode("x"), encode("is a")}));
}

TEST(ServerHttp, BadRequestsGet400WithAnOpenAiErrorBody) {
  TestServer server(encode(kScriptText));
  const Json user = Json::array({{{"role", "user"}, {"content", "x"}}});
  struct Case {
    std::string path;
    std::string body;
    std::string param;
  };
  const std::vector<Case> cases = {
      {"/v1/completions", "{\"prompt\": ", ""},
      {"/v1/completions", "not json", ""},
      {"/v1/completions", Json{{"prompt", "x"}, {"max_tokens", "many"}}.dump(), "max_tokens"},
      {"/v1/completions", Json{{"prompt", "x"}, {"n", 0}}.dump(), "n"},
      {"/v1/completions", Json{{"prompt", std::vector<int32_t>(65, 10)}}.dump(), "prompt"},
      {"/v1/completions", Json{{"prompt", "x"}, {"max_tokens", 1000}}.dump(), "max_tokens"},
      {"/v1/chat/completions",
       Json{{"messages", Json::array({{{"role", "robot"}, {"content", "x"}}})}}.dump(),
       "messages[0].role"},
      {"/v1/chat/completions", Json{{"messages", user}, {"temperature", -1}}.dump(), "temperature"},
      {"/v1/chat/completions", Json{{"messages", user}, {"max_tokens", 500}}.dump(), "max_tokens"},
  };
  for (const Case& c : cases) {
    auto response = server.client().Post(c.path.c_str(), c.body, "application/json");
    ASSERT_TRUE(response);
    EXPECT_EQ(response->status, 400) << c.body;
    const Json body = Json::parse(response->body);
    const Json& error = body.at("error");
    EXPECT_FALSE(error.at("message").get<std::string>().empty());
    EXPECT_EQ(error.at("type"), "invalid_request_error");
    EXPECT_EQ(error.at("param"), c.param.empty() ? Json() : Json(c.param)) << c.body;
    EXPECT_TRUE(error.contains("code"));
  }
  EXPECT_TRUE(server.executor.requests_seen().empty());  // none reached the Executor

  auto response = server.client().Get("/v1/nothing");
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 404);
  EXPECT_EQ(Json::parse(response->body).at("error").at("code"), "not_found");
  response = server.client().Get("/v1/completions");  // wrong method
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 404);
  response = server.post("/v1/completions", {{"model", "other"}, {"prompt", "x"}});
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 404);
  EXPECT_EQ(Json::parse(response->body).at("error").at("code"), "model_not_found");
}

TEST(ServerHttp, BodiesOverTheLimitGet413) {
  ServerOptions options;
  options.max_body_bytes = 1000;
  TestServer server(encode(kScriptText), options);
  auto response = server.post("/v1/completions", {{"prompt", std::string(2000, 'a')}});
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 413);
  EXPECT_NE(Json::parse(response->body).at("error").at("message").get<std::string>().find("1000"),
            std::string::npos);
  response = server.post("/v1/completions", {{"prompt", "small"}, {"max_tokens", 1}});
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 200);
}

TEST(ServerHttp, ApiKeyIsRequiredExceptForHealthChecks) {
  ServerOptions options;
  options.api_key = "sekrit";
  TestServer server(encode(kScriptText), options);
  const Json body = {{"prompt", "x"}, {"max_tokens", 1}};
  auto response = server.post("/v1/completions", body);
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 401);
  EXPECT_EQ(Json::parse(response->body).at("error").at("code"), "invalid_api_key");
  for (const char* wrong : {"Bearer wrong", "Bearer sekri", "sekrit", "Bearer sekrit2"}) {
    response = server.post("/v1/completions", body, {{"Authorization", wrong}});
    ASSERT_TRUE(response);
    EXPECT_EQ(response->status, 401) << wrong;
  }
  for (const char* path : {"/v1/models", "/metrics", "/v1/nothing"}) {
    response = server.client().Get(path);
    ASSERT_TRUE(response);
    EXPECT_EQ(response->status, 401) << path;
  }
  response = server.post("/v2/models/tiny/generate", {{"text_input", "x"}});
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 401);
  response = server.post("/v1/completions", body, {{"Authorization", "Bearer sekrit"}});
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 200);
  for (const char* path : {"/health", "/v2/health/live", "/v2/health/ready"}) {
    response = server.client().Get(path);
    ASSERT_TRUE(response);
    EXPECT_EQ(response->status, 200) << path;
  }
}

TEST(ServerHttp, APortInUseIsAnError) {
  TestServer server(encode(kScriptText));
  test::FakeExecutor executor(encode(kScriptText));
  ServerOptions options;
  options.port = server.port;
  HttpServer second(executor, test::test_served_model(), options);
  const Result<int> bound = second.bind();
  ASSERT_FALSE(bound.is_ok());
  EXPECT_NE(
      bound.status().message().find("cannot listen on 127.0.0.1:" + std::to_string(server.port)),
      std::string::npos)
      << bound.status().message();
}

TEST(ServerHttp, ModelsAndHealth) {
  TestServer server(encode(kScriptText));
  auto response = server.client().Get("/v1/models");
  ASSERT_TRUE(response);
  const Json models = Json::parse(response->body);
  EXPECT_EQ(models.at("object"), "list");
  ASSERT_EQ(models.at("data").size(), 1u);
  EXPECT_EQ(models.at("data")[0].at("id"), "tiny");
  EXPECT_EQ(models.at("data")[0].at("object"), "model");
  EXPECT_EQ(models.at("data")[0].at("owned_by"), "kite");
  response = server.client().Get("/v1/models/tiny");
  ASSERT_TRUE(response);
  EXPECT_EQ(Json::parse(response->body).at("id"), "tiny");
  response = server.client().Get("/v1/models/nope");
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 404);
  for (const char* path :
       {"/health", "/v2/health/live", "/v2/health/ready", "/v2/models/tiny/ready"}) {
    response = server.client().Get(path);
    ASSERT_TRUE(response);
    EXPECT_EQ(response->status, 200) << path;
  }
  response = server.client().Get("/v2/models/nope/ready");
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 404);
}

TEST(ServerHttp, MetricsCountRequestsTokensAndLatencies) {
  TestServer server(encode(kScriptText));
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(server.post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 4}}));
  }
  ASSERT_TRUE(server.post("/v1/completions", {{"prompt", "x"}, {"n", 0}}));
  ASSERT_TRUE(server.post("/v2/models/tiny/generate", {{"text_input", "x"}, {"max_tokens", 2}}));
  ASSERT_TRUE(server.client().Get("/nowhere"));
  auto response = server.client().Get("/metrics");
  ASSERT_TRUE(response);
  EXPECT_EQ(response->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  const std::string& text = response->body;
  for (const char* line :
       {"kite_http_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 3\n",
        "kite_http_requests_total{endpoint=\"/v1/completions\",status=\"400\"} 1\n",
        "kite_http_requests_total{endpoint=\"/v2/models/{name}/generate\",status=\"200\"} 1\n",
        "kite_http_requests_total{endpoint=\"other\",status=\"404\"} 1\n",
        "kite_generation_tokens_total 14\n", "kite_time_to_first_token_seconds_count 4\n",
        "kite_inter_token_latency_seconds_count 10\n", "kite_request_latency_seconds_count 4\n",
        "kite_requests_finished_total{finish_reason=\"length\"} 4\n",
        "kite_kv_cache_used_blocks 0\n", "kite_kv_cache_free_blocks 100\n",
        "kite_kv_cache_total_blocks 100\n", "kite_num_requests_running 0\n",
        "kite_num_requests_waiting 0\n", "# TYPE kite_time_to_first_token_seconds histogram\n"}) {
    EXPECT_NE(text.find(line), std::string::npos) << line << "\n" << text;
  }
}

// Opens a raw connection and sends a request on it; the socket, or -1 on failure.
int send_request(int port, const std::string& path, const Json& body) {
  const int socket_fd = ::socket(AF_INET, SOCK_STREAM, 0);
  EXPECT_GE(socket_fd, 0);
  if (socket_fd < 0) return -1;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(uint16_t(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(socket_fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  const std::string payload = body.dump();
  const std::string request = "POST " + path +
                              " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              "Content-Type: application/json\r\nContent-Length: " +
                              std::to_string(payload.size()) + "\r\n\r\n" + payload;
  EXPECT_EQ(::send(socket_fd, request.data(), request.size(), 0), ssize_t(request.size()));
  return socket_fd;
}

// Sends a streaming request, reads `events` events and closes the socket.
void disconnect_after(int port, const std::string& path, const Json& body, int events) {
  const int socket_fd = send_request(port, path, body);
  ASSERT_GE(socket_fd, 0);
  std::string received;
  char buffer[4096];
  size_t seen = 0;
  while (int(seen) < events) {
    const ssize_t n = ::recv(socket_fd, buffer, sizeof(buffer), 0);
    ASSERT_GT(n, 0) << "the server closed the stream early: " << received;
    received.append(buffer, size_t(n));
    seen = 0;
    for (size_t at = 0; (at = received.find("data: ", at)) != std::string::npos; at += 6) ++seen;
  }
  ::close(socket_fd);
}

TEST(ServerHttp, ClientDisconnectingMidStreamCancelsItsRequest) {
  // 20 ms a step and 120 tokens to go: only a cancellation ends these requests quickly.
  TestServer server(encode(kScriptText), ServerOptions{}, 20ms);
  disconnect_after(server.port, "/v1/completions",
                   {{"prompt", "x"}, {"max_tokens", 120}, {"stream", true}}, 3);
  disconnect_after(server.port, "/v1/chat/completions",
                   {{"messages", Json::array({{{"role", "user"}, {"content", "x"}}})},
                    {"max_tokens", 100},
                    {"stream", true}},
                   3);
  disconnect_after(server.port, "/v2/models/tiny/generate_stream",
                   {{"text_input", "x"}, {"max_tokens", 120}}, 3);
  // The handlers notice the closed connections, cancel, and count, each in its own time: wait
  // for all of it (a loaded machine may take a while), then check.
  const std::string cancelled_line =
      "kite_requests_finished_total{finish_reason=\"cancelled\"} 3\n";
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  std::string metrics;
  while (std::chrono::steady_clock::now() < deadline) {
    metrics = server.client().Get("/metrics")->body;
    if (server.executor.active_requests() == 0 && server.executor.cancelled().size() == 3 &&
        metrics.find(cancelled_line) != std::string::npos &&
        metrics.find("kite_kv_cache_used_blocks 0\n") != std::string::npos) {
      break;
    }
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(server.executor.active_requests(), 0u);
  EXPECT_EQ(server.executor.cancelled().size(), 3u);
  EXPECT_NE(metrics.find(cancelled_line), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("kite_kv_cache_used_blocks 0\n"), std::string::npos) << metrics;
}

// Sends a request and closes the connection without reading the answer.
void send_and_close(int port, const std::string& path, const Json& body) {
  const int socket_fd = send_request(port, path, body);
  ASSERT_GE(socket_fd, 0);
  std::this_thread::sleep_for(50ms);  // the request is under way
  ::close(socket_fd);
}

TEST(ServerHttp, ClientDisconnectingBeforeAWholeAnswerCancelsItsRequest) {
  // 50 ms a step and 120 tokens to go (6 s): only a cancellation ends these requests within 5 s.
  TestServer server(encode(kScriptText), ServerOptions{}, 50ms);
  const auto started = std::chrono::steady_clock::now();
  send_and_close(server.port, "/v1/completions", {{"prompt", "x"}, {"max_tokens", 120}});
  send_and_close(server.port, "/v2/models/tiny/generate",
                 {{"text_input", "x"}, {"max_tokens", 120}});
  while (server.executor.cancelled().size() < 2 &&
         std::chrono::steady_clock::now() < started + 5s) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(server.executor.cancelled().size(), 2u);
  EXPECT_EQ(server.executor.active_requests(), 0u);
  const std::string metrics = server.client().Get("/metrics")->body;
  EXPECT_NE(metrics.find("kite_requests_finished_total{finish_reason=\"cancelled\"} 2\n"),
            std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("kite_kv_cache_used_blocks 0\n"), std::string::npos) << metrics;
}

TEST(ServerHttp, StopEndsOpenRequests) {
  auto server = std::make_unique<TestServer>(encode(kScriptText), ServerOptions{}, 20ms);
  std::optional<httplib::Result> streamed, whole;
  std::thread streaming([&] {
    streamed.emplace(
        server->post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 120}, {"stream", true}}));
  });
  std::thread waiting([&] {
    whole.emplace(server->post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 120}}));
  });
  while (server->executor.active_requests() < 2) std::this_thread::sleep_for(5ms);
  std::this_thread::sleep_for(100ms);
  const auto start = std::chrono::steady_clock::now();
  server->shutdown();
  streaming.join();
  waiting.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
  ASSERT_TRUE(streamed && *streamed);
  const std::vector<std::string> events = sse_data((*streamed)->body);
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.back(), "[DONE]");
  EXPECT_EQ(Json::parse(events[events.size() - 2]).at("error").at("message"),
            "the server is shutting down");
  ASSERT_TRUE(whole && *whole);
  EXPECT_EQ((*whole)->status, 503);
  EXPECT_EQ(server->executor.active_requests(), 0u);  // cancelled
}

TEST(ServerHttp, ManyClientsAtOnce) {
  const std::vector<int32_t> script = encode(kScriptText);
  TestServer server(script);
  constexpr int kClients = 32;
  constexpr int kRequestsEach = 5;
  std::atomic<int> failures = 0;
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      httplib::Client client = server.client();
      for (int r = 0; r < kRequestsEach; ++r) {
        const int64_t max_tokens = 1 + (c + r) % 9;
        const bool stream = (c + r) % 2 == 0;
        auto response = client.Post(
            "/v1/completions",
            Json{{"prompt", "x"}, {"max_tokens", max_tokens}, {"stream", stream}}.dump(),
            "application/json");
        const std::string expected = decode({script.begin(), script.begin() + max_tokens});
        if (!response || response->status != 200) {
          ADD_FAILURE() << (response ? response->body : httplib::to_string(response.error()))
                        << " client " << c << " request " << r << " stream " << stream;
          ++failures;
          continue;
        }
        const std::string text =
            stream ? read_openai_stream(response->body, false).text
                   : Json::parse(response->body).at("choices")[0].at("text").get<std::string>();
        if (text != expected) {
          ADD_FAILURE() << text << " != " << expected;
          ++failures;
        }
      }
    });
  }
  for (std::thread& client : clients) client.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(server.executor.requests_seen().size(), size_t(kClients * kRequestsEach));
}

}  // namespace
}  // namespace kite::server
