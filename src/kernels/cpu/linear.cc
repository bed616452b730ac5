// out = x @ weight^T (+ bias) on the CPU, built on the dot-product tiles of dot_tiles.h. Decode (T
// < 4) streams each weight row once through on-the-fly conversion (memory bound); prefill blocks
// rows and tokens so that a block of weight rows, converted once to float32, stays in L2 while
// every token of the block is multiplied with it (compute bound).
#include "kernels/cpu/linear.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#include "kernels/cpu/dot_tiles.h"
#include "kernels/cpu/float_types.h"
#include "kernels/cpu/threading.h"

namespace kite::cpu {
namespace {

// Decode path: T below this streams weights directly, in tiles of 1 x 8 or T x 4 (at most 12
// accumulators + T x vectors + 1 weight vector live in registers).
constexpr int64_t kGemmMinTokens = 4;
constexpr int64_t kDecodeRowsPerTask = 16;
// Prefill path: 4 x 3 tiles (12 accumulators + 3 weight vectors + 1 x vector = 16 registers).
constexpr int kGemmTileTokens = 4;
constexpr int kGemmTileRows = 3;
constexpr int64_t kGemmTokensPerTask = 64;
constexpr int64_t kGemmBlockBytes = 192 * 1024;  // converted weight rows per task, kept in L2

struct LinearProblem {
  const float* x = nullptr;      // [tokens, k_size]
  const void* weight = nullptr;  // [rows, k_size]
  const float* bias = nullptr;   // [rows] or null
  float* out = nullptr;          // [tokens, rows]
  int64_t tokens = 0;
  int64_t k_size = 0;
  int64_t rows = 0;
};

// Computes out[t0:t1, n0:n1] with tiles of at most tile_tokens x tile_rows; `weight` points at
// row n0.
template <typename Element>
void run_tiles(const LinearProblem& problem, Isa isa, const typename Element::Storage* weight,
               int64_t t0, int64_t t1, int64_t n0, int64_t n1, int64_t tile_tokens,
               int64_t tile_rows, bool prefetch) {
  const int64_t k_size = problem.k_size;
  for (int64_t t = t0; t < t1; t += tile_tokens) {
    const int64_t tokens = std::min(tile_tokens, t1 - t);
    for (int64_t n = n0; n < n1; n += tile_rows) {
      const int64_t rows = std::min(tile_rows, n1 - n);
      const auto* tile_weight = weight + (n - n0) * k_size;
      // The next tile's rows follow this tile's (weights are row-major); prefetch stays in bounds.
      const bool prefetch_next = prefetch && n + 2 * rows <= problem.rows;
      const DotTileArguments arguments{
          problem.x + t * k_size,
          k_size,
          tile_weight,
          k_size,
          k_size,
          problem.out + t * problem.rows + n,
          problem.rows,
          prefetch_next ? reinterpret_cast<const char*>(tile_weight + rows * k_size) : nullptr};
      dot_tile<Element>(isa, tokens, rows)(arguments);
    }
  }
  if (problem.bias) {
    for (int64_t t = t0; t < t1; ++t) {
      float* out_row = problem.out + t * problem.rows;
      for (int64_t n = n0; n < n1; ++n) out_row[n] += problem.bias[n];
    }
  }
}

// Few tokens: each weight row is read once, converted in registers, and used by every token.
template <typename Element>
void linear_decode(const LinearProblem& problem, Isa isa) {
  const auto* weight = static_cast<const typename Element::Storage*>(problem.weight);
  const int64_t tasks = (problem.rows + kDecodeRowsPerTask - 1) / kDecodeRowsPerTask;
#pragma omp parallel for schedule(static) if (problem.rows * problem.k_size >= kMinParallelWork)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t n0 = task * kDecodeRowsPerTask;
    const int64_t n1 = std::min(problem.rows, n0 + kDecodeRowsPerTask);
    run_tiles<Element>(problem, isa, weight + n0 * problem.k_size, 0, problem.tokens, n0, n1,
                       problem.tokens, problem.tokens == 1 ? 8 : 4, /*prefetch=*/true);
  }
}

// Many tokens: tasks are (block of weight rows) x (block of tokens). A task converts its weight
// rows to float32 once (exact, so results match the decode path bit for bit) and multiplies every
// token of its block with them while they sit in L2.
template <typename Element>
void linear_prefill(const LinearProblem& problem, Isa isa) {
  const int64_t k_size = std::max<int64_t>(problem.k_size, 1);
  int64_t rows_per_block = kGemmBlockBytes / (k_size * int64_t(sizeof(float)));
  rows_per_block = std::clamp<int64_t>(rows_per_block / 12 * 12, 12, 96);
  const int64_t row_blocks = (problem.rows + rows_per_block - 1) / rows_per_block;
  const int64_t token_blocks = (problem.tokens + kGemmTokensPerTask - 1) / kGemmTokensPerTask;
  const int64_t tasks = row_blocks * token_blocks;
#pragma omp parallel if (problem.tokens * problem.rows * problem.k_size >= kMinParallelWork)
  {
    // Consecutive tasks of a thread often share a row block: convert it only once.
    std::vector<float> converted;
    int64_t converted_block = -1;
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t row_block = task / token_blocks;
      const int64_t token_block = task % token_blocks;
      const int64_t n0 = row_block * rows_per_block;
      const int64_t n1 = std::min(problem.rows, n0 + rows_per_block);
      const int64_t t0 = token_block * kGemmTokensPerTask;
      const int64_t t1 = std::min(problem.tokens, t0 + kGemmTokensPerTask);
      const auto* weight =
          static_cast<const typename Element::Storage*>(problem.weight) + n0 * problem.k_size;
      if constexpr (std::is_same_v<Element, Float32>) {
        run_tiles<Float32>(problem, isa, weight, t0, t1, n0, n1, kGemmTileTokens, kGemmTileRows,
                           /*prefetch=*/false);
      } else {
        if (converted_block != row_block) {
          const int64_t count = (n1 - n0) * problem.k_size;
          converted.resize(size_t(count));
          for (int64_t i = 0; i < count; ++i) converted[size_t(i)] = Element::load(weight[i]);
          converted_block = row_block;
        }
        run_tiles<Float32>(problem, isa, converted.data(), t0, t1, n0, n1, kGemmTileTokens,
                           kGemmTileRows, /*prefetch=*/false);
      }
    }
  }
}

}  // namespace

