// CUDA failures are programming or machine errors (STYLE.md, principle 9): they stop the program
// with the failing statement, file and line. Host code only.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>

#define KITE_CUDA_CHECK(expr)                                                                \
  do {                                                                                       \
    const cudaError_t kite_cuda_error_ = (expr);                                             \
    if (kite_cuda_error_ != cudaSuccess) {                                                   \
      std::fprintf(stderr, "kite: CUDA error %s (%s) in %s at %s:%d\n",                      \
                   cudaGetErrorName(kite_cuda_error_), cudaGetErrorString(kite_cuda_error_), \
                   #expr, __FILE__, __LINE__);                                               \
      std::abort();                                                                          \
    }                                                                                        \
  } while (0)

#define KITE_CUBLAS_CHECK(expr)                                                                \
  do {                                                                                         \
    const cublasStatus_t kite_cublas_status_ = (expr);                                         \
    if (kite_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                                        \
      std::fprintf(stderr, "kite: cuBLAS error %d in %s at %s:%d\n", int(kite_cublas_status_), \
                   #expr, __FILE__, __LINE__);                                                 \
      std::abort();                                                                            \
    }                                                                                          \
  } while (0)

// Checks the launch of the kernel just issued (bad configuration, missing image for this GPU).
#define KITE_CUDA_CHECK_LAUNCH() KITE_CUDA_CHECK(cudaGetLastError())
