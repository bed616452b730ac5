// libFuzzer target for the safetensors reader: any byte string must either open cleanly, with every
// tensor readable inside the file, or be refused with a Status. The input goes through a real file
// because the reader maps files; every tensor byte is then touched so ASan sees any stray offset.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/file.h"
#include "formats/safetensors.h"

namespace {

const std::string& scratch_path() {
  static const std::string path =
      "/tmp/kite_safetensors_fuzz_" + std::to_string(::getpid()) + ".safetensors";
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = scratch_path();
  if (!kite::write_file(path, std::string_view(reinterpret_cast<const char*>(data), size)).is_ok())
    return 0;
  kite::Result<kite::SafetensorsFile> file = kite::SafetensorsFile::open(path);
  if (!file.is_ok()) return 0;
  volatile uint8_t checksum = 0;
  for (const std::string& name : file->names()) {
    kite::Result<kite::TensorView> view = file->tensor(name);
    if (!view.is_ok()) __builtin_trap();  // a listed name must always resolve
    for (uint8_t byte : view->bytes()) checksum = checksum ^ byte;
    // Conversion of floating tensors walks the same bytes through another path.
    if (view->numel() < 4096) (void)kite::to_float32(*view);
  }
  for (const auto& [key, value] : file->metadata()) checksum = checksum ^ uint8_t(key.size());
  return 0;
}
