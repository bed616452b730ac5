// Weight-only quantized linear layers on the GPU (W8A16, W4A16; TensorRT-LLM's weight-only
// GEMMs): int8 or int4 weights with one float16/bfloat16 scale per output row (per channel) or per
// group of input columns, activations in float16/bfloat16. CPU twin: cpu::linear_weight_only
// (kernels/cpu/linear.h); the formats: formats/quantization.h.
//
// Cost of one call, x [M, K], weight [N, K], 2-byte activations:
//   bytes = N*K (int8) or N*K/2 (int4) + 2*N*K/group (scales) + 2*(M*K + M*N),  FLOPs = 2*M*N*K.
// Decode (M <= kWeightOnlyGemvMaxTokens) reads the weight once: half the bytes of a 16-bit GEMV
// for int8, a quarter for int4, so its floor is half or a quarter of the 16-bit one's time. On an
// H100 (Llama-3-8B, batch 1) int8 decode reaches 80% of its floor, 296 tokens/s against the 16-bit
// engine's 195; int4 in groups of 128 42%, 267 tokens/s (docs/perf/weight_only.md). Larger steps
// are compute-bound: the weight is dequantized into a 16-bit scratch copy (N*K or N*K/2 reads,
// 2*N*K writes) that cuBLASLt then multiplies: a 2048-token prefill 11% slower than 16-bit.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "model/backend.h"

namespace kite::cuda {

// Whether the GEMV runs this call: 1 <= M <= kWeightOnlyGemvMaxTokens, K and the group a multiple
// of 16, x, weight and scales in float16/bfloat16 alike (the scales in the activations' dtype), x
// and the weight 16-byte aligned.
bool weight_only_gemv_applies(const DeviceTensor& x, const LinearWeight& weight);

// out = x @ dequantize(weight)^T (+ bias), x [M, K], out [M, N], bias [N] or null, without
// materialising the floating weight: the levels become 16-bit floats in registers and meet x on
// the tensor cores (float32 sums); per-channel scales and groups of a multiple of 64 columns
// multiply the sums (exact weights), groups of 16 or 32 the levels (each weight then rounded once
// to the dtype, as dequantize_weight_only rounds it); every output rounded once.
// weight_only_gemv_applies must hold. `variant`: one of weight_only_gemv_variants() configurations,
// or -1 for the default (KITE_WEIGHT_ONLY_VARIANT).
void weight_only_gemv(const DeviceTensor& x, const LinearWeight& weight, const DeviceTensor* bias,
                      DeviceTensor& out, cudaStream_t stream, int variant = -1);
int weight_only_gemv_variants();

// out [N, K] (float16 or bfloat16) = the weight's levels times their scales, each rounded once:
// what cpu::linear_weight_only multiplies, in the activations' dtype.
void dequantize_weight_only(const LinearWeight& weight, DeviceTensor& out, cudaStream_t stream);

}  // namespace kite::cuda
