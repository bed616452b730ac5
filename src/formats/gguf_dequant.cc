// Block decoders for ggml's quantized types. Block layouts (ggml-common.h), all little-endian,
// `d`/`m`/`dmin` are fp16:
//   Q4_0 (32 elements, 18 bytes): d | 16 bytes of nibbles; x = (q - 8) * d
//   Q4_1 (32, 20):  d | m | 16 bytes of nibbles; x = q * d + m
//   Q5_0 (32, 22):  d | u32 high bits | 16 bytes of nibbles; x = (q - 16) * d
//   Q5_1 (32, 24):  d | m | u32 high bits | nibbles; x = q * d + m
//   Q8_0 (32, 34):  d | 32 x int8; x = q * d
//   Q4_K (256, 144): d | dmin | 12 bytes of 6-bit scales/mins | 128 bytes of nibbles
//   Q5_K (256, 176): d | dmin | 12 bytes of scales/mins | 32 bytes of high bits | 128 of nibbles
//   Q6_K (256, 210): 128 bytes low nibbles | 64 bytes of 2-bit highs | 16 x int8 scales | d
// In the 32-element types, byte j holds element j in its low nibble and element j + 16 in its
// high nibble. Each product is written as its own statement, as ggml's C is, so that no compiler
// fuses a multiply and an add and changes the last bit.
#include "formats/gguf_dequant.h"

#include <cstring>

#include "core/half.h"

