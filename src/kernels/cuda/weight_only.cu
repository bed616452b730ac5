// Weight-only quantized linear layers: a GEMV that streams the int8 / int4 weight for decode-sized
// steps and multiplies on the tensor cores, and a dequantizing copy for the rest (which cuBLASLt
// then multiplies).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/loads.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/weight_only.h"

namespace kite::cuda {
namespace {

// Work layout, as the 16-bit small-M kernel's (gemv.cu): a CTA owns kRowTiles x 16 consecutive
// rows and every token (at most 8: one mma's N); its kWarps warps split K into contiguous ranges
// and add their partial sums in shared memory at the end. A warp step covers 64 values of K: lane
// (g = lane / 4, q = lane % 4) reads chunk q (16 values: 16 bytes of int8, 8 of int4) of rows g and
// g + 8 of each row tile, makes the levels pairs of T and feeds them to four mma.sync m16n8k16
// with x of token g at the same 16 columns in the same order (the K order inside an mma is free,
// as long as weights and x share it). Steps are loaded kUnroll at a time, double-buffered, the
// first group before the PDL wait.
//
// Levels become T without a conversion instruction (the magic-number trick): with the sign bit
// flipped (offset binary, u = level + 128 or + 8), a byte or nibble placed in the low mantissa bits
// of a power of two p reads as p + u = level + offset (offset p + 128 or p + 8).
//   int8, float16: one PRMT puts two bytes under 1024 (0x6400) as a half2;
//   int8, bfloat16 (7 mantissa bits: 128 + u does not fit): PRMT under 2^23 as a float, FADD takes
//     the offset off, then CVT packs two exact levels: 2.5 ops a value;
//   int4: one LOP3 masks nibbles i and i + 4 of a word under 1024 or 128 (0x4300): the pair (i,
//     i + 4), with x's pairs permuted to match (PRMT, once a chunk for all rows).
// Where the scale is one a row or one a warp step (ScaleMode), the offset comes off the float32
// sums of each step (offset times the step's sums of x, which one more mma of ones makes), so
// the raw pair goes to the mma as it is; otherwise one HSUB2 a pair makes the exact level.
constexpr int kChunkValues = 16;                // values of a row a lane reads a step
constexpr int kStepValues = 4 * kChunkValues;   // columns of a warp step (its four quads)
constexpr int kTileRows = 16;                   // rows of one mma
constexpr int kFetchBytes = 256;                // L2 fetch hint of the 16-byte loads (gemv.cu)

// The GEMV's configurations (KITE_WEIGHT_ONLY_VARIANT picks one; the tests run all): variant v
// runs kWeightOnlyWarps[v % 2] warps a CTA; v / 2 == 1 applies the scales without step sums
// (ScaleMode below); v / 2 == 2 keeps int4 in CTAs of 32 rows whatever the grid. A CTA owns 16
// rows of int8, 32 of int4 (128 bytes a lane a load group either way), or 16 of int4 (64 bytes)
// where 32-row CTAs would number fewer than two an SM: on an H100, 16-row CTAs took Llama-3-8B's
// int4 QKV projection (192 CTAs of 32 rows) from 15.1 to 13.7 us, o (128) from 10.2 to 10.1 and
// down (128) from 20.7 to 20.0, and slowed gate/up (896) from 40.3 to 42.9
// (docs/perf/weight_only.md).
constexpr int kWeightOnlyWarps[] = {8, 4};
constexpr int kWeightOnlyVariants = 6;

// How the kernel applies the scales. kPerChannel: one scale a row, on the row's float32 sum at
// the end; kPerChannelSums the same, from each step's sums of the raw levels less the offset
// (where kOffsetLevels). kPerStep (groups of a multiple of 64 columns, so that a warp step, whose
// mmas mix its four quads' columns, lies in one group): the group's scale on each step's float32
// sums (of raw levels less the offset where kOffsetLevels). kPerValue: the scale on the levels
// (HMUL2), each weight rounded once to T, as the dequantized copy rounds it (dequantize_kernel);
// groups of 16 or 32 columns need it.
enum class ScaleMode { kPerChannel, kPerChannelSums, kPerStep, kPerValue };

template <bool kInt4>
using WeightChunk = std::conditional_t<kInt4, uint2, uint4>;

// 0x6400 (1024) for float16, 0x4300 (128) for bfloat16: a 16-bit float whose mantissa's low bits
// count units.
template <typename T>
constexpr uint32_t kHalfMagic = std::is_same_v<T, __half> ? 0x64006400u : 0x43004300u;
// A pair of ones.
template <typename T>
constexpr uint32_t kOnes = std::is_same_v<T, __half> ? 0x3C003C00u : 0x3F803F80u;

// The raw form of a level that chunk_levels makes: magic + u = level + offset, where u is the level
// in offset binary (int4 in either dtype, int8 in float16); int8 in bfloat16 makes exact levels.
template <typename T, bool kInt4>
constexpr bool kOffsetLevels = kInt4 || std::is_same_v<T, __half>;
template <typename T, bool kInt4>
constexpr float kLevelOffset = !kOffsetLevels<T, kInt4>    ? 0.0f
                               : std::is_same_v<T, __half> ? (kInt4 ? 1032.0f : 1152.0f)
                                                           : 136.0f;
// The same offset as the bits of a pair of T (136 = 0x4308 in bfloat16; 1032 = 0x6408, 1152 =
// 0x6480 in float16).
template <typename T, bool kInt4>
constexpr uint32_t kLevelOffsetPair =
    !kOffsetLevels<T, kInt4> ? 0u
    : std::is_same_v<T, __half> ? (kInt4 ? 0x64086408u : 0x64806480u)
                                : 0x43084308u;

template <typename T>
__device__ __forceinline__ uint32_t sub_pairs(uint32_t pair, uint32_t values) {
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 result = __hsub2(*reinterpret_cast<const __half2*>(&pair),
                                   *reinterpret_cast<const __half2*>(&values));
    return *reinterpret_cast<const uint32_t*>(&result);
  } else {
    const __nv_bfloat162 result = __hsub2(*reinterpret_cast<const __nv_bfloat162*>(&pair),
                                          *reinterpret_cast<const __nv_bfloat162*>(&values));
    return *reinterpret_cast<const uint32_t*>(&result);
  }
}

template <typename T>
__device__ __forceinline__ uint32_t mul_pairs(uint32_t pair, uint32_t scales) {
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 result = __hmul2(*reinterpret_cast<const __half2*>(&pair),
                                   *reinterpret_cast<const __half2*>(&scales));
    return *reinterpret_cast<const uint32_t*>(&result);
  } else {
    const __nv_bfloat162 result = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&pair),
                                          *reinterpret_cast<const __nv_bfloat162*>(&scales));
    return *reinterpret_cast<const uint32_t*>(&result);
  }
}

