// out = x @ weight^T (+ bias) on the CPU, built on the dot-product tiles of dot_tiles.h. Decode (T
// < 4) streams each weight row once through on-the-fly conversion (memory bound); prefill blocks
// rows and tokens so that a block of weight rows, converted once to float32, stays in L2 while
// every token of the block is multiplied with it (compute bound).
#include "kernels/cpu/linear.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "core/half.h"
#include "kernels/cpu/dot_tiles.h"
#include "kernels/cpu/float_types.h"
#include "kernels/cpu/quantized_tiles.h"
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

// out[t0:t1, n0:n1] += bias[n0:n1], when the problem has a bias.
void add_bias(const LinearProblem& problem, int64_t t0, int64_t t1, int64_t n0, int64_t n1) {
  if (!problem.bias) return;
  for (int64_t t = t0; t < t1; ++t) {
    float* out_row = problem.out + t * problem.rows;
    for (int64_t n = n0; n < n1; ++n) out_row[n] += problem.bias[n];
  }
}

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
  add_bias(problem, t0, t1, n0, n1);
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

// out[i] = level i x scale for `count` levels of int8 values or of packed int4 values (count
// even), for the prefill path, which multiplies many tokens with each dequantized row. Portable;
// the AVX2 versions below compute the same products (level to float is exact, the multiply
// rounds once), so either gives the same bits.
void dequantize_int8(const int8_t* values, int64_t count, float scale, float* out) {
  for (int64_t i = 0; i < count; ++i) out[i] = float(values[i]) * scale;
}

void dequantize_int4(const uint8_t* packed, int64_t count, float scale, float* out) {
  for (int64_t i = 0; i < count / 2; ++i) {
    out[2 * i] = float(int4_level(packed[i], false)) * scale;
    out[2 * i + 1] = float(int4_level(packed[i], true)) * scale;
  }
}

#if KITE_HAS_AVX2_KERNELS
KITE_TARGET_AVX2 void dequantize_int8_avx2(const int8_t* values, int64_t count, float scale,
                                           float* out) {
  const __m256 scales = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256 levels = load_levels8<false>(reinterpret_cast<const uint8_t*>(values), i);
    _mm256_storeu_ps(out + i, _mm256_mul_ps(levels, scales));
  }
  dequantize_int8(values + i, count - i, scale, out + i);
}

KITE_TARGET_AVX2 void dequantize_int4_avx2(const uint8_t* packed, int64_t count, float scale,
                                           float* out) {
  const __m256 scales = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_mul_ps(load_levels8<true>(packed, i), scales));
  }
  dequantize_int4(packed + i / 2, count - i, scale, out + i);
}
#endif

// Dequantizes rows [n0, n1) of a quantized weight into float32 `out` [(n1 - n0), K]: the same
// values as dequantize_weight_only (value x scale, both exact in float32).
template <typename ScaleElement>
void dequantize_rows(const LinearWeight& weight, int64_t n0, int64_t n1, float* out, Isa isa) {
  (void)isa;  // used only where AVX2 kernels exist
  const int64_t k_size = weight.in_features();
  const int64_t group = weight.quantization.columns_per_scale(k_size);
  const int64_t groups = k_size / group;
  const auto* scales = static_cast<const typename ScaleElement::Storage*>(weight.scales.data);
  const bool int4 = weight.quantization.precision == WeightOnlyPrecision::kInt4;
  for (int64_t n = n0; n < n1; ++n) {
    float* out_row = out + (n - n0) * k_size;
    for (int64_t g = 0; g < groups; ++g) {
      const float scale = ScaleElement::load(scales[n * groups + g]);
      float* out_group = out_row + g * group;
      if (int4) {
        const auto* packed =
            static_cast<const uint8_t*>(weight.weight.data) + n * (k_size / 2) + g * (group / 2);
#if KITE_HAS_AVX2_KERNELS
        if (isa == Isa::kAvx2) {
          dequantize_int4_avx2(packed, group, scale, out_group);
          continue;
        }
#endif
        dequantize_int4(packed, group, scale, out_group);
      } else {
        const auto* values =
            static_cast<const int8_t*>(weight.weight.data) + n * k_size + g * group;
#if KITE_HAS_AVX2_KERNELS
        if (isa == Isa::kAvx2) {
          dequantize_int8_avx2(values, group, scale, out_group);
          continue;
        }
#endif
        dequantize_int8(values, group, scale, out_group);
      }
    }
  }
}

