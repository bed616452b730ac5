// RMS normalisation on the CPU, alone and fused with the residual add that precedes it in every
// Llama block.
#pragma once

#include <optional>
#include <string>

#include "core/status.h"
#include "core/tensor.h"
#include "model/backend.h"
#include "model/llama.h"

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

// Weight `name` of `lookup` with the scale of the RMSNorm before it folded in (folded_norm_of):
// a copy of it through scale_columns, in the weight's dtype (`kite build` converts it to the
// engine's afterwards, so that a float32 product is rounded once); nullopt for a weight no norm
// folds into.
Result<std::optional<Tensor>> fold_norm_scale(const WeightLookup& lookup, const std::string& name);

}  // namespace kite::cpu
