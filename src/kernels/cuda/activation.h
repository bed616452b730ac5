// The gated MLP activation on the GPU (SwiGLU). CPU twin: kernels/cpu/activation.h.
#pragma once

#include <cuda_runtime_api.h>

#include "model/backend.h"

namespace kite::cuda {

// out[t, i] = silu(gate_up[t, i]) * gate_up[t, F + i], silu(g) = g / (1 + exp(-g)), in float32,
// rounded once. gate_up [T, 2F], out [T, F], both float16 or bfloat16. Bytes: read 4F, write 2F
// bytes per token (16-bit).
void silu_mul(const DeviceTensor& gate_up, DeviceTensor& out, cudaStream_t stream);

}  // namespace kite::cuda
