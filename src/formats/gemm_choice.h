// A GEMM kernel choice made when an engine is built (the CUDA backend's autotuning), as the engine
// stores it and the backend reads it. Plain integers, no JSON: CUDA sources include this.
#pragma once

#include <cstdint>

namespace kite {

// GemmChoice::algorithm is one of kernels/cuda/linear.h's GemmAlgorithm values, 0 to this minus 1.
inline constexpr int32_t kGemmAlgorithmCount = 2;

// For linear() calls with at most max_tokens rows (the smallest such entry applies) and a weight of
// [n, k]: the backend's kernel `algorithm` in configuration `variant` (see kernels/cuda/linear.h).
// A `gated` choice is for the MLP's down projection with SwiGLU fused in (its input is
// [rows, 2k], gate | up), a kernel of its own with other register needs than the plain GEMM's.
struct GemmChoice {
  int64_t max_tokens = 0;
  int64_t n = 0;
  int64_t k = 0;
  int32_t algorithm = 0;
  int32_t variant = 0;
  // Its measured time at max_tokens rows when tuned (0: not measured), for reports: weight bytes
  // over this time is the bandwidth the kernel reached.
  float microseconds = 0;
  bool gated = false;
  bool operator==(const GemmChoice&) const = default;
};

}  // namespace kite
