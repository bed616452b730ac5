// GGUF files (llama.cpp's model format, versions 2 and 3): magic "GGUF", a version, typed
// metadata key/values, tensor descriptions, then the tensor data, each tensor aligned. Opening maps
// the file and validates all of it (counts, lengths, types, tensor byte ranges) before anything is
// handed out, so that later code can trust every value and every tensor span.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "core/file.h"
#include "core/status.h"
#include "core/tensor.h"

namespace kite {

// Metadata value types, numbered as in the file.
enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// "uint32", "string", "array", ...; "type N" for numbers outside the enum.
std::string gguf_type_name(GgufType type);

struct GgufValue;

struct GgufArray {
  GgufType element_type = GgufType::kUint8;
  std::vector<GgufValue> elements;
};

// One metadata value. The alternatives are listed in GgufType order, so that data.index() is the
// value's GgufType.
struct GgufValue {
  std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool, std::string,
               GgufArray, uint64_t, int64_t, double>
      data;

  GgufType type() const { return GgufType(data.index()); }
  // The value of an integer of any width and signedness; nullopt for other types and for
  // uint64 values above INT64_MAX.
  std::optional<int64_t> as_integer() const;
  // The value of a float32 or float64; nullopt for other types.
  std::optional<double> as_float() const;
  const std::string* as_string() const { return std::get_if<std::string>(&data); }
  const GgufArray* as_array() const { return std::get_if<GgufArray>(&data); }
};

// Tensor element types, numbered as ggml numbers them (ggml.h, enum ggml_type). Quantized types
// store blocks of `block_size` elements in `block_bytes` bytes each.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  kMXFP4 = 39,
  kNVFP4 = 40,
  kQ1_0 = 41,
  kQ2_0 = 42,
};

struct GgmlTypeInfo {
  GgmlType type;
  std::string_view name;  // as ggml spells it: "Q4_K", "BF16"
  int64_t block_size;     // elements per block (1 for plain types)
  int64_t block_bytes;    // bytes per block
};

// The layout of a ggml type number, or nullptr for numbers no current ggml type uses (including
// the removed Q4_2/Q4_3 and the repacked Q4_0_4_4 family, which GGUF files may no longer hold).
const GgmlTypeInfo* ggml_type_info(uint32_t type_number);
// "Q4_K", or "ggml type N" for an unknown number.
std::string ggml_type_name(GgmlType type);

struct GgufTensorInfo {
  std::string name;
  // Dimensions as stored: dims[0] is the innermost (fastest-varying) one, the reverse of the
  // PyTorch order. At most 4.
  std::vector<int64_t> dims;
  GgmlType type = GgmlType::kF32;
  uint64_t offset = 0;  // from the start of the data section; a multiple of the alignment
  uint64_t byte_size = 0;

  int64_t element_count() const;
  // The row-major (PyTorch, Hugging Face) shape: `dims` reversed.
  Shape row_major_shape() const;
};

class GgufFile {
 public:
  static constexpr uint32_t kDefaultAlignment = 32;
  static constexpr size_t kMaxDims = 4;

  // Maps `path` and validates it. Errors name the file and say what is wrong: kCorrupt for
  // malformed content, kUnsupported for well-formed files Kite does not read (version 1,
  // big-endian, tensor types unknown to this version).
  static Result<GgufFile> open(const std::string& path);
  // Parses bytes held by the caller, who keeps them alive while the result is used; `name` stands
  // for the file in messages. For fuzzing and for tests.
  static Result<GgufFile> parse(std::span<const uint8_t> bytes, const std::string& name);

  GgufFile(GgufFile&&) = default;
  GgufFile& operator=(GgufFile&&) = default;

  // The path (or the name given to parse()), for messages.
  const std::string& path() const { return name_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  // File offset where the tensor data section starts.
  uint64_t data_section_offset() const { return data_section_offset_; }

  // Metadata keys in file order.
  const std::vector<std::string>& keys() const { return keys_; }
  bool contains(std::string_view key) const { return find(key) != nullptr; }
  // nullptr when the key is absent.
  const GgufValue* find(std::string_view key) const;

  // Typed access; a missing key or a value of another type is a kCorrupt error naming the file,
  // the key and the type found.
  Result<std::string> get_string(std::string_view key) const;
  // Any integer type holding a value >= 0.
  Result<uint64_t> get_uint(std::string_view key) const;
  // Any integer type holding a value that fits int64.
  Result<int64_t> get_int(std::string_view key) const;
  // float32 or float64.
  Result<double> get_float(std::string_view key) const;
  Result<bool> get_bool(std::string_view key) const;
  // An array of any element type; the pointer lives as long as this object.
  Result<const GgufArray*> get_array(std::string_view key) const;
  Result<std::vector<std::string>> get_string_array(std::string_view key) const;
  // Elements of any integer type fitting int64.
  Result<std::vector<int64_t>> get_int_array(std::string_view key) const;
  // float32 or float64 elements; integer elements are accepted too (llama.cpp writes token scores
  // as int32 in some files).
  Result<std::vector<float>> get_float_array(std::string_view key) const;

  // Tensors in file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  // nullptr when absent.
  const GgufTensorInfo* find_tensor(std::string_view name) const;
  // The tensor's bytes in the mapped file; valid while this object lives.
  std::span<const uint8_t> tensor_data(const GgufTensorInfo& info) const;

 private:
  GgufFile() = default;
  friend class GgufParser;

  MappedFile file_;  // empty when parsed from caller-held bytes
  std::span<const uint8_t> bytes_;
  std::string name_;
  uint32_t version_ = 0;
  uint64_t alignment_ = kDefaultAlignment;
  uint64_t data_section_offset_ = 0;
  std::vector<std::string> keys_;
  std::map<std::string, GgufValue, std::less<>> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace kite
