// Mamba-2 selective scan (SSD) on the CPU: what the ISA-specific kernels and
// the torch glue share. Pointers only; no torch types cross this boundary.
#pragma once
#include <cstdint>

namespace patchscale_ssd {

// All tensors are contiguous, in the compute dtype T (float or double).
// Index arithmetic is int64 throughout: b * l * h * p * n passes 2^31 at
// Adventurer's sequence lengths (50,178 tokens).
struct SSDParams {
  int64_t batch, seqlen, nheads, headdim, ngroups, dstate;
  int64_t chunk;                   // tokens between saved states
  bool dt_softplus, dt_clamp;      // clamp iff dt_limit != (0, inf)
  double dt_min, dt_max;
  // Forward inputs.
  const void *x, *dt, *A, *B, *C;  // (b,l,h,p) (b,l,h) (h) (b,l,g,n) (b,l,g,n)
  const void *D, *z, *dt_bias;     // (h,p) (b,l,h,p) (h); may be null
  const void *init;                // (b,h,p,n); may be null
  // Forward outputs.
  void *out, *final_state;         // (b,l,h,p) (b,h,p,n)
  void *ckpt;                      // (b,h,nchunks,n,p) state entering each chunk; may be null
  // Backward inputs (x..init and ckpt as above).
  const void *dout, *dfinal;       // (b,l,h,p) (b,h,p,n); dfinal may be null
  // Backward outputs. dB/dC (b,l,g,n) are accumulated (+=) into zeroed
  // buffers of the calling thread: heads of one group may run on different
  // threads, and the caller sums the threads' buffers.
  void *dx, *ddt, *dB, *dC;        // dx (b,l,h,p); ddt w.r.t. raw dt (b,l,h)
  void *dA, *dD, *dz, *dinit;      // dA (b,h); dD (b,h,p) or null; dz or null; dinit or null
};

using KernelFn = void (*)(const SSDParams &, int64_t bh_begin, int64_t bh_end);

struct KernelSet {
  KernelFn fwd_f32, fwd_f64, bwd_f32, bwd_f64;
  const char *name;
};

#if defined(__x86_64__) || defined(_M_X64)
KernelSet kernels_avx512();
KernelSet kernels_avx2();
#endif
KernelSet kernels_generic();

}  // namespace patchscale_ssd
