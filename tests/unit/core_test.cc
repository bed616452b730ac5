// Tests for core: status, dtypes, half/bfloat16/fp8 conversions, files.
#include <gtest/gtest.h>

#include <cmath>

#include "core/dtype.h"
#include "core/file.h"
#include "core/half.h"
#include "core/tensor.h"
#include "test_util.h"

namespace kite {
namespace {

Result<int> half_of(int value) {
  if (value % 2) return invalid_argument("odd");
  return value / 2;
}

Status quarter_of(int value, int* out) {
  KITE_ASSIGN_OR_RETURN(int half, half_of(value));
  KITE_ASSIGN_OR_RETURN(*out, half_of(half));
  return Status::ok();
}

TEST(Status, PropagatesThroughMacros) {
  int out = 0;
  EXPECT_TRUE(quarter_of(8, &out).is_ok());
  EXPECT_EQ(out, 2);
  const Status status = quarter_of(6, &out);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.with_context("x").message(), "x: odd");
}

TEST(DType, NamesRoundTrip) {
  for (DType dtype : kAllDTypes) {
    EXPECT_EQ(*parse_dtype_name(dtype_name(dtype)), dtype);
    EXPECT_EQ(*parse_safetensors_dtype(dtype_safetensors_name(dtype)), dtype);
  }
  EXPECT_FALSE(parse_dtype_name("float64").is_ok());
  EXPECT_EQ(parse_safetensors_dtype("F64").status().code(), StatusCode::kUnsupported);
}

TEST(Half, Fp16KnownValues) {
  EXPECT_EQ(float_to_fp16(1.0f), 0x3c00);
  EXPECT_EQ(float_to_fp16(-2.0f), 0xc000);
  EXPECT_EQ(float_to_fp16(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_fp16(65520.0f), 0x7c00);                      // rounds to infinity
  EXPECT_EQ(float_to_fp16(std::ldexp(1.0f, -24)), 0x0001);         // smallest subnormal
  EXPECT_EQ(float_to_fp16(std::ldexp(1.0f, -25)), 0x0000);         // tie rounds to even (zero)
  EXPECT_EQ(float_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie to even
  EXPECT_EQ(float_to_fp16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_FLOAT_EQ(fp16_to_float(0x3555), 0.333251953125f);
  EXPECT_TRUE(std::isinf(fp16_to_float(0xfc00)));
  EXPECT_TRUE(std::isnan(fp16_to_float(float_to_fp16(NAN))));
}

TEST(Half, Fp16RoundTripsEveryValue) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float value = fp16_to_float(uint16_t(bits));
    if (std::isnan(value)) continue;
    EXPECT_EQ(float_to_fp16(value), bits) << bits;
  }
}

TEST(Half, Bf16) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(float_to_bf16(1.00390625f), 0x3f80);  // tie to even
  EXPECT_EQ(float_to_bf16(1.01171875f), 0x3f82);  // tie to even (up)
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float value = bf16_to_float(uint16_t(bits));
    if (std::isnan(value)) continue;
    EXPECT_EQ(float_to_bf16(value), bits);
  }
}

TEST(Half, Fp8E4M3) {
  EXPECT_FLOAT_EQ(fp8_e4m3_to_float(0x7e), 448.0f);
  EXPECT_FLOAT_EQ(fp8_e4m3_to_float(0x01), std::ldexp(1.0f, -9));
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_float(0x7f)));
  EXPECT_EQ(float_to_fp8_e4m3(1000.0f), 0x7e);
  EXPECT_EQ(float_to_fp8_e4m3(-1000.0f), 0xfe);
  for (uint32_t bits = 0; bits < 0x100; ++bits) {
    const float value = fp8_e4m3_to_float(uint8_t(bits));
    if (std::isnan(value)) continue;
    if (bits == 0x80) continue;  // -0 keeps its sign
    EXPECT_EQ(float_to_fp8_e4m3(value), bits) << bits;
  }
  EXPECT_EQ(float_to_fp8_e4m3(1.0625f), 0x38);  // halfway between 1 and 1.125: to even
  EXPECT_EQ(float_to_fp8_e4m3(1.1875f), 0x3a);  // halfway between 1.125 and 1.25: to even
}

TEST(Tensor, ConvertsBetweenFloatTypes) {
  Tensor source(DType::kF32, {2, 3});
  for (int i = 0; i < 6; ++i) source.data_as<float>()[i] = 0.5f * float(i) - 1.0f;
  auto half = convert_dtype(source.view(), DType::kF16);
  ASSERT_TRUE(half.is_ok());
  auto back = to_float32(half->view());
  ASSERT_TRUE(back.is_ok());
  for (int i = 0; i < 6; ++i) EXPECT_EQ((*back)[size_t(i)], source.data_as<float>()[i]);
  Tensor integers(DType::kI32, {4});
  EXPECT_EQ(convert_dtype(integers.view(), DType::kF16).status().code(), StatusCode::kUnsupported);
}

TEST(File, ErrorsNameThePath) {
  auto missing = read_file("/nonexistent/kite/file");
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/kite/file"), std::string::npos);
  EXPECT_FALSE(MappedFile::open(test::temp_dir()).is_ok());  // a directory
}

TEST(File, WriteThenMap) {
  const std::string path = test::temp_dir() + "/x.bin";
  ASSERT_TRUE(write_file(path, "hello").is_ok());
  auto mapped = MappedFile::open(path);
  ASSERT_TRUE(mapped.is_ok());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(mapped->data()), mapped->size()), "hello");
  EXPECT_EQ(*read_file(path), "hello");
}

}  // namespace
}  // namespace kite
