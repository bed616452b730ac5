// GGUF reading and validation. The layout (all little-endian):
//   "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//   kv_count x  (string key | u32 value_type | value)
//   tensor_count x (string name | u32 n_dims | n_dims x i64 dim | u32 ggml_type | u64 offset)
//   padding to `general.alignment` | tensor data
// where a string is a u64 byte length and the bytes, and an array value is u32 element_type,
// u64 count and the elements. Every count and length is checked against the bytes left before
// anything is allocated, so a hostile file cannot make us allocate more than its own size.
#include "formats/gguf.h"

#include <bit>
#include <cstring>
#include <limits>

namespace kite {

static_assert(std::endian::native == std::endian::little,
              "GGUF reading assumes a little-endian host");

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr int kMaxArrayNesting = 8;

constexpr GgmlTypeInfo kGgmlTypes[] = {
    {GgmlType::kF32, "F32", 1, 4},
    {GgmlType::kF16, "F16", 1, 2},
    {GgmlType::kQ4_0, "Q4_0", 32, 18},
    {GgmlType::kQ4_1, "Q4_1", 32, 20},
    {GgmlType::kQ5_0, "Q5_0", 32, 22},
    {GgmlType::kQ5_1, "Q5_1", 32, 24},
    {GgmlType::kQ8_0, "Q8_0", 32, 34},
    {GgmlType::kQ8_1, "Q8_1", 32, 36},
    {GgmlType::kQ2_K, "Q2_K", 256, 84},
    {GgmlType::kQ3_K, "Q3_K", 256, 110},
    {GgmlType::kQ4_K, "Q4_K", 256, 144},
    {GgmlType::kQ5_K, "Q5_K", 256, 176},
    {GgmlType::kQ6_K, "Q6_K", 256, 210},
    {GgmlType::kQ8_K, "Q8_K", 256, 292},
    {GgmlType::kIQ2_XXS, "IQ2_XXS", 256, 66},
    {GgmlType::kIQ2_XS, "IQ2_XS", 256, 74},
    {GgmlType::kIQ3_XXS, "IQ3_XXS", 256, 98},
    {GgmlType::kIQ1_S, "IQ1_S", 256, 50},
    {GgmlType::kIQ4_NL, "IQ4_NL", 32, 18},
    {GgmlType::kIQ3_S, "IQ3_S", 256, 110},
    {GgmlType::kIQ2_S, "IQ2_S", 256, 82},
    {GgmlType::kIQ4_XS, "IQ4_XS", 256, 136},
    {GgmlType::kI8, "I8", 1, 1},
    {GgmlType::kI16, "I16", 1, 2},
    {GgmlType::kI32, "I32", 1, 4},
    {GgmlType::kI64, "I64", 1, 8},
    {GgmlType::kF64, "F64", 1, 8},
    {GgmlType::kIQ1_M, "IQ1_M", 256, 56},
    {GgmlType::kBF16, "BF16", 1, 2},
    {GgmlType::kTQ1_0, "TQ1_0", 256, 54},
    {GgmlType::kTQ2_0, "TQ2_0", 256, 66},
    {GgmlType::kMXFP4, "MXFP4", 32, 17},
    {GgmlType::kNVFP4, "NVFP4", 64, 36},
    {GgmlType::kQ1_0, "Q1_0", 128, 18},
    {GgmlType::kQ2_0, "Q2_0", 64, 18},
};

// The fewest bytes one value of `type` takes in the file (for bounding element counts).
uint64_t min_encoded_size(GgufType type) {
  switch (type) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kBool:
      return 1;
    case GgufType::kUint16:
    case GgufType::kInt16:
      return 2;
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kFloat32:
      return 4;
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kFloat64:
    case GgufType::kString:  // the u64 length
      return 8;
    case GgufType::kArray:  // u32 element type + u64 count
      return 12;
  }
  return 1;
}

bool valid_type(uint32_t raw) {
  return raw <= uint32_t(GgufType::kFloat64);
}

