// make_backend: the one place that knows which backends this binary was built with.
#include "kernels/backend_factory.h"

#include <string>

#include "kernels/cpu/cpu_backend.h"

namespace kite {
namespace {

Result<std::unique_ptr<Backend>> make_cpu_backend(int device_index) {
  if (device_index != 0) {
    return invalid_argument("the CPU backend has a single device (index 0), not device " +
                            std::to_string(device_index));
  }
  return std::unique_ptr<Backend>(std::make_unique<CpuBackend>());
}

// The CUDA backend plugs in here.
Result<std::unique_ptr<Backend>> make_cuda_backend(int /*device_index*/) {
  return unsupported(
      "this kite binary was built without CUDA; use the CPU backend or rebuild kite with the "
      "CUDA toolkit (-DKITE_CUDA=ON)");
}

}  // namespace

Result<std::unique_ptr<Backend>> make_backend(BackendKind kind, int device_index) {
  switch (kind) {
    case BackendKind::kCpu:
      return make_cpu_backend(device_index);
    case BackendKind::kCuda:
      return make_cuda_backend(device_index);
  }
  return invalid_argument("unknown backend kind " + std::to_string(int(kind)));
}

}  // namespace kite
