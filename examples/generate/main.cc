// Streams a greedy continuation of a prompt given as token ids through Kite's Executor.
// Usage: kite_generate ENGINE_DIR TOKEN_ID... [--max_new_tokens N]
#include <kite/executor.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: kite_generate ENGINE_DIR TOKEN_ID... [--max_new_tokens N]\n");
    return 2;
  }
  kite::executor::Request request;
  request.max_new_tokens = 16;
  request.sampling.temperature = 0.0f;  // greedy
  request.streaming = true;
  for (int i = 2; i < argc; ++i) {
    const std::string argument = argv[i];
    if (argument == "--max_new_tokens" && i + 1 < argc) {
      request.max_new_tokens = std::atoll(argv[++i]);
    } else {
      request.input_ids.push_back(std::atoi(argument.c_str()));
    }
  }
  std::string error;
  auto executor = kite::executor::Executor::create(argv[1], {}, &error);
  if (!executor) {
    std::fprintf(stderr, "kite_generate: %s\n", error.c_str());
    return 1;
  }
  const kite::executor::RequestId id = executor->enqueue_request(request);
  for (bool done = false; !done;) {
    for (const auto& response : executor->await_responses(id, std::chrono::seconds(1))) {
      if (response.error) {
        std::fprintf(stderr, "kite_generate: %s\n", response.error->c_str());
        return 1;
      }
      for (int token : response.result.output_ids) std::printf("%d ", token);
      std::fflush(stdout);
      if (response.result.is_final) {
        std::printf("\nfinish reason: %s\n",
                    kite::executor::finish_reason_name(response.result.finish_reason));
        done = true;
      }
    }
  }
  return 0;
}