std::string describe_value_type(const GgufValue& value) {
  if (const GgufArray* array = value.as_array()) {
    return "an array of " + gguf_type_name(array->element_type);
  }
  const std::string name = gguf_type_name(value.type());
  return (name.starts_with("int") ? "an " : "a ") + name;
}

uint32_t byte_swapped(uint32_t value) {
  return (value >> 24) | ((value >> 8) & 0xff00u) | ((value << 8) & 0xff0000u) | (value << 24);
}

}  // namespace

std::string gguf_type_name(GgufType type) {
  switch (type) {
    case GgufType::kUint8:
      return "uint8";
    case GgufType::kInt8:
      return "int8";
    case GgufType::kUint16:
      return "uint16";
    case GgufType::kInt16:
      return "int16";
    case GgufType::kUint32:
      return "uint32";
    case GgufType::kInt32:
      return "int32";
    case GgufType::kFloat32:
      return "float32";
    case GgufType::kBool:
      return "bool";
    case GgufType::kString:
      return "string";
    case GgufType::kArray:
      return "array";
    case GgufType::kUint64:
      return "uint64";
    case GgufType::kInt64:
      return "int64";
    case GgufType::kFloat64:
      return "float64";
  }
  return "type " + std::to_string(uint32_t(type));
}

std::optional<int64_t> GgufValue::as_integer() const {
  return std::visit(
      [](const auto& value) -> std::optional<int64_t> {
        using T = std::decay_t<decltype(value)>;
        if constexpr (std::is_same_v<T, uint64_t>) {
          if (value > uint64_t(std::numeric_limits<int64_t>::max())) return std::nullopt;
          return int64_t(value);
        } else if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
          return int64_t(value);
        } else {
          return std::nullopt;
        }
      },
      data);
}

std::optional<double> GgufValue::as_float() const {
  if (const float* value = std::get_if<float>(&data)) return double(*value);
  if (const double* value = std::get_if<double>(&data)) return *value;
  return std::nullopt;
}

const GgmlTypeInfo* ggml_type_info(uint32_t type_number) {
  for (const GgmlTypeInfo& info : kGgmlTypes) {
    if (uint32_t(info.type) == type_number) return &info;
  }
  return nullptr;
}

std::string ggml_type_name(GgmlType type) {
  const GgmlTypeInfo* info = ggml_type_info(uint32_t(type));
  if (info) return std::string(info->name);
  return "ggml type " + std::to_string(uint32_t(type));
}

int64_t GgufTensorInfo::element_count() const {
  return shape_numel(dims);
}

Shape GgufTensorInfo::row_major_shape() const {
  return Shape(dims.rbegin(), dims.rend());
}

// Reads the header of one file, front to back, checking each field against the bytes left.
class GgufParser {
 public:
  GgufParser(GgufFile& file) : file_(file), bytes_(file.bytes_), name_(file.name_) {}

  Status parse() {
    KITE_RETURN_IF_ERROR(parse_preamble());
    KITE_RETURN_IF_ERROR(parse_metadata());
    KITE_RETURN_IF_ERROR(read_alignment());
    KITE_RETURN_IF_ERROR(parse_tensor_infos());
    return place_tensor_data();
  }

 private:
  Status corrupt_here(const std::string& problem) const {
    return corrupt(name_ + ": " + problem + " (at byte " + std::to_string(offset_) + ")");
  }
  uint64_t remaining() const { return bytes_.size() - offset_; }

  template <typename T>
  Status read(T* out, std::string_view what) {
    if (remaining() < sizeof(T)) {
      return corrupt_here("file is truncated: it ends while reading " + std::string(what));
    }
    std::memcpy(out, bytes_.data() + offset_, sizeof(T));
    offset_ += sizeof(T);
    return Status::ok();
  }

  Status read_string(std::string* out, std::string_view what) {
    uint64_t length = 0;
    KITE_RETURN_IF_ERROR(read(&length, what));
    if (length > remaining()) {
      return corrupt_here("the length of " + std::string(what) + " (" + std::to_string(length) +
                          " bytes) runs past the end of the file");
    }
    out->assign(reinterpret_cast<const char*>(bytes_.data() + offset_), size_t(length));
    offset_ += length;
    return Status::ok();
  }

