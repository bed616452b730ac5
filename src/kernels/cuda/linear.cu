// The CUDA linear op: GemmRunner runs out = x @ weight^T (+ bias) through cuBLASLt or the small-M
// kernel of gemv.cu, whichever the tactic names, and times every candidate of a shape for the
// kernel tuning step of `kite build`.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <unordered_map>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/linear.h"
#include "kernels/cuda/rms_norm.h"

namespace kite::cuda {
namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // what cuBLASLt asks for on Hopper
constexpr int kCublasCandidates = 8;                  // heuristic results kept per shape
constexpr uint32_t kMaxAlignment = 256;               // cuBLASLt's default assumption

// Timing: one warm-up batch, then the median of kTimedBatches batches of runs.
constexpr int kTimedBatches = 7;
constexpr int kMinRunsPerBatch = 10;
constexpr int kMaxWeightCopies = 64;
constexpr float kTuningEps = 1e-5f;  // the RMSNorm epsilon of normalising candidates

bool is_half_precision(DType dtype) {
  return dtype == DType::kF16 || dtype == DType::kBF16;
}

cudaDataType_t cuda_data_type(DType dtype) {
  return dtype == DType::kBF16 ? CUDA_R_16BF : CUDA_R_16F;
}

// The largest power of two (at most kMaxAlignment) dividing the address.
uint32_t pointer_alignment(const void* pointer) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(pointer);
  if (address == 0) return kMaxAlignment;
  return uint32_t(std::min<uintptr_t>(kMaxAlignment, address & (~address + 1)));
}

// A cuBLASLt problem: the shape, dtype and epilogue, and the pointer alignment the heuristic may
// assume (algorithms differ by the alignment they need).
struct PlanKey {
  int64_t m = 0, n = 0, k = 0;
  DType dtype = DType::kBF16;
  bool has_bias = false;
  uint32_t alignment = kMaxAlignment;
  bool operator==(const PlanKey&) const = default;
};

struct PlanKeyHash {
  size_t operator()(const PlanKey& key) const {
    size_t hash = std::hash<int64_t>()(key.m);
    for (const uint64_t part : {uint64_t(key.n), uint64_t(key.k), uint64_t(key.dtype),
                                uint64_t(key.has_bias), uint64_t(key.alignment)}) {
      hash = hash * 1000003u ^ std::hash<uint64_t>()(part);
    }
    return hash;
  }
};

// One heuristic result. (A wrapper: nvcc 13.0's front end crashes on std::vector of the unnamed
// struct cublasLtMatmulAlgo_t in C++20 mode.)
struct CublasAlgorithm {
  cublasLtMatmulAlgo_t algo;
};

// Descriptors and heuristic results for one PlanKey, made once. cuBLASLt is column-major, so the
// row-major product out[M, N] = x[M, K] @ weight[N, K]^T runs as out^T (N x M, ld N) =
// op(A) * B with A = weight seen column-major (K x N, ld K) and op(A) = A^T, B = x^T (K x M, ld
// K): the "TN" layout cuBLASLt's Hopper kernels prefer.
struct CublasPlan {
  cublasLtMatmulDesc_t operation = nullptr;
  cublasLtMatrixLayout_t weight_layout = nullptr;
  cublasLtMatrixLayout_t x_layout = nullptr;
  cublasLtMatrixLayout_t out_layout = nullptr;
  std::vector<CublasAlgorithm> algorithms;  // heuristic order, best first

  CublasPlan() = default;
  CublasPlan(const CublasPlan&) = delete;
  CublasPlan& operator=(const CublasPlan&) = delete;
  ~CublasPlan() {
    if (out_layout) cublasLtMatrixLayoutDestroy(out_layout);
    if (x_layout) cublasLtMatrixLayoutDestroy(x_layout);
    if (weight_layout) cublasLtMatrixLayoutDestroy(weight_layout);
    if (operation) cublasLtMatmulDescDestroy(operation);
  }
};

