// The linear layer on the GPU, out = x @ weight^T (+ bias), with a kernel chosen per GEMM shape:
// cuBLASLt for every shape, or our small-M kernel (gemv.cu) for decode-sized M. `kite build` times
// the candidates of each shape (time_candidates) and stores the fastest tactic in the engine.
//
// Cost of one call, x [M, K], weight [N, K], out [M, N], 2-byte elements:
//   bytes = 2 * (N*K + M*K + M*N (+ N for the bias)),   FLOPs = 2 * M * N * K.
// The weight dominates the bytes, so the intensity is about M FLOP per byte. A GPU is
// memory-bound below its FLOP rate over its bandwidth (H100: ~800 TFLOP/s / ~3.0 TB/s measured,
// ~265; H200 ~185): decode (M <= 16) is entirely bandwidth, time = weight bytes / HBM bandwidth
// (Llama-3-8B gate_up, 28672 x 4096: 235 MB, ~78 us on an H100); long prefills are compute-bound.
// Measured on an H100 (copy 3.0 TB/s), M = 1, the GEMV kernel reaches 95-99% of the copy bandwidth
// on gate_up and lm_head, 87% on down, 80% on qkv and 74% on o (15-20 us: launch and ramp-up
// weigh), 1-12% ahead of cuBLASLt's best; on SmolLM2's small matrices it takes half its time.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"
#include "model/backend.h"

namespace kite::cuda {

enum class GemmAlgorithm : int32_t {
  kCublasLt = 0,  // variant: index into cuBLASLt's heuristic list for the call's M, N, K, bias and
                  // pointer alignment (the same index may name another kernel for another M)
  kGemv = 1,      // variant: index into the small-M kernel's configurations (gemv.cu)
};
static_assert(int32_t(GemmAlgorithm::kGemv) + 1 == kGemmAlgorithmCount,
              "formats/gemm_choice.h counts the algorithms an engine may name");

// One kernel choice for a GEMM shape, stored in engines as two plain integers. A tactic that does
// not apply to a call (GEMV with M > kGemvMaxTokens, K % 8 != 0 or misaligned pointers; a cuBLASLt
// index past the heuristic's list) runs cuBLASLt's first heuristic result instead: linear() is
// correct for every tactic.
struct GemmTactic {
  GemmAlgorithm algorithm = GemmAlgorithm::kCublasLt;
  int32_t variant = 0;
  bool operator==(const GemmTactic&) const = default;
};

// "cublaslt:3", "gemv:1": for logs and build reports.
std::string gemm_tactic_name(const GemmTactic& tactic);

struct GemmTiming {
  GemmTactic tactic;
  float microseconds = 0;  // median over several timed batches of runs
};

// Owns a cuBLASLt handle, its workspace and the per-shape descriptors, for one GPU. linear()
// allocates no device memory (a new shape costs host work only), so it can be captured into a CUDA
// graph. Not thread-safe, and the workspace serves one stream at a time: one runner per stream.
class GemmRunner {
 public:
  // On the current device. Fails when cuBLASLt or the 32 MiB workspace cannot be had.
  static Result<std::unique_ptr<GemmRunner>> create();
  ~GemmRunner();
  GemmRunner(const GemmRunner&) = delete;
  GemmRunner& operator=(const GemmRunner&) = delete;

  // out = x @ weight^T (+ bias), or with `add` out += x @ weight^T (+ bias) (the residual stream;
  // cuBLASLt's beta = 1)   x [M, K], weight [N, K], bias [N] or null, out [M, N]; all float16 or
  // all bfloat16; float32 accumulation, each output rounded once. out must not overlap x.
  void linear(const DeviceTensor& x, const DeviceTensor& weight, const DeviceTensor* bias,
              DeviceTensor& out, const GemmTactic& tactic, cudaStream_t stream, bool add = false);

  // out = (x / rms(x)) @ weight^T (+ bias), rms(x[t]) = sqrt(mean(x[t]^2) + eps), in one kernel
  // when `tactic` is a GEMV configuration that applies (GemvKind::kNormed); false (and nothing
  // run) otherwise, and the caller normalises x and runs linear().
  bool linear_normed(const DeviceTensor& x, const DeviceTensor& weight, const DeviceTensor* bias,
                     float eps, DeviceTensor& out, const GemmTactic& tactic, cudaStream_t stream);

