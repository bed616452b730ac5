// Dtype dispatch for the CUDA kernels: turns a runtime DType into the element type a kernel
// template is instantiated with. Included only by .cu files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "core/dtype.h"
#include "core/status.h"

namespace kite::cuda {

// Calls f(Element{}) with Element = float, __half or __nv_bfloat16.
template <typename Function>
void dispatch_float(DType dtype, Function&& function) {
  switch (dtype) {
    case DType::kF32:
      function(float{});
      return;
    case DType::kF16:
      function(__half{});
      return;
    case DType::kBF16:
      function(__nv_bfloat16{});
      return;
    default:
      KITE_CHECK(false && "the CUDA kernels take float32, float16 or bfloat16");
  }
}

// Calls f(Element{}) with Element = __half or __nv_bfloat16: the activation dtypes of CUDA engines.
template <typename Function>
void dispatch_half(DType dtype, Function&& function) {
  switch (dtype) {
    case DType::kF16:
      function(__half{});
      return;
    case DType::kBF16:
      function(__nv_bfloat16{});
      return;
    default:
      KITE_CHECK(false && "CUDA activations are float16 or bfloat16");
  }
}

}  // namespace kite::cuda
