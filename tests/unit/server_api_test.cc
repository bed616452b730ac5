// Request parsing and validation of the OpenAI and KServe APIs, the responses and server-sent
// events they write, and the served model's chat template loading.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "server/kserve_api.h"
#include "server/openai_api.h"
#include "server_test_util.h"

namespace kite::server {
namespace {

using OrderedJson = nlohmann::ordered_json;

class OpenAiParsing : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { model_ = new ServedModel(test::test_served_model()); }
  static void TearDownTestSuite() { delete model_; }

  std::optional<ApiError> completion(const OrderedJson& body, OpenAiRequest* request) {
    return parse_completion_request(body.dump(), *model_, 1234, request);
  }
  std::optional<ApiError> chat(const OrderedJson& body, OpenAiRequest* request) {
    return parse_chat_request(body.dump(), *model_, 1234, request);
  }
  // The error a bad completion (or chat) request gets.
  ApiError completion_error(const OrderedJson& body) {
    OpenAiRequest request;
    const auto error = completion(body, &request);
    EXPECT_TRUE(error.has_value()) << body.dump();
    return error.value_or(ApiError{});
  }
  ApiError chat_error(const OrderedJson& body) {
    OpenAiRequest request;
    const auto error = chat(body, &request);
    EXPECT_TRUE(error.has_value()) << body.dump();
    return error.value_or(ApiError{});
  }
  static OrderedJson user_messages() {
    return OrderedJson::array({{{"role", "user"}, {"content", "hi"}}});
  }

