// The small-M linear kernel (decode): out = x @ weight^T (+ bias) for 1..16 tokens. It streams the
// weight matrix once from HBM in 16-byte loads and multiplies on the tensor cores (mma.sync
// m16n8k16, float32 accumulation), so that arithmetic never limits it even at 16 tokens.
//
// Three things serve the decode step's chain of short kernels: its first weight loads are issued
// before it waits for the previous kernel (programmatic dependent launch, launch.cuh), since
// weights depend on no earlier kernel; the MLP's down projection can take the gate/up GEMM's
// output directly, computing SwiGLU while it loads x (gated input), which saves the SwiGLU kernel;
// and the residual add and the RMSNorm around each block live in the GEMVs (GemvKind), which saves
// both residual add + RMSNorm kernels of a layer. The o and down projections add their product to
// the residual stream (kAdd, kGatedAdd); the QKV and gate/up projections take the residual stream
// itself and normalise their product instead of their input (kNormed): with the norm's scale
// folded into the weight's columns by `kite build` (folded_norm_of, model/llama.h),
//   rms_norm(x) @ W^T = (x * r) @ (W diag(scale))^T = r * (x @ W'^T),   r = 1 / rms(x),
// and each CTA sums the squares of x from the very fragments it multiplies (its warps cover all of
// K), so the input needs no transform and no extra load.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <utility>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/linear.h"
#include "kernels/cuda/loads.cuh"
#include "kernels/cuda/mma.cuh"

