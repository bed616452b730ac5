// Tests for the safetensors reader and writer: round trips, a file made by the reference Python
// library, sharded folders, and every kind of corrupt header the reader must refuse.
#include "formats/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "core/half.h"
#include "test_util.h"

namespace kite {
namespace {

// A safetensors file from a raw header text and data section, for the corruption tests.
std::string write_raw(const std::string& directory, const std::string& header,
                      const std::string& data, uint64_t header_length_override = 0) {
  const std::string path = directory + "/raw.safetensors";
  const uint64_t length = header_length_override ? header_length_override : header.size();
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[size_t(i)] = char((length >> (8 * i)) & 0xff);
  bytes += header + data;
  KITE_CHECK(write_file(path, bytes).is_ok());
  return path;
}

Tensor patterned_tensor(DType dtype, Shape shape, uint8_t seed) {
  Tensor tensor(dtype, std::move(shape));
  for (size_t i = 0; i < tensor.byte_size(); ++i) tensor.data()[i] = uint8_t(seed + 7 * i);
  return tensor;
}

void expect_same(const TensorView& view, const Tensor& tensor) {
  EXPECT_EQ(view.dtype, tensor.dtype());
  EXPECT_EQ(view.shape, tensor.shape());
  ASSERT_EQ(view.byte_size(), tensor.byte_size());
  EXPECT_EQ(std::memcmp(view.data, tensor.data(), tensor.byte_size()), 0);
}

// Opens `path`, expecting failure with `code` and a message naming the file and containing `text`.
void expect_refused(const std::string& path, StatusCode code, const std::string& text) {
  Result<SafetensorsFile> file = SafetensorsFile::open(path);
  ASSERT_FALSE(file.is_ok()) << "accepted a bad file: " << text;
  EXPECT_EQ(file.status().code(), code) << file.status().message();
  EXPECT_NE(file.status().message().find(path), std::string::npos) << file.status().message();
  EXPECT_NE(file.status().message().find(text), std::string::npos) << file.status().message();
}

TEST(Safetensors, RoundTripsEveryDtypeAndMetadata) {
  const std::string path = test::temp_dir() + "/all.safetensors";
  std::vector<std::pair<std::string, Tensor>> tensors;
  uint8_t seed = 1;
  for (DType dtype : kAllDTypes) {
    tensors.emplace_back(std::string(dtype_name(dtype)), patterned_tensor(dtype, {3, 5}, seed++));
  }
  tensors.emplace_back("scalar", patterned_tensor(DType::kF32, {}, 9));
  tensors.emplace_back("empty", patterned_tensor(DType::kBF16, {0, 4}, 9));
  tensors.emplace_back("odd", patterned_tensor(DType::kU8, {3}, 4));  // leaves data unaligned
  tensors.emplace_back("after_odd", patterned_tensor(DType::kI64, {2, 1, 2}, 8));
  ASSERT_TRUE(write_safetensors(path, tensors, {{"format", "pt"}, {"note", "kite test"}}).is_ok());

  Result<SafetensorsFile> file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.is_ok()) << file.status().message();
  ASSERT_EQ(file->names().size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    EXPECT_EQ(file->names()[i], tensors[i].first);  // data order is declaration order
    Result<TensorView> view = file->tensor(tensors[i].first);
    ASSERT_TRUE(view.is_ok()) << view.status().message();
    expect_same(*view, tensors[i].second);
  }
  EXPECT_EQ(file->metadata().size(), 2u);
  EXPECT_EQ(file->metadata().at("note"), "kite test");
  EXPECT_FALSE(file->contains("__metadata__"));
  EXPECT_EQ(file->tensor("missing").status().code(), StatusCode::kNotFound);
}

TEST(Safetensors, HeaderIsSpacePaddedToEightBytes) {
  const std::string path = test::temp_dir() + "/padded.safetensors";
  std::vector<std::pair<std::string, Tensor>> tensors;
  tensors.emplace_back("a", patterned_tensor(DType::kF16, {3}, 1));
  ASSERT_TRUE(write_safetensors(path, tensors).is_ok());
  Result<std::string> bytes = read_file(path);
  ASSERT_TRUE(bytes.is_ok());
  uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | uint8_t((*bytes)[size_t(i)]);
  EXPECT_EQ(header_length % 8, 0u);
  EXPECT_EQ(bytes->size(), 8 + header_length + 6);
  const std::string header = bytes->substr(8, header_length);
  EXPECT_EQ(header.front(), '{');
  EXPECT_EQ(header.find_last_not_of(' '), header.find_last_of('}'));
  EXPECT_EQ(nlohmann::json::parse(header)["a"]["data_offsets"], nlohmann::json({0, 6}));
}

TEST(Safetensors, ReadsFileMadeByReferenceLibrary) {
  const std::string path = test::source_dir() + "/tests/fixtures/safetensors/reference.safetensors";
  Result<SafetensorsFile> file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.is_ok()) << file.status().message();
  EXPECT_EQ(file->metadata().at("made_by"), "safetensors-python");
  EXPECT_EQ(file->names().size(), 10u);