  static ServedModel* model_;
};
ServedModel* OpenAiParsing::model_ = nullptr;

TEST_F(OpenAiParsing, CompletionDefaultsAndFields) {
  OpenAiRequest request;
  ASSERT_FALSE(completion({{"model", "tiny"}, {"prompt", "hello world"}}, &request));
  const executor::Request& executor_request = request.generation.request;
  EXPECT_EQ(executor_request.input_ids, model_->tokenizer.encode("hello world"));
  EXPECT_EQ(executor_request.max_new_tokens, 16);
  EXPECT_FLOAT_EQ(executor_request.sampling.temperature, 1.0f);
  EXPECT_EQ(executor_request.sampling.seed, 1234u);  // no seed: the server's random one
  EXPECT_FALSE(request.stream);
  EXPECT_FALSE(request.log_probs);
  EXPECT_FALSE(executor_request.end_ids.has_value());

  ASSERT_FALSE(completion({{"prompt", "hi"},
                           {"max_tokens", 5},
                           {"temperature", 0},
                           {"top_p", 0.5},
                           {"top_k", 7},
                           {"min_p", 0.1},
                           {"repetition_penalty", 1.2},
                           {"seed", -1},
                           {"stop", "x"},
                           {"stream", true},
                           {"stream_options", {{"include_usage", true}}},
                           {"logprobs", 0},
                           {"ignore_eos", true},
                           {"user", "someone"}},  // ignored
                          &request));
  const executor::SamplingConfig& sampling = request.generation.request.sampling;
  EXPECT_EQ(request.generation.request.max_new_tokens, 5);
  EXPECT_FLOAT_EQ(sampling.temperature, 0.0f);
  EXPECT_FLOAT_EQ(sampling.top_p, 0.5f);
  EXPECT_EQ(sampling.top_k, 7);
  EXPECT_FLOAT_EQ(sampling.min_p, 0.1f);
  EXPECT_FLOAT_EQ(sampling.repetition_penalty, 1.2f);
  EXPECT_EQ(sampling.seed, ~uint64_t(0));
  EXPECT_EQ(request.generation.stop_texts, std::vector<std::string>{"x"});
  EXPECT_FALSE(request.generation.include_stop_text);
  EXPECT_TRUE(request.stream);
  EXPECT_TRUE(request.include_usage);
  EXPECT_TRUE(request.log_probs);
  EXPECT_TRUE(request.generation.request.return_log_probs);
  EXPECT_EQ(request.generation.request.end_ids, std::vector<int32_t>());
}

// vLLM's output options and prompt truncation.
TEST_F(OpenAiParsing, VllmExtensions) {
  OpenAiRequest request;
  ASSERT_FALSE(completion({{"prompt", "hi"}}, &request));
  EXPECT_TRUE(request.generation.skip_special_tokens);
  EXPECT_FALSE(request.generation.include_stop_text);
  EXPECT_TRUE(request.generation.request.stop_words.empty());
  ASSERT_FALSE(completion({{"prompt", {5, 6, 7, 8, 9}},
                           {"stop_token_ids", {3, 4}},
                           {"include_stop_str_in_output", true},
                           {"skip_special_tokens", false},
                           {"truncate_prompt_tokens", 2}},
                          &request));
  EXPECT_EQ(request.generation.request.stop_words, (std::vector<std::vector<int32_t>>{{3}, {4}}));
  EXPECT_TRUE(request.generation.include_stop_text);
  EXPECT_FALSE(request.generation.skip_special_tokens);
  EXPECT_EQ(request.generation.request.input_ids, (std::vector<int32_t>{8, 9}));
  // Truncation comes before the length check: a prompt over max_input_len is accepted.
  const std::vector<int32_t> long_prompt(test::FakeExecutor::kMaxInputLen + 5, 10);
  ASSERT_FALSE(completion({{"prompt", long_prompt}, {"truncate_prompt_tokens", 8}}, &request));
  EXPECT_EQ(request.generation.request.input_ids.size(), 8u);
  ASSERT_FALSE(chat({{"messages", user_messages()}, {"truncate_prompt_tokens", 3}}, &request));
  EXPECT_EQ(request.generation.request.input_ids.size(), 3u);
  EXPECT_EQ(completion_error({{"prompt", "hi"}, {"stop_token_ids", {1.5}}}).param,
            "stop_token_ids");
  EXPECT_EQ(completion_error({{"prompt", "hi"}, {"stop_token_ids", {-1}}}).param, "stop_token_ids");
  EXPECT_EQ(completion_error({{"prompt", "hi"}, {"truncate_prompt_tokens", 0}}).param,
            "truncate_prompt_tokens");
}

// echo with logprobs asks the Executor for the prompt's log-probs (and as many most likely tokens
// at each position as at the output's); either alone does not.
TEST_F(OpenAiParsing, EchoWithLogProbsAsksForThePrompts) {
  OpenAiRequest request;
  ASSERT_FALSE(completion({{"prompt", "a b"}, {"echo", true}, {"logprobs", 2}}, &request));
  EXPECT_TRUE(request.prompt_log_probs);
  EXPECT_TRUE(request.generation.request.return_prompt_log_probs);
  EXPECT_EQ(request.generation.request.top_prompt_log_probs, 2);
  EXPECT_TRUE(request.generation.request.return_log_probs);
  for (const OrderedJson& body : {OrderedJson{{"prompt", "a b"}, {"echo", true}},
                                  OrderedJson{{"prompt", "a b"}, {"logprobs", 2}},
                                  OrderedJson{{"prompt", "a b"}, {"prompt_logprobs", nullptr}}}) {
    OpenAiRequest alone;
    ASSERT_FALSE(completion(body, &alone));
    EXPECT_FALSE(alone.prompt_log_probs) << body.dump();
    EXPECT_FALSE(alone.generation.request.return_prompt_log_probs) << body.dump();
  }
  // vLLM's prompt_logprobs, alone or beside echo with logprobs: the executor is asked for the
  // larger count of most likely tokens.
  OpenAiRequest vllm;
  ASSERT_FALSE(completion({{"prompt", "a b"}, {"prompt_logprobs", 0}}, &vllm));
  EXPECT_EQ(vllm.vllm_prompt_log_probs, 0);
  EXPECT_TRUE(vllm.generation.request.return_prompt_log_probs);
  EXPECT_EQ(vllm.generation.request.top_prompt_log_probs, 0);
  OpenAiRequest both;
  ASSERT_FALSE(completion(
      {{"prompt", "a b"}, {"echo", true}, {"logprobs", 1}, {"prompt_logprobs", 3}}, &both));
  EXPECT_EQ(both.generation.request.top_prompt_log_probs, 3);
  OpenAiRequest chat_request;
  ASSERT_FALSE(chat({{"messages", user_messages()}, {"prompt_logprobs", 2}}, &chat_request));
  EXPECT_TRUE(chat_request.generation.request.return_prompt_log_probs);
  EXPECT_EQ(chat_request.generation.request.top_prompt_log_probs, 2);
  EXPECT_EQ(completion_error({{"prompt", "a"}, {"prompt_logprobs", 1}, {"stream", true}}).message,
            "'prompt_logprobs' cannot be streamed: set 'stream' false");
  EXPECT_EQ(completion_error({{"prompt", "a"}, {"prompt_logprobs", 21}}).param, "prompt_logprobs");
  EXPECT_EQ(
      completion_error({{"prompt", "a"}, {"prompt_logprobs", 1}, {"use_beam_search", true}}).param,
      "prompt_logprobs");
}

TEST_F(OpenAiParsing, BadWordsAsVllm) {
  auto ids = [&](const std::string& text) { return model_->tokenizer.encode(text, false); };
  // The fixture tokenizer: "the" is t|he and " the" Ġt|he (another first token, the same count:
  // both banned); "x" is x but " x" is Ġ|x (another count: only "x").
  ASSERT_EQ(ids("the").size(), ids(" the").size());
  ASSERT_NE(ids("the").front(), ids(" the").front());
  ASSERT_NE(ids("x").size(), ids(" x").size());
  OpenAiRequest request;
  ASSERT_FALSE(completion({{"prompt", "hi"}, {"bad_words", {"  the", "", "x"}}}, &request));
  EXPECT_EQ(request.generation.request.bad_words,
            (std::vector<std::vector<int32_t>>{ids("the"), ids(" the"), ids("x")}));
  ASSERT_FALSE(chat({{"messages", user_messages()}, {"bad_words", {"x"}}}, &request));
  EXPECT_EQ(request.generation.request.bad_words, (std::vector<std::vector<int32_t>>{ids("x")}));
  EXPECT_EQ(completion_error({{"prompt", "hi"}, {"bad_words", 3}}).param, "bad_words");
}

TEST_F(OpenAiParsing, PromptForms) {
  const std::vector<int32_t> ids = {10, 11, 12};
  for (const OrderedJson& prompt : {OrderedJson(ids), OrderedJson::array({ids})}) {
    OpenAiRequest request;
    ASSERT_FALSE(completion({{"prompt", prompt}}, &request)) << prompt.dump();
    EXPECT_EQ(request.generation.request.input_ids, ids);
  }
  OpenAiRequest request;
  ASSERT_FALSE(completion({{"prompt", OrderedJson::array({"hello"})}}, &request));
  EXPECT_EQ(request.generation.request.input_ids, model_->tokenizer.encode("hello"));

  EXPECT_EQ(completion_error({{"prompt", OrderedJson::array({"a", "b"})}}).message,
            "only one prompt per request is supported");
  EXPECT_EQ(completion_error({{"prompt", OrderedJson::array({1, 99999})}}).message,
            "token id 99999 is not in the vocabulary");
  EXPECT_EQ(completion_error({{"prompt", 5}}).param, "prompt");
  EXPECT_EQ(completion_error({{"prompt", OrderedJson::array()}}).param, "prompt");
  EXPECT_EQ(completion_error({{"max_tokens", 5}}).message, "'prompt' is required");
  EXPECT_EQ(completion_error({{"prompt", ""}}).message, "the prompt is empty");
}

TEST_F(OpenAiParsing, RefusesMalformedBodies) {
  OpenAiRequest request;
  auto error = parse_completion_request("{\"prompt\": \"a\",", *model_, 0, &request);
  ASSERT_TRUE(error);
  EXPECT_EQ(error->http_status, 400);
  EXPECT_EQ(error->type, "invalid_request_error");
  EXPECT_TRUE(error->message.starts_with("the request body is not valid JSON")) << error->message;
  error = parse_completion_request("[1, 2]", *model_, 0, &request);
  ASSERT_TRUE(error);
  EXPECT_EQ(error->message, "the request body must be a JSON object, not an array");
  error = parse_completion_request("{\"prompt\": \"\xff\"}", *model_, 0, &request);
  ASSERT_TRUE(error);  // invalid UTF-8
}

TEST_F(OpenAiParsing, RefusesWrongTypesAndRanges) {
  struct Case {
    OrderedJson body;
    std::string param;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{{"prompt", "a"}, {"max_tokens", "8"}},
       "max_tokens",
       "'max_tokens' must be an integer, not a string"},
      {{{"prompt", "a"}, {"max_tokens", 1.5}},
       "max_tokens",
       "'max_tokens' must be an integer, not a number"},
      {{{"prompt", "a"}, {"max_tokens", 0}}, "max_tokens", ""},
      {{{"prompt", "a"}, {"temperature", 2.5}},
       "temperature",
       "'temperature' must be between 0 and 2; got 2.5"},
      {{{"prompt", "a"}, {"temperature", "hot"}}, "temperature", ""},
      {{{"prompt", "a"}, {"top_p", 0}}, "top_p", "'top_p' must be above 0"},
      {{{"prompt", "a"}, {"stream", "yes"}}, "stream", "'stream' must be a boolean, not a string"},
      {{{"prompt", "a"}, {"stop", OrderedJson::array({"a", 1})}}, "stop", ""},
      {{{"prompt", "a"}, {"stop", 3}}, "stop", ""},
      {{{"prompt", "a"}, {"n", 0}}, "n", "'n' must be between 1 and 128; got 0"},
      {{{"prompt", "a"}, {"n", 129}}, "n", ""},
      {{{"prompt", "a"}, {"n", 1.5}}, "n", ""},
      {{{"prompt", "a"}, {"best_of", 0}}, "best_of", ""},
      {{{"prompt", "a"}, {"n", 3}, {"best_of", 2}}, "best_of", "'best_of' must be at least 'n'"},
      {{{"prompt", "a"}, {"best_of", 2}, {"stream", true}},
       "best_of",
       "'best_of' > 'n' cannot be streamed"},
      {{{"prompt", "a"}, {"best_of", 2}, {"use_beam_search", true}}, "best_of", ""},
      {{{"prompt", "a"}, {"use_beam_search", true}, {"stream", true}},
       "stream",
       "beam search answers once, with every beam: set 'stream' false"},
      {{{"prompt", "a"}, {"use_beam_search", true}, {"logprobs", 2}},
       "logprobs",
       "'logprobs' is not supported with use_beam_search"},
      {{{"prompt", "a"}, {"use_beam_search", 1}}, "use_beam_search", ""},
      {{{"prompt", "a"}, {"echo", true}, {"logprobs", 1}, {"stream", true}},
       "echo",
       "'echo' with 'logprobs' cannot be streamed: set 'stream' false"},
      {{{"prompt", "a"}, {"suffix", "z"}}, "suffix", ""},
      {{{"prompt", "a"}, {"presence_penalty", 2.5}}, "presence_penalty", ""},
      {{{"prompt", "a"}, {"frequency_penalty", -3}}, "frequency_penalty", ""},
      {{{"prompt", "a"}, {"frequency_penalty", "much"}}, "frequency_penalty", ""},
      {{{"prompt", "a"}, {"logit_bias", {{"5", 101}}}}, "logit_bias", ""},
      {{{"prompt", "a"}, {"logit_bias", {{"5", "up"}}}}, "logit_bias", ""},
      {{{"prompt", "a"}, {"logit_bias", {{"five", 1}}}},
       "logit_bias",
       "'logit_bias' keys must be token ids, got 'five'"},
      {{{"prompt", "a"}, {"logit_bias", {{"-3", 1}}}}, "logit_bias", ""},
      {{{"prompt", "a"}, {"logit_bias", {{"3x", 1}}}}, "logit_bias", ""},
      {{{"prompt", "a"}, {"logit_bias", {1, 2}}}, "logit_bias", "'logit_bias' must be an object"},
      {{{"prompt", "a"}, {"logprobs", 50}}, "logprobs", ""},
      {{{"prompt", "a"}, {"logprobs", true}}, "logprobs", ""},
      {{{"prompt", "a"}, {"stream_options", {{"include_usage", true}}}},
       "stream_options",
       "'stream_options' is only allowed when 'stream' is true"},
      {{{"prompt", "a"}, {"stream", true}, {"stream_options", {{"include_usage", 1}}}},
       "stream_options.include_usage",
       ""},
      {{{"prompt", "a"}, {"seed", "x"}}, "seed", ""},
  };
  for (const Case& c : cases) {
    const ApiError error = completion_error(c.body);
    EXPECT_EQ(error.http_status, 400) << c.body.dump();
    EXPECT_EQ(error.param, c.param) << c.body.dump();
    if (!c.message.empty()) {
      EXPECT_EQ(error.message, c.message) << c.body.dump();
    }
  }
  // Zero penalties are what clients send by default: accepted.
  OpenAiRequest request;
  EXPECT_FALSE(completion({{"prompt", "a"},
                           {"presence_penalty", 0},
                           {"frequency_penalty", 0.0},
                           {"logit_bias", OrderedJson::object()}},
                          &request));
  // Others, within OpenAI's [-2, 2], reach the Executor's request.
  EXPECT_FALSE(completion(
      {{"prompt", "a"}, {"presence_penalty", 0.5}, {"frequency_penalty", -1.25}}, &request));
  EXPECT_EQ(request.generation.request.sampling.presence_penalty, 0.5f);
  EXPECT_EQ(request.generation.request.sampling.frequency_penalty, -1.25f);
  // A logit bias reaches it as token id -> bias.
  EXPECT_FALSE(completion({{"prompt", "a"}, {"logit_bias", {{"5", 10}, {"17", -100}, {"0", 0.5}}}},
                          &request));
  EXPECT_EQ(request.generation.request.logit_bias,
            (std::map<int32_t, float>{{0, 0.5f}, {5, 10.0f}, {17, -100.0f}}));
}

