// safetensors files (https://github.com/huggingface/safetensors): an 8-byte little-endian header
// length, a JSON header mapping tensor names to {dtype, shape, data_offsets}, then the data.
// Reading maps the file and validates the header before any tensor is handed out; writing streams
// one tensor at a time so that checkpoints larger than memory can be written.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/file.h"
#include "core/status.h"
#include "core/tensor.h"

namespace kite {

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  uint64_t begin = 0;  // byte offsets into the data section, [begin, end)
  uint64_t end = 0;
};

class SafetensorsFile {
 public:
  // Maps `path` and validates its header: length sane (>= 2, <= 100 MB, within the file), valid
  // JSON object, known dtypes, non-negative shapes, offsets in range and non-overlapping,
  // end - begin == numel * dtype size. Errors name the file and the problem.
  static Result<SafetensorsFile> open(const std::string& path);

  const std::string& path() const { return file_.path(); }
  // Tensor names in the order of their data in the file.
  const std::vector<std::string>& names() const { return names_; }
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  const SafetensorsEntry* entry(const std::string& name) const;
  // A view into the mapped file; valid while this object lives.
  Result<TensorView> tensor(const std::string& name) const;
  // The "__metadata__" string map of the header (empty if absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  MappedFile file_;
  const uint8_t* data_begin_ = nullptr;
  std::vector<std::string> names_;
  std::unordered_map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// The tensors of a Hugging Face model folder: `model.safetensors`, or the shards listed in
// `model.safetensors.index.json` ("weight_map": tensor name -> shard file).
class SafetensorsCollection {
 public:
  static Result<SafetensorsCollection> open_directory(const std::string& directory);

  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return shard_of_.count(name) != 0; }
  const SafetensorsEntry* entry(const std::string& name) const;
  Result<TensorView> tensor(const std::string& name) const;

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::unordered_map<std::string, size_t> shard_of_;
};

// Writes a safetensors file tensor by tensor. Declare every tensor first, then write(): it writes
// the header (tensors in declaration order, data 8-byte aligned as the reference writer does) and
// asks `produce` for each tensor in turn, checking its dtype and shape against the declaration.
class SafetensorsWriter {
 public:
  void declare(std::string name, DType dtype, Shape shape);
  void set_metadata(std::string key, std::string value);
  size_t tensor_count() const { return declared_.size(); }
  // `produce(i)` returns the bytes of the i-th declared tensor; `on_progress(i)` (optional) is
  // called after each tensor is written.
  Status write(const std::string& path, const std::function<Result<Tensor>(size_t index)>& produce,
               const std::function<void(size_t index)>& on_progress = {}) const;

 private:
  std::vector<SafetensorsEntry> declared_;
  std::map<std::string, std::string> metadata_;
};

// Convenience for small files (tests, fixtures): writes the given tensors in order.
Status write_safetensors(const std::string& path,
                         const std::vector<std::pair<std::string, Tensor>>& tensors,
                         const std::map<std::string, std::string>& metadata = {});

}  // namespace kite