  Status parse_preamble() {
    if (bytes_.size() < 4) {
      return corrupt(name_ + ": not a GGUF file (" + std::to_string(bytes_.size()) +
                     " bytes, too short for the magic number)");
    }
    uint32_t magic = 0;
    KITE_RETURN_IF_ERROR(read(&magic, "the magic number"));
    if (magic != kMagic) {
      return corrupt(name_ + ": not a GGUF file (it does not start with \"GGUF\")");
    }
    uint32_t version = 0;
    KITE_RETURN_IF_ERROR(read(&version, "the version"));
    const uint32_t swapped = byte_swapped(version);
    if ((version & 0xffffu) == 0 && swapped >= 1 && swapped <= 3) {
      return unsupported(name_ + ": big-endian GGUF files are not supported; convert it with " +
                         "gguf-py's gguf_convert_endian.py");
    }
    if (version == 1) {
      return unsupported(name_ + ": GGUF version 1 is not supported (Kite reads versions 2 " +
                         "and 3); re-convert the model with a current llama.cpp");
    }
    if (version != 2 && version != 3) {
      return unsupported(name_ + ": GGUF version " + std::to_string(version) +
                         " is not supported (Kite reads versions 2 and 3)");
    }
    file_.version_ = version;
    KITE_RETURN_IF_ERROR(read(&tensor_count_, "the tensor count"));
    KITE_RETURN_IF_ERROR(read(&metadata_count_, "the metadata count"));
    // A key/value takes at least 8 (key length) + 4 (type) + 1 bytes, a tensor description at
    // least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
    if (metadata_count_ > remaining() / 13) {
      return corrupt_here(
          "the header claims " + std::to_string(metadata_count_) +
          " metadata entries, more than the file can hold; it is truncated or corrupt");
    }
    if (tensor_count_ > remaining() / 24) {
      return corrupt_here("the header claims " + std::to_string(tensor_count_) +
                          " tensors, more than the file can hold; it is truncated or corrupt");
    }
    return Status::ok();
  }

  Status parse_metadata() {
    file_.keys_.reserve(size_t(metadata_count_));
    for (uint64_t i = 0; i < metadata_count_; ++i) {
      std::string key;
      KITE_RETURN_IF_ERROR(read_string(&key, "metadata key " + std::to_string(i)));
      uint32_t raw_type = 0;
      KITE_RETURN_IF_ERROR(read(&raw_type, "the type of metadata key '" + key + "'"));
      if (!valid_type(raw_type)) {
        return corrupt_here("metadata key '" + key + "' has unknown value type " +
                            std::to_string(raw_type));
      }
      GgufValue value;
      KITE_RETURN_IF_ERROR(read_value(GgufType(raw_type), key, 0, &value));
      if (file_.metadata_.count(key)) {
        return corrupt_here("metadata key '" + key + "' appears twice");
      }
      file_.keys_.push_back(key);
      file_.metadata_.emplace(std::move(key), std::move(value));
    }
    return Status::ok();
  }

  template <typename T>
  Status read_scalar(const std::string& key, GgufValue* out) {
    T value{};
    KITE_RETURN_IF_ERROR(read(&value, "the value of '" + key + "'"));
    out->data = value;
    return Status::ok();
  }