TEST_F(OpenAiParsing, ChecksTheModelAndTheLengths) {
  ApiError error = completion_error({{"model", "gpt-4"}, {"prompt", "a"}});
  EXPECT_EQ(error.http_status, 404);
  EXPECT_EQ(error.code, "model_not_found");

  const std::vector<int32_t> long_prompt(test::FakeExecutor::kMaxInputLen + 1, 10);
  error = completion_error({{"prompt", long_prompt}});
  EXPECT_EQ(error.param, "prompt");
  EXPECT_EQ(error.code, "context_length_exceeded");
  EXPECT_EQ(error.message,
            "the prompt has 65 tokens, more than this model's maximum input length "
            "of 64 tokens");

  const std::vector<int32_t> prompt(60, 10);
  OpenAiRequest request;
  EXPECT_FALSE(completion({{"prompt", prompt}, {"max_tokens", 68}}, &request));  // 60 + 68 = 128
  error = completion_error({{"prompt", prompt}, {"max_tokens", 69}});
  EXPECT_EQ(error.param, "max_tokens");
  EXPECT_EQ(error.message,
            "'max_tokens' is 69, but the prompt's 60 tokens leave room for at most 68 within this "
            "model's maximum sequence length of 128 tokens");

  // vLLM's min_tokens: at most what the request may generate (max_tokens, or what fits).
  ASSERT_FALSE(completion({{"prompt", "a"}, {"max_tokens", 8}, {"min_tokens", 8}}, &request));
  EXPECT_EQ(request.generation.request.min_new_tokens, 8);
  error = completion_error({{"prompt", "a"}, {"max_tokens", 8}, {"min_tokens", 9}});
  EXPECT_EQ(error.param, "min_tokens");
  EXPECT_EQ(error.message, "'min_tokens' is 9, more than the 8 tokens this request may generate");
  EXPECT_EQ(completion_error({{"prompt", "a"}, {"min_tokens", -1}}).param, "min_tokens");
  ASSERT_FALSE(chat({{"messages", user_messages()}, {"min_tokens", 30}}, &request));
  EXPECT_EQ(request.generation.request.min_new_tokens, 30);
}

