// Reading and writing Kite engines: config.json and the rank files (layout in engine_file.h and
// docs/engine.md). Every check of a rank file happens in EngineFile::open, before any weight is
// used.
#include "formats/engine_file.h"

#include <array>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

namespace kite {
namespace {

constexpr char kMagic[8] = {'K', 'I', 'T', 'E', 'E', 'N', 'G', '\0'};
constexpr size_t kAlignment = 64;
// magic (8) + format version (u32) + reserved (u32) + header length (u64)
constexpr size_t kPreambleSize = 24;
constexpr uint64_t kMaxHeaderSize = 100u << 20;

size_t align_up(size_t value) {
  return (value + kAlignment - 1) / kAlignment * kAlignment;
}

// Slicing-by-8 tables: tables[0] is the classic byte table; tables[k][b] is the CRC of byte b
// followed by k zero bytes, so that 8 input bytes fold into the CRC with 8 lookups at once (about
// 8x the byte-at-a-time speed: engine files are tens of GB, checked at every load).
using CrcTables = std::array<std::array<uint32_t, 256>, 8>;
const CrcTables& crc_tables() {
  static const CrcTables tables = [] {
    CrcTables entries{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t value = i;
      for (int bit = 0; bit < 8; ++bit)
        value = (value & 1) ? 0xEDB88320u ^ (value >> 1) : value >> 1;
      entries[0][i] = value;
    }
    for (uint32_t i = 0; i < 256; ++i) {
      for (size_t k = 1; k < 8; ++k) {
        entries[k][i] = (entries[k - 1][i] >> 8) ^ entries[0][entries[k - 1][i] & 0xFF];
      }
    }
    return entries;
  }();
  return tables;
}

Result<int64_t> positive_field(const nlohmann::json& object, const char* key,
                               const std::string& source) {
  const auto found = object.find(key);
  if (found == object.end() || !found->is_number_integer() || found->get<int64_t>() < 1) {
    return corrupt(source + ": build." + key + " must be a positive integer");
  }
  return found->get<int64_t>();
}

Result<DType> float_dtype_field(const nlohmann::json& json, const char* key,
                                const std::string& source) {
  const auto found = json.find(key);
  if (found == json.end() || !found->is_string()) return corrupt(source + " lacks \"" + key + "\"");
  Result<DType> dtype = parse_dtype_name(found->get<std::string>());
  if (!dtype.is_ok() || (*dtype != DType::kF32 && *dtype != DType::kF16 && *dtype != DType::kBF16))
    return corrupt(source + ": \"" + key + "\" is not float32, float16 or bfloat16");
  return *dtype;
}

// A FILE* that closes itself.
struct FileCloser {
  void operator()(std::FILE* file) const { std::fclose(file); }
};

}  // namespace

uint32_t crc32(const uint8_t* data, size_t size, uint32_t crc) {
  const CrcTables& t = crc_tables();
  crc = ~crc;
  size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    // Little-endian: the first 4 bytes fold into the running CRC, the next 4 are looked up alone.
    const uint32_t low = crc ^ (uint32_t(data[i]) | uint32_t(data[i + 1]) << 8 |
                                uint32_t(data[i + 2]) << 16 | uint32_t(data[i + 3]) << 24);
    const uint32_t high = uint32_t(data[i + 4]) | uint32_t(data[i + 5]) << 8 |
                          uint32_t(data[i + 6]) << 16 | uint32_t(data[i + 7]) << 24;
    crc = t[7][low & 0xFF] ^ t[6][(low >> 8) & 0xFF] ^ t[5][(low >> 16) & 0xFF] ^ t[4][low >> 24] ^
          t[3][high & 0xFF] ^ t[2][(high >> 8) & 0xFF] ^ t[1][(high >> 16) & 0xFF] ^
          t[0][high >> 24];
  }
  for (; i < size; ++i) crc = t[0][(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

namespace {

// CRC-32 arithmetic over GF(2) for combining the CRCs of consecutive pieces (zlib's method): the
// CRC of A followed by B is crc(A) advanced over len(B) zero bytes, xor crc(B).
uint32_t gf2_matrix_times(const uint32_t* matrix, uint32_t vector) {
  uint32_t sum = 0;
  for (int i = 0; vector; vector >>= 1, ++i) {
    if (vector & 1) sum ^= matrix[i];
  }
  return sum;
}

void gf2_matrix_square(uint32_t* square, const uint32_t* matrix) {
  for (int i = 0; i < 32; ++i) square[i] = gf2_matrix_times(matrix, matrix[i]);
}

uint32_t crc32_combine(uint32_t crc1, uint32_t crc2, size_t length2) {
  if (length2 == 0) return crc1;
  uint32_t even[32], odd[32];  // operators for 2^k zero bits
  odd[0] = 0xEDB88320u;        // one zero bit
  for (int i = 1; i < 32; ++i) odd[i] = 1u << (i - 1);
  gf2_matrix_square(even, odd);  // two zero bits
  gf2_matrix_square(odd, even);  // four zero bits
  do {
    gf2_matrix_square(even, odd);
    if (length2 & 1) crc1 = gf2_matrix_times(even, crc1);
    length2 >>= 1;
    if (length2 == 0) break;
    gf2_matrix_square(odd, even);
    if (length2 & 1) crc1 = gf2_matrix_times(odd, crc1);
    length2 >>= 1;
  } while (length2 != 0);
  return crc1 ^ crc2;
}

}  // namespace

uint32_t crc32_parallel(const uint8_t* data, size_t size, uint32_t crc) {
  constexpr size_t kMinPiece = size_t(64) << 20;
  const size_t threads = std::min<size_t>(std::max(1u, std::thread::hardware_concurrency()),
                                          std::max<size_t>(1, size / kMinPiece));
  if (threads <= 1) return crc32(data, size, crc);
  const size_t piece = (size + threads - 1) / threads;
  std::vector<uint32_t> crcs(threads);
  std::vector<std::thread> workers;
  for (size_t t = 0; t < threads; ++t) {
    const size_t begin = std::min(size, t * piece), end = std::min(size, begin + piece);
    workers.emplace_back(
        [&crcs, data, begin, end, t] { crcs[t] = crc32(data + begin, end - begin); });
  }
  for (std::thread& worker : workers) worker.join();
  for (size_t t = 0; t < threads; ++t) {
    const size_t begin = std::min(size, t * piece), end = std::min(size, begin + piece);
    crc = crc32_combine(crc, crcs[t], end - begin);
  }
  return crc;
}

std::string engine_rank_path(const std::string& engine_dir, int rank) {
  return engine_dir + "/rank" + std::to_string(rank) + ".engine";
}

nlohmann::ordered_json engine_config_to_json(const EngineConfig& config) {
  nlohmann::ordered_json json;
  json["kite_engine_version"] = config.format_version;
  json["kite_version"] = config.kite_version;
  json["device"] = config.device;
  json["build"] = {{"max_batch_size", config.limits.max_batch_size},
                   {"max_input_len", config.limits.max_input_len},
                   {"max_seq_len", config.limits.max_seq_len},
                   {"tokens_per_block", config.limits.tokens_per_block},
                   {"max_num_tokens", config.limits.max_num_tokens},
                   {"max_beam_width", config.limits.beam_width_limit()}};
  json["weight_dtype"] = dtype_name(config.weight_dtype);
  json["weight_only"] = weight_only_config_to_json(config.weight_only);
  json["norm_scales_folded"] = config.norm_scales_folded;
  json["kv_cache"] = {{"block_size", config.limits.tokens_per_block},
                      {"dtype", dtype_name(config.kv_cache_dtype)}};
  json["model"] = model_config_to_json(config.model);
  json["built_from"] = config.built_from;
  json["memory"] = {{"weights_bytes", config.memory.weights_bytes},
                    {"activation_bytes", config.memory.activation_bytes},
                    {"kv_cache_bytes_per_token", config.memory.kv_cache_bytes_per_token}};
  if (config.device == "cuda") {
    nlohmann::ordered_json tactics = nlohmann::ordered_json::array();
    for (const GemmChoice& choice : config.gemm_choices) {
      tactics.push_back({{"max_tokens", choice.max_tokens},
                         {"n", choice.n},
                         {"k", choice.k},
                         {"algorithm", choice.algorithm},
                         {"variant", choice.variant},
                         {"microseconds", choice.microseconds},
                         {"gated", choice.gated}});
    }
    json["cuda"] = {{"gpu_name", config.gpu_name},
                    {"compute_capability", config.compute_capability},
                    {"multi_block_mode", config.multi_block_mode},
                    {"gemm_tactics", tactics}};
  }
  return json;
}

Result<EngineConfig> engine_config_from_json(const nlohmann::json& json,
                                             const std::string& source) {
  if (!json.is_object()) return corrupt(source + " is not a JSON object");
  const auto version = json.find("kite_engine_version");
  if (version == json.end() || !version->is_number_integer()) {
    return corrupt(source +
                   " is not a Kite engine config (no kite_engine_version); build one "
                   "with kite build");
  }
  if (version->get<int64_t>() != kEngineFormatVersion) {
    return unsupported(source + " is a version " + std::to_string(version->get<int64_t>()) +
                       " engine; this Kite runs version " + std::to_string(kEngineFormatVersion) +
                       " engines: build it again with this kite");
  }
  EngineConfig config;
  config.format_version = kEngineFormatVersion;
  const auto device = json.find("device");
  if (device == json.end() || !device->is_string() || (*device != "cpu" && *device != "cuda")) {
    return corrupt(source + ": \"device\" must be \"cpu\" or \"cuda\"");
  }
  config.device = device->get<std::string>();
  if (json.contains("kite_version") && json.at("kite_version").is_string())
    config.kite_version = json.at("kite_version").get<std::string>();
  if (json.contains("built_from") && json.at("built_from").is_string())
    config.built_from = json.at("built_from").get<std::string>();
  const auto build = json.find("build");
  if (build == json.end() || !build->is_object()) return corrupt(source + " lacks \"build\"");
  KITE_ASSIGN_OR_RETURN(config.limits.max_batch_size,
                        positive_field(*build, "max_batch_size", source));
  KITE_ASSIGN_OR_RETURN(config.limits.max_input_len,
                        positive_field(*build, "max_input_len", source));
  KITE_ASSIGN_OR_RETURN(config.limits.max_seq_len, positive_field(*build, "max_seq_len", source));
  KITE_ASSIGN_OR_RETURN(config.limits.tokens_per_block,
                        positive_field(*build, "tokens_per_block", source));
  if (config.limits.max_input_len > config.limits.max_seq_len)
    return corrupt(source + ": build.max_input_len exceeds build.max_seq_len");
  KITE_ASSIGN_OR_RETURN(config.limits.max_num_tokens,
                        positive_field(*build, "max_num_tokens", source));
  if (config.limits.max_num_tokens < config.limits.max_batch_size)
    return corrupt(source + ": build.max_num_tokens is below build.max_batch_size");
  // Engines built before the limit existed: as wide as the batch.
  if (build->contains("max_beam_width")) {
    KITE_ASSIGN_OR_RETURN(config.limits.max_beam_width,
                          positive_field(*build, "max_beam_width", source));
    if (config.limits.max_beam_width > config.limits.max_batch_size)
      return corrupt(source + ": build.max_beam_width exceeds build.max_batch_size");
  }
  KITE_ASSIGN_OR_RETURN(config.weight_dtype, float_dtype_field(json, "weight_dtype", source));
  if (const auto weight_only = json.find("weight_only"); weight_only != json.end()) {
    KITE_ASSIGN_OR_RETURN(config.weight_only, weight_only_config_from_json(*weight_only, source));
  }
  if (const auto folded = json.find("norm_scales_folded"); folded != json.end()) {
    if (!folded->is_boolean())
      return corrupt(source + ": \"norm_scales_folded\" must be a boolean");
    config.norm_scales_folded = folded->get<bool>();
    if (config.norm_scales_folded && config.weight_only.enabled()) {
      return corrupt(source + ": norm scales folded into weight-only quantized weights");
    }
  }
  const auto kv_cache = json.find("kv_cache");
  if (kv_cache == json.end() || !kv_cache->is_object())
    return corrupt(source + " lacks \"kv_cache\"");
  if (kv_cache->value("dtype", "") == dtype_name(DType::kF8E4M3)) {
    config.kv_cache_dtype = DType::kF8E4M3;
  } else {
    Result<DType> dtype = float_dtype_field(*kv_cache, "dtype", source);
    if (!dtype.is_ok()) {
      return corrupt(source +
                     ": \"kv_cache\" needs a \"dtype\" of float32, float16, bfloat16 "
                     "or float8_e4m3");
    }
    config.kv_cache_dtype = *dtype;
  }
  const auto model = json.find("model");
  if (model == json.end() || !model->is_object()) return corrupt(source + " lacks \"model\"");
  KITE_ASSIGN_OR_RETURN(config.model, model_config_from_json(*model, source));
  KITE_RETURN_IF_ERROR(check_weight_only(config.model, config.weight_only).with_context(source));
  if (const auto memory = json.find("memory"); memory != json.end()) {
    MemoryPlan& plan = config.memory;
    for (auto [name, field] :
         {std::pair{"weights_bytes", &plan.weights_bytes},
          std::pair{"activation_bytes", &plan.activation_bytes},
          std::pair{"kv_cache_bytes_per_token", &plan.kv_cache_bytes_per_token}}) {
      const auto value = memory->is_object() ? memory->find(name) : memory->end();
      if (value == memory->end() || !value->is_number_integer() || value->get<int64_t>() < 0) {
        return corrupt(source + ": memory." + name +
                       " must be a non-negative integer; build the engine again");
      }
      *field = value->get<int64_t>();
    }
  }
  if (config.device == "cuda") {
    const auto cuda = json.find("cuda");
    if (cuda == json.end() || !cuda->is_object()) return corrupt(source + " lacks \"cuda\"");
    try {
      config.gpu_name = cuda->at("gpu_name").get<std::string>();
      config.compute_capability = cuda->at("compute_capability").get<int>();
      config.multi_block_mode = cuda->at("multi_block_mode").get<bool>();
      for (const auto& tactic : cuda->at("gemm_tactics")) {
        const GemmChoice choice{tactic.at("max_tokens").get<int64_t>(),
                                tactic.at("n").get<int64_t>(),
                                tactic.at("k").get<int64_t>(),
                                tactic.at("algorithm").get<int32_t>(),
                                tactic.at("variant").get<int32_t>(),
                                tactic.value("microseconds", 0.0f),
                                tactic.value("gated", false)};
        // (Whether a small-M configuration exists is the CUDA backend's to say.)
        if (choice.max_tokens < 1 || choice.n < 1 || choice.k < 1 || choice.algorithm < 0 ||
            choice.algorithm >= kGemmAlgorithmCount || choice.variant < 0) {
          return corrupt(source + ": cuda.gemm_tactics has an entry out of range (" +
                         tactic.dump() + "); build the engine again");
        }
        config.gemm_choices.push_back(choice);
      }
    } catch (const nlohmann::json::exception& error) {
      return corrupt(source + ": malformed \"cuda\" section (" + error.what() +
                     "); build the engine again");
    }
  }
  return config;
}

Result<EngineConfig> read_engine_config(const std::string& engine_dir) {
  const std::string path = engine_dir + "/config.json";
  if (!path_exists(path)) {
    return not_found(path + " not found: is " + engine_dir + " an engine made by kite build?");
  }
  KITE_ASSIGN_OR_RETURN(std::string text, read_file(path));
  try {
    return engine_config_from_json(nlohmann::json::parse(text), path);
  } catch (const nlohmann::json::exception& error) {
    return corrupt(path + ": not valid JSON (" + error.what() + ")");
  }
}

Status write_engine_config(const std::string& engine_dir, const EngineConfig& config) {
  return write_file(engine_dir + "/config.json", engine_config_to_json(config).dump(2) + "\n");
}

Status write_engine_file(const std::string& path, const std::vector<EngineTensorInfo>& tensors,
                         const std::function<Result<TensorView>(size_t index)>& produce) {
  // Header: tensors in order, each at a 64-byte aligned offset of the data section.
  nlohmann::ordered_json entries = nlohmann::ordered_json::array();
  size_t data_size = 0;
  for (const EngineTensorInfo& tensor : tensors) {
    data_size = align_up(data_size);
    const size_t bytes = size_t(shape_numel(tensor.shape)) * dtype_size(tensor.dtype);
    entries.push_back({{"name", tensor.name},
                       {"dtype", dtype_name(tensor.dtype)},
                       {"shape", tensor.shape},
                       {"offset", data_size},
                       {"size", bytes}});
    data_size += bytes;
  }
  std::string header = nlohmann::ordered_json{{"tensors", entries}}.dump();
  // Pad the header with spaces so that the data starts 64-byte aligned in the file.
  header.resize(align_up(kPreambleSize + header.size()) - kPreambleSize, ' ');

  const std::string temporary = path + ".tmp";
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(temporary.c_str(), "wb"));
  if (!file) return io_error("cannot create " + temporary + ": " + std::strerror(errno));
  uint8_t preamble[kPreambleSize] = {};
  std::memcpy(preamble, kMagic, 8);
  const uint32_t version = kEngineFormatVersion;
  const uint64_t header_size = header.size();
  std::memcpy(preamble + 8, &version, 4);
  std::memcpy(preamble + 16, &header_size, 8);
  uint32_t crc = crc32(reinterpret_cast<const uint8_t*>(header.data()), header.size());
  bool written = std::fwrite(preamble, 1, kPreambleSize, file.get()) == kPreambleSize &&
                 std::fwrite(header.data(), 1, header.size(), file.get()) == header.size();
  size_t position = 0;
  const std::vector<uint8_t> zeros(kAlignment, 0);
  for (size_t i = 0; i < tensors.size() && written; ++i) {
    const size_t padding = align_up(position) - position;
    written = std::fwrite(zeros.data(), 1, padding, file.get()) == padding;
    crc = crc32(zeros.data(), padding, crc);
    position += padding;
    KITE_ASSIGN_OR_RETURN(TensorView view, produce(i));
    KITE_CHECK(view.dtype == tensors[i].dtype && view.shape == tensors[i].shape);
    written =
        written && std::fwrite(view.data, 1, view.byte_size(), file.get()) == view.byte_size();
    crc = crc32(view.data, view.byte_size(), crc);
    position += view.byte_size();
  }
  written = written && std::fwrite(&crc, 1, 4, file.get()) == 4;
  if (!written || std::fclose(file.release()) != 0) {
    std::remove(temporary.c_str());
    return io_error("cannot write " + temporary + " (disk full?)");
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    return io_error("cannot rename " + temporary + " to " + path + ": " + std::strerror(errno));
  }
  return Status::ok();
}

Result<EngineFile> EngineFile::open(const std::string& path) {
  EngineFile engine;
  KITE_ASSIGN_OR_RETURN(engine.file_, MappedFile::open(path));
  const uint8_t* bytes = engine.file_.data();
  const size_t size = engine.file_.size();
  if (size < kPreambleSize + 4 || std::memcmp(bytes, kMagic, 8) != 0) {
    return corrupt(path + " is not a Kite engine file (bad magic); build the engine again");
  }
  uint32_t version = 0;
  uint64_t header_size = 0;
  std::memcpy(&version, bytes + 8, 4);
  std::memcpy(&header_size, bytes + 16, 8);
  if (version != kEngineFormatVersion) {
    return unsupported(path + " is a version " + std::to_string(version) +
                       " engine file; this Kite runs version " +
                       std::to_string(kEngineFormatVersion) + ": build the engine again");
  }
  if (header_size > kMaxHeaderSize || kPreambleSize + header_size + 4 > size) {
    return corrupt(path + " is truncated or corrupted (header length " +
                   std::to_string(header_size) + " does not fit the file of " +
                   std::to_string(size) + " bytes)");
  }
  const uint8_t* data = bytes + kPreambleSize + header_size;
  const size_t data_size = size - kPreambleSize - header_size - 4;
  uint32_t stored_crc = 0;
  std::memcpy(&stored_crc, bytes + size - 4, 4);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes + kPreambleSize, data);
  } catch (const nlohmann::json::exception&) {
    return corrupt(path + " is corrupted (its header is not valid JSON); build the engine again");
  }
  try {
    for (const auto& entry : header.at("tensors")) {
      const std::string name = entry.at("name").get<std::string>();
      Result<DType> dtype = parse_dtype_name(entry.at("dtype").get<std::string>());
      if (!dtype.is_ok()) return corrupt(path + ": tensor '" + name + "' has an unknown dtype");
      const Shape shape = entry.at("shape").get<Shape>();
      const uint64_t offset = entry.at("offset").get<uint64_t>();
      const uint64_t bytes_size = entry.at("size").get<uint64_t>();
      for (int64_t dimension : shape)
        if (dimension < 0) return corrupt(path + ": tensor '" + name + "' has a negative size");
      if (size_t(shape_numel(shape)) * dtype_size(*dtype) != bytes_size || offset > data_size ||
          bytes_size > data_size - offset) {
        return corrupt(path + " is truncated or corrupted (tensor '" + name +
                       "' does not fit the file); build the engine again");
      }
      if (engine.tensors_.count(name)) return corrupt(path + ": tensor '" + name + "' twice");
      engine.names_.push_back(name);
      engine.tensors_[name] = TensorView{*dtype, shape, data + offset};
    }
  } catch (const nlohmann::json::exception& error) {
    return corrupt(path + " is corrupted (bad header: " + error.what() + ")");
  }
  const uint32_t crc = crc32_parallel(data, data_size, crc32(bytes + kPreambleSize, header_size));
  if (crc != stored_crc) {
    return corrupt(path + " is corrupted (CRC32 mismatch); build the engine again");
  }
  return engine;
}

Result<TensorView> EngineFile::tensor(const std::string& name) const {
  const auto found = tensors_.find(name);
  if (found == tensors_.end()) return not_found(path() + " has no tensor '" + name + "'");
  return found->second;
}

}  // namespace kite