// A pair of T as two floats (the low half first).
template <typename T>
__device__ __forceinline__ float2 pair_to_float2(uint32_t pair) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half22float2(*reinterpret_cast<const __half2*>(&pair));
  } else {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&pair));
  }
}

// The 16 levels of a row's chunk as 8 pairs of T in mma order: mma i takes a[2i] (its k = 2q,
// 2q + 1) and a[2i + 1] (2q + 8, 2q + 9). int8: mma i holds values 4i..4i+3 in order; int4: mma
// 2j + t holds values (8j + 2t, 8j + 2t + 4) and (8j + 2t + 1, 8j + 2t + 5). kExact: the levels
// themselves; otherwise, where kOffsetLevels, level + kLevelOffset (one instruction a pair less,
// the offset taken off the sums instead).
template <typename T, bool kInt4, bool kExact>
__device__ __forceinline__ void chunk_levels(const WeightChunk<kInt4>& chunk, uint32_t (&a)[8]) {
  constexpr uint32_t kOffset = kLevelOffsetPair<T, kInt4>;
  if constexpr (kInt4) {
    const uint32_t words[2] = {chunk.x ^ 0x88888888u, chunk.y ^ 0x88888888u};
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        const uint32_t raw = ((words[j] >> (4 * s)) & 0x000F000Fu) | kHalfMagic<T>;
        a[4 * j + s] = kExact ? sub_pairs<T>(raw, kOffset) : raw;
      }
    }
  } else {
    const uint32_t words[4] = {chunk.x ^ 0x80808080u, chunk.y ^ 0x80808080u,
                               chunk.z ^ 0x80808080u, chunk.w ^ 0x80808080u};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if constexpr (std::is_same_v<T, __half>) {
        const uint32_t low = __byte_perm(words[j], 0x64646464u, 0x5140);
        const uint32_t high = __byte_perm(words[j], 0x64646464u, 0x5342);
        a[2 * j] = kExact ? sub_pairs<T>(low, kOffset) : low;
        a[2 * j + 1] = kExact ? sub_pairs<T>(high, kOffset) : high;
      } else {
        float level[4];
#pragma unroll
        for (int b = 0; b < 4; ++b) {
          level[b] = __uint_as_float(__byte_perm(words[j], 0x4B000000u, 0x7440 | b)) -
                     8388736.0f;  // 2^23 + 128
        }
        const __nv_bfloat162 low = __floats2bfloat162_rn(level[0], level[1]);
        const __nv_bfloat162 high = __floats2bfloat162_rn(level[2], level[3]);
        a[2 * j] = *reinterpret_cast<const uint32_t*>(&low);
        a[2 * j + 1] = *reinterpret_cast<const uint32_t*>(&high);
      }
    }
  }
}