TEST_F(OpenAiParsing, ChatRendersTheTemplate) {
  OpenAiRequest request;
  const OrderedJson messages =
      OrderedJson::array({{{"role", "system"}, {"content", "S"}},
                          {{"role", "user"}, {"content", "Hi"}},
                          {{"role", "assistant"}, {"content", "Yo"}},
                          {{"role", "user"},
                           {"content", OrderedJson::array({{{"type", "text"}, {"text", "A"}},
                                                           {{"type", "text"}, {"text", "B"}}})}}});
  const auto error = chat({{"model", "tiny"}, {"messages", messages}}, &request);
  ASSERT_FALSE(error) << error->message;
  EXPECT_TRUE(request.chat);
  const std::string prompt =
      "<s>system\nS</s>\n<s>user\nHi</s>\n<s>assistant\nYo</s>\n<s>user\nAB</s>\n<s>assistant\n";
  EXPECT_EQ(request.generation.request.input_ids, model_->tokenizer.encode(prompt, false));
  // No max_tokens: as many as the engine allows.
  EXPECT_EQ(request.generation.request.max_new_tokens,
            128 - int64_t(request.generation.request.input_ids.size()));

  ASSERT_FALSE(chat({{"messages", user_messages()},
                     {"max_completion_tokens", 7},
                     {"logprobs", true},
                     {"top_logprobs", 0}},
                    &request));
  EXPECT_EQ(request.generation.request.max_new_tokens, 7);
  EXPECT_TRUE(request.log_probs);
  ASSERT_FALSE(chat({{"messages", user_messages()}, {"max_tokens", 9}}, &request));
  EXPECT_EQ(request.generation.request.max_new_tokens, 9);
  // A tool result and an assistant turn without content are valid messages.
  ASSERT_FALSE(chat({{"messages", OrderedJson::array({{{"role", "user"}, {"content", "x"}},
                                                      {{"role", "assistant"}, {"content", nullptr}},
                                                      {{"role", "tool"}, {"content", "42"}}})}},
                    &request));
}