  auto floats = [&](const std::string& name) {
    Result<TensorView> view = file->tensor(name);
    KITE_CHECK(view.is_ok());
    return *to_float32(*view);
  };
  const std::vector<float> f32 = floats("f32");
  ASSERT_EQ(f32.size(), 12u);
  for (size_t i = 0; i < f32.size(); ++i) EXPECT_EQ(f32[i], (float(i) - 3) * 0.25f);
  EXPECT_EQ(file->tensor("f32")->shape, Shape({3, 4}));
  const std::vector<float> f16 = floats("f16");
  ASSERT_EQ(f16.size(), 6u);
  for (size_t i = 0; i < f16.size(); ++i) EXPECT_EQ(f16[i], (float(i) - 3) * 0.25f);
  EXPECT_EQ(floats("bf16"), std::vector<float>({1.0f, -2.0f, 0.5f, 3.0f}));
  EXPECT_EQ(floats("f8_e4m3"), std::vector<float>({1.0f, -2.0f, 0.5f, 448.0f}));
  EXPECT_EQ(file->tensor("f8_e4m3")->dtype, DType::kF8E4M3);
  EXPECT_EQ(floats("scalar"), std::vector<float>({1.5f}));
  EXPECT_EQ(file->tensor("scalar")->shape, Shape{});
  EXPECT_EQ(file->tensor("empty")->shape, Shape({0, 3}));

  auto integers = [&](const std::string& name, DType dtype) {
    Result<TensorView> view = file->tensor(name);
    KITE_CHECK(view.is_ok());
    EXPECT_EQ(view->dtype, dtype);
    std::vector<int64_t> values;
    for (int64_t i = 0; i < view->numel(); ++i) {
      const uint8_t* at = view->data + size_t(i) * dtype_size(dtype);
      switch (dtype) {
        case DType::kI8:
          values.push_back(int8_t(*at));
          break;
        case DType::kU8:
          values.push_back(*at);
          break;
        case DType::kI32: {
          int32_t value;
          std::memcpy(&value, at, 4);
          values.push_back(value);
          break;
        }
        default: {
          int64_t value;
          std::memcpy(&value, at, 8);
          values.push_back(value);
        }
      }
    }
    return values;
  };
  EXPECT_EQ(integers("i8", DType::kI8), std::vector<int64_t>({-128, -1, 0, 127}));
  EXPECT_EQ(integers("u8", DType::kU8), std::vector<int64_t>({0, 1, 128, 255}));
  EXPECT_EQ(integers("i32", DType::kI32), std::vector<int64_t>({INT32_MIN, 0, 1, INT32_MAX}));
  EXPECT_EQ(integers("i64", DType::kI64), std::vector<int64_t>({INT64_MIN, int64_t(1) << 40, 7}));
}