namespace kite::cuda {
namespace {

// Work layout. A CTA owns kRowTiles x 16 consecutive weight rows and every token; its warps split
// K into contiguous ranges and add their partial sums in shared memory at the end. A warp step
// covers 32 elements of K: lane (group g = lane / 4, quad q = lane % 4) loads the 8-element chunk
// q of weight rows g and g + 8 of each row tile and of token g of each token tile.
//
// The chunk feeds two mma.sync m16n8k16 with K permuted: the mma's k = 2q, 2q+1, 2q+8, 2q+9 are
// chunk elements 0..3 in the first and 4..7 in the second. Weights (operand A) and x (operand B)
// are loaded by the same lanes with the same permutation, so every product pairs weight[n][k]
// with x[t][k] and the sum over K is unchanged.
constexpr int kTileRows = 16;      // weight rows of one mma (its M)
constexpr int kTileTokens = 8;     // tokens of one mma (its N)
constexpr int kChunkElements = 8;  // one 16-byte load
constexpr int kChunksPerStep = 4;  // the 4 quads of a group
constexpr int kUnroll = 4;         // steps loaded as one group (two groups double-buffered)

struct GemvConfig {
  int row_tiles;     // 16-row mma tiles per CTA (more: x loads shared by more rows)
  int warps;         // warps per CTA splitting K (more: more loads in flight per row tile)
  int early_groups;  // load groups a warp requests before its PDL wait (1 or 2)
};
// The instances: GemmTactic::variant indexes this table (append only: engines store the index).
// Two early groups fill both buffers while the previous kernel runs, at 20-30 more registers a
// thread (ptxas). The tuner picked them for the o, gate/up and down projections and the LM head
// of Llama-3-8B on an H100: +1.4% batch-1 decode, from the gate/up GEMV and the LM head
// starting their weight streams earlier. On an H200 the ones it picked (o, fused down) cost 1.4%
// in the decode step (docs/perf/cuda_llama3_8b.md; scripts/gpu/insitu_search.py times choices
// there).
constexpr GemvConfig kGemvConfigs[kGemvVariantCount] = {{1, 8, 1}, {2, 8, 1}, {1, 4, 1},
                                                        {2, 4, 1}, {1, 8, 2}, {2, 8, 2},
                                                        {1, 4, 2}, {2, 4, 2}};

// The 8 elements silu(gate) * up of one chunk, rounded as silu_mul rounds them.
template <typename T>
__device__ __forceinline__ uint4 silu_mul_chunk(const uint4& gate, const uint4& up) {
  using Vector = Pack<T, kChunkElements>;
  const Vector gates = *reinterpret_cast<const Vector*>(&gate);
  const Vector ups = *reinterpret_cast<const Vector*>(&up);
  Vector result;
#pragma unroll
  for (int j = 0; j < kChunkElements; ++j) {
    result.values[j] = silu_mul_element(gates.values[j], ups.values[j]);
  }
  return *reinterpret_cast<const uint4*>(&result);
}

// sum += the squares of the 8 elements of a chunk (kNormed's sum of squares of x).
template <typename T>
__device__ __forceinline__ void add_squares(const uint4& chunk, float& sum) {
  using Vector = Pack<T, kChunkElements>;
  const Vector values = *reinterpret_cast<const Vector*>(&chunk);
#pragma unroll
  for (int j = 0; j < kChunkElements; ++j) {
    const float value = to_float(values.values[j]);
    sum = fmaf(value, value, sum);
  }
}

// p[t, n] = sum_k x[t, k] * weight[n, k]   x [tokens, k_size], weight [rows, k_size], out [tokens,
// rows]; tokens <= 8 * kTokenTiles, k_size % 8 == 0, x and weight 16-byte aligned. Then, by kKind
// (linear.h), out = p (+ bias), out = r p (+ bias) with r = 1 / sqrt(mean(x[t]^2) + eps), or
// out += p (+ bias), each rounded once. kGatedAdd: x is [tokens, 2 k_size] = [gate | up] and the
// product is with silu(gate) * up.
//
// kSingleToken (one token, kTokenTiles 1): lane (g, q) of groups 0..3 loads chunk q of step g of
// each load group, instead of group 0 loading all four steps and groups 1..7 nothing, and the mma
// of step u takes its x fragment from lane 4u + q by shuffles (every group gets token 0; the
// columns of tokens 1..7 are never stored). A lane then holds one x chunk a buffer instead of
// four, and SwiGLU and the squares of kNormed are computed once per chunk instead of on all four
// steps by every lane (ptxas still gives it more registers, for the shuffled fragments; faster
// all the same: gemv_single_token).
template <typename T, int kTokenTiles, int kRowTiles, int kWarps, GemvKind kKind,
          int kFetchBytes, int kEarlyGroups, bool kSingleToken>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_kernel(const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
                T* __restrict__ out, int tokens, int rows, int k_size, float eps) {
  constexpr bool kGated = kKind == GemvKind::kGatedAdd;
  constexpr bool kNormed = kKind == GemvKind::kNormed;
  constexpr bool kAdd = kKind == GemvKind::kAdd || kGated;
  static_assert(!kSingleToken || kTokenTiles == 1);
  static_assert(kUnroll <= 8 && (kUnroll & (kUnroll - 1)) == 0,
                "single token: a load group's steps go to lane groups 0..kUnroll-1");
  constexpr int kXSteps = kSingleToken ? 1 : kUnroll;  // x chunks a lane holds a load group
  // Accumulator fragments per lane: kRowTiles x kTokenTiles tiles of 4 floats.
  constexpr int kValuesPerLane = kRowTiles * kTokenTiles * 4;
  __shared__ float partial_sums[kWarps][kValuesPerLane * 32];
  // kNormed: each warp's sum of the squares of x[t] over its range of K.
  __shared__ float square_sums[kNormed ? kWarps : 1][kTokenTiles * kTileTokens];

  const int lane = int(threadIdx.x) & 31;
  const int warp = int(threadIdx.x) >> 5;
  const int group = lane >> 2;
  const int quad = lane & 3;
  const int64_t first_row = int64_t(blockIdx.x) * kRowTiles * kTileRows;

  // This lane's weight rows (group and group + 8 of each row tile) and tokens. Rows past the end
  // read the last row instead (their sums are never stored); tokens past the end load nothing.
  const T* weight_rows[kRowTiles][2];
#pragma unroll
  for (int tile = 0; tile < kRowTiles; ++tile) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t row = first_row + tile * kTileRows + half * 8 + group;
      weight_rows[tile][half] = weight + (row < rows ? row : rows - 1) * k_size;
    }
  }
  const T* token_rows[kTokenTiles];
  bool token_valid[kTokenTiles];
#pragma unroll
  for (int tile = 0; tile < kTokenTiles; ++tile) {
    const int token = tile * kTileTokens + group;
    token_valid[tile] = token < tokens;
    const int64_t x_stride = int64_t(k_size) * (kGated ? 2 : 1);
    token_rows[tile] = x + int64_t(token < tokens ? token : tokens - 1) * x_stride;
  }

