// Dot-product tiles over weight-only quantized rows (int8, or int4 two to a byte), for the CPU
// linear layer at decode sizes: each weight vector is dequantized in registers (level x its
// group's scale, as dequantize_weight_only computes it) and multiplied exactly as the float32
// AVX2 tile of dot_tiles.h multiplies it, so the outputs are bit for bit those of that tile on the
// dequantized rows, without writing them to memory. AVX2 only; needs K and the group size to be
// multiples of 8.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <utility>

#include "kernels/cpu/dot_tiles.h"

namespace kite::cpu {

struct QuantizedTileArguments {
  const float* x;  // [tokens, x_stride]
  int64_t x_stride;
  const uint8_t* values;  // row r at values + r * values_stride (bytes)
  int64_t values_stride;
  const float* scales;  // row r's groups at scales + r * groups
  int64_t groups;
  int64_t group_size;  // a multiple of 8
  int64_t k_size;      // a multiple of group_size
  float* out;          // out[t * out_stride + r]
  int64_t out_stride;
  const char* prefetch;  // the next tile's rows, or null
};
using QuantizedTileFunction = void (*)(const QuantizedTileArguments& arguments);

#if KITE_HAS_AVX2_KERNELS
// 8 levels from `row` at column k, as float32.
template <bool kInt4>
KITE_TARGET_AVX2 inline __m256 load_levels8(const uint8_t* row, int64_t k) {
  if constexpr (kInt4) {
    // Each of 4 bytes to two 32-bit lanes; a left shift puts the even lane's low nibble, or the
    // odd lane's high one, at the top, and an arithmetic right shift brings it back signed.
    const __m128i duplicate = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, -1, -1, -1, -1, -1, -1, -1, -1);
    int32_t word;
    std::memcpy(&word, row + k / 2, sizeof(word));
    const __m128i bytes = _mm_shuffle_epi8(_mm_cvtsi32_si128(word), duplicate);
    const __m256i shifted = _mm256_sllv_epi32(_mm256_cvtepu8_epi32(bytes),
                                              _mm256_setr_epi32(28, 24, 28, 24, 28, 24, 28, 24));
    return _mm256_cvtepi32_ps(_mm256_srai_epi32(shifted, 28));
  } else {
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + k));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
  }
}

template <bool kInt4, int kTokens, int kRows>
KITE_TARGET_AVX2 inline void quantized_tile_avx2(const QuantizedTileArguments& arguments) {
  const auto [x, x_stride, values, values_stride, scales, groups, group_size, k_size, out,
              out_stride, prefetch] = arguments;
  // Bytes of one 8-column step of all the tile's rows: the distance the prefetch runs ahead.
  constexpr int64_t kPrefetchStep = kRows * (kInt4 ? kLanes / 2 : kLanes);
  __m256 accumulators[kTokens][kRows];
  for (int t = 0; t < kTokens; ++t) {
    for (int r = 0; r < kRows; ++r) accumulators[t][r] = _mm256_setzero_ps();
  }
  for (int64_t group = 0; group < groups; ++group) {
    const int64_t end = (group + 1) * group_size;
    for (int64_t k = group * group_size; k < end; k += kLanes) {
      if (prefetch) {
        const char* line = prefetch + k / kLanes * kPrefetchStep;
        for (int64_t offset = 0; offset < kPrefetchStep; offset += 64) {
          __builtin_prefetch(line + offset);
        }
      }
      __m256 x_vectors[kTokens];
      for (int t = 0; t < kTokens; ++t) x_vectors[t] = _mm256_loadu_ps(x + t * x_stride + k);
      for (int r = 0; r < kRows; ++r) {
        const __m256 w = _mm256_mul_ps(load_levels8<kInt4>(values + r * values_stride, k),
                                       _mm256_broadcast_ss(scales + r * groups + group));
        for (int t = 0; t < kTokens; ++t) {
          accumulators[t][r] = _mm256_fmadd_ps(x_vectors[t], w, accumulators[t][r]);
        }
      }
    }
  }
  for (int t = 0; t < kTokens; ++t) {
    for (int r = 0; r < kRows; ++r) out[t * out_stride + r] = horizontal_sum(accumulators[t][r]);
  }
}

template <bool kInt4, int... kIndex>
constexpr std::array<QuantizedTileFunction, sizeof...(kIndex)> quantized_tiles(
    std::integer_sequence<int, kIndex...>) {
  return {{&quantized_tile_avx2<kInt4, kIndex / kMaxTileRows + 1, kIndex % kMaxTileRows + 1>...}};
}

// The tile for `tokens` x `rows` (1..3 x 1..kMaxTileRows).
template <bool kInt4>
QuantizedTileFunction quantized_tile(int64_t tokens, int64_t rows) {
  constexpr int kMaxTokens = 3;
  KITE_CHECK(tokens >= 1 && tokens <= kMaxTokens && rows >= 1 && rows <= kMaxTileRows);
  static constexpr auto kTiles =
      quantized_tiles<kInt4>(std::make_integer_sequence<int, kMaxTokens * kMaxTileRows>());
  return kTiles[size_t((tokens - 1) * kMaxTileRows + (rows - 1))];
}
#endif

}  // namespace kite::cpu
