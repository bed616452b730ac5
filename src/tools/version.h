// Version and build information printed by `kite --version` and stored in engines.
#pragma once

#include <string>

namespace kite::tools {

std::string version_string();

}  // namespace kite::tools
