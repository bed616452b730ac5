// Writes -inf at each banned (row, token) of the float32 logits.
#include "kernels/cpu/ban_tokens.h"

#include <limits>

namespace kite::cpu {

void ban_tokens(DeviceTensor& logits, const int32_t* pairs, const int32_t* count,
                int64_t max_count) {
  KITE_CHECK(logits.dtype == DType::kF32 && count != nullptr);
  const int64_t banned = *count;
  KITE_CHECK(banned >= 0 && banned <= max_count && (banned == 0 || pairs != nullptr));
  const int64_t rows = logits.rows(), vocab = logits.cols();
  auto* values = static_cast<float*>(logits.data);
  for (int64_t i = 0; i < banned; ++i) {
    const int32_t row = pairs[2 * i], token = pairs[2 * i + 1];
    KITE_CHECK(row >= 0 && row < rows && token >= 0 && token < vocab);
    values[row * vocab + token] = -std::numeric_limits<float>::infinity();
  }
}

}  // namespace kite::cpu
