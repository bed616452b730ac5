// Names of the backend kinds, for messages and command-line flags.
#include "model/backend.h"

namespace kite {

std::string_view backend_kind_name(BackendKind kind) {
  switch (kind) {
    case BackendKind::kCpu:
      return "cpu";
    case BackendKind::kCuda:
      return "cuda";
  }
  KITE_CHECK(false);
  return "";
}

}  // namespace kite
