// Element-wise dtype conversion on the CPU (activations to float32 logits, weights to the
// activation dtype, ...).
#pragma once

#include "model/backend.h"

namespace kite::cpu {

// destination = source converted element by element, rounding to nearest even. Both tensors have
// the same element count; float32, float16 and bfloat16 convert into each other, and any dtype
// copies into itself.
void convert(const DeviceTensor& source, DeviceTensor& destination);

}  // namespace kite::cpu
