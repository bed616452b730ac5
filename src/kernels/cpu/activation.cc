// SwiGLU activation: the gate and up projections come out of one fused linear as [gate | up].
#include "kernels/cpu/activation.h"

#include <cmath>

#include "kernels/cpu/threading.h"

namespace kite::cpu {

void silu_mul(const DeviceTensor& gate_up, DeviceTensor& out) {
  KITE_CHECK(gate_up.dtype == DType::kF32 && out.dtype == DType::kF32);
  const int64_t tokens = gate_up.rows();
  const int64_t size = out.cols();
  KITE_CHECK(gate_up.cols() == 2 * size && out.rows() == tokens);
  KITE_CHECK(out.data != gate_up.data || tokens == 0);
  const auto* input = static_cast<const float*>(gate_up.data);
  auto* output = static_cast<float*>(out.data);
#pragma omp parallel for schedule(static) if (tokens * size >= kMinParallelWork)
  for (int64_t t = 0; t < tokens; ++t) {
    const float* gate = input + t * 2 * size;
    const float* up = gate + size;
    float* destination = output + t * size;
    for (int64_t i = 0; i < size; ++i) {
      destination[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
    }
  }
}

}  // namespace kite::cpu
