// Row gathers on the CPU: the token embedding lookup, and picking the rows that need logits.
#pragma once

#include <cstdint>

#include "model/backend.h"

namespace kite::cpu {

// out[t, :] = table[ids[t], :] as float32. table [V, H] float32, float16 or bfloat16; ids [T] with
// T = out.rows(), each in [0, V) (the runtime validates token ids before they get here).
void embedding(const DeviceTensor& table, const int32_t* ids, DeviceTensor& out);

// out[i, :] = x[indices[i], :] for any dtype; x [T, H], indices [R] in [0, T), out [R, H].
void gather_rows(const DeviceTensor& x, const int32_t* indices, DeviceTensor& out);

}  // namespace kite::cpu