// Makes the descriptors of `key` and asks the heuristic for its algorithms; null when cuBLASLt
// refuses the problem or has no algorithm for it.
std::unique_ptr<CublasPlan> make_plan(cublasLtHandle_t handle, const PlanKey& key) {
  auto plan = std::make_unique<CublasPlan>();
  const cudaDataType_t type = cuda_data_type(key.dtype);
  const cublasOperation_t transpose = CUBLAS_OP_T;
  const cublasOperation_t no_transpose = CUBLAS_OP_N;
  const cublasLtEpilogue_t epilogue =
      key.has_bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  if (cublasLtMatmulDescCreate(&plan->operation, CUBLAS_COMPUTE_32F, CUDA_R_32F) !=
          CUBLAS_STATUS_SUCCESS ||
      cublasLtMatmulDescSetAttribute(plan->operation, CUBLASLT_MATMUL_DESC_TRANSA, &transpose,
                                     sizeof(transpose)) != CUBLAS_STATUS_SUCCESS ||
      cublasLtMatmulDescSetAttribute(plan->operation, CUBLASLT_MATMUL_DESC_TRANSB, &no_transpose,
                                     sizeof(no_transpose)) != CUBLAS_STATUS_SUCCESS ||
      cublasLtMatmulDescSetAttribute(plan->operation, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                     sizeof(epilogue)) != CUBLAS_STATUS_SUCCESS ||
      cublasLtMatrixLayoutCreate(&plan->weight_layout, type, uint64_t(key.k), uint64_t(key.n),
                                 key.k) != CUBLAS_STATUS_SUCCESS ||
      cublasLtMatrixLayoutCreate(&plan->x_layout, type, uint64_t(key.k), uint64_t(key.m), key.k) !=
          CUBLAS_STATUS_SUCCESS ||
      cublasLtMatrixLayoutCreate(&plan->out_layout, type, uint64_t(key.n), uint64_t(key.m),
                                 key.n) != CUBLAS_STATUS_SUCCESS) {
    return nullptr;
  }

  cublasLtMatmulPreference_t preference = nullptr;
  if (cublasLtMatmulPreferenceCreate(&preference) != CUBLAS_STATUS_SUCCESS) return nullptr;
  const uint64_t workspace_bytes = kWorkspaceBytes;
  const uint32_t alignment = key.alignment;
  bool preference_ok = cublasLtMatmulPreferenceSetAttribute(
                           preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
                           sizeof(workspace_bytes)) == CUBLAS_STATUS_SUCCESS;
  for (const cublasLtMatmulPreferenceAttributes_t attribute :
       {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
    preference_ok = preference_ok && cublasLtMatmulPreferenceSetAttribute(
                                         preference, attribute, &alignment, sizeof(alignment)) ==
                                         CUBLAS_STATUS_SUCCESS;
  }
  cublasLtMatmulHeuristicResult_t results[kCublasCandidates] = {};
  int result_count = 0;
  const cublasStatus_t heuristic_status =
      preference_ok
          ? cublasLtMatmulAlgoGetHeuristic(handle, plan->operation, plan->weight_layout,
                                           plan->x_layout, plan->out_layout, plan->out_layout,
                                           preference, kCublasCandidates, results, &result_count)
          : CUBLAS_STATUS_INVALID_VALUE;
  cublasLtMatmulPreferenceDestroy(preference);
  if (heuristic_status != CUBLAS_STATUS_SUCCESS) return nullptr;
  for (int i = 0; i < result_count; ++i) {
    if (results[i].state == CUBLAS_STATUS_SUCCESS) plan->algorithms.push_back({results[i].algo});
  }
  if (plan->algorithms.empty()) return nullptr;
  return plan;
}

// Fills `count` elements with uniform values in [-scale, scale) from a hash of their index.
template <typename T>
__global__ void fill_random_kernel(T* data, int64_t count, uint32_t seed, float scale) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t hash = uint32_t(i) * 0x9e3779b1u ^ uint32_t(i >> 32) * 0x85ebca77u ^ seed;
    hash ^= hash >> 16;
    hash *= 0x7feb352du;
    hash ^= hash >> 15;
    hash *= 0x846ca68bu;
    hash ^= hash >> 16;
    const float uniform = float(hash >> 8) * (1.0f / 16777216.0f);  // [0, 1)
    data[i] = from_float<T>((2.0f * uniform - 1.0f) * scale);
  }
}