TEST_F(OpenAiParsing, ChatRefusesBadMessages) {
  struct Case {
    OrderedJson body;
    std::string param;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{{"model", "tiny"}}, "messages", "'messages' is required"},
      {{{"messages", OrderedJson::array()}}, "messages", ""},
      {{{"messages", "hi"}}, "messages", ""},
      {{{"messages", OrderedJson::array({"hi"})}}, "messages[0]", ""},
      {{{"messages", OrderedJson::array({{{"content", "hi"}}})}}, "messages[0].role", ""},
      {{{"messages", OrderedJson::array({{{"role", "wizard"}, {"content", "hi"}}})}},
       "messages[0].role",
       "unknown role 'wizard' (system, user, assistant or tool)"},
      {{{"messages", OrderedJson::array({{{"role", "user"}}})}}, "messages[0].content", ""},
      {{{"messages", OrderedJson::array({{{"role", "user"}, {"content", 5}}})}},
       "messages[0].content",
       ""},
      {{{"messages",
         OrderedJson::array(
             {{{"role", "user"},
               {"content", OrderedJson::array({{{"type", "image_url"}, {"image_url", "x"}}})}}})}},
       "messages[0].content",
       "content parts of type 'image_url' are not supported (text only)"},
      {{{"messages", user_messages()}, {"tools", OrderedJson::array({{{"type", "function"}}})}},
       "tools",
       "tool calling is not supported"},
      {{{"messages", user_messages()}, {"tool_choice", "auto"}}, "tool_choice", ""},
      {{{"messages", user_messages()}, {"response_format", {{"type", "json_object"}}}},
       "response_format",
       ""},
      {{{"messages", user_messages()}, {"top_logprobs", 2}}, "top_logprobs", ""},
      {{{"messages", user_messages()}, {"logprobs", 1}}, "logprobs", ""},
      {{{"messages", user_messages()}, {"n", 200}}, "n", ""},
      {{{"messages", user_messages()}, {"max_tokens", 200}}, "max_tokens", ""},
  };
  for (const Case& c : cases) {
    const ApiError error = chat_error(c.body);
    EXPECT_EQ(error.http_status, 400) << c.body.dump();
    EXPECT_EQ(error.param, c.param) << c.body.dump();
    if (!c.message.empty()) {
      EXPECT_EQ(error.message, c.message) << c.body.dump();
    }
  }
}

TEST_F(OpenAiParsing, ChatTemplateErrorsAreBadRequests) {
  auto model = load_served_model(
      test::served_model_dir(R"({"chat_template": "{{ raise_exception('no system role') }}"})"),
      "tiny", 64, 128);
  ASSERT_TRUE(model.is_ok());
  OpenAiRequest request;
  const auto error =
      parse_chat_request(OrderedJson{{"messages", user_messages()}}.dump(), *model, 0, &request);
  ASSERT_TRUE(error);
  EXPECT_EQ(error->param, "messages");
  EXPECT_NE(error->message.find("no system role"), std::string::npos) << error->message;
}

TEST(ServedModel, ReadsTemplateListsAndTokenObjects) {
  OrderedJson config;
  config["bos_token"] = {{"content", "<s>"}, {"lstrip", false}};
  config["eos_token"] = "</s>";
  config["chat_template"] =
      OrderedJson::array({{{"name", "tool_use"}, {"template", "TOOLS"}},
                          {{"name", "default"}, {"template", "DEFAULT{{ bos_token }}"}}});
  auto model = load_served_model(test::served_model_dir(config.dump()), "m", 64, 128);
  ASSERT_TRUE(model.is_ok()) << model.status().message();
  EXPECT_EQ(model->bos_token, "<s>");
  EXPECT_EQ(model->eos_token, "</s>");
  EXPECT_EQ(model->render_chat(OrderedJson::array()).value(), "DEFAULT<s>");

  // No chat template: chat is refused with a message that says what to do.
  auto plain = load_served_model(test::served_model_dir("{}"), "m", 64, 128);
  ASSERT_TRUE(plain.is_ok());
  EXPECT_FALSE(plain->chat_template.has_value());
  EXPECT_NE(plain->render_chat(OrderedJson::array()).status().message().find("no chat template"),
            std::string::npos);

  // A template Kite cannot parse: completions still work, chat says why.
  auto broken =
      load_served_model(test::served_model_dir(R"({"chat_template": "{% for %}"})"), "m", 64, 128);
  ASSERT_TRUE(broken.is_ok());
  EXPECT_FALSE(broken->chat_template_error.empty());
  EXPECT_FALSE(broken->render_chat(OrderedJson::array()).is_ok());

  EXPECT_FALSE(load_served_model(test::served_model_dir("{not json"), "m", 64, 128).is_ok());
}

// ---- responses and server-sent events ----

TEST(OpenAiFormatter, CompletionResponseAndChunks) {
  OpenAiRequest request;
  request.stream = true;
  request.include_usage = true;
  OpenAiFormatter formatter(request, "cmpl-1", "tiny", 1700000000);
  EXPECT_EQ(formatter.stream_start(), "");  // completions have no role chunk
  GenerationUpdate update;
  update.text = "Hi";
  EXPECT_EQ(formatter.stream_update(update),
            "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1700000000,"
            "\"model\":\"tiny\",\"choices\":[{\"index\":0,\"text\":\"Hi\",\"logprobs\":null,"
            "\"finish_reason\":null}],\"usage\":null}\n\n");
  EXPECT_EQ(formatter.stream_update(GenerationUpdate{}), "");  // nothing new: no event
  EXPECT_EQ(formatter.stream_choice_end("length"),
            "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1700000000,"
            "\"model\":\"tiny\",\"choices\":[{\"index\":0,\"text\":\"\",\"logprobs\":null,"
            "\"finish_reason\":\"length\"}],\"usage\":null}\n\n");
  EXPECT_EQ(formatter.stream_done(3, 2),
            "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1700000000,"
            "\"model\":\"tiny\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,"
            "\"completion_tokens\":2,\"total_tokens\":5}}\n\n"
            "data: [DONE]\n\n");

  request.stream = false;
  request.include_usage = false;
  request.log_probs = true;
  OpenAiFormatter whole(request, "cmpl-2", "tiny", 1700000000);
  GenerationOutput output{.text = "ab",
                          .log_probs = {{5, "a", -0.5f, 0}, {6, "b", -0.25f, 1}},
                          .finish_reason = "stop",
                          .prompt_tokens = 4,
                          .completion_tokens = 2};
  EXPECT_EQ(dump_json(whole.response({output})),
            "{\"id\":\"cmpl-2\",\"object\":\"text_completion\",\"created\":1700000000,"
            "\"model\":\"tiny\",\"choices\":[{\"index\":0,\"text\":\"ab\",\"logprobs\":{"
            "\"tokens\":[\"a\",\"b\"],\"token_logprobs\":[-0.5,-0.25],\"top_logprobs\":null,"
            "\"text_offset\":[0,1]},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":4,"
            "\"completion_tokens\":2,\"total_tokens\":6}}");
}

