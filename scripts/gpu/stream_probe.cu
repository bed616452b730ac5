// The GPU's HBM read rate by load path and bytes in flight: how many warps an SM and how many
// 16-byte loads a thread must keep in flight (with and without the L2::256B fetch hint the GEMV
// uses) to reach the memory's rate, against the bulk-copy (TMA) path that cuBLASLt's kernels use,
// which streams into shared memory without holding a load slot per 16 bytes. A question the small-M
// GEMV raised on the H200, where it reached 70-96% of the copy rate alone and cuBLASLt 98-105%
// (docs/perf/cuda_llama3_8b.md, "The H200 again").
//
// Build and run on the GPU machine (about ten seconds):
//   nvcc -O3 -std=c++17 -arch=sm_90 -o /tmp/stream_probe scripts/gpu/stream_probe.cu
//   /tmp/stream_probe [GiB to read, default 4]
// Prints one line per configuration: path, CTAs and warps an SM, loads in flight a thread (or the
// bulk ring's stages and bytes), bytes in flight an SM, GB/s read (the best of five runs).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#define CHECK(call)                                                                         \
  do {                                                                                      \
    const cudaError_t error_ = (call);                                                      \
    if (error_ != cudaSuccess) {                                                            \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(error_));  \
      std::exit(1);                                                                         \
    }                                                                                       \
  } while (0)

template <bool kHint>
__device__ __forceinline__ uint4 load16(const uint4* address) {
  uint4 v;
  if constexpr (kHint) {
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(address));
  } else {
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(address));
  }
  return v;
}

// Each thread keeps kLoads independent 16-byte loads in flight; a warp's loads of one round are
// 512 contiguous bytes each, the rounds grid-strided over the buffer.
template <int kLoads, bool kHint>
__global__ void load_kernel(const uint4* data, int64_t vectors, uint32_t* sink) {
  const int64_t threads = int64_t(gridDim.x) * blockDim.x;
  const int64_t thread = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  uint32_t acc = 0;
  for (int64_t base = thread; base + (kLoads - 1) * threads < vectors; base += kLoads * threads) {
    uint4 v[kLoads];
#pragma unroll
    for (int u = 0; u < kLoads; ++u) v[u] = load16<kHint>(data + base + u * threads);
#pragma unroll
    for (int u = 0; u < kLoads; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  if (acc == 0x9e3779b9u) sink[0] = acc;  // keeps the loads; never true for the zero buffer
}

__device__ __forceinline__ uint32_t shared_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

__device__ __forceinline__ void wait_parity(uint32_t barrier, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait;\n"
      "}\n" ::"r"(barrier),
      "r"(parity)
      : "memory");
}

// One thread a CTA streams the CTA's slice through a ring of `stages` slots of `stage_bytes` in
// shared memory with cp.async.bulk (the TMA engine), each slot's completion counted by its
// mbarrier; a slot is reissued once its previous copy has landed, so `stages` copies are in
// flight. The data is not read: this is the copy engine's rate.
__global__ void bulk_kernel(const char* data, int64_t bytes_per_cta, int stage_bytes, int stages) {
  extern __shared__ __align__(128) unsigned char ring[];
  __shared__ __align__(8) uint64_t barriers[16];
  if (threadIdx.x != 0) return;
  for (int s = 0; s < stages; ++s) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(shared_address(&barriers[s])));
  }
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  const char* source = data + int64_t(blockIdx.x) * bytes_per_cta;
  const int64_t chunks = bytes_per_cta / stage_bytes;
  for (int64_t c = 0; c < chunks; ++c) {
    const int s = int(c % stages);
    const uint32_t barrier = shared_address(&barriers[s]);
    if (c >= stages) wait_parity(barrier, uint32_t((c / stages - 1) & 1));
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(barrier),
                 "r"(stage_bytes)
                 : "memory");
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
            shared_address(ring + int64_t(s) * stage_bytes)),
        "l"(source + c * stage_bytes), "r"(stage_bytes), "r"(barrier)
        : "memory");
  }
  for (int64_t c = chunks > stages ? chunks - stages : 0; c < chunks; ++c) {
    wait_parity(shared_address(&barriers[c % stages]), uint32_t((c / stages) & 1));
  }
}