namespace kite {
namespace {

uint16_t load_u16(const uint8_t* bytes) {
  uint16_t value;
  std::memcpy(&value, bytes, sizeof(value));
  return value;
}

uint32_t load_u32(const uint8_t* bytes) {
  uint32_t value;
  std::memcpy(&value, bytes, sizeof(value));
  return value;
}

float load_fp16(const uint8_t* bytes) {
  return fp16_to_float(load_u16(bytes));
}

void decode_q4_0(const uint8_t* block, float* out) {
  const float d = load_fp16(block);
  const uint8_t* quants = block + 2;
  for (int j = 0; j < 16; ++j) {
    const int low = (quants[j] & 0x0f) - 8;
    const int high = (quants[j] >> 4) - 8;
    out[j] = float(low) * d;
    out[j + 16] = float(high) * d;
  }
}

void decode_q4_1(const uint8_t* block, float* out) {
  const float d = load_fp16(block);
  const float m = load_fp16(block + 2);
  const uint8_t* quants = block + 4;
  for (int j = 0; j < 16; ++j) {
    const float low = float(quants[j] & 0x0f) * d;
    const float high = float(quants[j] >> 4) * d;
    out[j] = low + m;
    out[j + 16] = high + m;
  }
}

void decode_q5_0(const uint8_t* block, float* out) {
  const float d = load_fp16(block);
  const uint32_t high_bits = load_u32(block + 2);
  const uint8_t* quants = block + 6;
  for (int j = 0; j < 16; ++j) {
    const int low = (quants[j] & 0x0f) | int(((high_bits >> j) & 1u) << 4);
    const int high = (quants[j] >> 4) | int(((high_bits >> (j + 16)) & 1u) << 4);
    out[j] = float(low - 16) * d;
    out[j + 16] = float(high - 16) * d;
  }
}

void decode_q5_1(const uint8_t* block, float* out) {
  const float d = load_fp16(block);
  const float m = load_fp16(block + 2);
  const uint32_t high_bits = load_u32(block + 4);
  const uint8_t* quants = block + 8;
  for (int j = 0; j < 16; ++j) {
    const int low = (quants[j] & 0x0f) | int(((high_bits >> j) & 1u) << 4);
    const int high = (quants[j] >> 4) | int(((high_bits >> (j + 16)) & 1u) << 4);
    const float scaled_low = float(low) * d;
    const float scaled_high = float(high) * d;
    out[j] = scaled_low + m;
    out[j + 16] = scaled_high + m;
  }
}

void decode_q8_0(const uint8_t* block, float* out) {
  const float d = load_fp16(block);
  for (int j = 0; j < 32; ++j) out[j] = float(int8_t(block[2 + j])) * d;
}

// The 6-bit scale and min of sub-block `index` (0..7) of a Q4_K/Q5_K block: sub-blocks 0-3 keep
// theirs in the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); sub-blocks 4-7 take 4 bits from
// bytes 8-11 and their top 2 bits from the spare top bits of bytes 0-7.
void k_scale_and_min(const uint8_t* scales, int index, uint8_t* scale, uint8_t* min) {
  if (index < 4) {
    *scale = scales[index] & 63;
    *min = scales[index + 4] & 63;
  } else {
    *scale = uint8_t((scales[index + 4] & 0x0f) | ((scales[index - 4] >> 6) << 4));
    *min = uint8_t((scales[index + 4] >> 4) | ((scales[index] >> 6) << 4));
  }
}

// Q4_K and Q5_K share their layout except for the fifth bit (`high_bits`, null for Q4_K): each of
// the 4 groups of 64 elements reads 32 bytes of nibbles, low nibbles first (sub-block 2g), then
// high nibbles (sub-block 2g + 1); x = d * scale * q - dmin * min.
void decode_k_quant(const uint8_t* block, const uint8_t* high_bits, const uint8_t* quants,
                    float* out) {
  const float d = load_fp16(block);
  const float dmin = load_fp16(block + 2);
  const uint8_t* scales = block + 4;
  for (int group = 0; group < 4; ++group) {
    uint8_t scale, min;
    k_scale_and_min(scales, 2 * group, &scale, &min);
    const float d1 = d * float(scale);
    const float m1 = dmin * float(min);
    k_scale_and_min(scales, 2 * group + 1, &scale, &min);
    const float d2 = d * float(scale);
    const float m2 = dmin * float(min);
    const uint8_t low_mask = uint8_t(1u << (2 * group));
    const uint8_t high_mask = uint8_t(2u << (2 * group));
    for (int l = 0; l < 32; ++l) {
      int q = quants[l] & 0x0f;
      if (high_bits && (high_bits[l] & low_mask)) q += 16;
      const float scaled = d1 * float(q);
      *out++ = scaled - m1;
    }
    for (int l = 0; l < 32; ++l) {
      int q = quants[l] >> 4;
      if (high_bits && (high_bits[l] & high_mask)) q += 16;
      const float scaled = d2 * float(q);
      *out++ = scaled - m2;
    }
    quants += 32;
  }
}

void decode_q4_k(const uint8_t* block, float* out) {
  decode_k_quant(block, nullptr, block + 16, out);
}

void decode_q5_k(const uint8_t* block, float* out) {
  decode_k_quant(block, block + 16, block + 48, out);
}

// Q6_K: two halves of 128 elements. In each half, element l + 32 * k (k = 0..3, l = 0..31) takes
// its low 4 bits from low[l] (k = 0, 2: low nibble / high nibble) or low[l + 32] (k = 1, 3), its
// top 2 bits from bits 2k..2k+1 of high[l], and its scale from scales[l / 16 + 2k].
void decode_q6_k(const uint8_t* block, float* out) {
  const uint8_t* low = block;
  const uint8_t* high = block + 128;
  const int8_t* scales = reinterpret_cast<const int8_t*>(block + 192);
  const float d = load_fp16(block + 208);
  for (int half = 0; half < 2; ++half) {
    for (int l = 0; l < 32; ++l) {
      const int sub = l / 16;
      const int q1 = ((low[l] & 0x0f) | (((high[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((low[l + 32] & 0x0f) | (((high[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((low[l] >> 4) | (((high[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((low[l + 32] >> 4) | (((high[l] >> 6) & 3) << 4)) - 32;
      const float d1 = d * float(scales[sub + 0]);
      const float d2 = d * float(scales[sub + 2]);
      const float d3 = d * float(scales[sub + 4]);
      const float d4 = d * float(scales[sub + 6]);
      out[l + 0] = d1 * float(q1);
      out[l + 32] = d2 * float(q2);
      out[l + 64] = d3 * float(q3);
      out[l + 96] = d4 * float(q4);
    }
    out += 128;
    low += 64;
    high += 32;
    scales += 8;
  }
}

void decode_f32(const uint8_t* block, float* out) {
  std::memcpy(out, block, sizeof(float));
}
void decode_f16(const uint8_t* block, float* out) {
  *out = load_fp16(block);
}
void decode_bf16(const uint8_t* block, float* out) {
  *out = bf16_to_float(load_u16(block));
}
void decode_f64(const uint8_t* block, float* out) {
  double value;
  std::memcpy(&value, block, sizeof(value));
  *out = float(value);
}

using BlockDecoder = void (*)(const uint8_t* block, float* out);

struct Decoder {
  GgmlType type;
  BlockDecoder decode;
};

constexpr Decoder kDecoders[] = {
    {GgmlType::kF32, decode_f32},   {GgmlType::kF16, decode_f16},   {GgmlType::kBF16, decode_bf16},
    {GgmlType::kF64, decode_f64},   {GgmlType::kQ4_0, decode_q4_0}, {GgmlType::kQ4_1, decode_q4_1},
    {GgmlType::kQ5_0, decode_q5_0}, {GgmlType::kQ5_1, decode_q5_1}, {GgmlType::kQ8_0, decode_q8_0},
    {GgmlType::kQ4_K, decode_q4_k}, {GgmlType::kQ5_K, decode_q5_k}, {GgmlType::kQ6_K, decode_q6_k},
};

BlockDecoder find_decoder(GgmlType type) {
  for (const Decoder& decoder : kDecoders) {
    if (decoder.type == type) return decoder.decode;
  }
  return nullptr;
}

}  // namespace

bool ggml_type_dequantizable(GgmlType type) {
  return find_decoder(type) != nullptr;
}

std::string dequantizable_type_names() {
  std::string names;
  for (const Decoder& decoder : kDecoders) {
    if (!names.empty()) names += ", ";
    names += ggml_type_name(decoder.type);
  }
  return names;
}

Status dequantize(GgmlType type, std::span<const uint8_t> bytes, std::span<float> out) {
  const BlockDecoder decode = find_decoder(type);
  const GgmlTypeInfo* info = ggml_type_info(uint32_t(type));
  if (!decode || !info) {
    return unsupported("ggml type " + ggml_type_name(type) +
                       " cannot be dequantized (Kite decodes " + dequantizable_type_names() + ")");
  }
  const size_t block_size = size_t(info->block_size);
  const size_t block_bytes = size_t(info->block_bytes);
  if (out.size() % block_size != 0 || bytes.size() != out.size() / block_size * block_bytes) {
    return invalid_argument("dequantize " + ggml_type_name(type) + ": " +
                            std::to_string(bytes.size()) + " bytes do not hold exactly " +
                            std::to_string(out.size()) + " elements");
  }
  const size_t blocks = out.size() / block_size;
  for (size_t block = 0; block < blocks; ++block) {
    decode(bytes.data() + block * block_bytes, out.data() + block * block_size);
  }
  return Status::ok();
}

Result<Tensor> dequantize_tensor(const GgufFile& file, const GgufTensorInfo& info) {
  if (!ggml_type_dequantizable(info.type)) {
    return unsupported(file.path() + ": tensor '" + info.name + "' has type " +
                       ggml_type_name(info.type) + ", which Kite cannot dequantize (it decodes " +
                       dequantizable_type_names() + ")");
  }
  Tensor tensor(DType::kF32, info.row_major_shape());
  const std::span<float> out(tensor.data_as<float>(), size_t(tensor.numel()));
  const Status status = dequantize(info.type, file.tensor_data(info), out);
  if (!status.is_ok()) return status.with_context(file.path() + ": tensor '" + info.name + "'");
  return tensor;
}

}  // namespace kite
