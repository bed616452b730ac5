// Dot-product tiles, the inner kernel of the CPU linear layer and of attention scores: one tile
// computes the dot products of up to 4 float32 rows ("tokens") with up to 8 rows of float32,
// float16 or bfloat16 ("weights") over their whole length, with 8-lane float32 accumulators in
// registers. Each output's accumulation order depends only on its length and the instruction set,
// never on the tile's shape: a token gets the same bits alone or in a batch.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <utility>

#include "core/status.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/float_types.h"

#if KITE_HAS_AVX2_KERNELS
#include <immintrin.h>
#endif

namespace kite::cpu {

inline constexpr int kLanes = 8;
inline constexpr int kMaxTileTokens = 4;
inline constexpr int kMaxTileRows = 8;

// What one tile computes: out[t * out_stride + r] = dot(x[t * x_stride + :k_size],
// weight[r * weight_stride + :k_size]) for t < tokens, r < rows (the tile's template sizes).
struct DotTileArguments {
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
using DotTileFunction = void (*)(const DotTileArguments& arguments);

// Portable tile. Its lanes mirror the AVX2 tile so the compiler can vectorise it.
template <typename Element, int kTokens, int kRows>
inline void tile_scalar(const DotTileArguments& arguments) {
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

// float8 e4m3 through float16: its exponent and mantissa bits, moved to float16's (the sign to
// bit 15, the rest up by 7), read as a float16 of the same digits at an exponent bias of 15
// instead of 7, then scaled by 2^8. Exact for every finite value, subnormals included; the NaN
// codes (0x7f, 0xff) get float16's all-ones exponent, so that they stay NaN.
template <>
KITE_TARGET_AVX2 inline __m256 load8<Float8E4M3>(const uint8_t* source) {
  const __m128i words =
      _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(source)));
  const __m128i magnitude = _mm_and_si128(words, _mm_set1_epi16(0x7f));
  const __m128i nan = _mm_cmpeq_epi16(magnitude, _mm_set1_epi16(0x7f));
  const __m128i sign = _mm_slli_epi16(_mm_and_si128(words, _mm_set1_epi16(0x80)), 8);
  const __m128i rest =
      _mm_or_si128(_mm_slli_epi16(magnitude, 7), _mm_and_si128(nan, _mm_set1_epi16(0x7c00)));
  return _mm256_mul_ps(_mm256_cvtph_ps(_mm_or_si128(sign, rest)), _mm256_set1_ps(256.0f));
}

KITE_TARGET_AVX2 inline float horizontal_sum(__m256 value) {
  const __m128 halves = _mm_add_ps(_mm256_castps256_ps128(value), _mm256_extractf128_ps(value, 1));
  const __m128 pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
  return _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)));
}

template <typename Element, int kTokens, int kRows>
KITE_TARGET_AVX2 inline void tile_avx2(const DotTileArguments& arguments) {
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
constexpr std::array<DotTileFunction, sizeof...(kIndex)> scalar_tiles(
    std::integer_sequence<int, kIndex...>) {
  return {{&tile_scalar<Element, kIndex / kMaxTileRows + 1, kIndex % kMaxTileRows + 1>...}};
}

#if KITE_HAS_AVX2_KERNELS
template <typename Element, int... kIndex>
constexpr std::array<DotTileFunction, sizeof...(kIndex)> avx2_tiles(
    std::integer_sequence<int, kIndex...>) {
  return {{&tile_avx2<Element, kIndex / kMaxTileRows + 1, kIndex % kMaxTileRows + 1>...}};
}
#endif

// The tile for `tokens` x `rows` (1..kMaxTileTokens x 1..kMaxTileRows) on `isa`.
template <typename Element>
DotTileFunction dot_tile(Isa isa, int64_t tokens, int64_t rows) {
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

}  // namespace kite::cpu
