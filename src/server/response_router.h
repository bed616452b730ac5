// Connects the HTTP handler threads to the Executor: one thread awaits every request's responses
// and routes each, by request id, to the queue of the handler that enqueued it, which waits on its
// own condition variable. A handler that goes away (its client disconnected) cancels its request,
// so the request's KV cache blocks are freed.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "kite/executor.h"

namespace kite::server {

using Clock = std::chrono::steady_clock;

// A response and when the router received it (for time-to-first-token and inter-token latency).
struct RoutedResponse {
  executor::Response response;
  Clock::time_point received;
};

class ResponseRouter;

// One enqueued request's responses. Destroying the stream before its final response cancels the
// request.
class RequestStream {
 public:
  ~RequestStream();
  RequestStream(const RequestStream&) = delete;
  RequestStream& operator=(const RequestStream&) = delete;

  executor::RequestId id() const { return id_; }
  // The responses that arrived, waiting up to `timeout` for the first (empty when none came).
  std::vector<RoutedResponse> wait(std::chrono::milliseconds timeout);
  // Stops the request (Executor::cancel_request); no-op once its final response came.
  void cancel();

 private:
  friend class ResponseRouter;
  struct Channel {
    std::mutex mutex;
    std::condition_variable ready;
    std::deque<RoutedResponse> responses;
    bool final_received = false;  // routed, maybe not yet taken by wait()
  };
  RequestStream(ResponseRouter& router, executor::RequestId id, std::shared_ptr<Channel> channel)
      : router_(router), id_(id), channel_(std::move(channel)) {}

  ResponseRouter& router_;
  executor::RequestId id_;
  std::shared_ptr<Channel> channel_;
};

class ResponseRouter {
 public:
  // Starts the routing thread. `executor` must outlive the router, and the router its streams.
  explicit ResponseRouter(executor::Executor& executor);
  ~ResponseRouter();

  // Enqueues `request`; its responses go to the returned stream. After close(), returns nullptr
  // without enqueueing.
  std::unique_ptr<RequestStream> submit(const executor::Request& request);
  // Refuses new requests, cancels the open ones and ends their streams with an error response
  // saying `reason`.
  void close(const std::string& reason);
  // Streams not yet destroyed.
  size_t open_streams() const;

 private:
  friend class RequestStream;
  void route_responses();
  void remove(executor::RequestId id, bool cancel);

  executor::Executor& executor_;
  mutable std::mutex mutex_;
  std::unordered_map<executor::RequestId, std::shared_ptr<RequestStream::Channel>> channels_;
  bool closed_ = false;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace kite::server
