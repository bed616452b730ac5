// Builds GGUF files byte by byte for tests, including deliberately broken ones: every field can be
// set to any raw value, so a test can write exactly the corruption it means to check.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace kite::test {

class GgufBuilder {
 public:
  struct Tensor {
    std::string name;
    std::vector<int64_t> dims;  // GGUF order: dims[0] innermost
    uint32_t type = 0;          // ggml type number
    std::string data;
    std::optional<uint64_t> offset;  // default: placed after the previous tensor, aligned
  };

  uint32_t magic = 0x46554747;  // "GGUF"
  uint32_t version = 3;
  uint64_t alignment = 32;  // used for placement; add general.alignment to change the file's

  // Metadata: `value_bytes` is the encoded value (after the type field).
  GgufBuilder& add_raw(const std::string& key, uint32_t type, const std::string& value_bytes) {
    std::string entry = encode_string(key);
    append_pod(entry, type);
    entry += value_bytes;
    metadata_.push_back(entry);
    return *this;
  }
  GgufBuilder& add_uint32(const std::string& key, uint32_t value) {
    return add_raw(key, 4, pod(value));
  }
  GgufBuilder& add_int32(const std::string& key, int32_t value) {
    return add_raw(key, 5, pod(value));
  }
  GgufBuilder& add_uint64(const std::string& key, uint64_t value) {
    return add_raw(key, 10, pod(value));
  }
  GgufBuilder& add_float32(const std::string& key, float value) {
    return add_raw(key, 6, pod(value));
  }
  GgufBuilder& add_bool(const std::string& key, bool value) {
    return add_raw(key, 7, std::string(1, value ? '\1' : '\0'));
  }
  GgufBuilder& add_string(const std::string& key, const std::string& value) {
    return add_raw(key, 8, encode_string(value));
  }
  GgufBuilder& add_string_array(const std::string& key, const std::vector<std::string>& values) {
    std::string bytes = pod(uint32_t(8)) + pod(uint64_t(values.size()));
    for (const std::string& value : values) bytes += encode_string(value);
    return add_raw(key, 9, bytes);
  }
  GgufBuilder& add_int32_array(const std::string& key, const std::vector<int32_t>& values) {
    std::string bytes = pod(uint32_t(5)) + pod(uint64_t(values.size()));
    for (int32_t value : values) bytes += pod(value);
    return add_raw(key, 9, bytes);
  }
  GgufBuilder& add_float32_array(const std::string& key, const std::vector<float>& values) {
    std::string bytes = pod(uint32_t(6)) + pod(uint64_t(values.size()));
    for (float value : values) bytes += pod(value);
    return add_raw(key, 9, bytes);
  }
  GgufBuilder& add_tensor(Tensor tensor) {
    tensors_.push_back(std::move(tensor));
    return *this;
  }

  std::string build() const {
    std::string out = pod(magic) + pod(version);
    out += pod(uint64_t(tensors_.size()));
    out += pod(uint64_t(metadata_.size()));
    for (const std::string& entry : metadata_) out += entry;
    std::vector<uint64_t> offsets;
    uint64_t next = 0;
    for (const Tensor& tensor : tensors_) {
      const uint64_t offset = tensor.offset.value_or(next);
      offsets.push_back(offset);
      next = round_up(offset + tensor.data.size());
      out += encode_string(tensor.name);
      out += pod(uint32_t(tensor.dims.size()));
      for (int64_t dim : tensor.dims) out += pod(dim);
      out += pod(tensor.type);
      out += pod(offset);
    }
    if (tensors_.empty()) return out;
    out.resize(round_up(out.size()), '\0');
    const size_t data_start = out.size();
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const size_t begin = data_start + offsets[i];
      if (out.size() < begin + tensors_[i].data.size()) {
        out.resize(begin + tensors_[i].data.size(), '\0');
      }
      std::memcpy(out.data() + begin, tensors_[i].data.data(), tensors_[i].data.size());
    }
    return out;
  }

  template <typename T>
  static std::string pod(T value) {
    std::string bytes(sizeof(T), '\0');
    std::memcpy(bytes.data(), &value, sizeof(T));
    return bytes;
  }
  static std::string encode_string(const std::string& text) {
    return pod(uint64_t(text.size())) + text;
  }

 private:
  template <typename T>
  static void append_pod(std::string& out, T value) {
    out += pod(value);
  }
  uint64_t round_up(uint64_t value) const {
    return (value + alignment - 1) / alignment * alignment;
  }

  std::vector<std::string> metadata_;
  std::vector<Tensor> tensors_;
};

}  // namespace kite::test