// x's 16 values at the chunk's columns (8 words of pairs, in order) as the B fragments in the
// order of chunk_levels.
template <bool kInt4>
__device__ __forceinline__ void chunk_x(const uint32_t (&words)[8], uint32_t (&b)[8]) {
#pragma unroll
  for (int j = 0; j < (kInt4 ? 2 : 4); ++j) {
    if constexpr (kInt4) {
      // Values 8j..8j+7 are words 4j..4j+3; pairs (0, 4), (1, 5), then (2, 6), (3, 7).
      b[4 * j] = __byte_perm(words[4 * j], words[4 * j + 2], 0x5410);
      b[4 * j + 1] = __byte_perm(words[4 * j], words[4 * j + 2], 0x7632);
      b[4 * j + 2] = __byte_perm(words[4 * j + 1], words[4 * j + 3], 0x5410);
      b[4 * j + 3] = __byte_perm(words[4 * j + 1], words[4 * j + 3], 0x7632);
    } else {
      b[2 * j] = words[2 * j];
      b[2 * j + 1] = words[2 * j + 1];
    }
  }
}

// out[t, row] = sum_k level[row, k] * scale[row, k / group] * x[t, k] (+ bias[row]) for t <
// tokens <= 8. kSingleToken (tokens == 1): a load group's 4 x 4 chunks of x (32 bytes each) are
// loaded once, 16 bytes a lane, and shuffled to the lanes that multiply them; otherwise each lane
// loads its own token's chunks (two 16-byte loads a step, so two steps a group for registers).
// kScales: how the scales apply (ScaleMode).
template <typename T, bool kInt4, int kRowTiles, int kWarps, bool kSingleToken, ScaleMode kScales>
__global__ void __launch_bounds__(kWarps * 32, 16 / kWarps)
    weight_only_gemv_kernel(const T* __restrict__ x, int tokens,
                            const uint8_t* __restrict__ weight, const T* __restrict__ scales,
                            const T* __restrict__ bias, T* __restrict__ out, int n, int k,
                            int group) {
  constexpr int kUnroll = kSingleToken ? 4 : 2;
  constexpr int kChunkBytes = kInt4 ? 8 : 16;
  constexpr bool kGrouped = kScales == ScaleMode::kPerStep || kScales == ScaleMode::kPerValue;
  // Sums a step (then offset and scale), or straight into the accumulators.
  constexpr bool kStepSums = kScales == ScaleMode::kPerStep || kScales == ScaleMode::kPerChannelSums;
  constexpr bool kOffset = kStepSums && kOffsetLevels<T, kInt4>;
  static_assert(!kSingleToken || kUnroll * 4 * 2 == 32, "one 16-byte x load a lane a group");
  __shared__ float partial_sums[kWarps][kRowTiles * 4 * 32];

  const int lane = int(threadIdx.x) & 31;
  const int warp = int(threadIdx.x) >> 5;
  const int g = lane >> 2;
  const int quad = lane & 3;
  const int first_row = int(blockIdx.x) * kRowTiles * kTileRows;
  const int64_t row_bytes = kInt4 ? k / 2 : k;
  const int groups = k / group;

  // This lane's rows: g and g + 8 of each tile, 8 r + g for r = 2 tile + half, each at 8 r rows
  // from row g (one pointer and 32-bit offsets, for registers); rows past n load zeros, whose sums
  // are never stored.
  const uint8_t* weight_row = weight + int64_t(first_row + g) * row_bytes;
  const T* scale_row = scales + int64_t(first_row + g) * groups;
  auto row_valid = [&](int tile, int half) {
    return first_row + (2 * tile + half) * 8 + g < n;
  };
  const T* x_row = x + int64_t(kSingleToken ? 0 : min(g, tokens - 1)) * k;
  const bool token_valid = kSingleToken || g < tokens;

  // This warp's contiguous range of steps.
  const int chunks = k / kChunkValues;
  const int steps = (chunks + 3) / 4;
  const int steps_per_warp = (steps + kWarps - 1) / kWarps;
  const int step_begin = warp * steps_per_warp;
  const int step_end = min(steps, step_begin + steps_per_warp);

  struct Fragments {
    WeightChunk<kInt4> weight[kUnroll][kRowTiles][2];
    uint32_t scales[kGrouped ? kUnroll : 1][kRowTiles];  // rows g (low half) and g + 8
    uint4 x[kSingleToken ? 1 : kUnroll][kSingleToken ? 1 : 2];
  };
  auto chunk_valid = [&](int step, int chunk_quad) {
    return step < step_end && step * 4 + chunk_quad < chunks;
  };
  auto load_weights = [&](int step, Fragments& fragments) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const bool valid = chunk_valid(step + u, quad);
      const int chunk = (step + u) * 4 + quad;
#pragma unroll
      for (int tile = 0; tile < kRowTiles; ++tile) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const uint8_t* address = weight_row + (2 * tile + half) * 8 * int(row_bytes) +
                                   int64_t(chunk) * kChunkBytes;
          const bool load = valid && row_valid(tile, half);
          if constexpr (kInt4) {
            fragments.weight[u][tile][half] = load_streaming_8(address, load);
          } else {
            fragments.weight[u][tile][half] = load_streaming<kFetchBytes>(address, load);
          }
        }
        if constexpr (kGrouped) {
          const T* column = scale_row + chunk * kChunkValues / group;
          const int stride = 8 * groups;  // scales between rows g and g + 8
          fragments.scales[u][tile] =
              load_table_u16(column + 2 * tile * stride, valid && row_valid(tile, 0)) |
              uint32_t(load_table_u16(column + (2 * tile + 1) * stride,
                                      valid && row_valid(tile, 1)))
                  << 16;
        }
      }
    }
  };
  auto load_x = [&](int step, Fragments& fragments) {
    if constexpr (kSingleToken) {
      // Lane 8u + 2q' + h: half h of chunk q' of step u.
      const int u = lane >> 3, chunk_quad = (lane >> 1) & 3, half = lane & 1;
      fragments.x[0][0] = load_activation(
          x_row + ((step + u) * 4 + chunk_quad) * kChunkValues + 8 * half,
          chunk_valid(step + u, chunk_quad));
    } else {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const bool valid = token_valid && chunk_valid(step + u, quad);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          fragments.x[u][half] =
              load_activation(x_row + ((step + u) * 4 + quad) * kChunkValues + 8 * half, valid);
        }
      }
    }
  };

  float acc[kRowTiles][4] = {};
  auto multiply = [&](const Fragments& fragments) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      uint32_t words[8];
      if constexpr (kSingleToken) {
        const uint4 own = fragments.x[0][0];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int source = 8 * u + 2 * quad + half;
          words[4 * half] = __shfl_sync(0xffffffffu, own.x, source);
          words[4 * half + 1] = __shfl_sync(0xffffffffu, own.y, source);
          words[4 * half + 2] = __shfl_sync(0xffffffffu, own.z, source);
          words[4 * half + 3] = __shfl_sync(0xffffffffu, own.w, source);
        }
      } else {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          words[4 * half] = fragments.x[u][half].x;
          words[4 * half + 1] = fragments.x[u][half].y;
          words[4 * half + 2] = fragments.x[u][half].z;
          words[4 * half + 3] = fragments.x[u][half].w;
        }
      }
      uint32_t b[8];
      chunk_x<kInt4>(words, b);
      // kOffset: the step's sums of x (every row of the ones times x: in each lane, the tokens of
      // its sums), to take kLevelOffset times them off the sums of the raw levels.
      float x_sums[4] = {};
      if constexpr (kOffset) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          mma_16x8x16<T>(x_sums, kOnes<T>, kOnes<T>, kOnes<T>, kOnes<T>, b[2 * i], b[2 * i + 1]);
        }
      }