  Status read_value(GgufType type, const std::string& key, int depth, GgufValue* out) {
    switch (type) {
      case GgufType::kUint8:
        return read_scalar<uint8_t>(key, out);
      case GgufType::kInt8:
        return read_scalar<int8_t>(key, out);
      case GgufType::kUint16:
        return read_scalar<uint16_t>(key, out);
      case GgufType::kInt16:
        return read_scalar<int16_t>(key, out);
      case GgufType::kUint32:
        return read_scalar<uint32_t>(key, out);
      case GgufType::kInt32:
        return read_scalar<int32_t>(key, out);
      case GgufType::kFloat32:
        return read_scalar<float>(key, out);
      case GgufType::kUint64:
        return read_scalar<uint64_t>(key, out);
      case GgufType::kInt64:
        return read_scalar<int64_t>(key, out);
      case GgufType::kFloat64:
        return read_scalar<double>(key, out);
      case GgufType::kBool: {
        uint8_t byte = 0;
        KITE_RETURN_IF_ERROR(read(&byte, "the value of '" + key + "'"));
        if (byte > 1) {
          return corrupt_here("metadata key '" + key + "' holds bool value " +
                              std::to_string(byte) + " (expected 0 or 1)");
        }
        out->data = byte == 1;
        return Status::ok();
      }
      case GgufType::kString: {
        std::string value;
        KITE_RETURN_IF_ERROR(read_string(&value, "the value of '" + key + "'"));
        out->data = std::move(value);
        return Status::ok();
      }
      case GgufType::kArray:
        return read_array(key, depth, out);
    }
    return corrupt_here("metadata key '" + key + "' has an unknown value type");
  }

  Status read_array(const std::string& key, int depth, GgufValue* out) {
    if (depth >= kMaxArrayNesting) {
      return corrupt_here("metadata key '" + key + "' nests arrays more than " +
                          std::to_string(kMaxArrayNesting) + " deep");
    }
    uint32_t raw_type = 0;
    KITE_RETURN_IF_ERROR(read(&raw_type, "the element type of '" + key + "'"));
    if (!valid_type(raw_type)) {
      return corrupt_here("metadata key '" + key + "' is an array of unknown type " +
                          std::to_string(raw_type));
    }
    uint64_t count = 0;
    KITE_RETURN_IF_ERROR(read(&count, "the length of '" + key + "'"));
    const GgufType element_type = GgufType(raw_type);
    if (count > remaining() / min_encoded_size(element_type)) {
      return corrupt_here("metadata key '" + key + "' claims " + std::to_string(count) + " " +
                          gguf_type_name(element_type) +
                          " elements, more than the rest of the file can hold");
    }
    GgufArray array;
    array.element_type = element_type;
    array.elements.resize(size_t(count));
    for (GgufValue& element : array.elements) {
      KITE_RETURN_IF_ERROR(read_value(element_type, key, depth + 1, &element));
    }
    out->data = std::move(array);
    return Status::ok();
  }

  Status read_alignment() {
    const GgufValue* value = file_.find("general.alignment");
    if (!value) return Status::ok();
    const uint32_t* alignment = std::get_if<uint32_t>(&value->data);
    if (!alignment) {
      return corrupt(name_ + ": general.alignment is " + describe_value_type(*value) +
                     ", expected a uint32");
    }
    if (*alignment == 0 || !std::has_single_bit(*alignment)) {
      return corrupt(name_ + ": general.alignment is " + std::to_string(*alignment) +
                     ", expected a power of 2");
    }
    file_.alignment_ = *alignment;
    return Status::ok();
  }