void fill_random(DType dtype, void* data, int64_t count, uint32_t seed, float scale,
                 cudaStream_t stream) {
  const int blocks = int(std::min<int64_t>((count + 255) / 256, 4096));
  if (blocks == 0) return;
  if (dtype == DType::kBF16) {
    fill_random_kernel<<<blocks, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(data), count, seed,
                                                   scale);
  } else {
    fill_random_kernel<<<blocks, 256, 0, stream>>>(static_cast<__half*>(data), count, seed, scale);
  }
}

// Device memory for time_candidates, freed on every path out.
struct ScratchMemory {
  void* data = nullptr;
  ScratchMemory() = default;
  ScratchMemory(const ScratchMemory&) = delete;
  ScratchMemory& operator=(const ScratchMemory&) = delete;
  ~ScratchMemory() {
    if (data) cudaFree(data);
  }
};

size_t round_up(size_t value, size_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

}  // namespace

std::string gemm_tactic_name(const GemmTactic& tactic) {
  const char* algorithm = tactic.algorithm == GemmAlgorithm::kGemv ? "gemv" : "cublaslt";
  return std::string(algorithm) + ":" + std::to_string(tactic.variant);
}

struct GemmRunner::State {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  int multiprocessors = 0;
  size_t l2_cache_bytes = 0;
  std::unordered_map<PlanKey, std::unique_ptr<CublasPlan>, PlanKeyHash> plans;

  ~State() {
    plans.clear();
    if (workspace) cudaFree(workspace);
    if (handle) cublasLtDestroy(handle);
  }

  // The plan of `key`, made on first use (host work only: no device memory, so this is safe
  // while a stream is being captured). Null when cuBLASLt has no algorithm for it.
  const CublasPlan* plan(const PlanKey& key) {
    auto found = plans.find(key);
    if (found == plans.end()) found = plans.emplace(key, make_plan(handle, key)).first;
    return found->second.get();
  }

  // out = x @ weight^T (+ bias), or out += it with `add` (beta = 1, C = D = out).
  cublasStatus_t run_cublas(const CublasPlan& plan, int32_t variant, const void* x,
                            const void* weight, const void* bias, void* out, cudaStream_t stream,
                            bool add = false) const {
    if (bias) {
      const cublasStatus_t status = cublasLtMatmulDescSetAttribute(
          plan.operation, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias));
      if (status != CUBLAS_STATUS_SUCCESS) return status;
    }
    const float one = 1.0f, zero = 0.0f;
    return cublasLtMatmul(handle, plan.operation, &one, weight, plan.weight_layout, x,
                          plan.x_layout, add ? &one : &zero, out, plan.out_layout, out,
                          plan.out_layout,
                          &plan.algorithms[size_t(variant)].algo, workspace, kWorkspaceBytes,
                          stream);
  }
};

GemmRunner::GemmRunner(std::unique_ptr<State> state) : state_(std::move(state)) {}
GemmRunner::~GemmRunner() = default;

Result<std::unique_ptr<GemmRunner>> GemmRunner::create() {
  auto state = std::make_unique<State>();
  int device = 0;
  cudaDeviceProp properties;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaGetDeviceProperties(&properties, device) != cudaSuccess) {
    cudaGetLastError();
    return internal_error("GemmRunner: no usable CUDA device");
  }
  state->multiprocessors = properties.multiProcessorCount;
  state->l2_cache_bytes = size_t(properties.l2CacheSize);
  if (cublasLtCreate(&state->handle) != CUBLAS_STATUS_SUCCESS) {
    return internal_error("GemmRunner: cublasLtCreate failed");
  }
  if (cudaMalloc(&state->workspace, kWorkspaceBytes) != cudaSuccess) {
    cudaGetLastError();
    return internal_error("GemmRunner: cannot allocate the 32 MiB cuBLASLt workspace");
  }
  return std::unique_ptr<GemmRunner>(new GemmRunner(std::move(state)));
}

