// Fused CPU kernels around the scan in Adventurer's blocks: the causal
// depthwise convolution with SiLU, the gated RMSNorm, SwiGLU's gate and
// RMSNorm. What the ISA-specific kernels and the torch glue share; pointers
// only, no torch types.
//
// Each kernel reads and writes whole token rows (channels contiguous), so a
// pass over a (tokens, channels) tensor streams through memory once, and
// reads its input where it lies: strided rows of the fused in_proj output
// need no copy. Storage dtypes S are float, double or bfloat16; the
// arithmetic is in float (double for double).
#pragma once
#include <cstdint>

namespace patchscale_mixer {

enum Dtype { kFloat = 0, kBFloat16 = 1, kDouble = 2, kNumDtypes = 3 };

// Rows of (batch, seqlen, channels) tensors: element (b, t, c) of tensor X is
// X + b * X_bs + t * X_rs + c.
struct ConvParams {
  int64_t batch, seqlen, channels, width;  // width: kernel taps K
  bool silu;
  const void *x;  // (b, l, C), storage dtype
  int64_t x_bs, x_rs;
  const void *w;     // (K, C) compute dtype, tap-major
  const void *bias;  // (C) compute dtype; may be null
  // The output is cut along channels into nsplit contiguous (b, l, size)
  // tensors of the compute dtype (the scan's x, B and C).
  int nsplit;
  int64_t split_size[4];
  void *out[4];
  const void *dout[4];  // backward: gradients of the pieces, same layout
  void *dx;             // backward: (b, l, C) storage dtype, strided
  int64_t dx_bs, dx_rs;
  void *dw, *dbias;  // backward: (K, C), (C) compute dtype, accumulated (+=)
};
// Forward / backward of tokens [t0, t1) of batch b.
using ConvFn = void (*)(const ConvParams &, int64_t b, int64_t t0, int64_t t1);

// out = rmsnorm(y * silu(z)) * w, normalised per group of `group` channels.
// Rows r = b * seqlen + t.
struct GatedNormParams {
  int64_t rows, seqlen, dim, group;
  double eps;
  const void *y;  // (rows, dim) compute dtype, contiguous
  const void *z;  // storage dtype, strided
  int64_t z_bs, z_rs;
  const void *w;  // (dim) compute dtype
  void *out;      // (rows, dim) storage dtype, contiguous
  const void *dout;  // backward: (rows, dim) storage dtype, contiguous
  void *dy;          // backward: (rows, dim) compute dtype; may be y
  void *dz;          // backward: storage dtype, strided
  int64_t dz_bs, dz_rs;
  void *dw;  // backward: (dim) compute dtype, accumulated (+=)
};
using GatedNormFn = void (*)(const GatedNormParams &, int64_t r0, int64_t r1);

// s = silu(a) * b for rows [a | b] of width 2 * hidden, all storage dtype.
struct GluParams {
  int64_t rows, hidden;
  const void *ab;   // (rows, 2 * hidden)
  void *s;          // (rows, hidden)
  const void *ds;   // backward: (rows, hidden)
  void *dab;        // backward: (rows, 2 * hidden); may be ab
};
using GluFn = void (*)(const GluParams &, int64_t r0, int64_t r1);

// out = x * rstd * w, rstd = rsqrt(mean(x^2) + eps) per row.
struct RmsParams {
  int64_t rows, dim;
  double eps;
  const void *x;  // (rows, dim) storage dtype
  const void *w;  // (dim) compute dtype
  void *out;      // (rows, dim) storage dtype
  void *rstd;     // (rows) compute dtype; written by the forward
  const void *dout;  // backward: (rows, dim) storage dtype
  void *dx;          // backward: (rows, dim) storage dtype
  void *dw;          // backward: (dim) compute dtype, accumulated (+=)
};
using RmsFn = void (*)(const RmsParams &, int64_t r0, int64_t r1);

struct MixerKernelSet {
  ConvFn conv_fwd[kNumDtypes], conv_bwd[kNumDtypes];
  GatedNormFn gnorm_fwd[kNumDtypes], gnorm_bwd[kNumDtypes];
  GluFn glu_fwd[kNumDtypes], glu_bwd[kNumDtypes];
  RmsFn rms_fwd[kNumDtypes], rms_bwd[kNumDtypes];
};

#if defined(__x86_64__) || defined(_M_X64)
MixerKernelSet mixer_kernels_avx512();
MixerKernelSet mixer_kernels_avx2();
#endif
MixerKernelSet mixer_kernels_generic();

}  // namespace patchscale_mixer
