// SSD and fused mixer CPU kernels compiled for avx512; see ssd_cpu_kernel.h
// and mixer_cpu_kernel.h.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#include "mixer_cpu.h"
#include "ssd_cpu.h"

#if defined(__x86_64__) || defined(_M_X64)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#endif

#define SSD_VB 64
#define SSD_NB_FWD 4
#define SSD_TILE_ROWS 4
#define SSD_NB_BWD 4

namespace patchscale_ssd {
namespace avx512 {
#include "ssd_cpu_kernel.h"
}  // namespace avx512

KernelSet kernels_avx512() { return avx512::make_kernel_set("avx512"); }
}  // namespace patchscale_ssd

namespace patchscale_mixer {
namespace avx512 {
#include "mixer_cpu_kernel.h"
}  // namespace avx512

MixerKernelSet mixer_kernels_avx512() { return avx512::make_mixer_kernel_set(); }
}  // namespace patchscale_mixer

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // x86-64