// echo with logprobs: the prompt's tokens lead the log-probs, the first with nulls, and the
// output's offsets follow the echoed prompt.
TEST(OpenAiFormatter, CompletionLogProbsWithThePrompt) {
  OpenAiRequest request;
  request.log_probs = true;
  request.top_log_probs = 1;
  request.echo_text = "Hé!";
  request.prompt_log_probs = true;
  OpenAiFormatter formatter(request, "cmpl-3", "tiny", 1700000000);
  GenerationOutput output{
      .text = "ab",
      .log_probs = {{5, "a", -0.5f, 0, {{"a", -0.5f}}}, {6, "b", -0.25f, 1, {{"b", -0.25f}}}},
      .prompt_log_probs = {{1, "H", 0.0f, 0, {}},
                           {2, "é", -2.0f, 1, {{"e", -1.0f}}},
                           {3, "!", -3.0f, 2, {{"?", -0.5f}}}},
      .finish_reason = "length",
      .prompt_tokens = 3,
      .completion_tokens = 2};
  EXPECT_EQ(dump_json(formatter.response({output}).at("choices")[0].at("logprobs")),
            "{\"tokens\":[\"H\",\"é\",\"!\",\"a\",\"b\"],\"token_logprobs\":[null,-2.0,-3.0,-0.5,"
            "-0.25],\"top_logprobs\":[null,{\"e\":-1.0},{\"?\":-0.5},{\"a\":-0.5},{\"b\":-0.25}],"
            "\"text_offset\":[0,1,2,3,4]}");

  // vLLM's prompt_logprobs (1): the prompt token with its rank, and the most likely one.
  OpenAiRequest vllm;
  vllm.vllm_prompt_log_probs = 1;
  output.prompt_log_probs[1].rank = 2;
  output.prompt_log_probs[1].top_ids = {7};
  output.prompt_log_probs[2].rank = 1;
  output.prompt_log_probs[2].top_ids = {3};
  const OrderedJson choice =
      OpenAiFormatter(vllm, "cmpl-4", "tiny", 1700000000).response({output}).at("choices")[0];
  EXPECT_TRUE(choice.at("logprobs").is_null());
  EXPECT_EQ(dump_json(choice.at("prompt_logprobs")),
            "[null,{\"2\":{\"logprob\":-2.0,\"rank\":2,\"decoded_token\":\"é\"},\"7\":{"
            "\"logprob\":-1.0,\"rank\":1,\"decoded_token\":\"e\"}},{\"3\":{\"logprob\":-3.0,"
            "\"rank\":1,\"decoded_token\":\"!\"}}]");
  vllm.chat = true;
  const OrderedJson chat_body =
      OpenAiFormatter(vllm, "chatcmpl-4", "tiny", 1700000000).response({output});
  EXPECT_EQ(chat_body.at("prompt_logprobs"), choice.at("prompt_logprobs"));
  EXPECT_FALSE(chat_body.at("choices")[0].contains("prompt_logprobs"));
}

TEST(OpenAiFormatter, ChatResponseAndChunks) {
  OpenAiRequest request;
  request.chat = true;
  request.stream = true;
  request.log_probs = true;
  OpenAiFormatter formatter(request, "chatcmpl-1", "tiny", 1);
  EXPECT_EQ(formatter.stream_start(),
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,"
            "\"model\":\"tiny\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
            "\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n");
  GenerationUpdate update;
  update.text = "é";
  update.log_probs = {{7, "é", -1.0f, 0}};
  EXPECT_EQ(formatter.stream_update(update),
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,"
            "\"model\":\"tiny\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"é\"},"
            "\"logprobs\":{\"content\":[{\"token\":\"é\",\"logprob\":-1.0,\"bytes\":[195,169],"
            "\"top_logprobs\":[]}]},\"finish_reason\":null}]}\n\n");
  EXPECT_EQ(formatter.stream_choice_end("stop") + formatter.stream_done(1, 1),
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,"
            "\"model\":\"tiny\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,"
            "\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n");
  EXPECT_EQ(
      formatter.stream_error(ApiError{
          .http_status = 503, .message = "the server is shutting down", .type = "server_error"}),
      "data: {\"error\":{\"message\":\"the server is shutting down\",\"type\":"
      "\"server_error\",\"param\":null,\"code\":null}}\n\ndata: [DONE]\n\n");

  request.stream = false;
  request.log_probs = false;
  OpenAiFormatter whole(request, "chatcmpl-2", "tiny", 1);
  EXPECT_EQ(dump_json(whole.response({GenerationOutput{.text = "Hello",
                                                       .finish_reason = "length",
                                                       .prompt_tokens = 1,
                                                       .completion_tokens = 1}})),
            "{\"id\":\"chatcmpl-2\",\"object\":\"chat.completion\",\"created\":1,\"model\":"
            "\"tiny\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":"
            "\"Hello\"},\"logprobs\":null,\"finish_reason\":\"length\"}],\"usage\":{"
            "\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}");
}

