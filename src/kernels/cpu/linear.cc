// out = x @ weight^T (+ bias) on the CPU. One micro-kernel ("tile") computes the dot products of a
// few tokens with a few weight rows over the whole K, keeping 8-lane float32 accumulators in
// registers. Decode (T < 4) streams each weight row once through on-the-fly conversion (memory
// bound); prefill blocks rows and tokens so that a block of weight rows, converted once to float32,
// stays in L2 while every token of the block is multiplied with it (compute bound).
#include "kernels/cpu/linear.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "kernels/cpu/float_types.h"
#include "kernels/cpu/threading.h"

#if KITE_HAS_AVX2_KERNELS
#include <immintrin.h>
#endif

namespace kite::cpu {
namespace {

constexpr int kLanes = 8;
constexpr int kMaxTileTokens = 4;
constexpr int kMaxTileRows = 8;
// Decode path: T below this streams weights directly, in tiles of 1 x 8 or T x 4 (at most 12
// accumulators + T x vectors + 1 weight vector live in registers).
constexpr int64_t kGemmMinTokens = 4;
constexpr int64_t kDecodeRowsPerTask = 16;
// Prefill path: 4 x 3 tiles (12 accumulators + 3 weight vectors + 1 x vector = 16 registers).
constexpr int kGemmTileTokens = 4;
constexpr int kGemmTileRows = 3;
constexpr int64_t kGemmTokensPerTask = 64;
constexpr int64_t kGemmBlockBytes = 192 * 1024;  // converted weight rows per task, kept in L2

// What one tile computes: out[t * out_stride + r] = dot(x[t * x_stride + :k_size],
// weight[r * weight_stride + :k_size]) for t < tokens, r < rows (the tile's template sizes).
struct TileArguments {
  const float* x;
  int64_t x_stride;
  const void* weight;
  int64_t weight_stride;
  int64_t k_size;
  float* out;
  int64_t out_stride;
  // Weights the next tile will read, pulled into cache at the rate this tile reads its own: the
  // short rows of decode GEMVs are too short for the hardware prefetcher to ramp up. Null for none.
  const char* prefetch;
};
using TileFunction = void (*)(const TileArguments& arguments);

// Portable tile. Its lanes mirror the AVX2 tile so the compiler can vectorise it.
template <typename Element, int kTokens, int kRows>
void tile_scalar(const TileArguments& arguments) {
  const auto [x, x_stride, weight_data, weight_stride, k_size, out, out_stride, prefetch] =
      arguments;
  const auto* weight = static_cast<const typename Element::Storage*>(weight_data);
  constexpr int64_t kPrefetchStep = kRows * kLanes * sizeof(typename Element::Storage);
  float accumulators[kTokens][kRows][kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= k_size; k += kLanes) {
    if (prefetch) {
      const char* line = prefetch + k / kLanes * kPrefetchStep;
      for (int64_t offset = 0; offset < kPrefetchStep; offset += 64) {
        __builtin_prefetch(line + offset);
      }
    }
    for (int r = 0; r < kRows; ++r) {
      float w[kLanes];
      for (int lane = 0; lane < kLanes; ++lane) {
        w[lane] = Element::load(weight[r * weight_stride + k + lane]);
      }
      for (int t = 0; t < kTokens; ++t) {
        for (int lane = 0; lane < kLanes; ++lane) {
          accumulators[t][r][lane] += x[t * x_stride + k + lane] * w[lane];
        }
      }
    }
  }
  for (int t = 0; t < kTokens; ++t) {
    for (int r = 0; r < kRows; ++r) {
      const float* lanes = accumulators[t][r];
      float sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) +
                  ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
      for (int64_t i = k; i < k_size; ++i) {
        sum += x[t * x_stride + i] * Element::load(weight[r * weight_stride + i]);
      }
      out[t * out_stride + r] = sum;
    }
  }
}

#if KITE_HAS_AVX2_KERNELS
template <typename Element>
KITE_TARGET_AVX2 inline __m256 load8(const typename Element::Storage* source);

template <>
KITE_TARGET_AVX2 inline __m256 load8<Float32>(const float* source) {
  return _mm256_loadu_ps(source);
}

// bfloat16 is the top half of a float32: widen to 32 bits and shift left by 16.
template <>
KITE_TARGET_AVX2 inline __m256 load8<BFloat16>(const uint16_t* source) {
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(source));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}

template <>
KITE_TARGET_AVX2 inline __m256 load8<Float16>(const uint16_t* source) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(source)));
}

KITE_TARGET_AVX2 inline float horizontal_sum(__m256 value) {
  const __m128 halves = _mm_add_ps(_mm256_castps256_ps128(value), _mm256_extractf128_ps(value, 1));
  const __m128 pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
  return _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)));
}