  // This warp's contiguous range of steps.
  const int chunks = k_size / kChunkElements;
  const int steps = (chunks + kChunksPerStep - 1) / kChunksPerStep;
  const int steps_per_warp = (steps + kWarps - 1) / kWarps;
  const int step_begin = warp * steps_per_warp;
  const int step_end = min(steps, step_begin + steps_per_warp);

  // The chunks of kUnroll steps starting at `step`; zeros past this warp's range or past K.
  struct Fragments {
    uint4 weight[kUnroll][kRowTiles][2];
    uint4 x[kXSteps][kTokenTiles];                // gate when kGated
    uint4 up[kGated ? kXSteps : 1][kTokenTiles];  // kGated only
  };
  auto in_range = [&](int step, int u) {
    return step + u < step_end && (step + u) * kChunksPerStep + quad < chunks;
  };
  auto offset_of = [&](int step, int u) {
    return int64_t((step + u) * kChunksPerStep + quad) * kChunkElements;
  };
  auto load_weights = [&](int step, Fragments& fragments) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int tile = 0; tile < kRowTiles; ++tile) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          fragments.weight[u][tile][half] =
              load_streaming<kFetchBytes>(weight_rows[tile][half] + offset_of(step, u),
                                          in_range(step, u));
        }
      }
    }
  };
  auto load_x = [&](int step, Fragments& fragments) {
    if constexpr (kSingleToken) {
      // Step `group` of the load group (groups past kUnroll load nothing); token_rows[0] is x.
      const int u = group & (kUnroll - 1);
      const bool valid = group < kUnroll && in_range(step, u);
      const T* source = token_rows[0] + offset_of(step, u);
      fragments.x[0][0] = load_activation(source, valid);
      if constexpr (kGated) fragments.up[0][0] = load_activation(source + k_size, valid);
    } else {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
        for (int tile = 0; tile < kTokenTiles; ++tile) {
          const bool valid = in_range(step, u) && token_valid[tile];
          const T* source = token_rows[tile] + offset_of(step, u);
          fragments.x[u][tile] = load_activation(source, valid);
          if constexpr (kGated) fragments.up[u][tile] = load_activation(source + k_size, valid);
        }
      }
    }
  };

  // acc[rows, tokens] += weight[rows, chunk] * x[tokens, chunk]^T, chunk elements 0..3 then 4..7.
  // kNormed: squares[tile] += the squares of this lane's chunk of token `group` of the tile (zeros
  // past the range or the tokens). This costs the kernel 18 registers a thread (98 against 80: two
  // CTAs an SM instead of three) and still measured fastest (H100, Llama-3-8B decode, against the
  // build without the fused norms in the same call): bounded to 80 registers for three CTAs an SM
  // it spills (-15% a step; -9% with the squares summed on the tensor cores, x in place of the
  // upper weight rows); three steps a group instead of four fit 78 registers and three CTAs, and
  // lose 1.3% to the build without them; a prologue in which the CTA reads x[t] once more to sum
  // them puts an L2 round trip before the first weights (+0.2%); held to 96 registers, so that
  // the gate/up GEMV's CTAs fit beside the o projection's and start early, -0.5% against this
  // form. This form: +1.5%.
  float acc[kRowTiles][kTokenTiles][4] = {};
  float squares[kNormed ? kTokenTiles : 1] = {};
  // kSingleToken: this lane's own chunk (after SwiGLU), its squares, once a load group.
  auto own_chunk = [&](const Fragments& fragments) {
    uint4 own = fragments.x[0][0];
    if constexpr (kGated) own = silu_mul_chunk<T>(own, fragments.up[0][0]);
    if constexpr (kNormed) add_squares<T>(own, squares[0]);
    return own;
  };
  auto multiply = [&](const Fragments& fragments) {
    uint4 own{};
    if constexpr (kSingleToken) own = own_chunk(fragments);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      uint4 tokens[kTokenTiles];
#pragma unroll
      for (int token_tile = 0; token_tile < kTokenTiles; ++token_tile) {
        if constexpr (kSingleToken) {
          const int source = (u << 2) | quad;  // lane (group u, quad q) holds step u's chunk q
          tokens[0] = {__shfl_sync(0xffffffffu, own.x, source),
                       __shfl_sync(0xffffffffu, own.y, source),
                       __shfl_sync(0xffffffffu, own.z, source),
                       __shfl_sync(0xffffffffu, own.w, source)};
        } else {
          tokens[token_tile] = fragments.x[u][token_tile];
          if constexpr (kGated) {
            tokens[token_tile] =
                silu_mul_chunk<T>(tokens[token_tile], fragments.up[u][token_tile]);
          }
          if constexpr (kNormed) add_squares<T>(tokens[token_tile], squares[token_tile]);
        }
      }
#pragma unroll
      for (int row_tile = 0; row_tile < kRowTiles; ++row_tile) {
        const uint4& upper = fragments.weight[u][row_tile][0];  // row group
        const uint4& lower = fragments.weight[u][row_tile][1];  // row group + 8
#pragma unroll
        for (int token_tile = 0; token_tile < kTokenTiles; ++token_tile) {
          const uint4& token = tokens[token_tile];
          float(&tile_acc)[4] = acc[row_tile][token_tile];
          mma_16x8x16<T>(tile_acc, upper.x, lower.x, upper.y, lower.y, token.x, token.y);
          mma_16x8x16<T>(tile_acc, upper.z, lower.z, upper.w, lower.w, token.z, token.w);
        }
      }
    }
  };

  // Double-buffered: the next kUnroll steps are loading while these are multiplied. (With one
  // buffer the compiler interleaves each load with its mma, leaving about 3 loads in flight per
  // warp; this measured 1.4x to 1.5x faster on the large Llama-3-8B shapes on an H100.)
  // The first kEarlyGroups load groups of weights are requested before waiting for the kernel
  // that writes x: with 2, both buffers fill while that kernel runs, and the first group is
  // multiplied ahead of the loop. Groups past the warp's range load zeros, whose products add
  // nothing.
  Fragments current, next;
  int step = step_begin;
  if constexpr (kEarlyGroups == 2) {
    load_weights(step, current);
    load_weights(step + kUnroll, next);
    pdl_launch_dependents();
    pdl_wait();
    load_x(step, current);
    load_x(step + kUnroll, next);
    multiply(current);
    step += kUnroll;
  } else {
    static_assert(kEarlyGroups == 1);
    load_weights(step, next);
    pdl_launch_dependents();
    pdl_wait();
    load_x(step, next);
  }
  for (; step < step_end; step += kUnroll) {
    current = next;
    load_weights(step + kUnroll, next);
    load_x(step + kUnroll, next);
    multiply(current);
  }

  // Each warp's partial sums, laid out so that consecutive lanes write consecutive words.
