// Chooses the compute backend once at start-up (STYLE.md, principle 3): the model code only ever
// sees the Backend interface returned here.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "model/backend.h"

namespace kite {

// The CPU backend (device_index must be 0), or the CUDA backend on GPU options.device_index. Fails
// with kUnsupported when this binary has no such backend or no GPU, kInvalidArgument for a bad
// device index or activation dtype.
Result<std::unique_ptr<Backend>> make_backend(BackendKind kind, const BackendOptions& options = {});

// The GPU an engine would be built for: its name and compute capability (90 for sm_90).
struct GpuIdentity {
  std::string name;
  int compute_capability = 0;
  size_t total_memory_bytes = 0;
};
Result<GpuIdentity> gpu_identity(int device_index);

// The GPU's ceilings, measured now (kernels/cuda/ceilings.h): copy bandwidth (bytes read + written
// per second) and the bf16 GEMM rate (FLOP/s) of an 8192^3 product through cuBLASLt.
struct GpuCeilings {
  double copy_bytes_per_second = 0;
  double bf16_gemm_flops_per_second = 0;
};
Result<GpuCeilings> measure_gpu_ceilings(int device_index);

// A GEMM shape of a model: weight [n, k], run with up to max_tokens rows.
struct GemmShape {
  int64_t max_tokens = 0;
  int64_t n = 0;
  int64_t k = 0;
  bool has_bias = false;
  bool gated = false;  // the down projection with SwiGLU fused in (GemmChoice::gated)
  // The input is the residual stream, normalised inside the GEMM (QKV and gate/up of an engine
  // with the norm scales folded in: Backend::rms_norm_linear); a kernel that cannot do that runs
  // after an RMSNorm kernel, whose time is then part of its own.
  bool normed = false;
};
// One candidate kernel's time in the tuning: "cublaslt:N" (cuBLASLt's N-th heuristic algorithm)
// or "gemv:N" (small-M configuration N), as GemmChoice's algorithm and variant, and whether the
// engine takes it.
struct GemmCandidateTime {
  GemmShape shape;
  std::string kernel;
  float microseconds = 0;
  bool chosen = false;
  int32_t algorithm = 0;
  int32_t variant = 0;
};
// The kernel-tuning step of `kite build --device cuda`: times every candidate kernel of each
// shape on GPU device_index and returns the fastest per shape. `on_progress(done, total)` is
// called after each shape; `timings`, when given, receives every candidate's time, fastest first
// per shape.
Result<std::vector<GemmChoice>> tune_gemms(const std::vector<GemmShape>& shapes, DType dtype,
                                           int device_index,
                                           const std::function<void(size_t, size_t)>& on_progress,
                                           std::vector<GemmCandidateTime>* timings = nullptr);

// The CSV of `kite build --tuning_log`: a header, then a row per timing (max_tokens, n, k, bias,
// gated, kernel, microseconds, weight bytes / time in GB/s, chosen, normed) with
// `weight_element_bytes` bytes a weight element.
std::string tuning_log_csv(const std::vector<GemmCandidateTime>& timings,
                           size_t weight_element_bytes);

// `kite build --tune_decode`: the choices of the smallest row bucket checked in a running decode
// step, one shape after the other (coordinate descent). Each of a shape's `candidates` fastest
// runners-up in `timings` (fastest first per shape, as tune_gemms gives them) replaces the current
// choice in a trial; `decode_ms(choices)` times the decode step with those choices, the current
// choices and the trial in turn, `rounds` times each, and the trial becomes the current choices
// when its summed time is shorter by more than `min_gain` (0.005: 0.5%). `on_trial` sees each
// trial's summed times.
struct DecodeTrial {
  GemmShape shape;
  std::string kernel;
  double current_ms = 0;  // the current choices, summed over the rounds
  double trial_ms = 0;
  bool kept = false;
};
struct DecodeSearchOptions {
  size_t candidates = 3;
  int rounds = 3;
  double min_gain = 0.005;
};
Result<std::vector<GemmChoice>> search_decode_choices(
    std::vector<GemmChoice> choices, const std::vector<GemmCandidateTime>& timings,
    const std::function<Result<double>(const std::vector<GemmChoice>&)>& decode_ms,
    const DecodeSearchOptions& options, const std::function<void(const DecodeTrial&)>& on_trial);

}  // namespace kite