template <typename Element, int kTokens, int kRows>
KITE_TARGET_AVX2 void tile_avx2(const TileArguments& arguments) {
  const auto [x, x_stride, weight_data, weight_stride, k_size, out, out_stride, prefetch] =
      arguments;
  const auto* weight = static_cast<const typename Element::Storage*>(weight_data);
  constexpr int64_t kPrefetchStep = kRows * kLanes * sizeof(typename Element::Storage);
  __m256 accumulators[kTokens][kRows];
  for (int t = 0; t < kTokens; ++t) {
    for (int r = 0; r < kRows; ++r) accumulators[t][r] = _mm256_setzero_ps();
  }
  int64_t k = 0;
  for (; k + kLanes <= k_size; k += kLanes) {
    if (prefetch) {
      const char* line = prefetch + k / kLanes * kPrefetchStep;
      for (int64_t offset = 0; offset < kPrefetchStep; offset += 64) {
        __builtin_prefetch(line + offset);
      }
    }
    // Hold the smaller operand set in registers and stream the other, so that accumulators plus
    // operands fit the 16 vector registers (a spilled accumulator costs a store-load per step).
    if constexpr (kTokens <= kRows) {
      __m256 x_vectors[kTokens];
      for (int t = 0; t < kTokens; ++t) x_vectors[t] = _mm256_loadu_ps(x + t * x_stride + k);
      for (int r = 0; r < kRows; ++r) {
        const __m256 w = load8<Element>(weight + r * weight_stride + k);
        for (int t = 0; t < kTokens; ++t) {
          accumulators[t][r] = _mm256_fmadd_ps(x_vectors[t], w, accumulators[t][r]);
        }
      }
    } else {
      __m256 w[kRows];
      for (int r = 0; r < kRows; ++r) w[r] = load8<Element>(weight + r * weight_stride + k);
      for (int t = 0; t < kTokens; ++t) {
        const __m256 x_vector = _mm256_loadu_ps(x + t * x_stride + k);
        for (int r = 0; r < kRows; ++r) {
          accumulators[t][r] = _mm256_fmadd_ps(x_vector, w[r], accumulators[t][r]);
        }
      }
    }
  }
  for (int t = 0; t < kTokens; ++t) {
    for (int r = 0; r < kRows; ++r) {
      float sum = horizontal_sum(accumulators[t][r]);
      for (int64_t i = k; i < k_size; ++i) {
        sum = std::fma(x[t * x_stride + i], Element::load(weight[r * weight_stride + i]), sum);
      }
      out[t * out_stride + r] = sum;
    }
  }
}
#endif

// Tables of tile instances, indexed by (tokens - 1) * kMaxTileRows + (rows - 1).
template <typename Element, int... kIndex>
constexpr std::array<TileFunction, sizeof...(kIndex)> scalar_tiles(
    std::integer_sequence<int, kIndex...>) {
  return {{&tile_scalar<Element, kIndex / kMaxTileRows + 1, kIndex % kMaxTileRows + 1>...}};
}

#if KITE_HAS_AVX2_KERNELS
template <typename Element, int... kIndex>
constexpr std::array<TileFunction, sizeof...(kIndex)> avx2_tiles(
    std::integer_sequence<int, kIndex...>) {
  return {{&tile_avx2<Element, kIndex / kMaxTileRows + 1, kIndex % kMaxTileRows + 1>...}};
}
#endif

template <typename Element>
TileFunction tile_function(Isa isa, int64_t tokens, int64_t rows) {
  KITE_CHECK(tokens >= 1 && tokens <= kMaxTileTokens && rows >= 1 && rows <= kMaxTileRows);
  constexpr auto kIndices = std::make_integer_sequence<int, kMaxTileTokens * kMaxTileRows>();
  const int64_t index = (tokens - 1) * kMaxTileRows + (rows - 1);
#if KITE_HAS_AVX2_KERNELS
  static constexpr auto kAvx2 = avx2_tiles<Element>(kIndices);
  if (isa == Isa::kAvx2) return kAvx2[size_t(index)];
#endif
  static constexpr auto kScalar = scalar_tiles<Element>(kIndices);
  (void)isa;
  return kScalar[size_t(index)];
}

struct LinearProblem {
  const float* x = nullptr;      // [tokens, k_size]
  const void* weight = nullptr;  // [rows, k_size]
  const float* bias = nullptr;   // [rows] or null
  float* out = nullptr;          // [tokens, rows]
  int64_t tokens = 0;
  int64_t k_size = 0;
  int64_t rows = 0;
};

// Computes out[t0:t1, n0:n1] with tiles of at most tile_tokens x tile_rows; `weight` points at row
// n0.
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
      const TileArguments arguments{
          problem.x + t * k_size,
          k_size,
          tile_weight,
          k_size,
          k_size,
          problem.out + t * problem.rows + n,
          problem.rows,
          prefetch ? reinterpret_cast<const char*>(tile_weight + rows * k_size) : nullptr};
      tile_function<Element>(isa, tokens, rows)(arguments);
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
