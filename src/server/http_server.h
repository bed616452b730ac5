// `kite serve`'s HTTP server: the OpenAI API (/v1/completions, /v1/chat/completions, /v1/models),
// the KServe v2 / Triton generate API (/v2/models/{name}/generate[_stream], /v2/health/*) and
// Prometheus /metrics, over one Executor. Each connection is served by a thread of a pool; a
// generation request's thread waits on its own queue, which the ResponseRouter fills.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/status.h"
#include "kite/executor.h"
#include "server/served_model.h"

namespace kite::server {

struct ServerOptions {
  std::string host = "127.0.0.1";  // all interfaces only when asked ("0.0.0.0")
  int port = 8000;                 // 0: any free port (bind() says which)
  std::string api_key;             // non-empty: "Authorization: Bearer <key>" on every route but
                                   // the health checks
  size_t max_body_bytes = size_t(8) << 20;  // larger request bodies get 413
  size_t http_threads = 256;                // connections served at once; more wait their turn
};

class HttpServer {
 public:
  // `executor` must outlive the server.
  HttpServer(executor::Executor& executor, ServedModel model, ServerOptions options);
  // Stops the server; a thread in serve() must have returned before it is destroyed.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds the listening socket; returns the port.
  Result<int> bind();
  // Serves connections until stop(); call after bind().
  void serve();
  // Thread-safe and idempotent: refuses new requests, ends the open ones (streams get an error
  // event), and makes serve() return once every connection thread is done.
  void stop();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kite::server
