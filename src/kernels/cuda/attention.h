// Paged attention on the GPU: a split-KV decode kernel (memory bound) and a fused flash-attention
// prefill kernel on the tensor cores (compute bound), over the paged KV cache of model/batch.h.
// The CPU twin is kernels/cpu/attention.h; tests/cuda/attention_test.cc compares the two.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "model/backend.h"

namespace kite::cuda {

// Split-KV ("multi-block") decode: how many splits of the context each (sequence, kv head) gets.
// 1 turns it off. Chosen from the batch and a bound on the step's contexts (the block-table width
// in tokens, part of a decode graph's key), not the contexts themselves, so that a captured graph
// stays valid as contexts grow within the bound: more splits when num_sequences * num_kv_heads is
// small compared to the SM count and the bound is long (none below 512 tokens).
int choose_attention_splits(int64_t num_sequences, int64_t num_kv_heads, int64_t context_bound,
                            int multiprocessor_count, bool multi_block_mode);

// Scratch bytes attention() needs for `max_tokens` query tokens with `num_splits` (0 when
// num_splits is 1): float32 partial outputs and log-sum-exps of every split.
size_t attention_workspace_bytes(int64_t max_tokens, int64_t num_q_heads, int64_t head_dim,
                                 int num_splits);
// int32 counters the split-KV decode needs for `max_tokens` query tokens: the CTAs of a token's
// splits count themselves done there, and the last one merges them.
size_t split_counter_count(int64_t max_tokens, int64_t num_q_heads);

// Scratch of the split-KV decode (unused, may be null, when num_splits is 1).
struct SplitWorkspace {
  void* partials = nullptr;  // attention_workspace_bytes(...) bytes
  size_t partial_bytes = 0;
  // split_counter_count(...) int32 zeros before the first call (cudaMemset); every call leaves
  // them zero, so one zeroing at allocation does.
  int32_t* counters = nullptr;
  size_t counter_count = 0;
};

// The semantics of cpu::attention: for token t of sequence s at position p = positions[t], query
// head h attends to kv head h / (Hq / Hkv) at cache positions max(0, p - sliding_window + 1) <= j
// <= p (no lower bound when sliding_window <= 0); out = softmax(scale * q.K^T) V, the softmax in
// float32. q [T, Hq*D], out [T, Hq*D] and the cache are all float16 or all bfloat16.
//
// Supported: head_dim D in {16, 32, 64, 128}; any Hq that is a multiple of Hkv; any block size
// (every key's block is looked up on its own, so none is required; the engine uses 32). q, out
// and the cache must be 16-byte aligned (cudaMalloc gives 256). Only cache positions inside each
// token's window are read: blocks past a sequence's context and unused blocks are never touched.
//
// batch.max_query_length == 1 (every token is a decode token) takes the decode kernel: one CTA per
// (sequence, kv head, split; and per 4 query heads for groups over 4) reads each key and value
// once for the query heads it serves, so it moves 2 * context * D * 2 bytes per kv head and
// sequence and is bound by HBM bandwidth (Llama-3-8B, 8 kv heads, D 128, context 4096: 16 MiB per
// layer and sequence, about 6 us at 3 TB/s). With num_splits > 1 (at most 256) each CTA writes
// float32 partial results to `workspace` and the last CTA of a token and kv head to finish (an
// atomic counter) merges them by log-sum-exp, in the same kernel. Its grid depends
// on num_sequences, num_kv_heads and num_splits only, and it reads positions and block tables from
// device memory, so a CUDA graph captured for a batch size stays valid while the contexts grow
// (batch.max_context_length is not read).
//
// Anything else takes the prefill kernel (FlashAttention-2 on mma.sync m16n8k16, float32
// accumulation and online softmax; the score matrix never leaves registers): one CTA per
// (128 query rows of one sequence, query head), 4 warps of 32 rows, two CTAs an SM, the CTAs of
// each sequence's last rows (the most keys) first; K/V tiles of 64 keys gathered from the paged
// cache, tiles outside every row's causal / sliding window skipped. It handles prefill, chunked
// prefill and decode tokens in one batch; num_splits is ignored. Work: 4 * T^2 / 2 * D * Hq FLOPs
// for a causal prefill of T tokens (Llama-3-8B, T 2048: 34 GFLOP per layer, against 0.9 TFLOP in
// the layer's GEMMs); the host reads batch.max_query_length to size the grid.
//
// `workspace` must hold attention_workspace_bytes(num tokens, Hq, D, num_splits) bytes and
// split_counter_count(num tokens, Hq) counters when the decode kernel runs with num_splits > 1; it
// may be empty otherwise. Everything runs on `stream` (and `side`), without synchronizing, and may
// be captured in a CUDA graph (the prefill kernel for D 128 sets its shared-memory limit with
// cudaFuncSetAttribute on every call).
//
// A batch of leading decodes and then prefills (an in-flight batching step) runs both kernels,
// one after the other. (Running the decode kernel on a second stream beside the prefill kernel
// gained nothing measurable: the prefill kernel's CTAs fill every SM until its last wave, see
// docs/perf/cuda_serving.md.)
void attention(const DeviceTensor& q, const AttentionBatch& batch, const KvCacheView& cache,
               int64_t layer, float scale, int64_t sliding_window, DeviceTensor& out,
               int num_splits, const SplitWorkspace& workspace, cudaStream_t stream);

// Whether decode_rope_attention takes this step: decode only (batch.max_query_length == 1), a
// supported head_dim, rotary_dim a multiple of 16.
bool decode_rope_attention_applies(const AttentionBatch& batch, const RopeParams& rope,
                                   int64_t head_dim);

// rope_and_store_kv followed by attention, for a decode step, in one kernel: the decode kernel
// rotates the queries it reads from qkv [T, (Hq + 2 Hkv) * D] itself, and the CTA that covers a
// sequence's new position rotates that token's key, stores key and value in the cache slot of
// batch.slot_mapping and attends to them from registers. Saves the RoPE kernel (and its q tensor)
// per layer. Same results as the two calls (the same rounding of the rotated values).
void decode_rope_attention(const DeviceTensor& qkv, const RopeParams& rope,
                           const AttentionBatch& batch, const KvCacheView& cache, int64_t layer,
                           float scale, int64_t sliding_window, DeviceTensor& out, int num_splits,
                           const SplitWorkspace& workspace, cudaStream_t stream);

}  // namespace kite::cuda
