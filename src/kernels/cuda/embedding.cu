// Embedding lookup and row gather: one CTA per output row, copying or converting element-wise.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/launch.cuh"

namespace kite::cuda {
namespace {

constexpr int kThreads = 256;

// out[t, :] = convert(table[ids[t], :])
template <typename Source, typename Destination>
__global__ void embedding_kernel(const Source* table, const int32_t* ids, Destination* out,
                                 int64_t hidden) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t row = blockIdx.x;
  const Source* source = table + int64_t(ids[row]) * hidden;
  Destination* destination = out + row * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    destination[i] = from_float<Destination>(to_float(source[i]));
  }
}

// out[i, :] = x[indices[i], :] as bytes, 16 at a time when rows allow it.
template <typename Chunk>
__global__ void gather_rows_kernel(const Chunk* x, const int32_t* indices, Chunk* out,
                                   int64_t chunks_per_row) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t row = blockIdx.x;
  const Chunk* source = x + int64_t(indices[row]) * chunks_per_row;
  Chunk* destination = out + row * chunks_per_row;
  for (int64_t i = threadIdx.x; i < chunks_per_row; i += blockDim.x) destination[i] = source[i];
}

}  // namespace

void embedding(const DeviceTensor& table, const int32_t* ids, DeviceTensor& out,
               cudaStream_t stream) {
  KITE_CHECK(table.cols() == out.cols());
  const int64_t rows = out.rows();
  if (rows == 0) return;
  dispatch_float(table.dtype, [&](auto source_element) {
    using Source = decltype(source_element);
    dispatch_float(out.dtype, [&](auto destination_element) {
      using Destination = decltype(destination_element);
      launch_kernel(embedding_kernel<Source, Destination>, unsigned(rows), kThreads, 0, stream,
                    static_cast<const Source*>(table.data), ids,
                    static_cast<Destination*>(out.data), out.cols());
    });
  });
}

void gather_rows(const DeviceTensor& x, const int32_t* indices, DeviceTensor& out,
                 cudaStream_t stream) {
  KITE_CHECK(x.dtype == out.dtype && x.cols() == out.cols());
  const int64_t rows = out.rows();
  if (rows == 0) return;
  const int64_t row_bytes = out.cols() * int64_t(dtype_size(out.dtype));
  const bool aligned = row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(x.data) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(out.data) % 16 == 0;
  if (aligned) {
    launch_kernel(gather_rows_kernel<uint4>, unsigned(rows), kThreads, 0, stream,
                  static_cast<const uint4*>(x.data), indices, static_cast<uint4*>(out.data),
                  row_bytes / 16);
  } else {
    launch_kernel(gather_rows_kernel<uint8_t>, unsigned(rows), kThreads, 0, stream,
                  static_cast<const uint8_t*>(x.data), indices, static_cast<uint8_t*>(out.data),
                  row_bytes);
  }
}

}  // namespace kite::cuda
