// RMS normalisation on the CPU, alone and fused with the residual add that precedes it in every
// Llama block.
#pragma once

#include "model/backend.h"

namespace kite::cpu {

// out = x / sqrt(mean(x^2) + eps) * weight, row by row (as Hugging Face LlamaRMSNorm in float32).
// x, out [T, H] float32 (out may be x); weight [H] float32, float16 or bfloat16, or without data
// for no scale.
void rms_norm(const DeviceTensor& x, const DeviceTensor& weight, float eps, DeviceTensor& out);

// residual += x; out = rms_norm(residual). out may be x but not residual.
void add_rms_norm(DeviceTensor& residual, const DeviceTensor& x, const DeviceTensor& weight,
                  float eps, DeviceTensor& out);

// weight[n, k] *= scale[k], rounded to weight's dtype (folds an RMSNorm's scale into the linear
// layer after it). weight [N, K] and scale [K] float32, float16 or bfloat16, the same dtype.
void scale_columns(DeviceTensor& weight, const DeviceTensor& scale);

}  // namespace kite::cpu
