// 16-byte global loads for the kernels that stream weights past activations (the GEMVs): weights
// non-coherent and out of L1, activations coherent from L2. Included only by .cu files.
#pragma once

#include <cstdint>

namespace kite::cuda {

// 16 bytes at `address` when `predicate`, zeros otherwise. Predicated instructions rather than
// branches, so that the compiler can put many loads in flight ahead of the mma that uses them.
// Weights are read exactly once and never written while a forward pass runs: non-coherent loads
// that bypass L1, free to be issued early (even before pdl_wait). kFetchBytes: the L2 prefetch
// size hint; with 256 a miss brings the whole aligned 256 bytes of the row (the four steps of a
// load group) from DRAM at once instead of the 64 bytes asked for (0: no hint).
#define KITE_GEMV_LOAD(hint)                                       \
  asm("{\n"                                                        \
      "  .reg .pred p;\n"                                          \
      "  setp.ne.b32 p, %5, 0;\n"                                  \
      "  mov.b32 %0, 0;\n"                                         \
      "  mov.b32 %1, 0;\n"                                         \
      "  mov.b32 %2, 0;\n"                                         \
      "  mov.b32 %3, 0;\n"                                         \
      "  @p ld.global.nc.L1::no_allocate" hint                     \
      ".v4.u32 {%0, %1, %2, %3}, [%4];\n"                          \
      "}\n"                                                        \
      : "=r"(value.x), "=r"(value.y), "=r"(value.z), "=r"(value.w) \
      : "l"(address), "r"(int(predicate)))
template <int kFetchBytes>
__device__ __forceinline__ uint4 load_streaming(const void* address, bool predicate) {
  static_assert(kFetchBytes == 0 || kFetchBytes == 256);
  uint4 value;
  if constexpr (kFetchBytes == 256) {
    KITE_GEMV_LOAD(".L2::256B");
  } else {
    KITE_GEMV_LOAD("");
  }
  return value;
}
#undef KITE_GEMV_LOAD

// The same for 8 bytes (the int4 weight-only GEMV's chunk of a row), with the 256-byte fetch hint.
__device__ __forceinline__ uint2 load_streaming_8(const void* address, bool predicate) {
  uint2 value;
  asm("{\n"
      "  .reg .pred p;\n"
      "  setp.ne.b32 p, %3, 0;\n"
      "  mov.b32 %0, 0;\n"
      "  mov.b32 %1, 0;\n"
      "  @p ld.global.nc.L1::no_allocate.L2::256B.v2.u32 {%0, %1}, [%2];\n"
      "}\n"
      : "=r"(value.x), "=r"(value.y)
      : "l"(address), "r"(int(predicate)));
  return value;
}

// 2 bytes of a small table read many times by a kernel (a weight's scales): non-coherent, kept in
// L1; zero when not `predicate`.
__device__ __forceinline__ uint16_t load_table_u16(const void* address, bool predicate) {
  unsigned short value;
  asm("{\n"
      "  .reg .pred p;\n"
      "  setp.ne.b32 p, %2, 0;\n"
      "  mov.b16 %0, 0;\n"
      "  @p ld.global.nc.u16 %0, [%1];\n"
      "}\n"
      : "=h"(value)
      : "l"(address), "r"(int(predicate)));
  return value;
}

// x, written by the previous kernel: an ordinary coherent load from L2 (a non-coherent one may
// return what the previous kernel overwrote, since this kernel may start before it finishes), kept
// after pdl_wait by `volatile`.
__device__ __forceinline__ uint4 load_activation(const void* address, bool predicate) {
  uint4 value;
  asm volatile(
      "{\n"
      "  .reg .pred p;\n"
      "  setp.ne.b32 p, %5, 0;\n"
      "  mov.b32 %0, 0;\n"
      "  mov.b32 %1, 0;\n"
      "  mov.b32 %2, 0;\n"
      "  mov.b32 %3, 0;\n"
      "  @p ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];\n"
      "}\n"
      : "=r"(value.x), "=r"(value.y), "=r"(value.z), "=r"(value.w)
      : "l"(address), "r"(int(predicate)));
  return value;
}

}  // namespace kite::cuda