// n = 2: a choice per output, usage counting the prompt once; streamed, each choice's role chunk
// first, updates and ends by index, one usage chunk and [DONE] at the end.
TEST(OpenAiFormatter, SeveralChoices) {
  OpenAiRequest request;
  request.chat = true;
  request.n = 2;
  OpenAiFormatter whole(request, "chatcmpl-3", "tiny", 1);
  const OrderedJson body = whole.response(
      {GenerationOutput{
           .text = "A", .finish_reason = "stop", .prompt_tokens = 5, .completion_tokens = 2},
       GenerationOutput{
           .text = "B", .finish_reason = "length", .prompt_tokens = 5, .completion_tokens = 4}});
  ASSERT_EQ(body["choices"].size(), 2u);
  EXPECT_EQ(body["choices"][1]["index"], 1);
  EXPECT_EQ(body["choices"][1]["message"]["content"], "B");
  EXPECT_EQ(body["choices"][1]["finish_reason"], "length");
  EXPECT_EQ(dump_json(body["usage"]),
            "{\"prompt_tokens\":5,\"completion_tokens\":6,\"total_tokens\":11}");

  request.stream = true;
  request.include_usage = true;
  OpenAiFormatter streamed(request, "chatcmpl-4", "tiny", 1);
  const std::string start = streamed.stream_start();
  EXPECT_NE(start.find("{\"index\":0,\"delta\":{\"role\":\"assistant\""), std::string::npos);
  EXPECT_NE(start.find("{\"index\":1,\"delta\":{\"role\":\"assistant\""), std::string::npos);
  GenerationUpdate update;
  update.text = "x";
  EXPECT_NE(streamed.stream_update(update, 1).find("{\"index\":1,\"delta\":{\"content\":\"x\"}"),
            std::string::npos);
  EXPECT_NE(streamed.stream_choice_end("stop", 1).find("{\"index\":1,\"delta\":{},"),
            std::string::npos);
  const std::string done = streamed.stream_done(5, 6);
  EXPECT_NE(done.find("\"completion_tokens\":6"), std::string::npos);
  EXPECT_TRUE(done.ends_with("data: [DONE]\n\n"));
}

TEST(RequestFields, ErrorBodyAndEvents) {
  EXPECT_EQ(openai_error_json(ApiError{.message = "bad", .param = "n"}).dump(),
            "{\"error\":{\"message\":\"bad\",\"type\":\"invalid_request_error\",\"param\":\"n\","
            "\"code\":null}}");
  EXPECT_EQ(sse_event("[DONE]"), "data: [DONE]\n\n");
  // A token's own text can end inside a character: replaced, never invalid JSON.
  EXPECT_EQ(dump_json(OrderedJson{{"t", "a\xe6"}}), "{\"t\":\"a\xef\xbf\xbd\"}");
}

// ---- KServe / Triton ----

class KServeParsing : public OpenAiParsing {
 protected:
  std::optional<ApiError> parse(const OrderedJson& body, KServeRequest* request,
                                bool stream = false) {
    return parse_kserve_request(body.dump(), *model_, stream, request);
  }
};

TEST_F(KServeParsing, TritonFields) {
  KServeRequest request;
  ASSERT_FALSE(
      parse({{"text_input", "What is"}, {"max_tokens", 20}, {"bad_words", ""}, {"stop_words", ""}},
            &request));
  EXPECT_EQ(request.text_input, "What is");
  EXPECT_EQ(request.generation.request.input_ids, model_->tokenizer.encode("What is"));
  EXPECT_EQ(request.generation.request.max_new_tokens, 20);
  EXPECT_EQ(request.generation.request.min_new_tokens, 0);
  EXPECT_TRUE(request.generation.stop_texts.empty());
  EXPECT_TRUE(request.generation.request.bad_words.empty());
  // No temperature, top_k or top_p: greedy, as TensorRT-LLM.
  EXPECT_FLOAT_EQ(request.generation.request.sampling.temperature, 0.0f);
  EXPECT_FALSE(request.stream);
  EXPECT_FALSE(request.exclude_input_in_output);

  ASSERT_FALSE(parse({{"text_input", "a"},
                      {"max_tokens", 3},
                      {"stop_words", {"x", "yz"}},
                      {"top_k", 5},
                      {"top_p", 0},
                      {"random_seed", 9},
                      {"min_tokens", 2},
                      {"end_id", 7},
                      {"return_log_probs", true},
                      {"exclude_input_in_output", true}},
                     &request));
  EXPECT_EQ(request.generation.stop_texts, (std::vector<std::string>{"x", "yz"}));
  EXPECT_EQ(request.generation.request.min_new_tokens, 2);
  EXPECT_TRUE(request.generation.include_stop_text);
  EXPECT_FLOAT_EQ(request.generation.request.sampling.temperature, 1.0f);  // sampling asked for
  EXPECT_EQ(request.generation.request.sampling.top_k, 5);
  EXPECT_FLOAT_EQ(request.generation.request.sampling.top_p, 1.0f);  // 0: off
  EXPECT_EQ(request.generation.request.sampling.seed, 9u);
  EXPECT_EQ(request.generation.request.end_ids, std::vector<int32_t>{7});
  EXPECT_TRUE(request.return_log_probs);
  EXPECT_TRUE(request.exclude_input_in_output);

  // Bad words: a string or a list of them, each tokenized alone without special tokens; "" is
  // none.
  for (const OrderedJson& words : {OrderedJson("darn"), OrderedJson::array({"", "darn", "x y"})}) {
    KServeRequest with_bad_words;
    ASSERT_FALSE(parse({{"text_input", "a"}, {"bad_words", words}}, &with_bad_words));
    std::vector<std::vector<int32_t>> expected = {model_->tokenizer.encode("darn", false)};
    if (words.is_array()) expected.push_back(model_->tokenizer.encode("x y", false));
    EXPECT_EQ(with_bad_words.generation.request.bad_words, expected) << words.dump();
  }

  // Embedding bias: each word's weight on every token of the word tokenized alone, summed where
  // words share a token.
  KServeRequest biased;
  ASSERT_FALSE(parse({{"text_input", "a"},
                      {"embedding_bias_words", {"darn", "x y", "x"}},
                      {"embedding_bias_weights", {2.5, -1, 0.25}}},
                     &biased));
  std::map<int32_t, float> expected_bias;
  for (const auto& [word, weight] :
       std::vector<std::pair<std::string, float>>{{"darn", 2.5f}, {"x y", -1.0f}, {"x", 0.25f}}) {
    for (const int32_t id : model_->tokenizer.encode(word, false)) expected_bias[id] += weight;
  }
  EXPECT_FALSE(expected_bias.empty());
  EXPECT_EQ(biased.generation.request.logit_bias, expected_bias);

  // Beam search: its stop words become token sequences for the Executor.
  KServeRequest beams;
  ASSERT_FALSE(parse({{"text_input", "a"},
                      {"beam_width", 4},
                      {"length_penalty", 0.7},
                      {"early_stopping", true},
                      {"stop_words", {"x y"}}},
                     &beams));
  EXPECT_EQ(beams.generation.request.sampling.beam_width, 4);
  EXPECT_FLOAT_EQ(beams.generation.request.sampling.length_penalty, 0.7f);
  EXPECT_TRUE(beams.generation.request.sampling.early_stopping);
  EXPECT_TRUE(beams.generation.stop_texts.empty());
  EXPECT_EQ(beams.generation.request.stop_words,
            (std::vector<std::vector<int32_t>>{model_->tokenizer.encode("x y", false)}));
  KServeRequest streamed_beams;
  const auto refused = parse({{"text_input", "a"}, {"beam_width", 2}}, &streamed_beams, true);
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->param, "beam_width");

  ASSERT_FALSE(parse({{"text_input", "a"}}, &request, true));
  EXPECT_TRUE(request.stream);  // generate_stream streams unless told not to
  ASSERT_FALSE(parse({{"text_input", "a"}, {"stream", false}}, &request, true));
  EXPECT_FALSE(request.stream);
}

