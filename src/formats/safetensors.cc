// Reading, validating and writing safetensors files, and opening the (possibly sharded) weights of
// a Hugging Face model folder. Every check runs before a tensor is handed out, so a corrupt or
// hostile file yields a Status naming the file, never an out-of-bounds read.
#include "formats/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

namespace kite {
namespace {

constexpr uint64_t kHeaderLengthBytes = 8;
// The reference implementation refuses headers above 100 MB; so do we (a header that large would
// describe millions of tensors and is far more likely to be garbage).
constexpr uint64_t kMaxHeaderLength = 100'000'000;
constexpr const char* kMetadataKey = "__metadata__";

uint64_t load_u64_le(const uint8_t* bytes) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

void store_u64_le(uint64_t value, uint8_t* bytes) {
  for (int i = 0; i < 8; ++i) bytes[i] = uint8_t(value >> (8 * i));
}

// Reads a JSON number that must be a non-negative integer.
bool json_to_u64(const nlohmann::json& value, uint64_t* out) {
  if (value.is_number_unsigned()) {
    *out = value.get<uint64_t>();
    return true;
  }
  if (value.is_number_integer()) {
    const int64_t signed_value = value.get<int64_t>();
    if (signed_value < 0) return false;
    *out = uint64_t(signed_value);
    return true;
  }
  return false;
}

Status parse_entry(const std::string& path, const std::string& name, const nlohmann::json& info,
                   uint64_t data_size, SafetensorsEntry* entry) {
  const std::string where = path + ": tensor '" + name + "'";
  if (!info.is_object()) return corrupt(where + " is not described by a JSON object");
  const auto dtype_field = info.find("dtype");
  const auto shape_field = info.find("shape");
  const auto offsets_field = info.find("data_offsets");
  if (dtype_field == info.end() || shape_field == info.end() || offsets_field == info.end())
    return corrupt(where + " lacks one of \"dtype\", \"shape\", \"data_offsets\"");
  if (!dtype_field->is_string()) return corrupt(where + " has a non-string dtype");
  Result<DType> dtype = parse_safetensors_dtype(dtype_field->get_ref<const std::string&>());
  if (!dtype.is_ok()) return dtype.status().with_context(where);
  entry->name = name;
  entry->dtype = *dtype;

  if (!shape_field->is_array()) return corrupt(where + " has a shape that is not an array");
  // The element count is computed in unsigned 64-bit with overflow checks, so absurd shapes
  // cannot wrap around to a small byte size that would pass the size check.
  uint64_t element_count = 1;
  entry->shape.clear();
  for (const auto& dimension : *shape_field) {
    if (dimension.is_number_integer() && !dimension.is_number_unsigned() &&
        dimension.get<int64_t>() < 0) {
      return corrupt(where + " has a negative dimension " +
                     std::to_string(dimension.get<int64_t>()) + " in its shape");
    }
    uint64_t size = 0;
    if (!json_to_u64(dimension, &size) || size > uint64_t(INT64_MAX))
      return corrupt(where + " has a shape entry that is not a valid size (a " +
                     dimension.type_name() + ")");
    if (__builtin_mul_overflow(element_count, size, &element_count))
      return corrupt(where + " has a shape whose element count overflows 64 bits");
    entry->shape.push_back(int64_t(size));
  }
  uint64_t expected_bytes = 0;
  if (element_count > uint64_t(INT64_MAX) ||
      __builtin_mul_overflow(element_count, uint64_t(dtype_size(entry->dtype)), &expected_bytes))
    return corrupt(where + " has a shape whose byte size overflows 64 bits");

  if (!offsets_field->is_array() || offsets_field->size() != 2 ||
      !json_to_u64((*offsets_field)[0], &entry->begin) ||
      !json_to_u64((*offsets_field)[1], &entry->end)) {
    return corrupt(where + " has data_offsets that are not two non-negative integers");
  }
  if (entry->begin > entry->end || entry->end > data_size) {
    return corrupt(where + " has data_offsets [" + std::to_string(entry->begin) + ", " +
                   std::to_string(entry->end) + "] out of range (the data section is " +
                   std::to_string(data_size) + " bytes; is the file truncated?)");
  }
  if (entry->end - entry->begin != expected_bytes) {
    return corrupt(where + " occupies " + std::to_string(entry->end - entry->begin) +
                   " bytes but its dtype " + std::string(dtype_safetensors_name(entry->dtype)) +
                   " and shape " + shape_to_string(entry->shape) + " need " +
                   std::to_string(expected_bytes));
  }
  return Status::ok();
}

}  // namespace

Result<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  SafetensorsFile result;
  KITE_ASSIGN_OR_RETURN(result.file_, MappedFile::open(path));
  const uint64_t file_size = result.file_.size();
  if (file_size < kHeaderLengthBytes) {
    return corrupt(path + ": file is " + std::to_string(file_size) +
                   " bytes, too short to be a safetensors file (truncated?)");
  }
  const uint64_t header_length = load_u64_le(result.file_.data());
  if (header_length < 2 || header_length > kMaxHeaderLength) {
    return corrupt(path + ": header length " + std::to_string(header_length) +
                   " is not plausible; this is not a safetensors file");
  }
  if (header_length > file_size - kHeaderLengthBytes) {
    return corrupt(path + ": header length " + std::to_string(header_length) +
                   " runs past the end of the file (" + std::to_string(file_size) +
                   " bytes); the file is truncated or not a safetensors file");
  }
  const char* header_begin =
      reinterpret_cast<const char*>(result.file_.data()) + kHeaderLengthBytes;
  const nlohmann::json header =
      nlohmann::json::parse(header_begin, header_begin + header_length, nullptr,
                            /*allow_exceptions=*/false);
  if (header.is_discarded()) return corrupt(path + ": the header is not valid JSON");
  if (!header.is_object()) return corrupt(path + ": the header is not a JSON object");

