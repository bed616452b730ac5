// Weight-only quantized linear layers: a GEMV that streams the int8 / int4 weight for decode-sized
// steps, and a dequantizing copy for the rest (which cuBLASLt then multiplies).
//
// The GEMV: a warp owns kRows consecutive output rows; lane l reads 16 bytes of each of them at
// chunks l, l + 32, ... (16 int8 or 32 int4 values, one scale), with the next chunk's loads (or
// the next two's, KITE_WEIGHT_ONLY_DEPTH=2) in flight while one is multiplied. A level becomes a
// float without a conversion instruction:
// with the sign bit flipped (offset binary, u = level + 128 or + 8), the byte or nibble at bit
// position p of a 32-bit word, masked and or-ed into the bits of 2^23, reads as 2^23 + u * 2^p;
// subtracting 2^23 leaves u * 2^p exactly, and x is pre-scaled by 2^-p, so that one LOP3 and one
// FADD per value precede its FMA (I2F runs at a quarter of the FMA rate, below what an H200's
// int4 stream needs). The offset comes off once a chunk: sum(u * x) - offset * sum(x), both in
// float32, then times the chunk's scale.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/loads.cuh"
#include "kernels/cuda/weight_only.h"

namespace kite::cuda {
namespace {

constexpr int kThreads = 128;  // four warps a CTA
constexpr int kWarps = kThreads / 32;

// The two elements of a 32-bit word of T as floats (the lower address first).
template <typename T>
__device__ __forceinline__ float2 unpack_pair(uint32_t word);
template <>
__device__ __forceinline__ float2 unpack_pair<__half>(uint32_t word) {
  return __half22float2(*reinterpret_cast<const __half2*>(&word));
}
template <>
__device__ __forceinline__ float2 unpack_pair<__nv_bfloat16>(uint32_t word) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&word));
}

// 2^23 as float bits; or-ed with at most 23 bits of mantissa it reads as 2^23 + those bits.
constexpr uint32_t kMagic = 0x4B000000u;
constexpr float kMagicValue = 8388608.0f;

template <bool kInt4>
struct Levels {
  static constexpr int kBits = kInt4 ? 4 : 8;
  static constexpr int kValues = kInt4 ? 32 : 16;  // in a lane's 16 bytes of a row
  static constexpr int kPerWord = 32 / kBits;      // in each 32-bit word
  static constexpr int kPerHalf = kPerWord / 2;    // in each 16-bit half of a word
  static constexpr uint32_t kFlip = kInt4 ? 0x88888888u : 0x80808080u;  // sign bits: offset binary
  static constexpr float kOffset = kInt4 ? 8.0f : 128.0f;
  // 2^-p for the value at position i of a half word (bit position p = kBits * i).
  static constexpr float position_scale(int i) {
    return i == 0 ? 1.0f : position_scale(i - 1) / float(1 << kBits);
  }
};

// out[t, row] = sum_k level[row, k] * scale[row, k / group] * x[t, k] (+ bias[row]) for the
// kRows rows of each warp and t < tokens <= kTokens.
template <typename T, bool kInt4, int kTokens, int kRows, int kDepth>
__global__ void __launch_bounds__(kThreads)
    weight_only_gemv_kernel(const T* __restrict__ x, int tokens, const uint8_t* __restrict__ weight,
                            const T* __restrict__ scales, const T* __restrict__ bias,
                            T* __restrict__ out, int n, int k, int group) {
  pdl_launch_dependents();
  using L = Levels<kInt4>;
  const int lane = threadIdx.x % 32;
  const int first_row = (int(blockIdx.x) * kWarps + int(threadIdx.x) / 32) * kRows;
  const int64_t row_bytes = kInt4 ? k / 2 : k;
  const int chunks = k / L::kValues;
  const int groups = k / group;
  // Rows past n load zeros; their sums are never written.
  const uint8_t* rows = weight + int64_t(first_row) * row_bytes + lane * 16;
  const int valid_rows = n - first_row;

  // kDepth chunks of weights in flight ahead of the one multiplied (64 bytes a lane each at four
  // rows), and with two, at one or two tokens, the next chunk's x too, so that neither the
  // weights' DRAM latency nor x's L2 latency lies between one chunk's multiplication and the next
  // (at 40-100 more registers a thread, `ptxas -v`).
  constexpr int kGroups = L::kValues / 8;  // 16-byte loads of x a token and chunk
  constexpr bool kPrefetchX = kDepth > 1 && kTokens <= 2;
  uint4 ahead[kDepth][kRows];
#pragma unroll
  for (int d = 0; d < kDepth; ++d) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      ahead[d][r] = load_streaming<256>(rows + r * row_bytes + d * 32 * 16,
                                        r < valid_rows && lane + 32 * d < chunks);
    }
  }
  pdl_wait();
  if (first_row >= n) return;
  uint4 x_ahead[kPrefetchX ? kTokens : 1][kGroups];
  if constexpr (kPrefetchX) {
#pragma unroll
    for (int t = 0; t < kTokens; ++t) {
#pragma unroll
      for (int g = 0; g < kGroups; ++g) {
        x_ahead[t][g] = load_activation(x + int64_t(t) * k + lane * L::kValues + 8 * g,
                                        t < tokens && lane < chunks);
      }
    }
  }

  float acc[kRows][kTokens] = {};
