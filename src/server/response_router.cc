// The response routing thread and the per-request queues.
#include "server/response_router.h"

namespace kite::server {
namespace {

// How long the routing thread waits for responses before it checks whether to stop.
constexpr std::chrono::milliseconds kAwaitInterval(50);

}  // namespace

RequestStream::~RequestStream() {
  bool finished;
  {
    std::lock_guard<std::mutex> lock(channel_->mutex);
    finished = channel_->final_received;
  }
  router_.remove(id_, !finished);
}

std::vector<RoutedResponse> RequestStream::wait(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(channel_->mutex);
  channel_->ready.wait_for(lock, timeout, [&] { return !channel_->responses.empty(); });
  std::vector<RoutedResponse> responses(std::make_move_iterator(channel_->responses.begin()),
                                        std::make_move_iterator(channel_->responses.end()));
  channel_->responses.clear();
  return responses;
}

void RequestStream::cancel() {
  {
    std::lock_guard<std::mutex> lock(channel_->mutex);
    if (channel_->final_received) return;
  }
  router_.executor_.cancel_request(id_);
}

ResponseRouter::ResponseRouter(executor::Executor& executor) : executor_(executor) {
  thread_ = std::thread([this] { route_responses(); });
}

ResponseRouter::~ResponseRouter() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  thread_.join();
}

std::unique_ptr<RequestStream> ResponseRouter::submit(const executor::Request& request) {
  // Enqueued and registered under one lock: the routing thread takes it before routing, so the
  // request's first response cannot arrive before its channel exists.
  std::lock_guard<std::mutex> lock(mutex_);
  if (closed_) return nullptr;
  const executor::RequestId id = executor_.enqueue_request(request);
  auto channel = std::make_shared<RequestStream::Channel>();
  channels_[id] = channel;
  return std::unique_ptr<RequestStream>(new RequestStream(*this, id, std::move(channel)));
}

void ResponseRouter::close(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mutex_);
  closed_ = true;
  for (const auto& [id, channel] : channels_) {
    std::lock_guard<std::mutex> channel_lock(channel->mutex);
    if (channel->final_received) continue;
    executor_.cancel_request(id);
    executor::Response response;
    response.request_id = id;
    response.error = reason;
    response.result.is_final = true;
    channel->responses.push_back({std::move(response), Clock::now()});
    channel->final_received = true;
    channel->ready.notify_all();
  }
}

size_t ResponseRouter::open_streams() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return channels_.size();
}

void ResponseRouter::remove(executor::RequestId id, bool cancel) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (cancel) executor_.cancel_request(id);
  channels_.erase(id);
}

void ResponseRouter::route_responses() {
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_) return;
    }
    std::vector<executor::Response> responses = executor_.await_responses(kAwaitInterval);
    if (responses.empty()) continue;
    const Clock::time_point received = Clock::now();
    std::lock_guard<std::mutex> lock(mutex_);
    for (executor::Response& response : responses) {
      // Responses of streams already gone (cancelled requests) are dropped.
      const auto found = channels_.find(response.request_id);
      if (found == channels_.end()) continue;
      RequestStream::Channel& channel = *found->second;
      std::lock_guard<std::mutex> channel_lock(channel.mutex);
      if (channel.final_received) continue;  // ended by close()
      const bool is_final = response.result.is_final || response.error.has_value();
      channel.responses.push_back({std::move(response), received});
      if (is_final) channel.final_received = true;
      channel.ready.notify_all();
    }
  }
}

}  // namespace kite::server
