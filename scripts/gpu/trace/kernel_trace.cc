// Kernel timeline of a CUDA program, for machines without Nsight Systems: an LD_PRELOAD library
// that collects every kernel's and memory copy's start and end on the GPU (CUPTI activity records,
// kernels inside CUDA graphs included, with programmatic dependent launch as it runs) and writes
// them to $KITE_TRACE_FILE as CSV: start_ns,end_ns,graph_id,name (copies are named "[memcpy
// KIND BYTES]"). With KITE_TRACE_API_FILE set it also writes the host's CUDA runtime and driver
// calls there (start_ns,end_ns,thread_id,name; the same clock), so that timeline.py can say what
// the host was doing while the GPU idled. Records arrive from CUPTI's worker thread every 100 ms
// and at exit. scripts/gpu/trace/build.sh builds it; profile.sh and compare.sh --trace use it.
#include <cupti.h>
#include <cxxabi.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>

namespace {

std::FILE* trace_file = nullptr;
std::FILE* api_file = nullptr;
std::mutex trace_mutex;

void report(const char* call, CUptiResult result) {
  if (result == CUPTI_SUCCESS) return;
  const char* message = nullptr;
  cuptiGetResultString(result, &message);
  std::fprintf(stderr, "kernel_trace: %s failed: %s\n", call, message ? message : "?");
}

const char* copy_kind(uint8_t kind) {
  switch (kind) {
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD: return "HtoD";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH: return "DtoH";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD: return "DtoD";
    default: return "other";
  }
}

void write_kernel(const CUpti_ActivityKernel10& kernel) {
  const char* name = kernel.name ? kernel.name : "?";
  int status = 0;
  char* readable = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  // Names hold commas (template arguments): the name is the last field, read to the line end.
  std::fprintf(trace_file, "%llu,%llu,%u,%s\n", static_cast<unsigned long long>(kernel.start),
               static_cast<unsigned long long>(kernel.end), kernel.graphId,
               status == 0 && readable ? readable : name);
  std::free(readable);
}

void write_api(const CUpti_ActivityAPI& call, CUpti_CallbackDomain domain) {
  const char* name = nullptr;
  if (cuptiGetCallbackName(domain, call.cbid, &name) != CUPTI_SUCCESS || !name) name = "?";
  std::fprintf(api_file, "%llu,%llu,%u,%s\n", static_cast<unsigned long long>(call.start),
               static_cast<unsigned long long>(call.end), call.threadId, name);
}

void CUPTIAPI give_buffer(uint8_t** buffer, size_t* size, size_t* max_records) {
  *size = size_t(8) << 20;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, *size));
  *max_records = 0;
}

void CUPTIAPI take_buffer(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid_bytes) {
  std::lock_guard<std::mutex> lock(trace_mutex);
  CUpti_Activity* record = nullptr;
  while (trace_file && cuptiActivityGetNextRecord(buffer, valid_bytes, &record) == CUPTI_SUCCESS) {
    switch (record->kind) {
      case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
        write_kernel(*reinterpret_cast<const CUpti_ActivityKernel10*>(record));
        break;
      case CUPTI_ACTIVITY_KIND_MEMCPY: {
        const auto* copy = reinterpret_cast<const CUpti_ActivityMemcpy6*>(record);
        std::fprintf(trace_file, "%llu,%llu,%u,[memcpy %s %llu]\n",
                     static_cast<unsigned long long>(copy->start),
                     static_cast<unsigned long long>(copy->end), copy->graphId,
                     copy_kind(copy->copyKind), static_cast<unsigned long long>(copy->bytes));
        break;
      }
      case CUPTI_ACTIVITY_KIND_RUNTIME:
        if (api_file) {
          write_api(*reinterpret_cast<const CUpti_ActivityAPI*>(record), CUPTI_CB_DOMAIN_RUNTIME_API);
        }
        break;
      case CUPTI_ACTIVITY_KIND_DRIVER:
        if (api_file) {
          write_api(*reinterpret_cast<const CUpti_ActivityAPI*>(record), CUPTI_CB_DOMAIN_DRIVER_API);
        }
        break;
      default:
        break;
    }
  }
  std::free(buffer);
}

struct Tracer {
  Tracer() {
    const char* path = std::getenv("KITE_TRACE_FILE");
    if (!path || !*path) return;
    trace_file = std::fopen(path, "w");
    if (!trace_file) {
      std::fprintf(stderr, "kernel_trace: cannot write %s\n", path);
      return;
    }
    std::fprintf(trace_file, "start_ns,end_ns,graph_id,name\n");
    const char* api_path = std::getenv("KITE_TRACE_API_FILE");
    if (api_path && *api_path) {
      api_file = std::fopen(api_path, "w");
      if (!api_file) std::fprintf(stderr, "kernel_trace: cannot write %s\n", api_path);
      if (api_file) std::fprintf(api_file, "start_ns,end_ns,thread_id,name\n");
    }
    report("cuptiActivityRegisterCallbacks",
           cuptiActivityRegisterCallbacks(give_buffer, take_buffer));
    report("cuptiActivityEnable", cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL));
    report("cuptiActivityEnable", cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY));
    if (api_file) {
      report("cuptiActivityEnable", cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME));
      report("cuptiActivityEnable", cuptiActivityEnable(CUPTI_ACTIVITY_KIND_DRIVER));
    }
    report("cuptiActivityFlushPeriod", cuptiActivityFlushPeriod(100));
  }
  ~Tracer() {
    if (!trace_file) return;
    cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
    size_t dropped = 0;
    if (cuptiActivityGetNumDroppedRecords(nullptr, 0, &dropped) == CUPTI_SUCCESS && dropped > 0) {
      std::fprintf(stderr, "kernel_trace: CUPTI dropped %zu records: the trace has holes\n",
                   dropped);
    }
    std::lock_guard<std::mutex> lock(trace_mutex);
    std::fclose(trace_file);
    trace_file = nullptr;
    if (api_file) std::fclose(api_file);
    api_file = nullptr;
  }
};

Tracer tracer;

}  // namespace