#pragma unroll
  for (int row_tile = 0; row_tile < kRowTiles; ++row_tile) {
#pragma unroll
    for (int token_tile = 0; token_tile < kTokenTiles; ++token_tile) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int value = ((row_tile * kTokenTiles + token_tile) * 4 + c) * 32 + lane;
        partial_sums[warp][value] = acc[row_tile][token_tile][c];
      }
    }
  }
  if constexpr (kNormed) {
#pragma unroll
    for (int tile = 0; tile < kTokenTiles; ++tile) {
      // The 4 quads of a group hold chunks of the same token (kSingleToken: every lane of token
      // 0, so every group ends with the whole sum).
      float sum = squares[tile];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      if constexpr (kSingleToken) {
        sum += __shfl_xor_sync(0xffffffffu, sum, 4);
        sum += __shfl_xor_sync(0xffffffffu, sum, 8);
        sum += __shfl_xor_sync(0xffffffffu, sum, 16);
      }
      if (quad == 0) square_sums[warp][tile * kTileTokens + group] = sum;
    }
  }
  __syncthreads();

  // out[t, n] = round((r[t]) sum over warps + bias[n] (+ out[t, n])). In tile (row_tile,
  // token_tile), accumulator element c of lane (g, q) is row 16 row_tile + g + 8 (c / 2), token
  // 8 token_tile + 2q + (c & 1).
  for (int value = int(threadIdx.x); value < kValuesPerLane * 32; value += kWarps * 32) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += partial_sums[w][value];
    const int value_lane = value & 31;
    const int c = (value >> 5) & 3;
    const int token_tile = (value >> 7) % kTokenTiles;
    const int row_tile = (value >> 7) / kTokenTiles;
    const int64_t row = first_row + row_tile * kTileRows + (c >> 1) * 8 + (value_lane >> 2);
    const int token = token_tile * kTileTokens + (value_lane & 3) * 2 + (c & 1);
    if (row < rows && token < tokens) {
      if constexpr (kNormed) {
        float square_sum = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) square_sum += square_sums[w][token];
        sum *= rsqrtf(square_sum / float(k_size) + eps);
      }
      if (bias) sum += to_float(bias[row]);
      T* target = out + int64_t(token) * rows + row;
      if constexpr (kAdd) sum += to_float(*target);
      *target = from_float<T>(sum);
    }
  }
}

