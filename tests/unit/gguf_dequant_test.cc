// Tests for GGUF dequantization. Each quantized type gets a block built by hand: the test picks
// the integer quants and scales, packs them following the layout in ggml-common.h (written here
// element by element, independently of the decoder's loops), and expects value = f(quant, scale)
// with values chosen so that every expected float is exact. A second test compares against
// gguf-py's reference dequantization through a committed fixture.
#include "formats/gguf_dequant.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/file.h"
#include "core/half.h"
#include "gguf_test_builder.h"
#include "test_util.h"

namespace kite {
namespace {

using Bytes = std::vector<uint8_t>;

// Quants for a test block: pseudo-random, so that no two elements that a layout mistake could
// swap hold the same value by construction (arithmetic patterns mod 2^k repeat).
std::vector<int> random_quants(int count, int bits, uint32_t seed) {
  std::mt19937 generator(seed);
  std::vector<int> quants(static_cast<size_t>(count));
  for (int& quant : quants) quant = int(generator() % (1u << bits));
  return quants;
}

void put_u16(Bytes& bytes, size_t at, uint16_t value) {
  bytes[at] = uint8_t(value & 0xff);
  bytes[at + 1] = uint8_t(value >> 8);
}

std::vector<float> decode(GgmlType type, const Bytes& bytes, size_t count) {
  std::vector<float> out(count, -12345.0f);
  const Status status = dequantize(type, bytes, out);
  EXPECT_TRUE(status.is_ok()) << status.message();
  return out;
}

constexpr uint16_t kHalfOne = 0x3c00;           // 1.0
constexpr uint16_t kHalfHalf = 0x3800;          // 0.5
constexpr uint16_t kHalfQuarter = 0x3400;       // 0.25
constexpr uint16_t kHalfMinusOne = 0xbc00;      // -1.0
constexpr uint16_t kHalfThreeEighths = 0x3600;  // 0.375

TEST(GgufDequant, PlainFloatTypes) {
  Bytes f32(8);
  const float f32_values[2] = {1.5f, -0.0f};
  std::memcpy(f32.data(), f32_values, 8);
  EXPECT_EQ(decode(GgmlType::kF32, f32, 2), (std::vector<float>{1.5f, -0.0f}));

  Bytes f16(8);
  put_u16(f16, 0, 0x3c00);  // 1
  put_u16(f16, 2, 0xc000);  // -2
  put_u16(f16, 4, 0x7bff);  // 65504, the largest half
  put_u16(f16, 6, 0x0001);  // 2^-24, the smallest subnormal
  EXPECT_EQ(decode(GgmlType::kF16, f16, 4),
            (std::vector<float>{1.0f, -2.0f, 65504.0f, std::ldexp(1.0f, -24)}));

  Bytes bf16(4);
  put_u16(bf16, 0, 0x3f80);  // 1.0
  put_u16(bf16, 2, 0xc0a0);  // -5.0
  EXPECT_EQ(decode(GgmlType::kBF16, bf16, 2), (std::vector<float>{1.0f, -5.0f}));

  Bytes f64(8);
  const double f64_value = 0.1;
  std::memcpy(f64.data(), &f64_value, 8);
  EXPECT_EQ(decode(GgmlType::kF64, f64, 1), (std::vector<float>{0.1f}));
}

TEST(GgufDequant, Q8_0) {
  // Two blocks: d = 0.5 with quants -128, -120, ..., and d = -1 with quants 0..31.
  Bytes bytes(68);
  put_u16(bytes, 0, kHalfHalf);
  put_u16(bytes, 34, kHalfMinusOne);
  for (int i = 0; i < 32; ++i) {
    bytes[2 + i] = uint8_t(int8_t(-128 + 8 * i));
    bytes[36 + i] = uint8_t(i);
  }
  const std::vector<float> out = decode(GgmlType::kQ8_0, bytes, 64);
  for (int i = 0; i < 32; ++i) {
    EXPECT_EQ(out[i], 0.5f * float(-128 + 8 * i)) << i;
    EXPECT_EQ(out[32 + i], -float(i)) << i;
  }
}

// Element i of a 32-element block lives in byte 2.. + (i % 16), low nibble for i < 16, high
// nibble for i >= 16.
void put_nibble(Bytes& bytes, size_t quants_at, int element, int nibble) {
  uint8_t& byte = bytes[quants_at + size_t(element % 16)];
  if (element < 16) {
    byte = uint8_t((byte & 0xf0) | nibble);
  } else {
    byte = uint8_t((byte & 0x0f) | (nibble << 4));
  }
}

TEST(GgufDequant, Q4_0) {
  Bytes bytes(18);
  put_u16(bytes, 0, kHalfHalf);
  const std::vector<int> quants = random_quants(32, 4, 1);
  for (int i = 0; i < 32; ++i) put_nibble(bytes, 2, i, quants[i]);
  const std::vector<float> out = decode(GgmlType::kQ4_0, bytes, 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(out[i], float(quants[i] - 8) * 0.5f) << i;
}

TEST(GgufDequant, Q4_1) {
  Bytes bytes(20);
  put_u16(bytes, 0, kHalfHalf);      // d
  put_u16(bytes, 2, kHalfMinusOne);  // m
  const std::vector<int> quants = random_quants(32, 4, 2);
  for (int i = 0; i < 32; ++i) put_nibble(bytes, 4, i, quants[i]);
  const std::vector<float> out = decode(GgmlType::kQ4_1, bytes, 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(out[i], float(quants[i]) * 0.5f - 1.0f) << i;
}

// A 5-bit quant: the low 4 bits as a nibble, the fifth as bit i of the u32 at `high_at`.
void put_five_bits(Bytes& bytes, size_t high_at, size_t quants_at, int element, int quant) {
  put_nibble(bytes, quants_at, element, quant & 0x0f);
  if (quant & 0x10) bytes[high_at + size_t(element / 8)] |= uint8_t(1u << (element % 8));
}

TEST(GgufDequant, Q5_0) {
  Bytes bytes(22);
  put_u16(bytes, 0, kHalfQuarter);
  const std::vector<int> quants = random_quants(32, 5, 3);
  for (int i = 0; i < 32; ++i) put_five_bits(bytes, 2, 6, i, quants[i]);
  const std::vector<float> out = decode(GgmlType::kQ5_0, bytes, 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(out[i], float(quants[i] - 16) * 0.25f) << i;
}

TEST(GgufDequant, Q5_1) {
  Bytes bytes(24);
  put_u16(bytes, 0, kHalfQuarter);  // d
  put_u16(bytes, 2, kHalfOne);      // m
  const std::vector<int> quants = random_quants(32, 5, 4);
  for (int i = 0; i < 32; ++i) put_five_bits(bytes, 4, 8, i, quants[i]);
  const std::vector<float> out = decode(GgmlType::kQ5_1, bytes, 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(out[i], float(quants[i]) * 0.25f + 1.0f) << i;
}

// Packs the 8 six-bit scales and mins of a Q4_K/Q5_K block into its 12 scale bytes: sub-blocks
// 0-3 in the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); sub-blocks 4-7 with their low 4
// bits in bytes 8-11 (scale low nibble, min high nibble) and top 2 bits in the top of bytes 0-7.
void pack_k_scales(Bytes& bytes, size_t at, const int scale[8], const int min[8]) {
  for (int s = 0; s < 4; ++s) {
    bytes[at + s] = uint8_t(scale[s] | ((scale[s + 4] >> 4) << 6));
    bytes[at + 4 + s] = uint8_t(min[s] | ((min[s + 4] >> 4) << 6));
    bytes[at + 8 + s] = uint8_t((scale[s + 4] & 0x0f) | ((min[s + 4] & 0x0f) << 4));
  }
}

// Element e of a Q4_K/Q5_K block: group g = e / 64 reads 32 bytes at quants + 32 g; the first
// 32 elements of the group are the low nibbles, the next 32 the high nibbles.
void put_k_nibble(Bytes& bytes, size_t quants_at, int element, int nibble) {
  const int group = element / 64;
  const int within = element % 64;
  uint8_t& byte = bytes[quants_at + size_t(32 * group + within % 32)];
  if (within < 32) {
    byte = uint8_t((byte & 0xf0) | nibble);
  } else {
    byte = uint8_t((byte & 0x0f) | (nibble << 4));
  }
}

const int kScales[8] = {1, 63, 17, 32, 48, 5, 60, 33};
const int kMins[8] = {0, 2, 63, 40, 16, 31, 7, 59};

TEST(GgufDequant, Q4_K) {
  Bytes bytes(144);
  put_u16(bytes, 0, kHalfHalf);     // d
  put_u16(bytes, 2, kHalfQuarter);  // dmin
  pack_k_scales(bytes, 4, kScales, kMins);
  const std::vector<int> quants = random_quants(256, 4, 5);
  for (int e = 0; e < 256; ++e) put_k_nibble(bytes, 16, e, quants[e]);
  const std::vector<float> out = decode(GgmlType::kQ4_K, bytes, 256);
  for (int e = 0; e < 256; ++e) {
    const int sub = e / 32;
    const float expected =
        0.5f * float(kScales[sub]) * float(quants[e]) - 0.25f * float(kMins[sub]);
    EXPECT_EQ(out[e], expected) << e;
  }
}

TEST(GgufDequant, Q5_K) {
  Bytes bytes(176);
  put_u16(bytes, 0, kHalfThreeEighths);  // d
  put_u16(bytes, 2, kHalfHalf);          // dmin
  pack_k_scales(bytes, 4, kScales, kMins);
  const std::vector<int> quants = random_quants(256, 5, 6);
  for (int e = 0; e < 256; ++e) {
    const int quant = quants[e];
    put_k_nibble(bytes, 48, e, quant & 0x0f);
    // The fifth bit of element e is bit (e / 32) of high byte e % 32.
    if (quant & 0x10) bytes[16 + size_t(e % 32)] |= uint8_t(1u << (e / 32));
  }
  const std::vector<float> out = decode(GgmlType::kQ5_K, bytes, 256);
  for (int e = 0; e < 256; ++e) {
    const int sub = e / 32;
    const float expected =
        0.375f * float(kScales[sub]) * float(quants[e]) - 0.5f * float(kMins[sub]);
    EXPECT_EQ(out[e], expected) << e;
  }
}

TEST(GgufDequant, Q6_K) {
  // Element e: half h = e / 128, k = (e % 128) / 32, l = e % 32. Low 4 bits in byte
  // 64 h + l + 32 (k % 2), low nibble for k < 2, high nibble otherwise; top 2 bits at bits 2k of
  // byte 128 + 32 h + l; int8 scale number e / 16 at byte 192; d at byte 208; value
  // d * scale * (q - 32).
  Bytes bytes(210);
  const int8_t scales[16] = {1, -1, 127, -128, 3, 50, -7, 9, 100, -100, 2, 4, -64, 63, 0, 11};
  for (int s = 0; s < 16; ++s) bytes[192 + size_t(s)] = uint8_t(scales[s]);
  put_u16(bytes, 208, kHalfQuarter);
  const std::vector<int> quants = random_quants(256, 6, 7);
  for (int e = 0; e < 256; ++e) {
    const int half = e / 128, k = (e % 128) / 32, l = e % 32;
    const int quant = quants[e];
    uint8_t& low = bytes[size_t(64 * half + l + 32 * (k % 2))];
    low |= uint8_t(k < 2 ? (quant & 0x0f) : (quant & 0x0f) << 4);
    bytes[size_t(128 + 32 * half + l)] |= uint8_t((quant >> 4) << (2 * k));
  }
  const std::vector<float> out = decode(GgmlType::kQ6_K, bytes, 256);
  for (int e = 0; e < 256; ++e) {
    EXPECT_EQ(out[e], 0.25f * float(scales[e / 16]) * float(quants[e] - 32)) << e;
  }
}

TEST(GgufDequant, RefusesUnsupportedTypesAndSizeMismatches) {
  std::vector<float> out(256);
  const Bytes q2k(84);
  const Status unsupported_type = dequantize(GgmlType::kQ2_K, q2k, out);
  EXPECT_EQ(unsupported_type.code(), StatusCode::kUnsupported);
  EXPECT_NE(unsupported_type.message().find("Q2_K"), std::string::npos);
  EXPECT_NE(unsupported_type.message().find("Q6_K"), std::string::npos);  // lists what works
  EXPECT_FALSE(ggml_type_dequantizable(GgmlType::kIQ2_XXS));
  EXPECT_TRUE(ggml_type_dequantizable(GgmlType::kQ4_K));

  const Bytes short_q8(33);
  std::vector<float> block(32);
  EXPECT_EQ(dequantize(GgmlType::kQ8_0, short_q8, block).code(), StatusCode::kInvalidArgument);
  std::vector<float> partial(20);
  const Bytes q8(34);
  EXPECT_EQ(dequantize(GgmlType::kQ8_0, q8, partial).code(), StatusCode::kInvalidArgument);
}

TEST(GgufDequant, TensorsComeOutRowMajor) {
  test::GgufBuilder builder;
  std::string q8(2 * 34, '\0');
  const uint16_t one = kHalfOne;
  std::memcpy(q8.data(), &one, 2);
  std::memcpy(q8.data() + 34, &one, 2);
  for (int i = 0; i < 32; ++i) {
    q8[2 + i] = char(i);
    q8[36 + i] = char(-i);
  }
  builder.add_tensor({"w", {32, 2}, uint32_t(GgmlType::kQ8_0), q8});
  builder.add_tensor({"iq", {256}, uint32_t(GgmlType::kIQ2_XXS), std::string(66, '\0')});
  const std::string path = test::temp_dir() + "/tensor.gguf";
  ASSERT_TRUE(write_file(path, builder.build()).is_ok());
  auto file = GgufFile::open(path);
  ASSERT_TRUE(file.is_ok()) << file.status().message();

  auto tensor = dequantize_tensor(*file, *file->find_tensor("w"));
  ASSERT_TRUE(tensor.is_ok()) << tensor.status().message();
  EXPECT_EQ(tensor->dtype(), DType::kF32);
  EXPECT_EQ(tensor->shape(), (Shape{2, 32}));
  EXPECT_EQ(tensor->data_as<float>()[5], 5.0f);
  EXPECT_EQ(tensor->data_as<float>()[32 + 5], -5.0f);

  auto refused = dequantize_tensor(*file, *file->find_tensor("iq"));
  ASSERT_FALSE(refused.is_ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kUnsupported);
  EXPECT_EQ(refused.status().message().rfind(path + ": tensor 'iq' has type IQ2_XXS", 0), 0u)
      << refused.status().message();
}

// tests/fixtures/gguf/dequant_reference.gguf (scripts/make_gguf_dequant_fixture.py) holds, for
// each decodable type T, a tensor "T" of that type and a tensor "T.expected" with gguf-py's
// dequantization of it as F32. Ours must agree to the bit.
TEST(GgufDequant, MatchesGgufPyReference) {
  const std::string path = test::source_dir() + "/tests/fixtures/gguf/dequant_reference.gguf";
  auto file = GgufFile::open(path);
  ASSERT_TRUE(file.is_ok()) << file.status().message();
  int compared = 0;
  for (const GgufTensorInfo& info : file->tensors()) {
    if (info.name.ends_with(".expected")) continue;
    const GgufTensorInfo* expected = file->find_tensor(info.name + ".expected");
    ASSERT_NE(expected, nullptr) << info.name;
    EXPECT_EQ(ggml_type_name(info.type), info.name);
    auto ours = dequantize_tensor(*file, info);
    ASSERT_TRUE(ours.is_ok()) << ours.status().message();
    auto reference = dequantize_tensor(*file, *expected);
    ASSERT_TRUE(reference.is_ok());
    ASSERT_EQ(ours->shape(), reference->shape()) << info.name;
    const uint32_t* ours_bits = ours->data_as<uint32_t>();
    const uint32_t* reference_bits = reference->data_as<uint32_t>();
    int mismatches = 0;
    for (int64_t i = 0; i < ours->numel(); ++i) {
      if (ours_bits[i] != reference_bits[i] && mismatches++ < 5) {
        ADD_FAILURE() << info.name << "[" << i << "]: ours " << std::bit_cast<float>(ours_bits[i])
                      << ", gguf-py " << std::bit_cast<float>(reference_bits[i]);
      }
    }
    EXPECT_EQ(mismatches, 0) << info.name;
    ++compared;
  }
  EXPECT_EQ(compared, 12);  // F32, F16, BF16, F64 and the eight quantized types
}

// The demo model, when present (it is not committed): every tensor decodes, and a few values agree
// to the bit with gguf-py's dequantization of the same file.
TEST(GgufDequant, DemoModelWhenPresent) {
  const std::string path = test::source_dir() + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!path_exists(path)) GTEST_SKIP() << path << " is absent";
  auto file = GgufFile::open(path);
  ASSERT_TRUE(file.is_ok()) << file.status().message();
  for (const GgufTensorInfo& info : file->tensors()) {
    auto tensor = dequantize_tensor(*file, info);
    ASSERT_TRUE(tensor.is_ok()) << tensor.status().message();
    const float* values = tensor->data_as<float>();
    for (int64_t i = 0; i < tensor->numel(); ++i) {
      ASSERT_TRUE(std::isfinite(values[i])) << info.name << "[" << i << "]";
    }
  }
  struct Known {
    const char* tensor;
    int64_t index;
    uint32_t bits;  // from gguf.quants.dequantize
  };
  const Known known[] = {
      {"token_embd.weight", 0, 3185193984u},        {"token_embd.weight", 1000, 1005772800u},
      {"token_embd.weight", 28311551, 3173699584u}, {"blk.0.attn_q.weight", 1, 1042358272u},
      {"blk.0.attn_q.weight", 331775, 3196256256u}, {"blk.29.ffn_down.weight", 1000, 1034674176u},
  };
  for (const Known& value : known) {
    auto tensor = dequantize_tensor(*file, *file->find_tensor(value.tensor));
    ASSERT_TRUE(tensor.is_ok());
    EXPECT_EQ(tensor->data_as<uint32_t>()[value.index], value.bits)
        << value.tensor << "[" << value.index << "]";
  }
}

}  // namespace
}  // namespace kite
