// Chooses the compute backend once at start-up (STYLE.md, principle 3): the model code only ever
// sees the Backend interface returned here.
#pragma once

#include <memory>

#include "core/status.h"
#include "model/backend.h"

namespace kite {

// The CPU backend (device_index must be 0), or the CUDA backend on GPU device_index. Fails with
// kUnsupported when this binary has no such backend, kInvalidArgument for a bad device index.
Result<std::unique_ptr<Backend>> make_backend(BackendKind kind, int device_index = 0);

}  // namespace kite
