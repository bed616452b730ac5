// make_backend: the one place that knows which backends this binary was built with.
#include "kernels/backend_factory.h"

#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>

#include "kernels/cpu/cpu_backend.h"
#ifdef KITE_WITH_CUDA
#include "kernels/cuda/ceilings.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_check.h"
#endif

namespace kite {
namespace {

constexpr const char* kNoCuda =
    "this kite binary was built without CUDA; use the CPU backend or rebuild kite with the CUDA "
    "toolkit (-DKITE_CUDA=ON)";

Result<std::unique_ptr<Backend>> make_cpu_backend(int device_index) {
  if (device_index != 0) {
    return invalid_argument("the CPU backend has a single device (index 0), not device " +
                            std::to_string(device_index));
  }
  return std::unique_ptr<Backend>(std::make_unique<CpuBackend>());
}

Result<std::unique_ptr<Backend>> make_cuda_backend(const BackendOptions& options) {
#ifdef KITE_WITH_CUDA
  KITE_ASSIGN_OR_RETURN(std::unique_ptr<CudaBackend> backend, CudaBackend::create(options));
  return std::unique_ptr<Backend>(std::move(backend));
#else
  (void)options;
  return unsupported(kNoCuda);
#endif
}

}  // namespace

Result<std::unique_ptr<Backend>> make_backend(BackendKind kind, const BackendOptions& options) {
  switch (kind) {
    case BackendKind::kCpu:
      return make_cpu_backend(options.device_index);
    case BackendKind::kCuda:
      return make_cuda_backend(options);
  }
  return invalid_argument("unknown backend kind " + std::to_string(int(kind)));
}

Result<GpuIdentity> gpu_identity(int device_index) {
#ifdef KITE_WITH_CUDA
  KITE_ASSIGN_OR_RETURN(CudaDeviceInfo device, cuda_device(device_index));
  return GpuIdentity{device.name, device.compute_capability, device.total_memory_bytes};
#else
  (void)device_index;
  return unsupported(kNoCuda);
#endif
}

Result<GpuCeilings> measure_gpu_ceilings(int device_index) {
#ifdef KITE_WITH_CUDA
  KITE_RETURN_IF_ERROR(cuda_device(device_index).status());
  KITE_CUDA_CHECK(cudaSetDevice(device_index));
  KITE_ASSIGN_OR_RETURN(cuda::GpuCeilings measured, cuda::measure_ceilings());
  return GpuCeilings{measured.copy_bytes_per_second, measured.bf16_gemm_flops_per_second};
#else
  (void)device_index;
  return unsupported(kNoCuda);
#endif
}

Result<std::vector<GemmChoice>> tune_gemms(const std::vector<GemmShape>& shapes, DType dtype,
                                           int device_index,
                                           const std::function<void(size_t, size_t)>& on_progress,
                                           std::vector<GemmCandidateTime>* timings) {
#ifdef KITE_WITH_CUDA
  KITE_RETURN_IF_ERROR(cuda_device(device_index).status());
  KITE_CUDA_CHECK(cudaSetDevice(device_index));
  KITE_ASSIGN_OR_RETURN(std::unique_ptr<cuda::GemmRunner> runner, cuda::GemmRunner::create());
  cudaStream_t stream = nullptr;
  KITE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::vector<GemmChoice> choices;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const GemmShape& shape = shapes[i];
    const std::vector<cuda::GemmTiming> measured =
        runner->time_candidates(shape.max_tokens, shape.n, shape.k, dtype, shape.has_bias,
                                shape.gated, shape.normed, stream);
    if (on_progress) on_progress(i + 1, shapes.size());
    for (size_t c = 0; timings && c < measured.size(); ++c) {
      const cuda::GemmTactic& tactic = measured[c].tactic;
      timings->push_back({shape, cuda::gemm_tactic_name(tactic), measured[c].microseconds, c == 0,
                          int32_t(tactic.algorithm), tactic.variant});
    }
    // A fused shape no fused kernel takes runs SwiGLU and the plain GEMM's choice.
    if (shape.gated && measured.empty()) continue;
    const cuda::GemmTactic tactic = measured.empty()
                                        ? runner->default_tactic(shape.max_tokens, shape.n, shape.k)
                                        : measured.front().tactic;
    choices.push_back(
        GemmChoice{shape.max_tokens, shape.n, shape.k, int32_t(tactic.algorithm), tactic.variant,
                   measured.empty() ? 0.0f : measured.front().microseconds, shape.gated});
  }
  KITE_CUDA_CHECK(cudaStreamDestroy(stream));
  return choices;
#else
  (void)shapes, (void)dtype, (void)device_index, (void)on_progress, (void)timings;
  return unsupported(kNoCuda);
#endif
}