// The weight loads' L2 fetch size: 256 bytes, or KITE_GEMV_FETCH=0 (A/B measurements). 256
// measured +2.9% to +4.3% batch-1 decode against no hint in three calls on H100s (Llama-3-8B; 128
// within noise of 256, and no longer built; docs/perf/cuda_llama3_8b.md).
int gemv_fetch_bytes() {
  static const int bytes = switch_setting("KITE_GEMV_FETCH", 256, 0, 256) > 0 ? 256 : 0;
  return bytes;
}

template <typename T>
struct GemvArguments {
  const T* x;
  const T* weight;
  const T* bias;
  T* out;
  int tokens;
  int rows;
  int k_size;
  float eps;
};

// Whether one token takes the kernel's single-token form. Measured on an H100 (Llama-3-8B, batch-1
// decode, one engine): +1.2% with it for the SwiGLU-fused kind alone, +1.7% for every kind, although
// it costs the plain and residual-add kinds registers (ptxas, bf16, 8 warps: 80 -> 111 a thread;
// normalising 98 -> 113, fused 100 -> 122). KITE_GEMV_SINGLE=0 turns it off (A/B).
bool gemv_single_token(int64_t tokens) {
  static const bool enabled = switch_setting("KITE_GEMV_SINGLE", 1, 0, 1) > 0;
  return enabled && tokens == 1;
}