  const uint64_t data_offset = kHeaderLengthBytes + header_length;
  const uint64_t data_size = file_size - data_offset;
  result.data_begin_ = result.file_.data() + data_offset;

  std::vector<SafetensorsEntry> entries;
  entries.reserve(header.size());
  for (const auto& [name, info] : header.items()) {
    if (name == kMetadataKey) {
      if (!info.is_object()) return corrupt(path + ": __metadata__ is not a JSON object");
      for (const auto& [key, value] : info.items()) {
        if (!value.is_string())
          return corrupt(path + ": __metadata__ value of '" + key + "' is not a string");
        result.metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    SafetensorsEntry entry;
    KITE_RETURN_IF_ERROR(parse_entry(path, name, info, data_size, &entry));
    entries.push_back(std::move(entry));
  }

  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  // Gaps between tensors are tolerated, shared bytes are not: two tensors aliasing the same bytes
  // would make writes through one visible in the other once weights are loaded in place. Empty
  // tensors own no bytes and cannot overlap anything.
  const SafetensorsEntry* previous = nullptr;
  for (const SafetensorsEntry& entry : entries) {
    if (entry.begin == entry.end) continue;
    if (previous && entry.begin < previous->end) {
      return corrupt(path + ": tensors '" + previous->name + "' and '" + entry.name +
                     "' overlap in the data section");
    }
    previous = &entry;
  }
  for (SafetensorsEntry& entry : entries) {
    result.names_.push_back(entry.name);
    result.entries_.emplace(entry.name, std::move(entry));
  }
  return result;
}

const SafetensorsEntry* SafetensorsFile::entry(const std::string& name) const {
  const auto found = entries_.find(name);
  return found == entries_.end() ? nullptr : &found->second;
}

Result<TensorView> SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsEntry* found = entry(name);
  if (!found) return not_found("no tensor '" + name + "' in " + path());
  return TensorView{found->dtype, found->shape, data_begin_ + found->begin};
}

Result<SafetensorsCollection> SafetensorsCollection::open_directory(const std::string& directory) {
  if (!is_directory(directory)) return not_found("model folder " + directory + " does not exist");
  SafetensorsCollection collection;
  const std::string index_path = directory + "/model.safetensors.index.json";
  const std::string single_path = directory + "/model.safetensors";
  if (!path_exists(index_path)) {
    if (!path_exists(single_path)) {
      return not_found("no model.safetensors or model.safetensors.index.json in " + directory);
    }
    KITE_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::open(single_path));
    for (const std::string& name : file.names()) collection.shard_of_[name] = 0;
    collection.shards_.push_back(std::make_unique<SafetensorsFile>(std::move(file)));
    return collection;
  }

