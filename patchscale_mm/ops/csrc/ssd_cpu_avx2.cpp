// SSD and fused mixer CPU kernels compiled for avx2; see ssd_cpu_kernel.h
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
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#define SSD_VB 32
#define SSD_NB_FWD 4
#define SSD_TILE_ROWS 2
#define SSD_NB_BWD 2

namespace patchscale_ssd {
namespace avx2 {
#include "ssd_cpu_kernel.h"
}  // namespace avx2

KernelSet kernels_avx2() { return avx2::make_kernel_set("avx2"); }
}  // namespace patchscale_ssd

namespace patchscale_mixer {
namespace avx2 {
#include "mixer_cpu_kernel.h"
}  // namespace avx2

MixerKernelSet mixer_kernels_avx2() { return avx2::make_mixer_kernel_set(); }
}  // namespace patchscale_mixer

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // x86-64
