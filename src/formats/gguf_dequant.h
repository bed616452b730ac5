// Decoding GGUF tensor data to float32: the plain float types and ggml's block-quantized types
// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the k-quants Q4_K, Q5_K, Q6_K. The arithmetic follows ggml's
// reference dequantize_row_* functions operation for operation, so results are bit-exact.
#pragma once

#include <cstdint>
#include <span>

#include "core/status.h"
#include "core/tensor.h"
#include "formats/gguf.h"

namespace kite {

// True for the types dequantize() decodes.
bool ggml_type_dequantizable(GgmlType type);
// "F32, F16, BF16, ...": the decodable types, for messages.
std::string dequantizable_type_names();

// Decodes `out.size()` elements of `type` from `bytes`, which must hold exactly that many
// (a whole number of blocks). kUnsupported for types outside the list above, kInvalidArgument
// for a size mismatch.
Status dequantize(GgmlType type, std::span<const uint8_t> bytes, std::span<float> out);

// One tensor of a GGUF file as float32, shaped row-major (info.row_major_shape()). Errors name
// the file and the tensor.
Result<Tensor> dequantize_tensor(const GgufFile& file, const GgufTensorInfo& info);

}  // namespace kite
