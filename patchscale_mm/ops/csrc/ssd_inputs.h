// Input checks of the ssd_fwd / ssd_bwd ops, shared by their CPU
// (ssd_cpu.cpp) and CUDA (ssd_cuda.cpp) implementations: both take the same
// schema, so one piece of code decides what they accept. `op` names the
// implementation in the error messages ("ssd_scan cpp", "ssd_scan cuda").
#pragma once

#include <limits>

#include <torch/extension.h>

namespace patchscale_ssd_inputs {

using OptT = c10::optional<at::Tensor>;

inline bool given(const OptT &t) { return t.has_value() && t->defined(); }
inline const void *ptr_or_null(const OptT &t) { return given(t) ? t->data_ptr() : nullptr; }

// Chunks of `chunk` tokens covering `seqlen` (the last may be short); Int is
// int64_t or c10::SymInt (shape functions).
template <class Int>
Int chunk_count(const Int &seqlen, int64_t chunk) { return (seqlen + chunk - 1) / chunk; }

// The kernels read raw pointers: every tensor must be contiguous, on x's
// device, of x's dtype and of the expected shape.
inline void check_input(const char *op, const at::Tensor &t, const char *name,
                        const at::Tensor &like, at::IntArrayRef shape) {
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(),
              ", expected ", like.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), ", expected ", like.scalar_type());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " has shape ", t.sizes(), ", expected ",
              shape);
}

inline void check_optional(const char *op, const OptT &t, const char *name,
                           const at::Tensor &like, at::IntArrayRef shape) {
  if (given(t)) check_input(op, *t, name, like, shape);
}

// Checks the inputs both ops share and fills the fields both kernels'
// parameter structs have: sizes, chunk length, dt processing and the input
// pointers (D, z, dt_bias, init null when not given).
template <class Params>
Params read_scan_inputs(const char *op, const at::Tensor &x, const at::Tensor &dt,
                        const at::Tensor &A, const at::Tensor &B, const at::Tensor &C,
                        const OptT &D, const OptT &z, const OptT &dt_bias, const OptT &init,
                        bool dt_softplus, double dt_min, double dt_max, int64_t chunk_size) {
  TORCH_CHECK(x.dim() == 4 && B.dim() == 4, op, ": x and B must be 4-d");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": computes in float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(chunk_size >= 1, op, ": chunk_size must be positive");
  Params P{};
  P.batch = x.size(0);
  P.seqlen = x.size(1);
  P.nheads = x.size(2);
  P.headdim = x.size(3);
  P.ngroups = B.size(2);
  P.dstate = B.size(3);
  TORCH_CHECK(P.ngroups > 0 && P.nheads % P.ngroups == 0, op, ": groups must divide heads");
  const int64_t b = P.batch, l = P.seqlen, h = P.nheads, p = P.headdim, g = P.ngroups,
                n = P.dstate;
  check_input(op, x, "x", x, {b, l, h, p});
  check_input(op, dt, "dt", x, {b, l, h});
  check_input(op, A, "A", x, {h});
  check_input(op, B, "B", x, {b, l, g, n});
  check_input(op, C, "C", x, {b, l, g, n});
  check_optional(op, D, "D", x, {h, p});
  check_optional(op, z, "z", x, {b, l, h, p});
  check_optional(op, dt_bias, "dt_bias", x, {h});
  check_optional(op, init, "initial_states", x, {b, h, p, n});
  P.chunk = chunk_size;
  P.dt_softplus = dt_softplus;
  P.dt_min = dt_min;
  P.dt_max = dt_max;
  P.dt_clamp = !(dt_min == 0.0 && dt_max == std::numeric_limits<double>::infinity());
  P.x = x.data_ptr();
  P.dt = dt.data_ptr();
  P.A = A.data_ptr();
  P.B = B.data_ptr();
  P.C = C.data_ptr();
  P.D = ptr_or_null(D);
  P.z = ptr_or_null(z);
  P.dt_bias = ptr_or_null(dt_bias);
  P.init = ptr_or_null(init);
  return P;
}

// The backward's own inputs: the output and final-state gradients and the
// states the forward saved at each chunk's start.
template <class Params>
void check_grad_inputs(const char *op, const Params &P, const at::Tensor &x,
                       const at::Tensor &dout, const OptT &dfinal,
                       const at::Tensor &chunk_states) {
  const int64_t b = P.batch, h = P.nheads, p = P.headdim, n = P.dstate;
  const int64_t nchunks = chunk_count(P.seqlen, P.chunk);
  check_input(op, dout, "dout", x, {b, P.seqlen, h, p});
  check_optional(op, dfinal, "dfinal_states", x, {b, h, p, n});
  check_input(op, chunk_states, "chunk_states", x, {b, h, nchunks, n, p});
}

}  // namespace patchscale_ssd_inputs
