// A parallel loop over the machine's cores with plain threads, for the file-format work (random
// weights, quantization) that runs before any backend exists.
#pragma once

#include <algorithm>
#include <cstddef>
#include <thread>
#include <vector>

namespace kite {

// Runs body(begin, end) over [0, count) on the machine's cores, in chunks of at least min_chunk.
template <typename Body>
void parallel_for(size_t count, size_t min_chunk, const Body& body) {
  const size_t cores = std::max(1u, std::thread::hardware_concurrency());
  const size_t workers = std::clamp<size_t>(count / std::max<size_t>(min_chunk, 1), 1, cores);
  if (workers == 1) {
    body(size_t{0}, count);
    return;
  }
  std::vector<std::thread> threads;
  const size_t chunk = (count + workers - 1) / workers;
  for (size_t begin = 0; begin < count; begin += chunk) {
    threads.emplace_back(
        [&body, begin, end = std::min(count, begin + chunk)] { body(begin, end); });
  }
  for (std::thread& thread : threads) thread.join();
}

}  // namespace kite