TEST(Safetensors, StreamingWriterChecksWhatItIsGiven) {
  const std::string directory = test::temp_dir();
  SafetensorsWriter writer;
  writer.declare("a", DType::kF32, {2});
  writer.declare("b", DType::kBF16, {2, 2});
  EXPECT_EQ(writer.tensor_count(), 2u);
  std::vector<size_t> progress;
  Status status = writer.write(
      directory + "/ok.safetensors",
      [](size_t index) -> Result<Tensor> {
        return index == 0 ? Tensor(DType::kF32, {2}) : Tensor(DType::kBF16, {2, 2});
      },
      [&](size_t index) { progress.push_back(index); });
  EXPECT_TRUE(status.is_ok()) << status.message();
  EXPECT_EQ(progress, std::vector<size_t>({0, 1}));

  // A tensor that does not match its declaration is a bug in the caller.
  status = writer.write(directory + "/bad.safetensors",
                        [](size_t) -> Result<Tensor> { return Tensor(DType::kF32, {2}); });
  EXPECT_EQ(status.code(), StatusCode::kInternal);
  EXPECT_NE(status.message().find("'b'"), std::string::npos) << status.message();
  EXPECT_FALSE(path_exists(directory + "/bad.safetensors"));
  EXPECT_FALSE(path_exists(directory + "/bad.safetensors.tmp"));

  // An error from the producer stops the write and leaves no file behind.
  status = writer.write(directory + "/failed.safetensors",
                        [](size_t) -> Result<Tensor> { return io_error("disk on fire"); });
  EXPECT_EQ(status.message(), "disk on fire");
  EXPECT_FALSE(path_exists(directory + "/failed.safetensors"));

  SafetensorsWriter duplicate;
  duplicate.declare("x", DType::kU8, {1});
  duplicate.declare("x", DType::kU8, {1});
  status = duplicate.write(directory + "/dup.safetensors",
                           [](size_t) -> Result<Tensor> { return Tensor(DType::kU8, {1}); });
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);

  SafetensorsWriter unwritable;
  status = unwritable.write(directory + "/no/such/dir/x.safetensors",
                            [](size_t) -> Result<Tensor> { return Tensor(); });
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_NE(status.message().find("/no/such/dir/x.safetensors"), std::string::npos);
}

TEST(Safetensors, ShardedFolder) {
  const std::string directory = test::temp_dir();
  const Tensor a = patterned_tensor(DType::kF32, {2, 3}, 1);
  const Tensor b = patterned_tensor(DType::kBF16, {4}, 2);
  const Tensor c = patterned_tensor(DType::kF16, {1, 1}, 3);
  std::vector<std::pair<std::string, Tensor>> first = {{"a", a}, {"c", c}};
  std::vector<std::pair<std::string, Tensor>> second = {{"b", b}};
  ASSERT_TRUE(write_safetensors(directory + "/model-00001-of-00002.safetensors", first).is_ok());
  ASSERT_TRUE(write_safetensors(directory + "/model-00002-of-00002.safetensors", second).is_ok());
  nlohmann::json index = {{"metadata", {{"total_size", 42}}},
                          {"weight_map",
                           {{"a", "model-00001-of-00002.safetensors"},
                            {"b", "model-00002-of-00002.safetensors"},
                            {"c", "model-00001-of-00002.safetensors"}}}};
  const std::string index_path = directory + "/model.safetensors.index.json";
  ASSERT_TRUE(write_file(index_path, index.dump()).is_ok());

  Result<SafetensorsCollection> collection = SafetensorsCollection::open_directory(directory);
  ASSERT_TRUE(collection.is_ok()) << collection.status().message();
  EXPECT_EQ(collection->names(), std::vector<std::string>({"a", "b", "c"}));
  expect_same(*collection->tensor("a"), a);
  expect_same(*collection->tensor("b"), b);
  expect_same(*collection->tensor("c"), c);
  EXPECT_EQ(collection->entry("b")->dtype, DType::kBF16);
  EXPECT_EQ(collection->entry("z"), nullptr);
  EXPECT_EQ(collection->tensor("z").status().code(), StatusCode::kNotFound);

  // The index names a tensor its shard lacks.
  index["weight_map"]["d"] = "model-00002-of-00002.safetensors";
  ASSERT_TRUE(write_file(index_path, index.dump()).is_ok());
  Status status = SafetensorsCollection::open_directory(directory).status();
  EXPECT_EQ(status.code(), StatusCode::kCorrupt);
  EXPECT_NE(status.message().find("'d'"), std::string::npos) << status.message();

  // A missing shard is named.
  index["weight_map"]["d"] = "model-00003-of-00002.safetensors";
  ASSERT_TRUE(write_file(index_path, index.dump()).is_ok());
  status = SafetensorsCollection::open_directory(directory).status();
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_NE(status.message().find("model-00003-of-00002.safetensors"), std::string::npos);

  // Shard names may not leave the folder.
  index["weight_map"]["d"] = "../elsewhere.safetensors";
  ASSERT_TRUE(write_file(index_path, index.dump()).is_ok());
  status = SafetensorsCollection::open_directory(directory).status();
  EXPECT_EQ(status.code(), StatusCode::kCorrupt);

  ASSERT_TRUE(write_file(index_path, "{\"weight_map\": [1, 2]}").is_ok());
  status = SafetensorsCollection::open_directory(directory).status();
  EXPECT_EQ(status.code(), StatusCode::kCorrupt);
  EXPECT_NE(status.message().find(index_path), std::string::npos);
}