  Status parse_tensor_infos() {
    file_.tensors_.reserve(size_t(tensor_count_));
    for (uint64_t i = 0; i < tensor_count_; ++i) {
      GgufTensorInfo info;
      KITE_RETURN_IF_ERROR(read_string(&info.name, "the name of tensor " + std::to_string(i)));
      const std::string what = "tensor '" + info.name + "'";
      uint32_t dim_count = 0;
      KITE_RETURN_IF_ERROR(read(&dim_count, "the dimension count of " + what));
      if (dim_count > GgufFile::kMaxDims) {
        return corrupt_here(what + " has " + std::to_string(dim_count) +
                            " dimensions; GGUF allows at most " +
                            std::to_string(GgufFile::kMaxDims));
      }
      info.dims.resize(dim_count);
      int64_t element_count = 1;
      for (int64_t& dim : info.dims) {
        KITE_RETURN_IF_ERROR(read(&dim, "the dimensions of " + what));
        if (dim < 0) {
          return corrupt_here(what + " has a negative dimension " + std::to_string(dim));
        }
        if (dim > 0 && element_count > std::numeric_limits<int64_t>::max() / dim) {
          return corrupt_here(what + " has so many elements that their count overflows");
        }
        element_count *= dim;
      }
      uint32_t raw_type = 0;
      KITE_RETURN_IF_ERROR(read(&raw_type, "the type of " + what));
      const GgmlTypeInfo* type = ggml_type_info(raw_type);
      if (!type) {
        return unsupported(name_ + ": " + what + " has unknown ggml type " +
                           std::to_string(raw_type) +
                           " (a newer llama.cpp type, or a corrupt file)");
      }
      info.type = type->type;
      const int64_t row_length = info.dims.empty() ? 1 : info.dims[0];
      if (row_length % type->block_size != 0) {
        return corrupt_here(what + " of type " + std::string(type->name) + " has rows of " +
                            std::to_string(row_length) + " elements, not a multiple of the " +
                            "block size " + std::to_string(type->block_size));
      }
      const uint64_t blocks = uint64_t(element_count / type->block_size);
      if (blocks > std::numeric_limits<uint64_t>::max() / uint64_t(type->block_bytes)) {
        return corrupt_here(what + " is too large");
      }
      info.byte_size = blocks * uint64_t(type->block_bytes);
      KITE_RETURN_IF_ERROR(read(&info.offset, "the data offset of " + what));
      if (info.offset % file_.alignment_ != 0) {
        return corrupt_here(what + " has data offset " + std::to_string(info.offset) +
                            ", not a multiple of the alignment " +
                            std::to_string(file_.alignment_));
      }
      if (file_.tensor_index_.count(info.name)) {
        return corrupt_here("tensor '" + info.name + "' appears twice");
      }
      file_.tensor_index_.emplace(info.name, file_.tensors_.size());
      file_.tensors_.push_back(std::move(info));
    }
    return Status::ok();
  }

  Status place_tensor_data() {
    // The data section starts at the next multiple of the alignment after the header.
    const uint64_t alignment = file_.alignment_;
    const uint64_t padding = (alignment - offset_ % alignment) % alignment;
    const uint64_t data_start = offset_ + padding;
    file_.data_section_offset_ = data_start;
    if (file_.tensors_.empty()) return Status::ok();
    if (data_start > bytes_.size()) {
      return corrupt(name_ + ": file is truncated: it ends before the tensor data section (at " +
                     "byte " + std::to_string(data_start) + ")");
    }
    const uint64_t data_size = bytes_.size() - data_start;
    for (const GgufTensorInfo& info : file_.tensors_) {
      if (info.offset > data_size || info.byte_size > data_size - info.offset) {
        return corrupt(name_ + ": tensor '" + info.name + "' (" + std::to_string(info.byte_size) +
                       " bytes at data offset " + std::to_string(info.offset) +
                       ") runs past the end of the file; the file is truncated or corrupt");
      }
    }
    return Status::ok();
  }

  GgufFile& file_;
  std::span<const uint8_t> bytes_;
  const std::string& name_;
  uint64_t offset_ = 0;
  uint64_t tensor_count_ = 0;
  uint64_t metadata_count_ = 0;
};

Result<GgufFile> GgufFile::open(const std::string& path) {
  KITE_ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::open(path));
  GgufFile file;
  file.name_ = path;
  file.file_ = std::move(mapped);
  file.bytes_ = file.file_.bytes();
  KITE_RETURN_IF_ERROR(GgufParser(file).parse());
  return file;
}

Result<GgufFile> GgufFile::parse(std::span<const uint8_t> bytes, const std::string& name) {
  GgufFile file;
  file.name_ = name;
  file.bytes_ = bytes;
  KITE_RETURN_IF_ERROR(GgufParser(file).parse());
  return file;
}

