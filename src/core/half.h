// Conversions between float and the 16- and 8-bit float formats, on the host. Rounding is to
// nearest even, as in PyTorch and CUDA's __float2half_rn / __float2bfloat16_rn.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

namespace kite {

inline float bf16_to_float(uint16_t bits) {
  return std::bit_cast<float>(uint32_t(bits) << 16);
}

inline uint16_t float_to_bf16(float value) {
  uint32_t bits = std::bit_cast<uint32_t>(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return uint16_t(bits >> 16);
}

inline float fp16_to_float(uint16_t bits) {
  const uint32_t sign = uint32_t(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  const uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24.
    const float magnitude = std::ldexp(float(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

inline uint16_t float_to_fp16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const uint16_t sign = uint16_t((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return uint16_t(sign | 0x7e00u);   // NaN
  if (magnitude >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to infinity
  if (magnitude < 0x38800000u) {
    // Result is subnormal (or zero): round |value| * 2^24 to an integer, ties to even.
    const float scaled = std::bit_cast<float>(magnitude) * 16777216.0f;
    return uint16_t(sign | uint16_t(std::nearbyint(scaled)));
  }
  uint32_t rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);
  return uint16_t(sign | uint16_t((rounded - 0x38000000u) >> 13));
}

// int4, two's complement, packed two to a byte with the even element in the low nibble: the level
// of the low (high = false) or high nibble of `byte`, sign-extended by an arithmetic shift.
inline int int4_level(uint8_t byte, bool high) {
  return int(int8_t(high ? uint8_t(byte & 0xf0u) : uint8_t(byte << 4))) >> 4;
}

// float8 e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities; 0x7f is NaN.
inline float fp8_e4m3_to_float(uint8_t bits) {
  const bool negative = bits & 0x80u;
  const uint32_t exponent = (bits >> 3) & 0xfu;
  const uint32_t mantissa = bits & 0x7u;
  float magnitude;
  if (exponent == 0xf && mantissa == 0x7) {
    magnitude = std::nanf("");
  } else if (exponent == 0) {
    magnitude = std::ldexp(float(mantissa), -9);
  } else {
    magnitude = std::ldexp(1.0f + float(mantissa) / 8.0f, int(exponent) - 7);
  }
  return negative ? -magnitude : magnitude;
}

// Saturates to +-448 like torch's float8_e4m3fn casts of finite values; NaN stays NaN.
inline uint8_t float_to_fp8_e4m3(float value) {
  if (std::isnan(value)) return 0x7f;
  const uint8_t sign = std::signbit(value) ? 0x80 : 0x00;
  float magnitude = std::fabs(value);
  if (magnitude >= 448.0f) return uint8_t(sign | 0x7e);
  if (magnitude < std::ldexp(1.0f, -6)) {
    // Subnormal range: steps of 2^-9.
    const int steps = int(std::nearbyint(magnitude * 512.0f));
    return uint8_t(sign | steps);  // steps == 8 lands exactly on the smallest normal (0x08)
  }
  int exponent;
  std::frexp(magnitude, &exponent);  // magnitude = f * 2^exponent, f in [0.5, 1)
  exponent -= 1;                     // now magnitude = 1.m * 2^exponent
  const float step = std::ldexp(1.0f, exponent - 3);
  const float quantized = std::nearbyint(magnitude / step) * step;
  int e;
  const float f = std::frexp(quantized, &e);  // carry may bump the exponent
  e -= 1;
  const int mantissa = int(std::nearbyint((f * 2.0f - 1.0f) * 8.0f));
  return uint8_t(sign | ((e + 7) << 3) | mantissa);
}

}  // namespace kite
