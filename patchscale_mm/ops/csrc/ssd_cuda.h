// Mamba-2 selective scan (SSD) on CUDA: what the kernels (ssd_cuda_kernel.cu, no
// torch headers, so nvcc compiles it in seconds) and the torch glue
// (ssd_cuda.cpp) share.
#pragma once
#include <cstdint>

#include <cuda_runtime_api.h>

namespace patchscale_ssd_cuda {

// All tensors contiguous in the compute dtype T (float or double); layouts as
// in ssd_cpu.h. Offsets are int64: b * l * h * p passes 2^31 at batch sizes
// that fit on one GPU at 50K tokens.
struct Params {
  int64_t batch, seqlen, nheads, headdim, ngroups, dstate, chunk, nchunks;
  bool dt_softplus, dt_clamp;
  double dt_min, dt_max;
  const void *x, *dt, *A, *B, *C, *D, *z, *dt_bias, *init;  // D (h, p) or null
  const void *decay;    // (b, h, nchunks): exp(A * sum of dt over the chunk)
  void *states;         // (b, h, nchunks, n, p): the state entering each chunk
  void *out, *final_state;
  // Backward.
  const void *dout, *dfinal;
  void *dstates;        // (b, h, nchunks, n, p) scratch: gradient at each chunk's end
  void *dx, *dz, *dinit;
  void *dB, *dC;        // (b, l, g, n), zero-initialised, accumulated atomically
  void *ada;            // (b, l, h) zero-initialised: a_t * dL/da_t
  void *dtx;            // (b, l, h) zero-initialised: <x_t, dL/du_t>
  void *dD;             // (h, p) zero-initialised, or null
};

// Returns the first CUDA error, or an error string from a failed check.
template <typename T>
const char *forward(const Params &P, cudaStream_t stream);
template <typename T>
const char *backward(const Params &P, cudaStream_t stream);

}  // namespace patchscale_ssd_cuda