template <typename T, int kTokenTiles, GemvKind kKind, size_t kVariant, bool kSingleToken>
void launch_instance(const GemvArguments<T>& arguments, cudaStream_t stream) {
  constexpr GemvConfig config = kGemvConfigs[kVariant];
  constexpr int rows_per_cta = config.row_tiles * kTileRows;
  const unsigned ctas = unsigned((arguments.rows + rows_per_cta - 1) / rows_per_cta);
  auto launch = [&](auto kernel) {
    launch_kernel(kernel, ctas, config.warps * 32, 0, stream, arguments.x, arguments.weight,
                  arguments.bias, arguments.out, arguments.tokens, arguments.rows,
                  arguments.k_size, arguments.eps);
  };
  if (gemv_fetch_bytes() > 0) {
    return launch(gemv_kernel<T, kTokenTiles, config.row_tiles, config.warps, kKind, 256,
                              config.early_groups, kSingleToken>);
  }
  return launch(gemv_kernel<T, kTokenTiles, config.row_tiles, config.warps, kKind, 0,
                            config.early_groups, kSingleToken>);
}

template <typename T, int kTokenTiles, GemvKind kKind, bool kSingleToken, size_t... kVariants>
void launch_variant(int32_t variant, const GemvArguments<T>& arguments, cudaStream_t stream,
                    std::index_sequence<kVariants...>) {
  ((variant == int32_t(kVariants)
        ? launch_instance<T, kTokenTiles, kKind, kVariants, kSingleToken>(arguments, stream)
        : void()),
   ...);
}

// x [tokens, K] (gated: [tokens, 2K]), weight [rows, K].
template <typename T, GemvKind kKind>
void launch_typed(const DeviceTensor& x, const DeviceTensor& weight, const DeviceTensor* bias,
                  DeviceTensor& out, int32_t variant, float eps, cudaStream_t stream) {
  const GemvArguments<T> arguments{static_cast<const T*>(x.data),
                                   static_cast<const T*>(weight.data),
                                   bias ? static_cast<const T*>(bias->data) : nullptr,
                                   static_cast<T*>(out.data),
                                   int(x.rows()),
                                   int(weight.shape[0]),
                                   int(weight.shape[1]),
                                   eps};
  const auto variants = std::make_index_sequence<size_t(kGemvVariantCount)>();
  if (gemv_single_token(arguments.tokens)) {
    launch_variant<T, 1, kKind, true>(variant, arguments, stream, variants);
  } else if (arguments.tokens <= kTileTokens) {
    launch_variant<T, 1, kKind, false>(variant, arguments, stream, variants);
  } else if constexpr (kKind != GemvKind::kGatedAdd) {
    launch_variant<T, 2, kKind, false>(variant, arguments, stream, variants);
  }
}

template <typename T>
void launch_kind(GemvKind kind, const DeviceTensor& x, const DeviceTensor& weight,
                 const DeviceTensor* bias, DeviceTensor& out, int32_t variant, float eps,
                 cudaStream_t stream) {
  switch (kind) {
    case GemvKind::kPlain:
      return launch_typed<T, GemvKind::kPlain>(x, weight, bias, out, variant, eps, stream);
    case GemvKind::kAdd:
      return launch_typed<T, GemvKind::kAdd>(x, weight, bias, out, variant, eps, stream);
    case GemvKind::kNormed:
      return launch_typed<T, GemvKind::kNormed>(x, weight, bias, out, variant, eps, stream);
    case GemvKind::kGatedAdd:
      return launch_typed<T, GemvKind::kGatedAdd>(x, weight, bias, out, variant, eps, stream);
  }
}

template <typename T, bool kSingleToken, size_t... kVariants>
int gated_ctas_per_multiprocessor(int32_t variant, std::index_sequence<kVariants...>) {
  int ctas = 0;
  auto query = [&](auto kernel, int threads) {
    prefer_uniform_carveout(kernel);  // occupancy depends on the split
    KITE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&ctas, kernel, threads, 0));
  };
  // The fetch hint's instances use the same registers (ptxas), so one of them answers for both.
  ((variant == int32_t(kVariants)
        ? query(gemv_kernel<T, 1, kGemvConfigs[kVariants].row_tiles, kGemvConfigs[kVariants].warps,
                            GemvKind::kGatedAdd, 256, kGemvConfigs[kVariants].early_groups,
                            kSingleToken>,
                kGemvConfigs[kVariants].warps * 32)
        : void()),
   ...);
  return ctas;
}

