// Builds the version line: Kite's version and which backends this binary carries.
#include "tools/version.h"

#ifdef KITE_WITH_CUDA
#include "kernels/cuda/device.h"
#endif

namespace kite::tools {

std::string version_string() {
  std::string text = std::string("kite ") + KITE_VERSION + "\nbackends: cpu";
#ifdef KITE_WITH_CUDA
  text += ", cuda (";
  auto devices = cuda_devices();
  if (!devices.is_ok()) {
    text += devices.status().message();
  } else if (devices->empty()) {
    text += "no GPU found";
  } else {
    for (size_t i = 0; i < devices->size(); ++i) {
      const CudaDeviceInfo& device = (*devices)[i];
      text += (i ? "; " : "") + device.name + ", sm_" + std::to_string(device.compute_capability);
    }
  }
  text += ")";
#endif
  return text;
}

}  // namespace kite::tools
