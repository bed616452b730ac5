// Tests for the GGUF reader: every metadata type, typed accessors, tensor placement, and the
// refusal of unsupported and corrupt files with messages that name the file.
#include "formats/gguf.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "core/file.h"
#include "gguf_test_builder.h"
#include "test_util.h"

namespace kite {
namespace {

using test::GgufBuilder;

std::string write_temp(const std::string& name, const std::string& bytes) {
  const std::string path = test::temp_dir() + "/" + name;
  EXPECT_TRUE(write_file(path, bytes).is_ok());
  return path;
}

Result<GgufFile> open_bytes(const std::string& bytes, const std::string& name = "t.gguf") {
  return GgufFile::open(write_temp(name, bytes));
}

std::string floats(std::initializer_list<float> values) {
  std::string bytes;
  for (float value : values) bytes += GgufBuilder::pod(value);
  return bytes;
}

TEST(Gguf, ReadsEveryMetadataType) {
  GgufBuilder builder;
  builder.add_raw("u8", 0, GgufBuilder::pod(uint8_t(200)))
      .add_raw("i8", 1, GgufBuilder::pod(int8_t(-100)))
      .add_raw("u16", 2, GgufBuilder::pod(uint16_t(60000)))
      .add_raw("i16", 3, GgufBuilder::pod(int16_t(-30000)))
      .add_uint32("u32", 4000000000u)
      .add_int32("i32", -2000000000)
      .add_float32("f32", 0.25f)
      .add_bool("flag", true)
      .add_string("text", "héllo")
      .add_uint64("u64", 18000000000000000000ull)
      .add_raw("i64", 11, GgufBuilder::pod(int64_t(-9000000000000000000ll)))
      .add_raw("f64", 12, GgufBuilder::pod(2.5))
      .add_string_array("strings", {"a", "", "ccc"})
      .add_int32_array("ints", {1, -2, 3})
      .add_float32_array("floats", {0.5f, -1.0f});
  // An array of two arrays: [[1, 2], [3]] as uint8.
  std::string nested = GgufBuilder::pod(uint32_t(9)) + GgufBuilder::pod(uint64_t(2));
  nested += GgufBuilder::pod(uint32_t(0)) + GgufBuilder::pod(uint64_t(2)) + "\x01\x02";
  nested += GgufBuilder::pod(uint32_t(0)) + GgufBuilder::pod(uint64_t(1)) + "\x03";
  builder.add_raw("nested", 9, nested);

  auto file = open_bytes(builder.build());
  ASSERT_TRUE(file.is_ok()) << file.status().message();
  EXPECT_EQ(file->version(), 3u);
  EXPECT_EQ(file->keys().size(), 16u);
  EXPECT_EQ(file->keys().front(), "u8");
  EXPECT_EQ(*file->get_uint("u8"), 200u);
  EXPECT_EQ(*file->get_int("i8"), -100);
  EXPECT_EQ(*file->get_uint("u16"), 60000u);
  EXPECT_EQ(*file->get_int("i16"), -30000);
  EXPECT_EQ(*file->get_uint("u32"), 4000000000u);
  EXPECT_EQ(*file->get_int("i32"), -2000000000);
  EXPECT_EQ(*file->get_float("f32"), 0.25);
  EXPECT_EQ(*file->get_bool("flag"), true);
  EXPECT_EQ(*file->get_string("text"), "héllo");
  EXPECT_EQ(*file->get_uint("u64"), 18000000000000000000ull);
  EXPECT_EQ(*file->get_int("i64"), -9000000000000000000ll);
  EXPECT_EQ(*file->get_float("f64"), 2.5);
  EXPECT_EQ(*file->get_string_array("strings"), (std::vector<std::string>{"a", "", "ccc"}));
  EXPECT_EQ(*file->get_int_array("ints"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(*file->get_float_array("floats"), (std::vector<float>{0.5f, -1.0f}));
  // Integer arrays read as floats (llama.cpp writes scores as int32 in some files).
  EXPECT_EQ(*file->get_float_array("ints"), (std::vector<float>{1.0f, -2.0f, 3.0f}));

  auto nested_array = file->get_array("nested");
  ASSERT_TRUE(nested_array.is_ok());
  EXPECT_EQ((*nested_array)->element_type, GgufType::kArray);
  ASSERT_EQ((*nested_array)->elements.size(), 2u);
  const GgufArray* first = (*nested_array)->elements[0].as_array();
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(first->element_type, GgufType::kUint8);
  ASSERT_EQ(first->elements.size(), 2u);
  EXPECT_EQ(first->elements[1].as_integer(), 2);
  EXPECT_EQ((*nested_array)->elements[1].as_array()->elements[0].as_integer(), 3);
}

TEST(Gguf, TypedAccessorsExplainMissingKeysAndWrongTypes) {
  GgufBuilder builder;
  builder.add_string("name", "x").add_int32("negative", -1).add_int32_array("ints", {1});
  const std::string path = write_temp("typed.gguf", builder.build());
  auto file = GgufFile::open(path);
  ASSERT_TRUE(file.is_ok());

  const Status missing = file->get_uint("absent").status();
  EXPECT_EQ(missing.code(), StatusCode::kCorrupt);
  EXPECT_EQ(missing.message(), path + ": metadata key 'absent' is missing");

  const Status wrong = file->get_uint("name").status();
  EXPECT_EQ(wrong.code(), StatusCode::kCorrupt);
  EXPECT_EQ(wrong.message(),
            path + ": metadata key 'name' is a string, expected an unsigned integer");

  EXPECT_NE(file->get_uint("negative").status().message().find("expected a value >= 0"),
            std::string::npos);
  EXPECT_EQ(*file->get_int("negative"), -1);
  EXPECT_FALSE(file->get_float("negative").is_ok());
  EXPECT_FALSE(file->get_bool("name").is_ok());
  EXPECT_FALSE(file->get_string("ints").is_ok());
  EXPECT_NE(file->get_string_array("ints").status().message().find("an array of int32"),
            std::string::npos);
  EXPECT_FALSE(file->get_array("name").is_ok());
  EXPECT_EQ(file->find("absent"), nullptr);
  EXPECT_TRUE(file->contains("name"));
}

TEST(Gguf, PlacesTensorsAtAlignedOffsets) {
  GgufBuilder builder;
  builder.add_string("general.architecture", "test");
  builder.add_tensor({"a", {3}, 0, floats({1, 2, 3})});
  builder.add_tensor({"b", {2, 2}, 0, floats({4, 5, 6, 7})});
  auto file = open_bytes(builder.build());
  ASSERT_TRUE(file.is_ok()) << file.status().message();
  ASSERT_EQ(file->tensors().size(), 2u);
  EXPECT_EQ(file->alignment(), 32u);
  EXPECT_EQ(file->data_section_offset() % 32, 0u);
  const GgufTensorInfo* b = file->find_tensor("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->offset, 32u);
  EXPECT_EQ(b->byte_size, 16u);
  EXPECT_EQ(b->type, GgmlType::kF32);
  EXPECT_EQ(b->element_count(), 4);
  const std::span<const uint8_t> data = file->tensor_data(*b);
  float values[4];
  std::memcpy(values, data.data(), sizeof(values));
  EXPECT_EQ(values[0], 4.0f);
  EXPECT_EQ(values[3], 7.0f);
  EXPECT_EQ(file->find_tensor("c"), nullptr);
}

TEST(Gguf, HonoursGeneralAlignment) {
  GgufBuilder builder;
  builder.alignment = 64;
  builder.add_uint32("general.alignment", 64);
  builder.add_tensor({"a", {3}, 0, floats({1, 2, 3})});
  builder.add_tensor({"b", {1}, 0, floats({9})});
  auto file = open_bytes(builder.build());
  ASSERT_TRUE(file.is_ok()) << file.status().message();
  EXPECT_EQ(file->alignment(), 64u);
  EXPECT_EQ(file->data_section_offset() % 64, 0u);
  EXPECT_EQ(file->find_tensor("b")->offset, 64u);
}

TEST(Gguf, ReportsRowMajorShapes) {
  GgufTensorInfo info;
  info.dims = {576, 192};
  EXPECT_EQ(info.row_major_shape(), (Shape{192, 576}));
  EXPECT_EQ(info.element_count(), 576 * 192);
}

TEST(Gguf, KnowsGgmlTypeLayouts) {
  EXPECT_EQ(ggml_type_info(12)->name, "Q4_K");
  EXPECT_EQ(ggml_type_info(12)->block_size, 256);
  EXPECT_EQ(ggml_type_info(12)->block_bytes, 144);
  EXPECT_EQ(ggml_type_info(8)->block_bytes, 34);
  EXPECT_EQ(ggml_type_info(4), nullptr);  // Q4_2, removed from ggml
  EXPECT_EQ(ggml_type_info(999), nullptr);
  EXPECT_EQ(ggml_type_name(GgmlType::kBF16), "BF16");
  EXPECT_EQ(ggml_type_name(GgmlType(77)), "ggml type 77");
}

TEST(Gguf, ParsesVersion2) {
  GgufBuilder builder;
  builder.version = 2;
  builder.add_string("general.architecture", "llama");
  auto file = open_bytes(builder.build());
  ASSERT_TRUE(file.is_ok()) << file.status().message();
  EXPECT_EQ(file->version(), 2u);
}

// --- Refusals -----------------------------------------------------------------------------------

void expect_refused(const std::string& bytes, StatusCode code, const std::string& fragment) {
  const std::string path = write_temp("bad.gguf", bytes);
  auto file = GgufFile::open(path);
  ASSERT_FALSE(file.is_ok()) << "expected a refusal mentioning: " << fragment;
  EXPECT_EQ(file.status().code(), code) << file.status().message();
  EXPECT_EQ(file.status().message().rfind(path + ": ", 0), 0u) << file.status().message();
  EXPECT_NE(file.status().message().find(fragment), std::string::npos) << file.status().message();
}

GgufBuilder valid_builder() {
  GgufBuilder builder;
  builder.add_string("general.architecture", "llama")
      .add_uint32("llama.block_count", 2)
      .add_string_array("tokenizer.ggml.tokens", {"a", "b"});
  builder.add_tensor({"w", {32, 2}, 8, std::string(2 * 34, '\0')});  // Q8_0
  builder.add_tensor({"n", {4}, 0, floats({1, 2, 3, 4})});
  return builder;
}

TEST(GgufRefusal, BadMagic) {
  GgufBuilder builder = valid_builder();
  builder.magic = 0x4c4d5447;  // "GTML"
  expect_refused(builder.build(), StatusCode::kCorrupt, "not a GGUF file");
  expect_refused("GG", StatusCode::kCorrupt, "not a GGUF file");
  expect_refused("", StatusCode::kCorrupt, "not a GGUF file");
}

TEST(GgufRefusal, Versions) {
  GgufBuilder builder = valid_builder();
  builder.version = 1;
  expect_refused(builder.build(), StatusCode::kUnsupported, "GGUF version 1 is not supported");
  builder.version = 4;
  expect_refused(builder.build(), StatusCode::kUnsupported, "GGUF version 4 is not supported");
  builder.version = 0x03000000;  // version 3 written big-endian
  expect_refused(builder.build(), StatusCode::kUnsupported, "big-endian");
}

TEST(GgufRefusal, TruncatedAnywhere) {
  const std::string bytes = valid_builder().build();
  ASSERT_TRUE(
      GgufFile::parse({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, "x").is_ok());
  for (size_t length = 0; length < bytes.size(); ++length) {
    const std::string cut = bytes.substr(0, length);
    auto file =
        GgufFile::parse({reinterpret_cast<const uint8_t*>(cut.data()), cut.size()}, "cut.gguf");
    ASSERT_FALSE(file.is_ok()) << "truncated at " << length << " was accepted";
    EXPECT_EQ(file.status().code(), StatusCode::kCorrupt) << file.status().message();
    EXPECT_EQ(file.status().message().rfind("cut.gguf: ", 0), 0u) << file.status().message();
  }
  // And through the file system, at a few lengths.
  for (size_t length : {size_t(5), size_t(30), bytes.size() - 1}) {
    expect_refused(bytes.substr(0, length), StatusCode::kCorrupt, "truncated");
  }
}

TEST(GgufRefusal, StringLengthPastEnd) {
  GgufBuilder builder;
  builder.add_raw("text", 8, GgufBuilder::pod(uint64_t(1) << 40) + "abc");
  expect_refused(builder.build(), StatusCode::kCorrupt, "runs past the end of the file");
  GgufBuilder key_builder;
  key_builder.add_raw("key", 0, "x");  // then make the key length huge
  std::string bytes = key_builder.build();
  const uint64_t huge = ~uint64_t(0);
  std::memcpy(bytes.data() + 24, &huge, 8);
  expect_refused(bytes, StatusCode::kCorrupt, "runs past the end of the file");
}

TEST(GgufRefusal, CountsLargerThanTheFile) {
  std::string bytes = GgufBuilder().build();
  const uint64_t huge = uint64_t(1) << 60;
  std::string many_tensors = bytes;
  std::memcpy(many_tensors.data() + 8, &huge, 8);
  expect_refused(many_tensors, StatusCode::kCorrupt, "tensors, more than the file can hold");
  std::string many_keys = bytes;
  std::memcpy(many_keys.data() + 16, &huge, 8);
  expect_refused(many_keys, StatusCode::kCorrupt, "metadata entries, more than the file");
  GgufBuilder array;
  array.add_raw("big", 9, GgufBuilder::pod(uint32_t(8)) + GgufBuilder::pod(huge));
  expect_refused(array.build(), StatusCode::kCorrupt, "elements, more than the rest of the file");
}

TEST(GgufRefusal, BadMetadataValues) {
  GgufBuilder type;
  type.add_raw("k", 13, "");
  expect_refused(type.build(), StatusCode::kCorrupt, "unknown value type 13");
  GgufBuilder element_type;
  element_type.add_raw("k", 9, GgufBuilder::pod(uint32_t(99)) + GgufBuilder::pod(uint64_t(0)));
  expect_refused(element_type.build(), StatusCode::kCorrupt, "array of unknown type 99");
  GgufBuilder boolean;
  boolean.add_raw("k", 7, "\x02");
  expect_refused(boolean.build(), StatusCode::kCorrupt, "bool value 2");
  GgufBuilder duplicate;
  duplicate.add_uint32("k", 1).add_uint32("k", 2);
  expect_refused(duplicate.build(), StatusCode::kCorrupt, "'k' appears twice");
  // Arrays nested 9 deep.
  std::string deep = GgufBuilder::pod(uint32_t(0)) + GgufBuilder::pod(uint64_t(0));
  for (int i = 0; i < 8; ++i)
    deep = GgufBuilder::pod(uint32_t(9)) + GgufBuilder::pod(uint64_t(1)) + deep;
  GgufBuilder nested;
  nested.add_raw("k", 9, deep);
  expect_refused(nested.build(), StatusCode::kCorrupt, "nests arrays more than 8 deep");
}

TEST(GgufRefusal, BadAlignment) {
  GgufBuilder not_power;
  not_power.add_uint32("general.alignment", 48);
  expect_refused(not_power.build(), StatusCode::kCorrupt, "general.alignment is 48");
  GgufBuilder zero;
  zero.add_uint32("general.alignment", 0);
  expect_refused(zero.build(), StatusCode::kCorrupt, "expected a power of 2");
  GgufBuilder wrong_type;
  wrong_type.add_string("general.alignment", "32");
  expect_refused(wrong_type.build(), StatusCode::kCorrupt, "expected a uint32");
}

TEST(GgufRefusal, TensorOffsetPastEnd) {
  GgufBuilder builder = valid_builder();
  builder.add_tensor({"far", {4}, 0, "", uint64_t(1) << 20});
  expect_refused(builder.build(), StatusCode::kCorrupt, "'far' (16 bytes at data offset 1048576)");
  GgufBuilder overflow = valid_builder();
  overflow.add_tensor({"wrap", {4}, 0, "", ~uint64_t(0) - 31});
  expect_refused(overflow.build(), StatusCode::kCorrupt, "runs past the end of the file");
}

TEST(GgufRefusal, MisalignedTensorOffset) {
  GgufBuilder builder = valid_builder();
  builder.add_tensor({"odd", {1}, 0, floats({1}), 100});
  expect_refused(builder.build(), StatusCode::kCorrupt, "data offset 100, not a multiple");
}

TEST(GgufRefusal, BadTensorShapes) {
  GgufBuilder five = valid_builder();
  five.add_tensor({"t5", {1, 1, 1, 1, 1}, 0, floats({1})});
  expect_refused(five.build(), StatusCode::kCorrupt, "'t5' has 5 dimensions");
  GgufBuilder negative = valid_builder();
  negative.add_tensor({"neg", {-4}, 0, ""});
  expect_refused(negative.build(), StatusCode::kCorrupt, "negative dimension");
  GgufBuilder huge = valid_builder();
  huge.add_tensor({"huge", {int64_t(1) << 40, int64_t(1) << 40}, 0, ""});
  expect_refused(huge.build(), StatusCode::kCorrupt, "overflows");
  GgufBuilder partial_block = valid_builder();
  partial_block.add_tensor({"q", {48}, 2, std::string(36, '\0')});  // Q4_0 blocks are 32 wide
  expect_refused(partial_block.build(), StatusCode::kCorrupt, "not a multiple of the block size");
  GgufBuilder duplicate = valid_builder();
  duplicate.add_tensor({"n", {1}, 0, floats({1})});
  expect_refused(duplicate.build(), StatusCode::kCorrupt, "tensor 'n' appears twice");
}

TEST(GgufRefusal, UnknownTensorType) {
  GgufBuilder builder = valid_builder();
  builder.add_tensor({"x", {4}, 99, std::string(16, '\0')});
  expect_refused(builder.build(), StatusCode::kUnsupported, "unknown ggml type 99");
  GgufBuilder removed = valid_builder();
  removed.add_tensor({"x", {32}, 4, std::string(20, '\0')});  // Q4_2, removed in 2023
  expect_refused(removed.build(), StatusCode::kUnsupported, "unknown ggml type 4");
}

TEST(GgufRefusal, MissingFile) {
  auto file = GgufFile::open(test::temp_dir() + "/absent.gguf");
  ASSERT_FALSE(file.is_ok());
  EXPECT_NE(file.status().message().find("absent.gguf"), std::string::npos);
}

// The fuzzer's seed corpus (scripts/make_gguf_fuzz_corpus.py): every seed parses, and every
// truncation that cuts into its header or tensor data is refused as corrupt, naming the file.
// (Writers pad the file after the last tensor; cutting only padding leaves a valid file.)
TEST(GgufRefusal, TruncatedSeedCorpusFiles) {
  const std::string corpus = test::source_dir() + "/fuzz/corpus/gguf_fuzzer";
  int seeds = 0;
  for (const auto& entry : std::filesystem::directory_iterator(corpus)) {
    auto bytes = read_file(entry.path().string());
    ASSERT_TRUE(bytes.is_ok());
    const std::string name = entry.path().filename().string();
    auto whole =
        GgufFile::parse({reinterpret_cast<const uint8_t*>(bytes->data()), bytes->size()}, name);
    ASSERT_TRUE(whole.is_ok()) << whole.status().message();
    uint64_t needed = whole->data_section_offset() - whole->alignment() + 1;
    for (const GgufTensorInfo& info : whole->tensors()) {
      needed = std::max(needed, whole->data_section_offset() + info.offset + info.byte_size);
    }
    for (size_t length = 0; length < needed; ++length) {
      auto cut = GgufFile::parse({reinterpret_cast<const uint8_t*>(bytes->data()), length}, name);
      ASSERT_FALSE(cut.is_ok()) << name << " truncated to " << length << " bytes was accepted";
      EXPECT_EQ(cut.status().code(), StatusCode::kCorrupt) << cut.status().message();
      EXPECT_EQ(cut.status().message().rfind(name + ": ", 0), 0u) << cut.status().message();
    }
    ++seeds;
  }
  EXPECT_GE(seeds, 5);
}

}  // namespace
}  // namespace kite
