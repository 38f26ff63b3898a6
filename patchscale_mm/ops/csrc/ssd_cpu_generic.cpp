// SSD and fused mixer CPU kernels compiled for generic; see ssd_cpu_kernel.h
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

#define SSD_VB 16
#define SSD_NB_FWD 4
#define SSD_TILE_ROWS 2
#define SSD_NB_BWD 2

namespace patchscale_ssd {
namespace generic {
#include "ssd_cpu_kernel.h"
}  // namespace generic

KernelSet kernels_generic() { return generic::make_kernel_set("generic"); }
}  // namespace patchscale_ssd

namespace patchscale_mixer {
namespace generic {
#include "mixer_cpu_kernel.h"
}  // namespace generic

MixerKernelSet mixer_kernels_generic() { return generic::make_mixer_kernel_set(); }
}  // namespace patchscale_mixer