  KITE_ASSIGN_OR_RETURN(std::string index_text, read_file(index_path));
  const nlohmann::json index = nlohmann::json::parse(index_text, nullptr, false);
  if (index.is_discarded() || !index.is_object())
    return corrupt(index_path + ": not a valid JSON object");
  const auto weight_map = index.find("weight_map");
  if (weight_map == index.end() || !weight_map->is_object())
    return corrupt(index_path + ": no \"weight_map\" object (tensor name -> shard file)");

  std::map<std::string, size_t> shard_index_of_file;
  for (const auto& [name, shard] : weight_map->items()) {
    if (!shard.is_string())
      return corrupt(index_path + ": the shard of tensor '" + name + "' is not a file name");
    const std::string& file_name = shard.get_ref<const std::string&>();
    // Shards live beside the index; a path that leaves the folder is refused rather than opened.
    if (file_name.empty() || file_name.find('/') != std::string::npos || file_name == "." ||
        file_name == "..") {
      return corrupt(index_path + ": shard file name '" + file_name + "' of tensor '" + name +
                     "' is not a plain file name");
    }
    auto [position, inserted] = shard_index_of_file.emplace(file_name, collection.shards_.size());
    if (inserted) {
      Result<SafetensorsFile> file = SafetensorsFile::open(directory + "/" + file_name);
      if (!file.is_ok()) {
        return file.status().with_context(index_path + " lists shard " + file_name +
                                          " (for tensor '" + name + "')");
      }
      collection.shards_.push_back(std::make_unique<SafetensorsFile>(std::move(file).value()));
    }
    const SafetensorsFile& file = *collection.shards_[position->second];
    if (!file.contains(name)) {
      return corrupt(index_path + " says tensor '" + name + "' is in " + file_name +
                     ", but that file has no such tensor");
    }
    collection.shard_of_[name] = position->second;
  }
  return collection;
}

std::vector<std::string> SafetensorsCollection::names() const {
  std::vector<std::string> result;
  result.reserve(shard_of_.size());
  for (const auto& [name, shard] : shard_of_) result.push_back(name);
  std::sort(result.begin(), result.end());
  return result;
}

const SafetensorsEntry* SafetensorsCollection::entry(const std::string& name) const {
  const auto found = shard_of_.find(name);
  return found == shard_of_.end() ? nullptr : shards_[found->second]->entry(name);
}

Result<TensorView> SafetensorsCollection::tensor(const std::string& name) const {
  const auto found = shard_of_.find(name);
  if (found == shard_of_.end()) {
    const std::string where = shards_.empty() ? std::string("the model") : shards_[0]->path();
    return not_found("no tensor '" + name + "' in " + where);
  }
  return shards_[found->second]->tensor(name);
}

void SafetensorsWriter::declare(std::string name, DType dtype, Shape shape) {
  SafetensorsEntry entry;
  entry.name = std::move(name);
  entry.dtype = dtype;
  entry.shape = std::move(shape);
  declared_.push_back(std::move(entry));
}

void SafetensorsWriter::set_metadata(std::string key, std::string value) {
  metadata_[std::move(key)] = std::move(value);
}

namespace {

// A file written through a descriptor and renamed into place when complete; removed on failure.
class StagedFile {
 public:
  explicit StagedFile(std::string path) : path_(std::move(path)), temporary_(path_ + ".tmp") {}
  ~StagedFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(temporary_.c_str());
  }

