// Reading and writing whole files, and read-only memory mapping, with errors that name the path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "core/status.h"

namespace kite {

Result<std::string> read_file(const std::string& path);
// Writes to "<path>.tmp" then renames, so readers never see a half-written file.
Status write_file(const std::string& path, std::string_view contents);
bool path_exists(const std::string& path);
bool is_directory(const std::string& path);
Status create_directories(const std::string& path);

// A read-only view of a whole file, mapped into memory. Movable, not copyable.
class MappedFile {
 public:
  static Result<MappedFile> open(const std::string& path);

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace kite