TEST_F(KServeParsing, RefusesBadRequests) {
  KServeRequest request;
  struct Case {
    OrderedJson body;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{{"max_tokens", 3}}, "'text_input' is required"},
      {{{"text_input", 3}}, "'text_input' must be a string, not a number"},
      {{{"text_input", "a"}, {"max_tokens", "3"}}, "'max_tokens' must be an integer, not a string"},
      {{{"text_input", "a"}, {"bad_words", 5}},
       "'bad_words' must be a string or an array of strings, not a number"},
      {{{"text_input", "a"}, {"stop_words", 5}}, ""},
      {{{"text_input", "a"}, {"embedding_bias_words", {"x", "y"}}, {"embedding_bias_weights", 1}},
       "'embedding_bias_words' (2) and 'embedding_bias_weights' (1) must have as many entries "
       "(empty words are not allowed)"},
      {{{"text_input", "a"}, {"embedding_bias_words", "x"}, {"embedding_bias_weights", {"1"}}},
       "'embedding_bias_weights' must be a number or an array of numbers; it holds a string"},
      {{{"text_input", "a"}, {"beam_width", 0}}, ""},
      {{{"text_input", "a"}, {"beam_width", 2}, {"return_log_probs", true}},
       "return_log_probs is not supported with beam_width > 1"},
      {{{"text_input", "a"}, {"stream", true}}, "\"stream\": true needs /generate_stream"},
      {{{"text_input", ""}}, "'text_input' is empty"},
      {{{"text_input", "a"}, {"max_tokens", 500}}, ""},
      {{{"text_input", "a"}, {"max_tokens", 4}, {"min_tokens", 5}},
       "min_tokens (5) must not exceed max_tokens (4)"},
      {{{"text_input", "a"}, {"max_tokens", 4}, {"min_length", 5}},
       "min_length (5) must not exceed max_tokens (4)"},
      {{{"text_input", std::string(300, 'x')}}, ""},
  };
  for (const Case& c : cases) {
    request = {};
    const auto error = parse(c.body, &request);
    ASSERT_TRUE(error) << c.body.dump();
    EXPECT_EQ(error->http_status, 400);
    if (!c.message.empty()) {
      EXPECT_EQ(error->message, c.message) << c.body.dump();
    }
  }
  EXPECT_EQ(kserve_error_json("bad").dump(), "{\"error\":\"bad\"}");
}

TEST_F(KServeParsing, Output) {
  EXPECT_EQ(kserve_output_json(*model_, "text", nullptr).dump(),
            "{\"model_name\":\"tiny\",\"model_version\":\"1\",\"text_output\":\"text\"}");
  const std::vector<TokenLogProb> log_probs = {{1, "a", -0.5f, 0}, {2, "b", -0.25f, 1}};
  EXPECT_EQ(kserve_output_json(*model_, "ab", &log_probs).dump(),
            "{\"model_name\":\"tiny\",\"model_version\":\"1\",\"text_output\":\"ab\","
            "\"output_log_probs\":[-0.5,-0.25],\"cum_log_probs\":-0.75}");
  const std::vector<std::string> beams = {"best", "next"};
  EXPECT_EQ(
      kserve_output_json(*model_, "best", nullptr, &beams).dump(),
      "{\"model_name\":\"tiny\",\"model_version\":\"1\",\"text_output\":[\"best\",\"next\"]}");
}

}  // namespace
}  // namespace kite::server