  Status open() {
    fd_ = ::open(temporary_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) return error("cannot create");
    return Status::ok();
  }
  Status write(const uint8_t* data, size_t size) {
    while (size > 0) {
      const ssize_t written = ::write(fd_, data, size);
      if (written < 0) {
        if (errno == EINTR) continue;
        return error("cannot write");
      }
      data += written;
      size -= size_t(written);
    }
    return Status::ok();
  }
  Status commit() {
    const int fd = std::exchange(fd_, -1);
    if (::close(fd) != 0) return error("cannot write");
    if (std::rename(temporary_.c_str(), path_.c_str()) != 0) return error("cannot rename into");
    committed_ = true;
    return Status::ok();
  }

 private:
  Status error(const std::string& what) const {
    const int code = errno;
    const std::string message = what + " " + (what == "cannot rename into" ? path_ : temporary_) +
                                ": " + std::strerror(code);
    return code == ENOENT ? not_found(message) : io_error(message);
  }

  std::string path_;
  std::string temporary_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace

Status SafetensorsWriter::write(const std::string& path,
                                const std::function<Result<Tensor>(size_t index)>& produce,
                                const std::function<void(size_t index)>& on_progress) const {
  // The header keeps declaration order, metadata first, as the reference writer does.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) header[kMetadataKey] = metadata_;
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const SafetensorsEntry& entry : declared_) {
    if (entry.name == kMetadataKey || !seen.insert(entry.name).second) {
      return invalid_argument("cannot write " + path + ": tensor name '" + entry.name +
                              "' is reserved or declared twice");
    }
    if (std::any_of(entry.shape.begin(), entry.shape.end(), [](int64_t d) { return d < 0; })) {
      return invalid_argument("cannot write " + path + ": tensor '" + entry.name +
                              "' has a negative dimension " + shape_to_string(entry.shape));
    }
    const uint64_t bytes = uint64_t(shape_numel(entry.shape)) * dtype_size(entry.dtype);
    header[entry.name] = {{"dtype", dtype_safetensors_name(entry.dtype)},
                          {"shape", entry.shape},
                          {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string header_text = header.dump();
  // Spaces pad the header so the data section starts 8-byte aligned; JSON ignores them.
  header_text.resize((header_text.size() + 7) / 8 * 8, ' ');

  StagedFile file(path);
  KITE_RETURN_IF_ERROR(file.open());
  uint8_t length_bytes[kHeaderLengthBytes];
  store_u64_le(header_text.size(), length_bytes);
  KITE_RETURN_IF_ERROR(file.write(length_bytes, sizeof(length_bytes)));
  KITE_RETURN_IF_ERROR(
      file.write(reinterpret_cast<const uint8_t*>(header_text.data()), header_text.size()));
  for (size_t i = 0; i < declared_.size(); ++i) {
    const SafetensorsEntry& entry = declared_[i];
    Result<Tensor> tensor = produce(i);
    if (!tensor.is_ok()) return tensor.status();
    if (tensor->dtype() != entry.dtype || tensor->shape() != entry.shape) {
      return internal_error("writing " + path + ": tensor '" + entry.name + "' was declared " +
                            std::string(dtype_name(entry.dtype)) + " " +
                            shape_to_string(entry.shape) + " but produced as " +
                            std::string(dtype_name(tensor->dtype())) + " " +
                            shape_to_string(tensor->shape()));
    }
    KITE_RETURN_IF_ERROR(file.write(tensor->data(), tensor->byte_size()));
    if (on_progress) on_progress(i);
  }
  return file.commit();
}

Status write_safetensors(const std::string& path,
                         const std::vector<std::pair<std::string, Tensor>>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  SafetensorsWriter writer;
  for (const auto& [name, tensor] : tensors) writer.declare(name, tensor.dtype(), tensor.shape());
  for (const auto& [key, value] : metadata) writer.set_metadata(key, value);
  return writer.write(path, [&](size_t index) -> Result<Tensor> {
    return Tensor::copy_of(tensors[index].second.view());
  });
}

}  // namespace kite
