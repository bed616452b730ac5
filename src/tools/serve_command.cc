// `kite serve`: an HTTP server over an engine, speaking the OpenAI API, the KServe v2 / Triton
// generate API and Prometheus metrics (docs/serving.md). Prints one line with the URL once it
// accepts connections; SIGINT or SIGTERM stops it (open requests end with an error).
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "core/file.h"
#include "kite/executor.h"
#include "server/http_server.h"
#include "server/served_model.h"
#include "tools/command.h"
#include "tools/model_cache.h"

namespace kite::tools {
namespace {

struct ServeFlags {
  std::string engine_dir;
  ModelEngineRequest model;
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string api_key;
  std::string served_model_name;
  std::string scheduler_policy = "guaranteed_no_evict";
  int64_t max_batch_size = 0;
  int64_t max_num_tokens = 0;
  double kv_cache_free_gpu_mem_fraction = 0.9;
  bool enable_prefix_reuse = true;
  bool enable_chunked_prefill = true;
  size_t max_body_bytes = size_t(8) << 20;
};

// The model's public name: the engine folder's name (with --model, the model folder's or GGUF
// file's name without .gguf) unless --served_model_name says otherwise.
std::string model_name(const ServeFlags& flags) {
  if (!flags.served_model_name.empty()) return flags.served_model_name;
  if (!flags.model.model.empty()) {
    std::filesystem::path path(flags.model.model);
    if (!path.has_filename()) path = path.parent_path();
    return path.extension() == ".gguf" ? path.stem().string() : path.filename().string();
  }
  std::filesystem::path path(flags.engine_dir);
  if (!path.has_filename()) path = path.parent_path();  // "engines/smollm2/"
  return path.filename().string();
}

Status check_flags(const ServeFlags& flags, executor::ExecutorConfig* config) {
  if (flags.port < 0 || flags.port > 65535) {
    return invalid_argument("--port must be between 0 (any free port) and 65535");
  }
  const auto policy = executor::scheduler_policy_from_name(flags.scheduler_policy);
  if (!policy) {
    return invalid_argument("--scheduler_policy must be guaranteed_no_evict or max_utilization");
  }
  config->policy = *policy;
  if (flags.max_batch_size < 0) return invalid_argument("--max_batch_size must be >= 0");
  if (flags.max_num_tokens < 0) return invalid_argument("--max_num_tokens must be >= 0");
  if (!(flags.kv_cache_free_gpu_mem_fraction > 0 && flags.kv_cache_free_gpu_mem_fraction <= 1)) {
    return invalid_argument("--kv_cache_free_gpu_mem_fraction must be in (0, 1]");
  }
  if (flags.max_body_bytes < 1024) return invalid_argument("--max_body_bytes must be >= 1024");
  config->max_batch_size = flags.max_batch_size;
  config->max_num_tokens = flags.max_num_tokens;
  config->kv_cache_free_gpu_mem_fraction = flags.kv_cache_free_gpu_mem_fraction;
  config->enable_prefix_reuse = flags.enable_prefix_reuse;
  config->enable_chunked_prefill = flags.enable_chunked_prefill;
  if (model_name(flags).empty()) return invalid_argument("--served_model_name is empty");
  return Status::ok();
}

Status run(ServeFlags flags) {
  executor::ExecutorConfig config;
  KITE_RETURN_IF_ERROR(check_flags(flags, &config));
  KITE_ASSIGN_OR_RETURN(flags.engine_dir, resolve_engine_dir(flags.engine_dir, flags.model));
  if (!path_exists(flags.engine_dir + "/config.json")) {
    return not_found(flags.engine_dir +
                     "/config.json not found: --engine_dir takes a folder "
                     "written by kite build");
  }
  // SIGINT and SIGTERM are taken by sigwait below, never by a handler: blocked here, before any
  // thread starts, every thread inherits the mask. (One arriving while the engine loads is
  // handled once it has loaded.) A client that goes away must not kill the server with SIGPIPE.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  std::string error;
  std::unique_ptr<executor::Executor> executor =
      executor::Executor::create(flags.engine_dir, config, &error);
  if (!executor)
    return unsupported("cannot start the engine of " + flags.engine_dir + ": " + error);
  KITE_ASSIGN_OR_RETURN(
      server::ServedModel model,
      server::load_served_model(flags.engine_dir, model_name(flags), executor->max_input_len(),
                                executor->max_seq_len()));
  if (!model.chat_template_error.empty()) {
    std::fprintf(stderr, "kite serve: warning: %s; /v1/chat/completions will refuse requests\n",
                 model.chat_template_error.c_str());
  }
  const std::string name = model.name;
  server::ServerOptions options;
  options.host = flags.host;
  options.port = flags.port;
  options.api_key = flags.api_key;
  options.max_body_bytes = flags.max_body_bytes;
  server::HttpServer server(*executor, std::move(model), options);
  KITE_ASSIGN_OR_RETURN(const int port, server.bind());

  std::atomic<bool> stopping = false;
  std::thread serving([&] {
    server.serve();
    // serve() returns on its own only when the listening socket fails: wake the main thread.
    if (!stopping.load()) ::kill(::getpid(), SIGTERM);
  });
  const std::string host =
      flags.host.find(':') != std::string::npos ? "[" + flags.host + "]" : flags.host;
  std::printf("kite serve: serving model \"%s\" at http://%s:%d\n", name.c_str(), host.c_str(),
              port);
  std::fflush(stdout);

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  stopping = true;
  std::fprintf(stderr, "kite serve: %s received, stopping\n",
               signal_number == SIGINT ? "SIGINT" : "SIGTERM");
  server.stop();
  serving.join();
  executor->shutdown();
  return Status::ok();
}

}  // namespace

Command add_serve_command(CLI::App& kite) {
  auto flags = std::make_shared<ServeFlags>();
  CLI::App* app = kite.add_subcommand(
      "serve", "Serve an engine over HTTP: OpenAI API, KServe v2 generate API, Prometheus metrics");
  app->add_option("--engine_dir", flags->engine_dir, "Engine folder (kite build)");
  add_model_options(*app, flags->model);
  app->add_option("--host", flags->host,
                  "Address to listen on (127.0.0.1; 0.0.0.0 for every interface)");
  app->add_option("--port", flags->port, "TCP port (8000; 0 picks a free one)");
  app->add_option("--api_key", flags->api_key,
                  "Require 'Authorization: Bearer KEY' on every route but the health checks")
      ->envname("KITE_API_KEY");
  app->add_option("--served_model_name", flags->served_model_name,
                  "The model's name in the APIs (default: the engine folder's name)");
  app->add_option("--scheduler_policy", flags->scheduler_policy,
                  "guaranteed_no_evict (default) or max_utilization");
  app->add_option("--max_batch_size", flags->max_batch_size,
                  "Requests per step at most (0: the engine's max_batch_size)");
  app->add_option("--max_num_tokens", flags->max_num_tokens,
                  "Tokens per step at most (0: the engine's max_num_tokens)");
  app->add_option("--kv_cache_free_gpu_mem_fraction", flags->kv_cache_free_gpu_mem_fraction,
                  "CUDA engines: share of the free GPU memory the KV cache takes (0.9)");
  app->add_option("--enable_prefix_reuse", flags->enable_prefix_reuse,
                  "Share KV cache blocks between requests with a common prefix (true)");
  app->add_option("--enable_chunked_prefill", flags->enable_chunked_prefill,
                  "Split long prompts over several steps (true)");
  app->add_option("--max_body_bytes", flags->max_body_bytes,
                  "Larger request bodies are refused with 413 (8 MiB)");
  return Command{app, [flags] { return run(*flags); }};
}

}  // namespace kite::tools