namespace {
// Whether `tactic` names a GEMV configuration and the GEMV kernel of `kind` takes this call.
bool gemv_runs(const GemmTactic& tactic, GemvKind kind, const DeviceTensor& x,
               const DeviceTensor& weight) {
  return tactic.algorithm == GemmAlgorithm::kGemv && tactic.variant >= 0 &&
         tactic.variant < kGemvVariantCount && gemv_applies(kind, x, weight);
}

// The GEMV configuration to launch: the tuned one, unless an A/B switch forces another, for the
// SwiGLU-fused down projection (KITE_GATED_GEMV_VARIANT) or for every other GEMV
// (KITE_GEMV_VARIANT).
int32_t gemv_variant(const GemmTactic& tactic, GemvKind kind) {
  static const int forced = switch_setting("KITE_GEMV_VARIANT", -1, -1, kGemvVariantCount - 1);
  static const int forced_gated =
      switch_setting("KITE_GATED_GEMV_VARIANT", -1, -1, kGemvVariantCount - 1);
  const int setting = kind == GemvKind::kGatedAdd ? forced_gated : forced;
  return setting >= 0 ? setting : tactic.variant;
}
}  // namespace

void GemmRunner::linear(const DeviceTensor& x, const DeviceTensor& weight, const DeviceTensor* bias,
                        DeviceTensor& out, const GemmTactic& tactic, cudaStream_t stream,
                        bool add) {
  KITE_CHECK(is_half_precision(x.dtype) && weight.dtype == x.dtype && out.dtype == x.dtype);
  KITE_CHECK(weight.shape.size() == 2);
  const int64_t m = x.rows();
  const int64_t k = x.cols();
  const int64_t n = weight.shape[0];
  KITE_CHECK(weight.shape[1] == k);
  KITE_CHECK(out.rows() == m && out.cols() == n);
  KITE_CHECK(bias == nullptr || (bias->dtype == x.dtype && bias->numel() == n));
  if (m == 0 || n == 0) return;
  KITE_CHECK(k > 0);
  KITE_CHECK(out.data != x.data);

  const GemvKind kind = add ? GemvKind::kAdd : GemvKind::kPlain;
  if (gemv_runs(tactic, kind, x, weight)) {
    launch_gemv(kind, x, weight, bias, out, gemv_variant(tactic, kind), 0.0f, stream);
    return;
  }
  const uint32_t alignment = std::min(
      {pointer_alignment(x.data), pointer_alignment(weight.data), pointer_alignment(out.data)});
  const CublasPlan* plan = state_->plan(PlanKey{m, n, k, x.dtype, bias != nullptr, alignment});
  KITE_CHECK(plan != nullptr);  // cuBLASLt has an algorithm for every 16-bit GEMM
  const bool listed = tactic.algorithm == GemmAlgorithm::kCublasLt && tactic.variant >= 0 &&
                      size_t(tactic.variant) < plan->algorithms.size();
  KITE_CUBLAS_CHECK(state_->run_cublas(*plan, listed ? tactic.variant : 0, x.data, weight.data,
                                       bias ? bias->data : nullptr, out.data, stream, add));
}

bool GemmRunner::linear_normed(const DeviceTensor& x, const DeviceTensor& weight,
                               const DeviceTensor* bias, float eps, DeviceTensor& out,
                               const GemmTactic& tactic, cudaStream_t stream) {
  KITE_CHECK(out.dtype == x.dtype && out.rows() == x.rows() && out.cols() == weight.rows());
  KITE_CHECK(bias == nullptr || (bias->dtype == x.dtype && bias->numel() == weight.rows()));
  KITE_CHECK(out.data != x.data);
  if (!gemv_runs(tactic, GemvKind::kNormed, x, weight)) return false;
  launch_gemv(GemvKind::kNormed, x, weight, bias, out, gemv_variant(tactic, GemvKind::kNormed), eps,
              stream);
  return true;
}

