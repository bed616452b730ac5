// RMS normalisation on the GPU, alone and fused with the residual add before it in every Llama
// block. CPU twins: kernels/cpu/rms_norm.h.
#pragma once

#include <cuda_runtime_api.h>

#include "model/backend.h"

namespace kite::cuda {

// out = weight * round(x / sqrt(mean(x^2) + eps)), the mean in float32 and the normalised value
// rounded to the activation dtype before the weight multiplies it, as Hugging Face LlamaRMSNorm
// does in 16-bit. x, weight, out float16 or bfloat16 (one dtype); x, out [T, H] (out may be x).
// Bytes: 2 reads + 1 write of [T, H]; one CTA per row.
void rms_norm(const DeviceTensor& x, const DeviceTensor& weight, float eps, DeviceTensor& out,
              cudaStream_t stream);

// residual = round(residual + x); out = rms_norm(residual). out may be x but not residual.
void add_rms_norm(DeviceTensor& residual, const DeviceTensor& x, const DeviceTensor& weight,
                  float eps, DeviceTensor& out, cudaStream_t stream);

}  // namespace kite::cuda
