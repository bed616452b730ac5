// Adds each entry's bias to its (row, token) of the float32 logits.
#include "kernels/cpu/logit_bias.h"

namespace kite::cpu {

void add_logit_bias(DeviceTensor& logits, const LogitBiasEntry* entries, const int32_t* count,
                    int64_t max_count) {
  KITE_CHECK(logits.dtype == DType::kF32 && count != nullptr);
  const int64_t used = *count;
  KITE_CHECK(used >= 0 && used <= max_count && (used == 0 || entries != nullptr));
  const int64_t rows = logits.rows(), vocab = logits.cols();
  auto* values = static_cast<float*>(logits.data);
  for (int64_t i = 0; i < used; ++i) {
    const LogitBiasEntry& entry = entries[i];
    KITE_CHECK(entry.row >= 0 && entry.row < rows && entry.token >= 0 && entry.token < vocab);
    values[entry.row * vocab + entry.token] += entry.bias;
  }
}

}  // namespace kite::cpu