void linear(const DeviceTensor& x, const DeviceTensor& weight, const DeviceTensor* bias,
            DeviceTensor& out, Isa isa) {
  KITE_CHECK(x.dtype == DType::kF32 && out.dtype == DType::kF32);
  KITE_CHECK(is_cpu_float_dtype(weight.dtype) && weight.shape.size() == 2);
  const int64_t tokens = x.rows();
  const int64_t k_size = x.cols();
  const int64_t rows = weight.shape[0];
  KITE_CHECK(weight.shape[1] == k_size);
  KITE_CHECK(out.rows() == tokens && out.cols() == rows);
  KITE_CHECK(out.data != x.data);
  if (tokens == 0 || rows == 0) return;

  std::vector<float> bias_values;
  if (bias) {
    KITE_CHECK(is_cpu_float_dtype(bias->dtype) && bias->numel() == rows);
    bias_values.resize(size_t(rows));
    dispatch_float_dtype(bias->dtype, [&](auto element) {
      using Element = decltype(element);
      const auto* source = static_cast<const typename Element::Storage*>(bias->data);
      for (int64_t n = 0; n < rows; ++n) bias_values[size_t(n)] = Element::load(source[n]);
    });
  }
  const LinearProblem problem{static_cast<const float*>(x.data),
                              weight.data,
                              bias ? bias_values.data() : nullptr,
                              static_cast<float*>(out.data),
                              tokens,
                              k_size,
                              rows};
  dispatch_float_dtype(weight.dtype, [&](auto element) {
    using Element = decltype(element);
    if (tokens < kGemmMinTokens) {
      linear_decode<Element>(problem, isa);
    } else {
      linear_prefill<Element>(problem, isa);
    }
  });
}

}  // namespace kite::cpu