std::string tuning_log_csv(const std::vector<GemmCandidateTime>& timings,
                           size_t weight_element_bytes) {
  std::string csv = "max_tokens,n,k,bias,gated,kernel,microseconds,weight_gbps,chosen,normed\n";
  char row[256];
  for (const GemmCandidateTime& timing : timings) {
    const GemmShape& shape = timing.shape;
    const double weight_bytes = double(shape.n) * double(shape.k) * double(weight_element_bytes);
    const double gbps = timing.microseconds > 0 ? weight_bytes / timing.microseconds / 1e3 : 0.0;
    std::snprintf(row, sizeof(row), "%lld,%lld,%lld,%d,%d,%s,%.2f,%.1f,%d,%d\n",
                  static_cast<long long>(shape.max_tokens), static_cast<long long>(shape.n),
                  static_cast<long long>(shape.k), int(shape.has_bias), int(shape.gated),
                  timing.kernel.c_str(), double(timing.microseconds), gbps, int(timing.chosen),
                  int(shape.normed));
    csv += row;
  }
  return csv;
}

Result<std::vector<GemmChoice>> search_decode_choices(
    std::vector<GemmChoice> choices, const std::vector<GemmCandidateTime>& timings,
    const std::function<Result<double>(const std::vector<GemmChoice>&)>& decode_ms,
    const DecodeSearchOptions& options, const std::function<void(const DecodeTrial&)>& on_trial) {
  if (choices.empty()) return choices;
  int64_t bucket = choices.front().max_tokens;
  for (const GemmChoice& choice : choices) bucket = std::min(bucket, choice.max_tokens);
  for (size_t i = 0; i < choices.size(); ++i) {
    if (choices[i].max_tokens != bucket) continue;
    size_t tried = 0;
    for (const GemmCandidateTime& timing : timings) {
      const GemmShape& shape = timing.shape;
      if (tried == options.candidates) break;
      if (timing.chosen || shape.max_tokens != bucket || shape.n != choices[i].n ||
          shape.k != choices[i].k || shape.gated != choices[i].gated) {
        continue;
      }
      ++tried;
      std::vector<GemmChoice> trial = choices;
      trial[i].algorithm = timing.algorithm;
      trial[i].variant = timing.variant;
      trial[i].microseconds = timing.microseconds;
      // In turn, so that a drift of the GPU's clocks falls on both.
      DecodeTrial result{shape, timing.kernel, 0.0, 0.0, false};
      for (int round = 0; round < options.rounds; ++round) {
        KITE_ASSIGN_OR_RETURN(const double current_ms, decode_ms(choices));
        KITE_ASSIGN_OR_RETURN(const double trial_ms, decode_ms(trial));
        result.current_ms += current_ms;
        result.trial_ms += trial_ms;
      }
      result.kept = result.current_ms > result.trial_ms * (1.0 + options.min_gain);
      if (on_trial) on_trial(result);
      if (result.kept) choices = std::move(trial);
    }
  }
  return choices;
}

}  // namespace kite
