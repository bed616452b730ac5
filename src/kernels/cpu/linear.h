// The linear layer on the CPU: out = x @ weight^T (+ bias). The matrix products of a forward
// pass (attention projections, MLP, LM head) all run here, so this is the op that sets CPU speed.
#pragma once

#include "kernels/cpu/cpu_features.h"
#include "model/backend.h"

namespace kite::cpu {

// x [T, K] float32; weight [N, K] float32, float16 or bfloat16; bias [N] (any of those) or null;
// out [T, N] float32, not overlapping x. Products are accumulated in float32. Every element of out
// is computed by one thread in an order that depends only on K and `isa`, so results are identical
// for any thread count and any T (a token gets the same output alone or in a batch).
void linear(const DeviceTensor& x, const DeviceTensor& weight, const DeviceTensor* bias,
            DeviceTensor& out, Isa isa);

// The same with a weight-only quantized weight (LinearWeight: int8 or int4 values and their
// scales): out equals linear() of x with the dequantized float32 weight, bit for bit.
void linear_weight_only(const DeviceTensor& x, const LinearWeight& weight, const DeviceTensor* bias,
                        DeviceTensor& out, Isa isa);

}  // namespace kite::cpu