#pragma unroll
      for (int tile = 0; tile < kRowTiles; ++tile) {
        uint32_t upper[8], lower[8];  // rows g and g + 8
        chunk_levels<T, kInt4, !kStepSums>(fragments.weight[u][tile][0], upper);
        chunk_levels<T, kInt4, !kStepSums>(fragments.weight[u][tile][1], lower);
        if constexpr (!kStepSums) {
          if constexpr (kScales == ScaleMode::kPerValue) {
            const uint32_t upper_scale = __byte_perm(fragments.scales[u][tile], 0, 0x1010);
            const uint32_t lower_scale = __byte_perm(fragments.scales[u][tile], 0, 0x3232);
#pragma unroll
            for (int i = 0; i < 8; ++i) {
              upper[i] = mul_pairs<T>(upper[i], upper_scale);
              lower[i] = mul_pairs<T>(lower[i], lower_scale);
            }
          }
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            mma_16x8x16<T>(acc[tile], upper[2 * i], lower[2 * i], upper[2 * i + 1],
                           lower[2 * i + 1], b[2 * i], b[2 * i + 1]);
          }
        } else {
          // The step's own sums (float32 over 64 columns, so that the offset's cancellation
          // stays small), less the offset, times the step's group scale (kPerStep) or not.
          float sums[4] = {};
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            mma_16x8x16<T>(sums, upper[2 * i], lower[2 * i], upper[2 * i + 1], lower[2 * i + 1],
                           b[2 * i], b[2 * i + 1]);
          }
          float2 scale = {1.0f, 1.0f};  // rows g and g + 8
          if constexpr (kScales == ScaleMode::kPerStep) {
            scale = pair_to_float2<T>(fragments.scales[u][tile]);
          }
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            const float sum =
                kOffset ? fmaf(-kLevelOffset<T, kInt4>, x_sums[c], sums[c]) : sums[c];
            acc[tile][c] = fmaf(c < 2 ? scale.x : scale.y, sum, acc[tile][c]);
          }
        }
      }
    }
  };

  Fragments current, next;
  int step = step_begin;
  load_weights(step, next);
  pdl_launch_dependents();
  pdl_wait();
  load_x(step, next);
  for (; step < step_end; step += kUnroll) {
    current = next;
    load_weights(step + kUnroll, next);
    load_x(step + kUnroll, next);
    multiply(current);
  }

