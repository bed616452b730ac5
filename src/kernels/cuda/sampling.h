// Choosing the next token of every sequence on the GPU, so that only token ids cross to the host.
// Same semantics as the host Sampler (runtime/sampling.h), which is its CPU reference: repetition
// penalty, then temperature, top-k, top-p and min-p with Hugging Face's tie rules, then a draw.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "model/backend.h"

namespace kite::cuda {

// Per-row sampling parameters, uploaded by the runtime (model/batch.h); the same meaning as
// kite::SamplingConfig plus the row's position in its random stream.
using SamplingRow = kite::SamplingRow;

// Bytes of device memory sample() needs for `rows` rows of `vocab_size` logits: 8 bytes per logit
// (room for every token of a row as a candidate) plus about 25 KB per row.
size_t sampling_workspace_bytes(int64_t rows, int64_t vocab_size);

// out_ids[r] = the token drawn for row r, each row with its own parameters rows[r].
//  logits          [R, V] float32. The repetition penalty is applied to it in place (a seen
//                  token's logit divided by the penalty when positive, multiplied when negative);
//                  nothing else is written.
//  rows            [R] SamplingRow
//  history         [R, history_stride]: every token each sequence has so far (prompt and output),
//                  read by the repetition penalty; ids outside [0, V) are ignored
//  history_length  [R]; history and history_length may be null when no row has a penalty
//  out_ids         [R] int32
// All pointers are device memory. Greedy rows (temperature 0 or top_k 1) take the argmax, the
// lowest index on ties, exactly as the host does. Other rows draw from the host Sampler's
// distribution (sampling_distribution in runtime/sampling.h) up to float rounding: scores are
// divided by the temperature in float32, probabilities are exp(score - max) in float32 summed as
// integers in units of 2^-39, so a top-p or min-p boundary within rounding of a token may differ.
//
// The random stream is counter-based (Philox4x32-10 keyed by the seed, counter = step): the GPU
// holds no state, the same (seed, step) gives the same token whatever else is in the batch, and a
// replay gives the same tokens. The GPU and the CPU use different random streams and map the
// uniform draw to a token in different orders, so the same seed gives different (equally
// distributed) outputs on the two backends, each reproducible on its own.
//
// Graph-capture safe: no allocation, no synchronisation, a fixed grid for given R and V. Three
// kernels; the workspace must not be shared by calls that may run at the same time.
// Cost on an H100 (V = 128256, CUDA graph): greedy 7 us for R = 1, 25 us for R = 64; sampling with
// the usual filters 25-40 us for R = 1, 80-100 us for R = 64. Filters that keep tens of thousands
// of tokens (top_k 20000, top_p 0.99 at a high temperature) take 0.1-0.9 ms.
void sample(const DeviceTensor& logits, const SamplingRow* rows, const int32_t* history,
            const int32_t* history_length, int64_t history_stride, int32_t* out_ids,
            void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace kite::cuda