bool is_aligned_16(const void* pointer) {
  return reinterpret_cast<uintptr_t>(pointer) % 16 == 0;
}

}  // namespace

static_assert(kGemvMaxTokens == 2 * kTileTokens, "two token tiles at most");

namespace {

bool applies(const DeviceTensor& x, const DeviceTensor& weight, int64_t max_tokens,
             int64_t k_size) {
  const bool half_precision = x.dtype == DType::kF16 || x.dtype == DType::kBF16;
  const int64_t tokens = x.rows();
  return half_precision && weight.dtype == x.dtype && tokens >= 1 && tokens <= max_tokens &&
         k_size > 0 && k_size % kChunkElements == 0 && k_size <= INT32_MAX &&
         weight.shape.size() == 2 && weight.shape[1] == k_size && weight.shape[0] >= 1 &&
         weight.shape[0] <= INT32_MAX && is_aligned_16(x.data) && is_aligned_16(weight.data);
}

}  // namespace

bool gemv_applies(GemvKind kind, const DeviceTensor& x, const DeviceTensor& weight) {
  if (kind != GemvKind::kGatedAdd) return applies(x, weight, kGemvMaxTokens, x.cols());
  // One token tile: two more fragments per load for the up half fit the registers there.
  return x.cols() % 2 == 0 && applies(x, weight, kTileTokens, x.cols() / 2);
}

int32_t gemv_default_variant(int64_t /*m*/, int64_t n, int64_t k, int multiprocessors) {
  // Measured on an H100 (bfloat16, M = 1..16): 16-row CTAs of 8 warps win or tie on the Llama-3-8B
  // and SmolLM2 shapes, except for short rows in very many CTAs (SmolLM2's lm_head, 49152 x 576),
  // where 4 warps per CTA waste less of each warp's range.
  const int64_t ctas = (n + kTileRows - 1) / kTileRows;
  const bool short_rows = k < 8 * kUnroll * kChunksPerStep * kChunkElements;
  return short_rows && ctas >= 16 * int64_t(multiprocessors) ? 2 : 0;
}

void launch_gemv(GemvKind kind, const DeviceTensor& x, const DeviceTensor& weight,
                 const DeviceTensor* bias, DeviceTensor& out, int32_t variant, float eps,
                 cudaStream_t stream) {
  KITE_CHECK(variant >= 0 && variant < kGemvVariantCount);
  KITE_CHECK(gemv_applies(kind, x, weight));
  KITE_CHECK(kind != GemvKind::kGatedAdd || bias == nullptr);
  if (x.dtype == DType::kBF16) {
    launch_kind<__nv_bfloat16>(kind, x, weight, bias, out, variant, eps, stream);
  } else {
    launch_kind<__half>(kind, x, weight, bias, out, variant, eps, stream);
  }
}

int gemv_gated_ctas_per_multiprocessor(DType dtype, int32_t variant, int64_t tokens) {
  KITE_CHECK(variant >= 0 && variant < kGemvVariantCount);
  KITE_CHECK(dtype == DType::kBF16 || dtype == DType::kF16);
  const auto variants = std::make_index_sequence<size_t(kGemvVariantCount)>();
  const bool single = gemv_single_token(tokens);
  if (dtype == DType::kBF16) {
    return single ? gated_ctas_per_multiprocessor<__nv_bfloat16, true>(variant, variants)
                  : gated_ctas_per_multiprocessor<__nv_bfloat16, false>(variant, variants);
  }
  return single ? gated_ctas_per_multiprocessor<__half, true>(variant, variants)
                : gated_ctas_per_multiprocessor<__half, false>(variant, variants);
}

}  // namespace kite::cuda