  // out += (silu(gate) * up) @ weight^T in one kernel, gate_up [M, 2K] = [gate | up], weight
  // [N, K], when `tactic` is a GEMV configuration that applies (GemvKind::kGatedAdd); false (and
  // nothing run) otherwise, and the caller runs SwiGLU and linear() apart.
  bool linear_silu_mul_add(const DeviceTensor& gate_up, const DeviceTensor& weight,
                           DeviceTensor& out, const GemmTactic& tactic, cudaStream_t stream);

  // Times every candidate for M x N x K (cuBLASLt's heuristic results, and every GEMV
  // configuration when the kernel applies) on scratch buffers of random values, rotating through
  // enough weight copies that the weights come from HBM as they do in a forward pass. Each: one
  // warm-up batch, then the median of several timed batches (CUDA events). Fastest first;
  // candidates that fail to run are left out; empty when the scratch memory cannot be had. Must not
  // be called while `stream` is being captured. `gated`: the SwiGLU-fused product of
  // linear_silu_mul_add (x [M, 2K], no bias), whose candidates are the GEMV configurations when
  // the kernel applies (none otherwise) that fit two CTAs an SM, where any does. `normed`: the
  // product of linear_normed as the forward pass runs it, the GEMV configurations in their
  // normalising form and each cuBLASLt candidate after the RMSNorm kernel it then needs.
  std::vector<GemmTiming> time_candidates(int64_t m, int64_t n, int64_t k, DType dtype,
                                          bool has_bias, bool gated, bool normed,
                                          cudaStream_t stream);

  // A good tactic without timing, for shapes no engine has tuned: GEMV for M <= kGemvMaxTokens and
  // K % 8 == 0, otherwise cuBLASLt's first heuristic result.
  GemmTactic default_tactic(int64_t m, int64_t n, int64_t k) const;

 private:
  struct State;
  explicit GemmRunner(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// ---- The small-M kernel (gemv.cu), used by GemmRunner ----

// The most tokens (rows of x) the GEMV kernel takes.
inline constexpr int64_t kGemvMaxTokens = 16;
// Its configurations (GemmTactic::variant for GemmAlgorithm::kGemv).
inline constexpr int32_t kGemvVariantCount = 8;

// What the GEMV kernel computes, x [M, K] and weight [N, K] unless said:
enum class GemvKind {
  kPlain,     // out = x @ weight^T (+ bias)
  kAdd,       // out += x @ weight^T (+ bias): a block's output added to the residual stream
  kNormed,    // out = (x / rms(x)) @ weight^T (+ bias): an RMSNorm whose scale is folded into
              // weight's columns, then the linear layer; the kernel scales its product, not x
  kGatedAdd,  // x [M, 2K] = [gate | up]: out += (silu(gate) * up) @ weight^T, no bias, M <= 8
};

// Whether the GEMV kernel can run this call: 1 <= M <= kGemvMaxTokens (8 for kGatedAdd), K a
// multiple of 8 and x and weight 16-byte aligned (it reads 8 elements at a time), float16 or
// bfloat16.
bool gemv_applies(GemvKind kind, const DeviceTensor& x, const DeviceTensor& weight);
// The configuration default_tactic picks for this shape on a GPU with `multiprocessors` SMs.
int32_t gemv_default_variant(int64_t m, int64_t n, int64_t k, int multiprocessors);
// Launches the GEMV kernel (gemv_applies must hold; shapes and dtypes already checked). Every
// output is rounded once; eps serves kNormed.
void launch_gemv(GemvKind kind, const DeviceTensor& x, const DeviceTensor& weight,
                 const DeviceTensor* bias, DeviceTensor& out, int32_t variant, float eps,
                 cudaStream_t stream);
// How many CTAs of the kGatedAdd kernel in configuration `variant` fit an SM for `tokens` tokens
// (one token tile, the uniform carveout), on the current device.
int gemv_gated_ctas_per_multiprocessor(DType dtype, int32_t variant, int64_t tokens);

}  // namespace kite::cuda