#pragma unroll
  for (int tile = 0; tile < kRowTiles; ++tile) {
#pragma unroll
    for (int c = 0; c < 4; ++c) partial_sums[warp][(tile * 4 + c) * 32 + lane] = acc[tile][c];
  }
  __syncthreads();

  // Element c of lane (g, q) in tile `tile`: row 16 tile + g + 8 (c / 2), token 2q + (c & 1).
  for (int value = int(threadIdx.x); value < kRowTiles * 4 * 32; value += kWarps * 32) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += partial_sums[w][value];
    const int value_lane = value & 31;
    const int c = (value >> 5) & 3;
    const int row = first_row + (value >> 7) * kTileRows + (c >> 1) * 8 + (value_lane >> 2);
    const int token = (value_lane & 3) * 2 + (c & 1);
    if (row < n && token < tokens) {
      if constexpr (!kGrouped) sum *= to_float(scales[row]);  // both per-channel modes
      if (bias) sum += to_float(bias[row]);
      out[int64_t(token) * n + row] = from_float<T>(sum);
    }
  }
}

template <typename T, bool kInt4, int kWarps, int kRowTiles>
void launch_gemv(const DeviceTensor& x, const LinearWeight& weight, const DeviceTensor* bias,
                 DeviceTensor& out, bool step_sums, cudaStream_t stream) {
  const int n = int(weight.out_features()), k = int(x.cols());
  const int group = int(weight.quantization.columns_per_scale(k));
  const unsigned blocks = unsigned((n + kRowTiles * kTileRows - 1) / (kRowTiles * kTileRows));
  auto run = [&](auto kernel) {
    launch_kernel(kernel, blocks, kWarps * 32, 0, stream, static_cast<const T*>(x.data),
                  int(x.rows()), static_cast<const uint8_t*>(weight.weight.data),
                  static_cast<const T*>(weight.scales.data),
                  bias ? static_cast<const T*>(bias->data) : nullptr, static_cast<T*>(out.data),
                  n, k, group);
  };
  ScaleMode scales = ScaleMode::kPerValue;
  if (group == k) {
    scales = step_sums && kOffsetLevels<T, kInt4> ? ScaleMode::kPerChannelSums
                                                  : ScaleMode::kPerChannel;
  } else if (group % kStepValues == 0 && step_sums) {
    scales = ScaleMode::kPerStep;
  }
  auto run_mode = [&](auto single_constant) {
    constexpr bool kSingle = decltype(single_constant)::value;
    switch (scales) {
      case ScaleMode::kPerChannel:
        run(weight_only_gemv_kernel<T, kInt4, kRowTiles, kWarps, kSingle, ScaleMode::kPerChannel>);
        break;
      case ScaleMode::kPerChannelSums:
        if constexpr (kOffsetLevels<T, kInt4>) {
          run(weight_only_gemv_kernel<T, kInt4, kRowTiles, kWarps, kSingle,
                                      ScaleMode::kPerChannelSums>);
        }
        break;
      case ScaleMode::kPerStep:
        run(weight_only_gemv_kernel<T, kInt4, kRowTiles, kWarps, kSingle, ScaleMode::kPerStep>);
        break;
      case ScaleMode::kPerValue:
        run(weight_only_gemv_kernel<T, kInt4, kRowTiles, kWarps, kSingle, ScaleMode::kPerValue>);
        break;
    }
  };
  if (x.rows() == 1) {
    run_mode(std::true_type{});
  } else {
    run_mode(std::false_type{});
  }
}