#pragma unroll 1  // the loads ahead are in flight already; unrolling only costs registers
  for (int chunk = lane; chunk < chunks; chunk += 32) {
    uint4 current[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      current[r] = ahead[0][r];
#pragma unroll
      for (int d = 0; d + 1 < kDepth; ++d) ahead[d][r] = ahead[d + 1][r];
      ahead[kDepth - 1][r] =
          load_streaming<256>(rows + r * row_bytes + int64_t(chunk + 32 * kDepth - lane) * 16,
                              r < valid_rows && chunk + 32 * kDepth < chunks);
    }
    const int column = chunk * L::kValues;
    uint4 x_now[kPrefetchX ? kTokens : 1][kGroups];
    if constexpr (kPrefetchX) {
#pragma unroll
      for (int t = 0; t < kTokens; ++t) {
#pragma unroll
        for (int g = 0; g < kGroups; ++g) {
          x_now[t][g] = x_ahead[t][g];
          x_ahead[t][g] = load_activation(x + int64_t(t) * k + column + 32 * L::kValues + 8 * g,
                                          t < tokens && chunk + 32 < chunks);
        }
      }
    }
    float chunk_dot[kRows][kTokens] = {};
    float chunk_sum[kTokens] = {};
    // Eight values at a time: 16 bytes of x a token, two words of int8 levels or one of int4.
#pragma unroll
    for (int g = 0; g < kGroups; ++g) {
      // x at these eight columns, pre-scaled by each level's 2^-p.
      float xs[kTokens][8];
#pragma unroll
      for (int t = 0; t < kTokens; ++t) {
        uint4 words;
        if constexpr (kPrefetchX) {
          words = x_now[t][g];
        } else {
          words = load_activation(x + int64_t(t) * k + column + 8 * g, t < tokens);
        }
        const uint32_t word[4] = {words.x, words.y, words.z, words.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float2 pair = unpack_pair<T>(word[i]);
          chunk_sum[t] += pair.x + pair.y;
          xs[t][2 * i] = pair.x * L::position_scale((2 * i) % L::kPerHalf);
          xs[t][2 * i + 1] = pair.y * L::position_scale((2 * i + 1) % L::kPerHalf);
        }
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const uint32_t levels[4] = {current[r].x, current[r].y, current[r].z, current[r].w};
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          // Value 8g + i of the chunk: word (8g + i) / kPerWord, its j-th value, at bit p of its
          // half.
          const int j = i % L::kPerWord;
          const uint32_t packed = levels[(8 * g + i) / L::kPerWord] ^ L::kFlip;
          const uint32_t half = j < L::kPerHalf ? packed : packed >> 16;
          const int p = L::kBits * (j % L::kPerHalf);
          const uint32_t mask = ((1u << L::kBits) - 1u) << p;
          const float level = __uint_as_float((half & mask) | kMagic) - kMagicValue;
#pragma unroll
          for (int t = 0; t < kTokens; ++t) {
            chunk_dot[r][t] = fmaf(level, xs[t][i], chunk_dot[r][t]);
          }
        }
      }
    }
    const int scale_index = column / group;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int row = min(first_row + r, n - 1);
      const float scale = to_float(__ldg(scales + int64_t(row) * groups + scale_index));