const GgufValue* GgufFile::find(std::string_view key) const {
  const auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

namespace {

Status missing_key(const std::string& file, std::string_view key) {
  return corrupt(file + ": metadata key '" + std::string(key) + "' is missing");
}

Status wrong_type(const std::string& file, std::string_view key, const GgufValue& value,
                  std::string_view expected) {
  return corrupt(file + ": metadata key '" + std::string(key) + "' is " +
                 describe_value_type(value) + ", expected " + std::string(expected));
}

}  // namespace

Result<std::string> GgufFile::get_string(std::string_view key) const {
  const GgufValue* value = find(key);
  if (!value) return missing_key(name_, key);
  if (const std::string* text = value->as_string()) return *text;
  return wrong_type(name_, key, *value, "a string");
}

Result<uint64_t> GgufFile::get_uint(std::string_view key) const {
  const GgufValue* value = find(key);
  if (!value) return missing_key(name_, key);
  if (const uint64_t* wide = std::get_if<uint64_t>(&value->data)) return *wide;
  const std::optional<int64_t> integer = value->as_integer();
  if (!integer) return wrong_type(name_, key, *value, "an unsigned integer");
  if (*integer < 0) {
    return corrupt(name_ + ": metadata key '" + std::string(key) + "' is " +
                   std::to_string(*integer) + ", expected a value >= 0");
  }
  return uint64_t(*integer);
}

Result<int64_t> GgufFile::get_int(std::string_view key) const {
  const GgufValue* value = find(key);
  if (!value) return missing_key(name_, key);
  const std::optional<int64_t> integer = value->as_integer();
  if (!integer) return wrong_type(name_, key, *value, "an integer");
  return *integer;
}

Result<double> GgufFile::get_float(std::string_view key) const {
  const GgufValue* value = find(key);
  if (!value) return missing_key(name_, key);
  const std::optional<double> number = value->as_float();
  if (!number) return wrong_type(name_, key, *value, "a float32 or float64");
  return *number;
}

Result<bool> GgufFile::get_bool(std::string_view key) const {
  const GgufValue* value = find(key);
  if (!value) return missing_key(name_, key);
  if (const bool* flag = std::get_if<bool>(&value->data)) return *flag;
  return wrong_type(name_, key, *value, "a bool");
}

Result<const GgufArray*> GgufFile::get_array(std::string_view key) const {
  const GgufValue* value = find(key);
  if (!value) return missing_key(name_, key);
  if (const GgufArray* array = value->as_array()) return array;
  return wrong_type(name_, key, *value, "an array");
}

Result<std::vector<std::string>> GgufFile::get_string_array(std::string_view key) const {
  KITE_ASSIGN_OR_RETURN(const GgufArray* array, get_array(key));
  if (array->element_type != GgufType::kString) {
    return wrong_type(name_, key, *find(key), "an array of string");
  }
  std::vector<std::string> strings;
  strings.reserve(array->elements.size());
  for (const GgufValue& element : array->elements) strings.push_back(*element.as_string());
  return strings;
}

Result<std::vector<int64_t>> GgufFile::get_int_array(std::string_view key) const {
  KITE_ASSIGN_OR_RETURN(const GgufArray* array, get_array(key));
  std::vector<int64_t> integers;
  integers.reserve(array->elements.size());
  for (const GgufValue& element : array->elements) {
    const std::optional<int64_t> integer = element.as_integer();
    if (!integer) return wrong_type(name_, key, *find(key), "an array of integers");
    integers.push_back(*integer);
  }
  return integers;
}

Result<std::vector<float>> GgufFile::get_float_array(std::string_view key) const {
  KITE_ASSIGN_OR_RETURN(const GgufArray* array, get_array(key));
  std::vector<float> numbers;
  numbers.reserve(array->elements.size());
  for (const GgufValue& element : array->elements) {
    if (const std::optional<double> number = element.as_float()) {
      numbers.push_back(float(*number));
    } else if (const std::optional<int64_t> integer = element.as_integer()) {
      numbers.push_back(float(*integer));
    } else {
      return wrong_type(name_, key, *find(key), "an array of numbers");
    }
  }
  return numbers;
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const uint8_t> GgufFile::tensor_data(const GgufTensorInfo& info) const {
  return bytes_.subspan(size_t(data_section_offset_ + info.offset), size_t(info.byte_size));
}

}  // namespace kite