// The bias as float32, or an empty vector when there is none.
std::vector<float> bias_as_float(const DeviceTensor* bias, int64_t rows) {
  std::vector<float> values;
  if (!bias) return values;
  KITE_CHECK(is_cpu_float_dtype(bias->dtype) && bias->numel() == rows);
  values.resize(size_t(rows));
  dispatch_float_dtype(bias->dtype, [&](auto element) {
    using Element = decltype(element);
    const auto* source = static_cast<const typename Element::Storage*>(bias->data);
    for (int64_t n = 0; n < rows; ++n) values[size_t(n)] = Element::load(source[n]);
  });
  return values;
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

  const std::vector<float> bias_values = bias_as_float(bias, rows);
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

#if KITE_HAS_AVX2_KERNELS
// Few tokens, AVX2: each quantized weight row is read once and dequantized in registers by the
// tiles of quantized_tiles.h (the same bits as the float32 tiles on the dequantized rows).
void linear_weight_only_decode_avx2(const LinearProblem& problem, const LinearWeight& weight) {
  const bool int4 = weight.quantization.precision == WeightOnlyPrecision::kInt4;
  const int64_t k_size = problem.k_size;
  const int64_t group = weight.quantization.columns_per_scale(k_size);
  const int64_t groups = k_size / group;
  const int64_t row_bytes = int4 ? k_size / 2 : k_size;
  const auto* values = static_cast<const uint8_t*>(weight.weight.data);
  const int64_t tile_rows = problem.tokens == 1 ? 8 : 4;
  const int64_t tasks = (problem.rows + kDecodeRowsPerTask - 1) / kDecodeRowsPerTask;
#pragma omp parallel if (problem.rows * k_size >= kMinParallelWork)
  {
    std::vector<float> scales(size_t(kDecodeRowsPerTask * groups));
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t n0 = task * kDecodeRowsPerTask;
      const int64_t n1 = std::min(problem.rows, n0 + kDecodeRowsPerTask);
      dispatch_float_dtype(weight.scales.dtype, [&](auto element) {
        using Element = decltype(element);
        const auto* source = static_cast<const typename Element::Storage*>(weight.scales.data);
        for (int64_t i = 0; i < (n1 - n0) * groups; ++i) {
          scales[size_t(i)] = Element::load(source[n0 * groups + i]);
        }
      });
      for (int64_t n = n0; n < n1; n += tile_rows) {
        const int64_t rows = std::min(tile_rows, n1 - n);
        const bool prefetch_next = n + 2 * rows <= problem.rows;
        const QuantizedTileArguments arguments{
            problem.x,
            k_size,
            values + n * row_bytes,
            row_bytes,
            scales.data() + (n - n0) * groups,
            groups,
            group,
            k_size,
            problem.out + n,
            problem.rows,
            prefetch_next ? reinterpret_cast<const char*>(values + (n + rows) * row_bytes)
                          : nullptr};
        (int4 ? quantized_tile<true> : quantized_tile<false>)(problem.tokens, rows)(arguments);
      }
      add_bias(problem, 0, problem.tokens, n0, n1);
    }
  }
}
#endif

