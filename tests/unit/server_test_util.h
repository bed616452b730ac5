// The served model of the server's tests: the tiny fixture tokenizer (byte-level BPE) with a
// ChatML chat template, limits of FakeExecutor (64 input tokens, 128 in all); and a server of it
// over a FakeExecutor on a free port.
#pragma once

#include <gtest/gtest.h>
#include <httplib.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include "core/file.h"
#include "fake_executor.h"
#include "server/http_server.h"
#include "server/served_model.h"
#include "test_util.h"

namespace kite::test {

inline constexpr const char* kChatTemplate =
    "{% for message in messages %}{{ bos_token + message['role'] + '\\n' + message['content'] + "
    "eos_token + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ bos_token + 'assistant\\n' "
    "}}{% endif %}";

// A folder with tokenizer.json and a tokenizer_config.json holding `config_json`.
inline std::string served_model_dir(const std::string& config_json) {
  const std::string directory = temp_dir();
  std::filesystem::copy_file(source_dir() + "/tests/fixtures/tiny_llama/tokenizer.json",
                             directory + "/tokenizer.json");
  EXPECT_TRUE(write_file(directory + "/tokenizer_config.json", config_json).is_ok());
  return directory;
}

inline std::string default_tokenizer_config() {
  nlohmann::json config = {{"bos_token", "<s>"}, {"eos_token", "</s>"}};
  config["chat_template"] = kChatTemplate;
  return config.dump();
}

inline server::ServedModel test_served_model(const std::string& name = "tiny") {
  auto model = server::load_served_model(served_model_dir(default_tokenizer_config()), name,
                                         FakeExecutor::kMaxInputLen, FakeExecutor::kMaxSeqLen);
  EXPECT_TRUE(model.is_ok()) << model.status().message();
  return std::move(*model);
}

// A server on a free port over a FakeExecutor, serving until destroyed.
class TestServer {
 public:
  explicit TestServer(std::vector<int32_t> script, server::ServerOptions options = {},
                      std::chrono::milliseconds step = std::chrono::milliseconds(1))
      : executor(std::move(script), step),
        server(executor, test_served_model(), any_port(std::move(options))) {
    Result<int> bound = server.bind();
    EXPECT_TRUE(bound.is_ok()) << bound.status().message();
    port = bound.is_ok() ? *bound : 0;
    thread = std::thread([this] { server.serve(); });
  }
  ~TestServer() { shutdown(); }

  // Stops the server and waits for serve() to return.
  void shutdown() {
    if (!thread.joinable()) return;
    server.stop();
    thread.join();
  }

  httplib::Client client() const {
    httplib::Client client("127.0.0.1", port);
    client.set_read_timeout(20, 0);
    return client;
  }
  httplib::Result post(const std::string& path, const nlohmann::json& body,
                       const httplib::Headers& headers = {}) const {
    return client().Post(path.c_str(), headers, body.dump(), "application/json");
  }
  // The parsed body of a 200 answer to `body`; null, and a test failure that names the path and
  // the answer, otherwise.
  nlohmann::json post_ok(const std::string& path, const nlohmann::json& body) const {
    const httplib::Result response = post(path, body);
    if (!response) {
      ADD_FAILURE() << path << ": no answer";
      return nullptr;
    }
    if (response->status != 200) {
      ADD_FAILURE() << path << ": " << response->status << " " << response->body;
      return nullptr;
    }
    return nlohmann::json::parse(response->body);
  }

  FakeExecutor executor;
  server::HttpServer server;
  int port = 0;
  std::thread thread;

 private:
  static server::ServerOptions any_port(server::ServerOptions options) {
    options.port = 0;
    return options;
  }
};

}  // namespace kite::test