// A CTA a row at a time, a thread eight consecutive elements (one when K is not a multiple of 8)
// at a time: their levels in one load, one scale when the group holds all eight.
template <typename T, bool kInt4, int kWidth>
__global__ void dequantize_kernel(const uint8_t* __restrict__ weight, const T* __restrict__ scales,
                                  T* __restrict__ out, int n, int k, int group) {
  pdl_launch_dependents();
  pdl_wait();  // the previous step's GEMM may still read the scratch this overwrites
  static_assert(kWidth == 1 || kWidth == 8);
  using Vector = Pack<T, kWidth>;
  const int vectors_per_row = k / kWidth;
  const int groups = k / group;
  const int64_t row_bytes = kInt4 ? k / 2 : k;
  const bool one_scale = group % kWidth == 0;
  for (int row = blockIdx.x; row < n; row += gridDim.x) {
    const uint8_t* values = weight + int64_t(row) * row_bytes;
    const T* row_scales = scales + int64_t(row) * groups;
    Vector* row_out = reinterpret_cast<Vector*>(out + int64_t(row) * k);
    for (int vector = threadIdx.x; vector < vectors_per_row; vector += blockDim.x) {
      const int first = vector * kWidth;
      int levels[kWidth];
      if constexpr (kWidth == 8 && kInt4) {
        const uint32_t packed = *reinterpret_cast<const uint32_t*>(values + first / 2);
#pragma unroll
        for (int i = 0; i < 8; ++i) levels[i] = int32_t(packed << (28 - 4 * i)) >> 28;
      } else if constexpr (kWidth == 8) {
        const uint2 packed = *reinterpret_cast<const uint2*>(values + first);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          levels[i] = int8_t(((i < 4 ? packed.x : packed.y) >> (8 * (i % 4))) & 0xffu);
        }
      } else if constexpr (kInt4) {
        const uint32_t byte = values[first / 2];
        levels[0] = int32_t((first % 2 ? byte >> 4 : byte) << 28) >> 28;  // sign-extend
      } else {
        levels[0] = int8_t(values[first]);
      }
      const float shared_scale = one_scale ? to_float(row_scales[first / group]) : 0.0f;
      Vector result;
#pragma unroll
      for (int i = 0; i < kWidth; ++i) {
        const float scale = one_scale ? shared_scale : to_float(row_scales[(first + i) / group]);
        result.values[i] = from_float<T>(float(levels[i]) * scale);
      }
      row_out[vector] = result;
    }
  }
}

}  // namespace

bool weight_only_gemv_applies(const DeviceTensor& x, const LinearWeight& weight) {
  if (!weight.quantized() || x.rows() < 1 || x.rows() > kWeightOnlyGemvMaxTokens) return false;
  if (x.dtype != DType::kF16 && x.dtype != DType::kBF16) return false;
  if (weight.scales.dtype != x.dtype) return false;
  const int64_t k = x.cols();
  const int64_t group = weight.quantization.columns_per_scale(k);
  if (k % kChunkValues != 0 || group % kChunkValues != 0 || k > (int64_t(1) << 24)) return false;
  if (weight.out_features() > (int64_t(1) << 30)) return false;
  return reinterpret_cast<uintptr_t>(x.data) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(weight.weight.data) % 16 == 0;
}