// Quantized weights: tasks are (block of weight rows) x (block of tokens) as in linear_prefill,
// with small row blocks when there are few tokens (the decode case, bound by reading the int8 /
// int4 values). A task dequantizes its rows to float32 once and multiplies its tokens with them in
// float32 tiles, whose order depends only on K: the result is that of linear() on the dequantized
// weight, bit for bit, for any T and thread count.
void linear_weight_only(const DeviceTensor& x, const LinearWeight& weight, const DeviceTensor* bias,
                        DeviceTensor& out, Isa isa) {
  KITE_CHECK(weight.quantized() && weight.weight.shape.size() == 2);
  KITE_CHECK(x.dtype == DType::kF32 && out.dtype == DType::kF32);
  const int64_t tokens = x.rows();
  const int64_t k_size = x.cols();
  const int64_t rows = weight.out_features();
  KITE_CHECK(weight.in_features() == k_size);
  KITE_CHECK(
      weight.weight.dtype ==
      (weight.quantization.precision == WeightOnlyPrecision::kInt4 ? DType::kU8 : DType::kI8));
  const int64_t group = weight.quantization.columns_per_scale(k_size);
  KITE_CHECK(group > 0 && k_size % group == 0 && group % 2 == 0);
  KITE_CHECK(is_cpu_float_dtype(weight.scales.dtype) && weight.scales.rows() == rows &&
             weight.scales.cols() == k_size / group);
  KITE_CHECK(out.rows() == tokens && out.cols() == rows && out.data != x.data);
  if (tokens == 0 || rows == 0) return;

  const std::vector<float> bias_values = bias_as_float(bias, rows);
  const LinearProblem problem{static_cast<const float*>(x.data),
                              nullptr,
                              bias ? bias_values.data() : nullptr,
                              static_cast<float*>(out.data),
                              tokens,
                              k_size,
                              rows};
  const bool decode = tokens < kGemmMinTokens;
#if KITE_HAS_AVX2_KERNELS
  if (decode && isa == Isa::kAvx2 && group % kLanes == 0) {
    linear_weight_only_decode_avx2(problem, weight);
    return;
  }
#endif
  int64_t rows_per_block = kDecodeRowsPerTask;
  if (!decode) {
    rows_per_block = kGemmBlockBytes / (std::max<int64_t>(k_size, 1) * int64_t(sizeof(float)));
    rows_per_block = std::clamp<int64_t>(rows_per_block / 12 * 12, 12, 96);
  }
  const int64_t tile_tokens = decode ? tokens : kGemmTileTokens;
  const int64_t tile_rows = decode ? (tokens == 1 ? 8 : 4) : kGemmTileRows;
  const int64_t token_block_size = decode ? tokens : kGemmTokensPerTask;
  const int64_t row_blocks = (rows + rows_per_block - 1) / rows_per_block;
  const int64_t token_blocks = (tokens + token_block_size - 1) / token_block_size;
  const int64_t tasks = row_blocks * token_blocks;
  dispatch_float_dtype(weight.scales.dtype, [&](auto scale_element) {
    using ScaleElement = decltype(scale_element);
#pragma omp parallel if (tokens * rows * k_size >= kMinParallelWork)
    {
      std::vector<float> converted;
      int64_t converted_block = -1;
#pragma omp for schedule(static)
      for (int64_t task = 0; task < tasks; ++task) {
        const int64_t row_block = task / token_blocks;
        const int64_t n0 = row_block * rows_per_block;
        const int64_t n1 = std::min(rows, n0 + rows_per_block);
        const int64_t t0 = (task % token_blocks) * token_block_size;
        const int64_t t1 = std::min(tokens, t0 + token_block_size);
        if (converted_block != row_block) {
          converted.resize(size_t((n1 - n0) * k_size));
          dequantize_rows<ScaleElement>(weight, n0, n1, converted.data(), isa);
          converted_block = row_block;
        }
        run_tiles<Float32>(problem, isa, converted.data(), t0, t1, n0, n1, tile_tokens, tile_rows,
                           /*prefetch=*/false);
      }
    }
  });
}

}  // namespace kite::cpu
