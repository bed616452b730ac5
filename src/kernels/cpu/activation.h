// The gated MLP activation on the CPU (SwiGLU: silu of the gate times the up projection).
#pragma once

#include "model/backend.h"

namespace kite::cpu {

// out[t, i] = silu(gate_up[t, i]) * gate_up[t, F + i] with silu(g) = g / (1 + exp(-g)).
// gate_up [T, 2F] float32, out [T, F] float32.
void silu_mul(const DeviceTensor& gate_up, DeviceTensor& out);

}  // namespace kite::cpu