#pragma unroll
      for (int t = 0; t < kTokens; ++t) {
        acc[r][t] = fmaf(scale, chunk_dot[r][t] - L::kOffset * chunk_sum[t], acc[r][t]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int t = 0; t < kTokens; ++t) acc[r][t] = warp_sum(acc[r][t]);
  }
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int row = first_row + r;
      if (row >= n) break;
      const float b = bias ? to_float(bias[row]) : 0.0f;
#pragma unroll
      for (int t = 0; t < kTokens; ++t) {
        if (t < tokens) out[int64_t(t) * n + row] = from_float<T>(acc[r][t] + b);
      }
    }
  }
}

template <typename T, bool kInt4, int kTokens, int kRows>
void launch_gemv(const DeviceTensor& x, const LinearWeight& weight, const DeviceTensor* bias,
                 DeviceTensor& out, cudaStream_t stream) {
  const int n = int(weight.out_features()), k = int(x.cols());
  const int group = int(weight.quantization.columns_per_scale(k));
  const int warps = (n + kRows - 1) / kRows;
  const unsigned blocks = unsigned((warps + kWarps - 1) / kWarps);
  // A/B switch: KITE_WEIGHT_ONLY_DEPTH=2 keeps two chunks of weights (and the next x) in flight
  // ahead instead of one. One is the measured form (H100, Llama-3-8B int8: 181 tokens/s, 49% of
  // its floor, docs/perf/weight_only.md); two passes the same tests and is not timed yet.
  static const int depth = switch_setting("KITE_WEIGHT_ONLY_DEPTH", 1, 1, 2);
  auto kernel = depth == 1 ? weight_only_gemv_kernel<T, kInt4, kTokens, kRows, 1>
                           : weight_only_gemv_kernel<T, kInt4, kTokens, kRows, 2>;
  launch_kernel(
      kernel, blocks, kThreads, 0, stream, static_cast<const T*>(x.data), int(x.rows()),
      static_cast<const uint8_t*>(weight.weight.data), static_cast<const T*>(weight.scales.data),
      bias ? static_cast<const T*>(bias->data) : nullptr, static_cast<T*>(out.data), n, k, group);
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
  const bool int4 = weight.quantization.precision == WeightOnlyPrecision::kInt4;
  const int64_t values = int4 ? 32 : 16;
  const int64_t k = x.cols();
  const int64_t group = weight.quantization.columns_per_scale(k);
  if (k % values != 0 || group % values != 0 || k > (int64_t(1) << 30)) return false;
  if (weight.out_features() > (int64_t(1) << 30)) return false;
  return reinterpret_cast<uintptr_t>(x.data) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(weight.weight.data) % 16 == 0;
}

void weight_only_gemv(const DeviceTensor& x, const LinearWeight& weight, const DeviceTensor* bias,
                      DeviceTensor& out, cudaStream_t stream) {
  KITE_CHECK(weight_only_gemv_applies(x, weight));
  KITE_CHECK(weight.in_features() == x.cols() && out.dtype == x.dtype && out.rows() == x.rows() &&
             out.cols() == weight.out_features());
  KITE_CHECK(!bias || (bias->dtype == x.dtype && bias->numel() == weight.out_features()));
  const bool int4 = weight.quantization.precision == WeightOnlyPrecision::kInt4;
  const int64_t tokens = x.rows();
  dispatch_half(x.dtype, [&](auto element) {
    using T = decltype(element);
    auto run = [&](auto int4_constant) {
      constexpr bool kInt4 = decltype(int4_constant)::value;
      // Four rows a warp: x is read from L2 once for every four rows; eight would hold the
      // next chunk's 128 bytes a lane in registers, twice the 64 that four hold, and cost about
      // 210 registers a thread (`ptxas -v`), a third of the warps an SM.
      if (tokens == 1) {
        launch_gemv<T, kInt4, 1, 4>(x, weight, bias, out, stream);
      } else if (tokens == 2) {
        launch_gemv<T, kInt4, 2, 4>(x, weight, bias, out, stream);
      } else if (tokens <= 4) {
        launch_gemv<T, kInt4, 4, 4>(x, weight, bias, out, stream);
      } else {
        launch_gemv<T, kInt4, 8, 4>(x, weight, bias, out, stream);
      }
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
