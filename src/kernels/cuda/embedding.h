// Row gathers on the GPU: the token embedding lookup and picking the rows that need logits.
// CPU twins: kernels/cpu/embedding.h.
#pragma once

#include <cuda_runtime_api.h>

#include "model/backend.h"

namespace kite::cuda {

// out[t, :] = table[ids[t], :] converted to out's dtype. table [V, H] and out [T, H] float32,
// float16 or bfloat16; ids [T] in device memory, each in [0, V) (validated by the runtime).
void embedding(const DeviceTensor& table, const int32_t* ids, DeviceTensor& out,
               cudaStream_t stream);

// out[i, :] = x[indices[i], :], any dtype; x [T, H], indices [R] in device memory, out [R, H].
void gather_rows(const DeviceTensor& x, const int32_t* indices, DeviceTensor& out,
                 cudaStream_t stream);

}  // namespace kite::cuda
