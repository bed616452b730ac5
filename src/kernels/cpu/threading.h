// How the CPU kernels use OpenMP threads. Every op splits its output among threads so that each
// element is computed by one thread in a fixed order: results never depend on the thread count.
#pragma once

#include <cstdint>

namespace kite::cpu {

// Ops that touch fewer elements than this run on the calling thread: waking the OpenMP team costs
// microseconds, more than such an op's work, and far more when other processes hold the cores.
inline constexpr int64_t kMinParallelWork = int64_t(1) << 15;

}  // namespace kite::cpu