TEST(Safetensors, SingleFileFolderAndMissingWeights) {
  const std::string directory = test::temp_dir();
  Status status = SafetensorsCollection::open_directory(directory).status();
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_NE(status.message().find(directory), std::string::npos);
  EXPECT_EQ(SafetensorsCollection::open_directory(directory + "/nope").status().code(),
            StatusCode::kNotFound);

  const Tensor a = patterned_tensor(DType::kI32, {5}, 4);
  ASSERT_TRUE(write_safetensors(directory + "/model.safetensors", {{"w", a}}).is_ok());
  Result<SafetensorsCollection> collection = SafetensorsCollection::open_directory(directory);
  ASSERT_TRUE(collection.is_ok()) << collection.status().message();
  EXPECT_EQ(collection->names(), std::vector<std::string>({"w"}));
  expect_same(*collection->tensor("w"), a);
}

TEST(SafetensorsCorrupt, TruncatedFiles) {
  const std::string directory = test::temp_dir();
  const std::string short_path = directory + "/short.safetensors";
  ASSERT_TRUE(write_file(short_path, "abc").is_ok());
  expect_refused(short_path, StatusCode::kCorrupt, "too short");

  // A good file cut in the middle of its data: the last tensor's offsets point past the end.
  const std::string path = directory + "/cut.safetensors";
  ASSERT_TRUE(write_safetensors(path, {{"a", patterned_tensor(DType::kF32, {16}, 1)}}).is_ok());
  std::string bytes = *read_file(path);
  bytes.resize(bytes.size() - 10);
  ASSERT_TRUE(write_file(path, bytes).is_ok());
  expect_refused(path, StatusCode::kCorrupt, "out of range");

  // Cut inside the header.
  bytes.resize(20);
  ASSERT_TRUE(write_file(path, bytes).is_ok());
  expect_refused(path, StatusCode::kCorrupt, "runs past the end of the file");

  ASSERT_TRUE(write_file(path, "").is_ok());
  expect_refused(path, StatusCode::kCorrupt, "too short");
}

TEST(SafetensorsCorrupt, HeaderLength) {
  const std::string directory = test::temp_dir();
  expect_refused(write_raw(directory, "{}", "", 1000), StatusCode::kCorrupt,
                 "runs past the end of the file");
  expect_refused(write_raw(directory, "{}", "", 1), StatusCode::kCorrupt, "not plausible");
  expect_refused(write_raw(directory, "{}", "", uint64_t(1) << 62), StatusCode::kCorrupt,
                 "not plausible");
  expect_refused(write_raw(directory, "{}", "", ~uint64_t(0)), StatusCode::kCorrupt,
                 "not plausible");
  // The smallest valid file: an empty header object and no tensors.
  Result<SafetensorsFile> empty = SafetensorsFile::open(write_raw(directory, "{}", ""));
  ASSERT_TRUE(empty.is_ok()) << empty.status().message();
  EXPECT_TRUE(empty->names().empty());
}

TEST(SafetensorsCorrupt, BadJson) {
  const std::string directory = test::temp_dir();
  expect_refused(write_raw(directory, "{\"a\": {", ""), StatusCode::kCorrupt, "not valid JSON");
  expect_refused(write_raw(directory, "[1, 2, 3]", ""), StatusCode::kCorrupt, "not a JSON object");
  expect_refused(write_raw(directory, "{\"a\": 3}", ""), StatusCode::kCorrupt, "'a'");
  expect_refused(write_raw(directory, "{\"a\": {\"dtype\": \"F32\"}}", ""), StatusCode::kCorrupt,
                 "lacks");
  expect_refused(write_raw(directory, "{\"__metadata__\": {\"k\": 1}}", ""), StatusCode::kCorrupt,
                 "__metadata__");
  expect_refused(write_raw(directory, std::string("{\"a\xff\": 1}"), ""), StatusCode::kCorrupt,
                 "not valid JSON");  // invalid UTF-8
}