template <typename Launch>
double best_gbps(Launch launch, double bytes) {
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  launch();  // warm-up
  CHECK(cudaGetLastError());
  float best = 1e30f;
  for (int run = 0; run < 5; ++run) {
    CHECK(cudaEventRecord(start));
    launch();
    CHECK(cudaEventRecord(stop));
    CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, start, stop));
    best = std::min(best, ms);
  }
  CHECK(cudaGetLastError());
  CHECK(cudaEventDestroy(start));
  CHECK(cudaEventDestroy(stop));
  return bytes / (double(best) * 1e-3) / 1e9;
}

template <int kLoads, bool kHint>
void probe_loads(const uint4* data, int64_t vectors, uint32_t* sink, int sms) {
  for (const auto [ctas, warps] : {std::pair{1, 8}, {2, 8}, {1, 16}, {4, 8}, {2, 16}, {1, 32},
                                   {4, 16}}) {
    const int threads = 32 * warps;
    int fit = 0;  // the CTAs an SM holds at once (registers): the grid is one wave of them
    CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fit, load_kernel<kLoads, kHint>, threads,
                                                        0));
    if (fit < ctas) continue;
    const int blocks = sms * ctas;
    // Whole rounds only: the bytes timed are the bytes read.
    const int64_t round = int64_t(blocks) * threads * kLoads;
    const int64_t used = vectors / round * round;
    const double gbps = best_gbps(
        [&] { load_kernel<kLoads, kHint><<<blocks, threads>>>(data, used, sink); },
        double(used) * 16);
    std::printf("load%s  ctas/SM %d warps/SM %2d loads/thread %2d  in flight/SM %7d B  %8.1f GB/s\n",
                kHint ? "+L2::256B" : "         ", ctas, ctas * warps, kLoads,
                ctas * warps * 32 * kLoads * 16, gbps);
  }
}

int main(int argc, char** argv) {
  const double gib = argc > 1 ? std::atof(argv[1]) : 4.0;
  int device = 0, sms = 0;
  CHECK(cudaGetDevice(&device));
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  cudaDeviceProp properties{};
  CHECK(cudaGetDeviceProperties(&properties, device));
  const int64_t bytes = int64_t(gib * double(int64_t(1) << 30)) / (1 << 20) * (1 << 20);
  void* buffer = nullptr;
  void* copy = nullptr;
  uint32_t* sink = nullptr;
  CHECK(cudaMalloc(&buffer, size_t(bytes)));
  CHECK(cudaMalloc(&copy, size_t(bytes) / 2));
  CHECK(cudaMalloc(&sink, sizeof(uint32_t)));
  CHECK(cudaMemset(buffer, 0, size_t(bytes)));
  std::printf("%s, %d SMs, %.2f GiB read a run\n", properties.name, sms, double(bytes) / (1 << 30));
  const double copy_gbps = best_gbps(
      [&] { CHECK(cudaMemcpyAsync(copy, buffer, size_t(bytes) / 2, cudaMemcpyDeviceToDevice)); },
      double(bytes));  // read + written
  std::printf("cudaMemcpy device to device (bytes read + written)          %8.1f GB/s\n", copy_gbps);

  const auto* vectors = static_cast<const uint4*>(buffer);
  const int64_t count = bytes / 16;
  probe_loads<1, false>(vectors, count, sink, sms);
  probe_loads<2, false>(vectors, count, sink, sms);
  probe_loads<4, false>(vectors, count, sink, sms);
  probe_loads<8, false>(vectors, count, sink, sms);
  probe_loads<4, true>(vectors, count, sink, sms);
  probe_loads<8, true>(vectors, count, sink, sms);
  probe_loads<16, true>(vectors, count, sink, sms);

  for (const int ctas : {1, 2}) {
    for (const int stage_bytes : {4096, 16384}) {
      for (const int stages : {2, 4, 8}) {
        const int shared = stage_bytes * stages;
        if (shared * ctas > 200 * 1024) continue;
        CHECK(cudaFuncSetAttribute(bulk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   shared));
        const int blocks = sms * ctas;
        const int64_t per_cta = bytes / blocks / stage_bytes * stage_bytes;
        const double gbps = best_gbps(
            [&] {
              bulk_kernel<<<blocks, 32, shared>>>(static_cast<const char*>(buffer), per_cta,
                                                  stage_bytes, stages);
            },
            double(per_cta) * blocks);
        std::printf("bulk (TMA)         ctas/SM %d stages %d x %5d B       in flight/SM %7d B  %8.1f GB/s\n",
                    ctas, stages, stage_bytes, ctas * shared, gbps);
      }
    }
  }
  CHECK(cudaFree(buffer));
  CHECK(cudaFree(copy));
  CHECK(cudaFree(sink));
  return 0;
}
