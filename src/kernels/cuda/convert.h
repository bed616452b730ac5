// Element-wise dtype conversion on the GPU (activations to float32 logits, ...). CPU twin:
// kernels/cpu/convert.h.
#pragma once

#include <cuda_runtime_api.h>

#include "model/backend.h"

namespace kite::cuda {

// destination = source converted element by element (round to nearest even); float32, float16
// and bfloat16 in any combination; the same element count.
void convert(const DeviceTensor& source, DeviceTensor& destination, cudaStream_t stream);

}  // namespace kite::cuda