bool GemmRunner::linear_silu_mul_add(const DeviceTensor& gate_up, const DeviceTensor& weight,
                                     DeviceTensor& out, const GemmTactic& tactic,
                                     cudaStream_t stream) {
  KITE_CHECK(out.dtype == gate_up.dtype && out.rows() == gate_up.rows() &&
             out.cols() == weight.rows());
  if (!gemv_runs(tactic, GemvKind::kGatedAdd, gate_up, weight)) return false;
  launch_gemv(GemvKind::kGatedAdd, gate_up, weight, nullptr, out,
              gemv_variant(tactic, GemvKind::kGatedAdd), 0.0f, stream);
  return true;
}

std::vector<GemmTiming> GemmRunner::time_candidates(int64_t m, int64_t n, int64_t k, DType dtype,
                                                    bool has_bias, bool gated, bool normed,
                                                    cudaStream_t stream) {
  KITE_CHECK(m > 0 && n > 0 && k > 0 && is_half_precision(dtype));
  KITE_CHECK(!(gated && has_bias) && !(gated && normed));
  const size_t element = dtype_size(dtype);
  const int64_t x_columns = gated ? 2 * k : k;

  // Enough weight copies that a round through them overflows L2 three times: each run then reads
  // its weights from HBM, as each layer does in a forward pass.
  const size_t weight_bytes = round_up(size_t(n * k) * element, kMaxAlignment);
  const int copies = int(std::clamp<size_t>(
      (3 * state_->l2_cache_bytes + weight_bytes - 1) / weight_bytes, 1, kMaxWeightCopies));
  const size_t x_bytes = round_up(size_t(m * x_columns) * element, kMaxAlignment);
  const size_t bias_bytes = round_up(size_t(n) * element, kMaxAlignment);
  const size_t out_bytes = round_up(size_t(m * n) * element, kMaxAlignment);
  const size_t normed_bytes = normed ? x_bytes : 0;  // cuBLASLt's input after the RMSNorm kernel
  ScratchMemory scratch;
  if (cudaMalloc(&scratch.data, weight_bytes * size_t(copies) + x_bytes + bias_bytes + out_bytes +
                                    normed_bytes) != cudaSuccess) {
    cudaGetLastError();
    return {};
  }
  char* base = static_cast<char*>(scratch.data);
  DeviceTensor x{dtype, {m, x_columns}, base};
  DeviceTensor bias{dtype, {n}, base + x_bytes};
  DeviceTensor out{dtype, {m, n}, base + x_bytes + bias_bytes};
  DeviceTensor normed_x{dtype, {m, k}, base + x_bytes + bias_bytes + out_bytes};
  char* weights = base + x_bytes + bias_bytes + out_bytes + normed_bytes;
  fill_random(dtype, x.data, m * x_columns, 1, 1.0f, stream);
  fill_random(dtype, bias.data, n, 2, 1.0f, stream);
  for (int copy = 0; copy < copies; ++copy) {
    fill_random(dtype, weights + size_t(copy) * weight_bytes, n * k, 3 + uint32_t(copy),
                1.0f / std::sqrt(float(k)), stream);
  }
  if (cudaStreamSynchronize(stream) != cudaSuccess) {
    cudaGetLastError();
    return {};
  }

  std::vector<GemmTactic> candidates;
  const CublasPlan* plan =
      gated ? nullptr : state_->plan(PlanKey{m, n, k, dtype, has_bias, kMaxAlignment});
  for (size_t i = 0; plan && i < plan->algorithms.size(); ++i) {
    candidates.push_back({GemmAlgorithm::kCublasLt, int32_t(i)});
  }
  DeviceTensor weight{dtype, {n, k}, weights};
  const GemvKind kind =
      gated ? GemvKind::kGatedAdd : (normed ? GemvKind::kNormed : GemvKind::kPlain);
  if (gemv_applies(kind, x, weight)) {
    for (int32_t variant = 0; variant < kGemvVariantCount; ++variant) {
      candidates.push_back({GemmAlgorithm::kGemv, variant});
    }
  }
  // The fused down projection's configurations that fit two CTAs an SM, where any does. Timed
  // alone, back to back with itself, the tuner ranks them otherwise than a decode step does, where
  // such a CTA can start beside the gate/up GEMV's last ones (Llama-3-8B, configuration 0 against
  // the tuner's 1 of 174 registers a thread: +1.1% decode on an H100, +0.5% on an H200; timed after
  // the gate/up GEMV in a chain of the two, the tuner still picked 1;
  // docs/perf/cuda_llama3_8b.md).
  if (gated) {
    std::vector<GemmTactic> sharing;
    for (const GemmTactic& tactic : candidates) {
      if (gemv_gated_ctas_per_multiprocessor(dtype, tactic.variant, m) >= 2) {
        sharing.push_back(tactic);
      }
    }
    if (!sharing.empty()) candidates = sharing;
  }

  cudaEvent_t start = nullptr, stop = nullptr;
  if (cudaEventCreate(&start) != cudaSuccess || cudaEventCreate(&stop) != cudaSuccess) {
    cudaGetLastError();
    if (start) cudaEventDestroy(start);
    return {};
  }
  const int runs_per_batch = std::max(copies, kMinRunsPerBatch);
  std::vector<GemmTiming> timings;
  for (const GemmTactic& tactic : candidates) {
    // One run on weight copy `copy`; false when the candidate cannot run.
    auto run = [&](int copy) {
      weight.data = weights + size_t(copy) * weight_bytes;
      if (tactic.algorithm == GemmAlgorithm::kGemv) {
        launch_gemv(kind, x, weight, has_bias ? &bias : nullptr, out, tactic.variant,
                    kTuningEps, stream);
        return true;
      }
      if (normed) rms_norm(x, DeviceTensor{}, kTuningEps, normed_x, stream);
      return state_->run_cublas(*plan, tactic.variant, normed ? normed_x.data : x.data,
                                weight.data, has_bias ? bias.data : nullptr, out.data,
                                stream) == CUBLAS_STATUS_SUCCESS;
    };
    bool runs = true;
    for (int r = 0; r < runs_per_batch && runs; ++r) runs = run(r % copies);
    runs = runs && cudaStreamSynchronize(stream) == cudaSuccess;
    std::vector<float> batch_microseconds;
    for (int batch = 0; batch < kTimedBatches && runs; ++batch) {
      runs = cudaEventRecord(start, stream) == cudaSuccess;
      for (int r = 0; r < runs_per_batch && runs; ++r) runs = run(r % copies);
      float milliseconds = 0;
      runs = runs && cudaEventRecord(stop, stream) == cudaSuccess &&
             cudaEventSynchronize(stop) == cudaSuccess &&
             cudaEventElapsedTime(&milliseconds, start, stop) == cudaSuccess;
      batch_microseconds.push_back(1000.0f * milliseconds / float(runs_per_batch));
    }
    if (!runs) {
      cudaGetLastError();
      continue;
    }
    std::nth_element(batch_microseconds.begin(),
                     batch_microseconds.begin() + batch_microseconds.size() / 2,
                     batch_microseconds.end());
    timings.push_back({tactic, batch_microseconds[batch_microseconds.size() / 2]});
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::stable_sort(timings.begin(), timings.end(), [](const GemmTiming& a, const GemmTiming& b) {
    return a.microseconds < b.microseconds;
  });
  return timings;
}

GemmTactic GemmRunner::default_tactic(int64_t m, int64_t n, int64_t k) const {
  if (m >= 1 && m <= kGemvMaxTokens && k % 8 == 0) {
    return {GemmAlgorithm::kGemv, gemv_default_variant(m, n, k, state_->multiprocessors)};
  }
  return {GemmAlgorithm::kCublasLt, 0};
}

}  // namespace kite::cuda