int weight_only_gemv_variants() { return kWeightOnlyVariants; }

void weight_only_gemv(const DeviceTensor& x, const LinearWeight& weight, const DeviceTensor* bias,
                      DeviceTensor& out, cudaStream_t stream, int variant) {
  KITE_CHECK(weight_only_gemv_applies(x, weight));
  KITE_CHECK(weight.in_features() == x.cols() && out.dtype == x.dtype && out.rows() == x.rows() &&
             out.cols() == weight.out_features());
  KITE_CHECK(!bias || (bias->dtype == x.dtype && bias->numel() == weight.out_features()));
  // A/B switch: KITE_WEIGHT_ONLY_VARIANT=1..5 (above).
  static const int configured =
      switch_setting("KITE_WEIGHT_ONLY_VARIANT", 0, 0, weight_only_gemv_variants() - 1);
  if (variant < 0) variant = configured;
  KITE_CHECK(variant < weight_only_gemv_variants());
  const bool int4 = weight.quantization.precision == WeightOnlyPrecision::kInt4;
  dispatch_half(x.dtype, [&](auto element) {
    using T = decltype(element);
    auto run = [&](auto int4_constant) {
      constexpr bool kInt4 = decltype(int4_constant)::value;
      static_assert(kWeightOnlyWarps[0] == 8 && kWeightOnlyWarps[1] == 4);
      const bool step_sums = variant / 2 != 1;
      auto launch = [&](auto row_tiles_constant) {
        constexpr int kRowTiles = decltype(row_tiles_constant)::value;
        if (variant % 2 == 0) {
          launch_gemv<T, kInt4, 8, kRowTiles>(x, weight, bias, out, step_sums, stream);
        } else {
          launch_gemv<T, kInt4, 4, kRowTiles>(x, weight, bias, out, step_sums, stream);
        }
      };
      if constexpr (kInt4) {
        const int64_t wide_ctas = (weight.out_features() + 2 * kTileRows - 1) / (2 * kTileRows);
        const bool narrow = variant / 2 != 2 && wide_ctas < 2 * current_multiprocessor_count();
        if (!narrow) return launch(std::integral_constant<int, 2>{});
      }
      launch(std::integral_constant<int, 1>{});
    };
    if (int4) {
      run(std::true_type{});
    } else {
      run(std::false_type{});
    }
  });
}

void dequantize_weight_only(const LinearWeight& weight, DeviceTensor& out, cudaStream_t stream) {
  KITE_CHECK(weight.quantized());
  const int64_t n = weight.out_features(), k = weight.in_features();
  KITE_CHECK(out.rows() == n && out.cols() == k && weight.scales.dtype == out.dtype);
  const int64_t group = weight.quantization.columns_per_scale(k);
  KITE_CHECK(group > 0 && k % group == 0);
  if (n == 0 || k == 0) return;
  KITE_CHECK(n < (int64_t(1) << 31) && k < (int64_t(1) << 30));
  const bool int4 = weight.quantization.precision == WeightOnlyPrecision::kInt4;
  // Eight at a time: 16-byte stores, and the levels' 8 (int8) or 4 (int4) bytes in one load.
  const bool vectorized = k % 8 == 0 && reinterpret_cast<uintptr_t>(out.data) % 16 == 0 &&
                          reinterpret_cast<uintptr_t>(weight.weight.data) % 8 == 0;
  const unsigned blocks = unsigned(std::min<int64_t>(n, 65535));
  const int threads = int(std::clamp<int64_t>(k / (vectorized ? 8 : 1), 32, 256));
  dispatch_half(out.dtype, [&](auto element) {
    using T = decltype(element);
    const auto* values = static_cast<const uint8_t*>(weight.weight.data);
    const auto* scales = static_cast<const T*>(weight.scales.data);
    auto* output = static_cast<T*>(out.data);
    auto run = [&](auto kernel) {
      launch_kernel(kernel, blocks, threads, 0, stream, values, scales, output, int(n), int(k),
                    int(group));
    };
    if (int4) {
      vectorized ? run(dequantize_kernel<T, true, 8>) : run(dequantize_kernel<T, true, 1>);
    } else {
      vectorized ? run(dequantize_kernel<T, false, 8>) : run(dequantize_kernel<T, false, 1>);
    }
  });
}

}  // namespace kite::cuda