TEST(SafetensorsCorrupt, UnknownDtype) {
  const std::string directory = test::temp_dir();
  expect_refused(
      write_raw(directory, R"({"t": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}})",
                std::string(8, '\0')),
      StatusCode::kUnsupported, "F64");
  expect_refused(
      write_raw(directory, R"({"t": {"dtype": "COMPLEX", "shape": [1], "data_offsets": [0, 8]}})",
                std::string(8, '\0')),
      StatusCode::kUnsupported, "'t'");
  expect_refused(
      write_raw(directory, R"({"t": {"dtype": 4, "shape": [1], "data_offsets": [0, 4]}})",
                std::string(4, '\0')),
      StatusCode::kCorrupt, "dtype");
}

TEST(SafetensorsCorrupt, OffsetsOutOfRange) {
  const std::string directory = test::temp_dir();
  expect_refused(
      write_raw(directory, R"({"t": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}})",
                std::string(4, '\0')),
      StatusCode::kCorrupt, "out of range");
  expect_refused(
      write_raw(directory, R"({"t": {"dtype": "U8", "shape": [0], "data_offsets": [3, 2]}})",
                std::string(4, '\0')),
      StatusCode::kCorrupt, "out of range");
  expect_refused(write_raw(directory,
                           R"({"t": {"dtype": "U8", "shape": [1],
                                     "data_offsets": [18446744073709551615, 0]}})",
                           std::string(4, '\0')),
                 StatusCode::kCorrupt, "out of range");
  expect_refused(
      write_raw(directory, R"({"t": {"dtype": "U8", "shape": [1], "data_offsets": [-1, 0]}})",
                std::string(4, '\0')),
      StatusCode::kCorrupt, "data_offsets");
  expect_refused(
      write_raw(directory, R"({"t": {"dtype": "U8", "shape": [1], "data_offsets": [0]}})",
                std::string(4, '\0')),
      StatusCode::kCorrupt, "data_offsets");
}

TEST(SafetensorsCorrupt, Overlap) {
  const std::string directory = test::temp_dir();
  expect_refused(write_raw(directory,
                           R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                               "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                           std::string(12, '\0')),
                 StatusCode::kCorrupt, "overlap");
  // Gaps are allowed, and an empty tensor inside another's bytes owns nothing.
  Result<SafetensorsFile> file = SafetensorsFile::open(
      write_raw(directory,
                R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
                                          "e": {"dtype": "F32", "shape": [0], "data_offsets": [9, 9]},
                                          "b": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}})",
                std::string(12, '\0')));
  ASSERT_TRUE(file.is_ok()) << file.status().message();
  EXPECT_EQ(file->names(), std::vector<std::string>({"b", "a", "e"}));
}

TEST(SafetensorsCorrupt, SizeMismatch) {
  const std::string directory = test::temp_dir();
  expect_refused(
      write_raw(directory, R"({"t": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 8]}})",
                std::string(12, '\0')),
      StatusCode::kCorrupt, "need 12");
  // Dimensions whose product overflows 64 bits must not wrap around to a small size.
  expect_refused(write_raw(directory,
                           R"({"t": {"dtype": "U8", "shape": [4294967296, 4294967296],
                                     "data_offsets": [0, 0]}})",
                           ""),
                 StatusCode::kCorrupt, "overflows");
  expect_refused(write_raw(directory,
                           R"({"t": {"dtype": "I64", "shape": [2305843009213693952],
                                     "data_offsets": [0, 0]}})",
                           ""),
                 StatusCode::kCorrupt, "overflows");
}

TEST(SafetensorsCorrupt, NegativeOrNonIntegerShape) {
  const std::string directory = test::temp_dir();
  expect_refused(
      write_raw(directory, R"({"t": {"dtype": "F32", "shape": [-1, 2], "data_offsets": [0, 8]}})",
                std::string(8, '\0')),
      StatusCode::kCorrupt, "negative dimension");
  expect_refused(
      write_raw(directory, R"({"t": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})",
                std::string(4, '\0')),
      StatusCode::kCorrupt, "shape");
  expect_refused(
      write_raw(directory, R"({"t": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}})",
                std::string(8, '\0')),
      StatusCode::kCorrupt, "shape");
}

}  // namespace
}  // namespace kite
