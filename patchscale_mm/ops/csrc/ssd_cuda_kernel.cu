// Mamba-2 selective scan (SSD) kernels for CUDA: the exact recurrence of
// ssd_scan_ref, parallel over (chunk, batch x head, tile of p).
//
// Forward: (1) every chunk runs the recurrence from a zero state and writes
// its end state; (2) a short sequential pass over chunks turns those into the
// state entering each chunk, S_in[c] = decay[c-1] * S_in[c-1] + local[c-1],
// and the final state; (3) every chunk runs again from S_in[c], writing y.
// S_in is what the backward keeps: one state per chunk.
//
// Backward: (1) every chunk runs the adjoint recurrence ds = a * (ds + C dy)
// from zero; (2) a reverse pass over chunks gives the state gradient at each
// chunk's end; (3) every chunk recomputes its states from S_in[c] (with
// sub-checkpoints every K tokens in shared memory, then K states at a time)
// and runs the adjoint from its end gradient, producing dx, dz and, summed
// over p atomically, dB, dC and the per-token sums for ddt and dA.
//
// Thread layout: R = 8 threads per row p, each holding E = ceil(n / 8)
// state elements n = e * R + r in registers; a warp holds 4 rows; a block
// PT rows. Sums over n are 3 shuffles, over the rows of a warp 2.
#include <cmath>
#include <cstdint>

#include <cuda_runtime.h>

#include "ssd_cuda.h"

namespace patchscale_ssd_cuda {
namespace {

constexpr int R = 8;
constexpr unsigned FULL = 0xffffffffu;

template <typename T>
struct DtOut {
  T dt, dfac;
};

template <typename T>
__device__ __forceinline__ DtOut<T> process_dt(T raw, const Params &P) {
  T v = raw, f = T(1);
  if (P.dt_softplus && v <= T(20)) {  // torch's softplus threshold
    const T e = exp(v);
    f = e / (e + T(1));
    v = log1p(e);
  }
  if (P.dt_clamp) {
    if (v < T(P.dt_min) || v > T(P.dt_max)) f = T(0);
    v = fmin(fmax(v, T(P.dt_min)), T(P.dt_max));
  }
  return {v, f};
}

template <typename T>
__device__ __forceinline__ T silu(T z) { return z / (T(1) + exp(-z)); }

template <typename T>
__device__ __forceinline__ T row_sum(T v) {  // over the R lanes of one row
  v += __shfl_xor_sync(FULL, v, 1);
  v += __shfl_xor_sync(FULL, v, 2);
  v += __shfl_xor_sync(FULL, v, 4);
  return v;
}

template <typename T>
__device__ __forceinline__ T rows_sum(T v) {  // over the 4 rows of a warp
  v += __shfl_xor_sync(FULL, v, 8);
  v += __shfl_xor_sync(FULL, v, 16);
  return v;
}

// Where a thread sits: chunk, (batch, head), row p and its lane r in the row.
struct Pos {
  int64_t b, h, g, bh, c, t0, t1, p, sbase;
  int r, lane;
  bool valid;
};

__device__ __forceinline__ Pos position(const Params &P, int PT) {
  Pos q;
  q.c = blockIdx.x;
  q.bh = blockIdx.y;
  q.b = q.bh / P.nheads;
  q.h = q.bh % P.nheads;
  q.g = q.h / (P.nheads / P.ngroups);
  q.r = threadIdx.x % R;
  q.lane = threadIdx.x % 32;
  q.p = static_cast<int64_t>(blockIdx.z) * PT + threadIdx.x / R;
  q.valid = q.p < P.headdim;
  q.t0 = q.c * P.chunk;
  q.t1 = q.t0 + P.chunk < P.seqlen ? q.t0 + P.chunk : P.seqlen;
  q.sbase = (q.bh * P.nchunks + q.c) * P.dstate * P.headdim;
  return q;
}

// Forward phases (1) (OUT = false: end state from zero) and (3) (OUT = true:
// y from S_in).
template <typename T, int E, bool OUT>
__global__ void fwd_chunk_kernel(const Params P, int PT) {
  const Pos q = position(P, PT);
  const int64_t L = P.seqlen, H = P.nheads, Pd = P.headdim, G = P.ngroups, N = P.dstate;
  const T *x = static_cast<const T *>(P.x), *dt = static_cast<const T *>(P.dt);
  const T *Bm = static_cast<const T *>(P.B), *Cm = static_cast<const T *>(P.C);
  const T *z = static_cast<const T *>(P.z), *bias = static_cast<const T *>(P.dt_bias);
  const T *D = static_cast<const T *>(P.D);
  T *states = static_cast<T *>(P.states), *out = static_cast<T *>(P.out);
  const T Ah = static_cast<const T *>(P.A)[q.h], bh_bias = bias ? bias[q.h] : T(0);
  const T Dp = D && q.valid ? D[q.h * Pd + q.p] : T(0);

  T s[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int64_t n = e * R + q.r;
    s[e] = OUT && q.valid && n < N ? states[q.sbase + n * Pd + q.p] : T(0);
  }
  for (int64_t t = q.t0; t < q.t1; ++t) {
    const int64_t tok = (q.b * L + t) * H + q.h, bc = ((q.b * L + t) * G + q.g) * N;
    const T dtv = process_dt<T>(dt[tok] + bh_bias, P).dt;
    const T a = exp(dtv * Ah);
    const T xv = q.valid ? x[tok * Pd + q.p] : T(0);
    const T u = dtv * xv;
    T y = T(0);
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int64_t n = e * R + q.r;
      if (n < N) {
        s[e] = a * s[e] + u * Bm[bc + n];
        if (OUT) y += s[e] * Cm[bc + n];
      }
    }
    if (OUT) {
      y = row_sum(y);
      if (q.r == 0 && q.valid) {
        T v = y + Dp * xv;
        if (z) v *= silu(z[tok * Pd + q.p]);
        out[tok * Pd + q.p] = v;
      }
    }
  }
  if (!OUT) {
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int64_t n = e * R + q.r;
      if (q.valid && n < N) states[q.sbase + n * Pd + q.p] = s[e];
    }
  }
}

// Forward phase (2): chunk end states from zero -> states entering chunks.
template <typename T>
__global__ void fwd_state_passing_kernel(const Params P) {
  const int64_t NP = P.dstate * P.headdim;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= P.batch * P.nheads * NP) return;
  const int64_t bh = i / NP, e = i % NP, n = e / P.headdim, p = e % P.headdim;
  const T *init = static_cast<const T *>(P.init), *decay = static_cast<const T *>(P.decay);
  T *states = static_cast<T *>(P.states);
  T s = init ? init[(bh * P.headdim + p) * P.dstate + n] : T(0);
  for (int64_t c = 0; c < P.nchunks; ++c) {
    const int64_t off = (bh * P.nchunks + c) * NP + e;
    const T local = states[off];
    states[off] = s;
    s = decay[bh * P.nchunks + c] * s + local;
  }
  static_cast<T *>(P.final_state)[(bh * P.headdim + p) * P.dstate + n] = s;
}

// Gradient w.r.t. y before the gate: dout * silu(z).
template <typename T>
__device__ __forceinline__ T gated_dout(const Params &P, const Pos &q, int64_t tok) {
  if (!q.valid) return T(0);
  T g = static_cast<const T *>(P.dout)[tok * P.headdim + q.p];
  if (P.z) g *= silu(static_cast<const T *>(P.z)[tok * P.headdim + q.p]);
  return g;
}

// Backward phase (1): adjoint recurrence of each chunk from a zero gradient;
// gives the gradient at the chunk's start from its own outputs.
template <typename T, int E>
__global__ void bwd_chunk_local_kernel(const Params P, int PT) {
  const Pos q = position(P, PT);
  const int64_t L = P.seqlen, H = P.nheads, Pd = P.headdim, G = P.ngroups, N = P.dstate;
  const T *dt = static_cast<const T *>(P.dt), *Cm = static_cast<const T *>(P.C);
  const T *bias = static_cast<const T *>(P.dt_bias);
  const T Ah = static_cast<const T *>(P.A)[q.h], bh_bias = bias ? bias[q.h] : T(0);
  T ds[E];
#pragma unroll
  for (int e = 0; e < E; ++e) ds[e] = T(0);
  for (int64_t t = q.t1 - 1; t >= q.t0; --t) {
    const int64_t tok = (q.b * L + t) * H + q.h, bc = ((q.b * L + t) * G + q.g) * N;
    const T a = exp(process_dt<T>(dt[tok] + bh_bias, P).dt * Ah);
    const T dy = gated_dout<T>(P, q, tok);
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int64_t n = e * R + q.r;
      if (n < N) ds[e] = a * (ds[e] + Cm[bc + n] * dy);
    }
  }
  T *dstates = static_cast<T *>(P.dstates);
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int64_t n = e * R + q.r;
    if (q.valid && n < N) dstates[q.sbase + n * Pd + q.p] = ds[e];
  }
}

// Backward phase (2): gradient at each chunk's end, and at the initial state.
template <typename T>
__global__ void bwd_state_passing_kernel(const Params P) {
  const int64_t NP = P.dstate * P.headdim;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= P.batch * P.nheads * NP) return;
  const int64_t bh = i / NP, e = i % NP, n = e / P.headdim, p = e % P.headdim;
  const T *dfinal = static_cast<const T *>(P.dfinal), *decay = static_cast<const T *>(P.decay);
  T *dstates = static_cast<T *>(P.dstates);
  T ds = dfinal ? dfinal[(bh * P.headdim + p) * P.dstate + n] : T(0);
  for (int64_t c = P.nchunks - 1; c >= 0; --c) {
    const int64_t off = (bh * P.nchunks + c) * NP + e;
    const T local = dstates[off];
    dstates[off] = ds;
    ds = local + decay[bh * P.nchunks + c] * ds;
  }
  if (P.dinit) static_cast<T *>(P.dinit)[(bh * P.headdim + p) * P.dstate + n] = ds;
}

// Backward phase (3). Shared memory, per thread and only read by that thread
// (so no barriers): nsub sub-checkpoints and K recomputed states of E
// elements, and K pre-gate outputs when z is given.
template <typename T, int E>
__global__ void bwd_chunk_kernel(const Params P, int PT, int K, int nsub) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const Pos q = position(P, PT);
  const int64_t L = P.seqlen, H = P.nheads, Pd = P.headdim, G = P.ngroups, N = P.dstate;
  const int nt = blockDim.x, tid = threadIdx.x;
  T *ck = reinterpret_cast<T *>(smem_raw);  // [nsub][E][nt]
  T *hist = ck + static_cast<int64_t>(nsub) * E * nt;  // [K][E][nt]
  T *ybuf = hist + static_cast<int64_t>(K) * E * nt;   // [K][nt]
  const T *x = static_cast<const T *>(P.x), *dt = static_cast<const T *>(P.dt);
  const T *Bm = static_cast<const T *>(P.B), *Cm = static_cast<const T *>(P.C);
  const T *z = static_cast<const T *>(P.z), *bias = static_cast<const T *>(P.dt_bias);
  const T *D = static_cast<const T *>(P.D), *dout = static_cast<const T *>(P.dout);
  const T *states = static_cast<const T *>(P.states);
  const T *dstates = static_cast<const T *>(P.dstates);
  T *dx = static_cast<T *>(P.dx), *dz = static_cast<T *>(P.dz);
  T *dB = static_cast<T *>(P.dB), *dC = static_cast<T *>(P.dC);
  T *ada = static_cast<T *>(P.ada), *dtx = static_cast<T *>(P.dtx);
  const T Ah = static_cast<const T *>(P.A)[q.h], bh_bias = bias ? bias[q.h] : T(0);
  const T Dp = D && q.valid ? D[q.h * Pd + q.p] : T(0);

  T s[E], ds[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int64_t n = e * R + q.r;
    const bool ok = q.valid && n < N;
    s[e] = ok ? states[q.sbase + n * Pd + q.p] : T(0);
    ds[e] = ok ? dstates[q.sbase + n * Pd + q.p] : T(0);
  }
  // Sub-checkpoints: ck[j] is the state entering token t0 + j * K.
  for (int j = 0; j < nsub; ++j) {
#pragma unroll
    for (int e = 0; e < E; ++e) ck[(static_cast<int64_t>(j) * E + e) * nt + tid] = s[e];
    if (j == nsub - 1) break;
    const int64_t te = q.t0 + static_cast<int64_t>(j + 1) * K;
    for (int64_t t = q.t0 + static_cast<int64_t>(j) * K; t < te && t < q.t1; ++t) {
      const int64_t tok = (q.b * L + t) * H + q.h, bc = ((q.b * L + t) * G + q.g) * N;
      const T dtv = process_dt<T>(dt[tok] + bh_bias, P).dt;
      const T a = exp(dtv * Ah), u = dtv * (q.valid ? x[tok * Pd + q.p] : T(0));
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int64_t n = e * R + q.r;
        if (n < N) s[e] = a * s[e] + u * Bm[bc + n];
      }
    }
  }

  T dD_acc = T(0);
  for (int j = nsub - 1; j >= 0; --j) {
    const int64_t ts = q.t0 + static_cast<int64_t>(j) * K;
    const int kn = static_cast<int>((ts + K < q.t1 ? ts + K : q.t1) - ts);
    // States after each token of the sub-chunk (and y before skip and gate).
#pragma unroll
    for (int e = 0; e < E; ++e) s[e] = ck[(static_cast<int64_t>(j) * E + e) * nt + tid];
    for (int k = 0; k < kn; ++k) {
      const int64_t t = ts + k;
      const int64_t tok = (q.b * L + t) * H + q.h, bc = ((q.b * L + t) * G + q.g) * N;
      const T dtv = process_dt<T>(dt[tok] + bh_bias, P).dt;
      const T a = exp(dtv * Ah), u = dtv * (q.valid ? x[tok * Pd + q.p] : T(0));
      T y = T(0);
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int64_t n = e * R + q.r;
        if (n < N) {
          s[e] = a * s[e] + u * Bm[bc + n];
          if (z) y += s[e] * Cm[bc + n];
        }
        hist[(static_cast<int64_t>(k) * E + e) * nt + tid] = s[e];
      }
      if (z) ybuf[k * nt + tid] = row_sum(y);
    }
    for (int k = kn - 1; k >= 0; --k) {
      const int64_t t = ts + k;
      const int64_t tok = (q.b * L + t) * H + q.h, bc = ((q.b * L + t) * G + q.g) * N;
      const T dtv = process_dt<T>(dt[tok] + bh_bias, P).dt;
      const T a = exp(dtv * Ah);
      const T xv = q.valid ? x[tok * Pd + q.p] : T(0), u = dtv * xv;
      T g = q.valid ? dout[tok * Pd + q.p] : T(0);
      if (z && q.valid) {
        const T zz = z[tok * Pd + q.p], sg = T(1) / (T(1) + exp(-zz));
        const T ypre = ybuf[k * nt + tid] + Dp * xv;
        if (q.r == 0) dz[tok * Pd + q.p] = g * ypre * sg * (T(1) + zz * (T(1) - sg));
        g *= zz * sg;
      }
      dD_acc += g * xv;
      T du = T(0), qsum = T(0), dCv[E], dBv[E];
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int64_t n = e * R + q.r;
        dCv[e] = dBv[e] = T(0);
        if (n < N) {
          const T sv = hist[(static_cast<int64_t>(k) * E + e) * nt + tid];
          const T d = ds[e] + Cm[bc + n] * g;  // gradient w.r.t. s_t
          dCv[e] = sv * g;
          dBv[e] = d * u;
          du += d * Bm[bc + n];
          qsum += d * sv;
          ds[e] = a * d;  // gradient w.r.t. s_{t-1}
        }
      }
      du = row_sum(du);
      // a_t * dL/da_t = <ds_t, s_t> - <u_t, du_t>; <x_t, du_t> for ddt.
      T qrow = qsum - (q.r == 0 ? u * du : T(0));
      T xdu = q.r == 0 ? xv * du : T(0);
      qrow = rows_sum(row_sum(qrow));
      xdu = rows_sum(row_sum(xdu));
      if (q.lane == 0) {
        atomicAdd(ada + tok, qrow);
        atomicAdd(dtx + tok, xdu);
      }
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const T vc = rows_sum(dCv[e]), vb = rows_sum(dBv[e]);
        const int64_t n = e * R + q.r;
        if (q.lane < R && n < N) {
          atomicAdd(dC + bc + n, vc);
          atomicAdd(dB + bc + n, vb);
        }
      }
      if (q.r == 0 && q.valid) dx[tok * Pd + q.p] = du * dtv + Dp * g;
    }
  }
  if (P.dD && q.r == 0 && q.valid) atomicAdd(static_cast<T *>(P.dD) + q.h * Pd + q.p, dD_acc);
}

constexpr int PT_MAX = 8;  // rows per block: 64 threads

int pick_e(int64_t n) {
  const int64_t e = (n + R - 1) / R;
  return e <= 1 ? 1 : e <= 2 ? 2 : e <= 4 ? 4 : e <= 8 ? 8 : e <= 16 ? 16 : e <= 32 ? 32 : -1;
}

template <typename T, int E>
const char *run_forward(const Params &P, cudaStream_t stream) {
  const int PT = PT_MAX;
  const dim3 grid(static_cast<unsigned>(P.nchunks), static_cast<unsigned>(P.batch * P.nheads),
                  static_cast<unsigned>((P.headdim + PT - 1) / PT));
  fwd_chunk_kernel<T, E, false><<<grid, R * PT, 0, stream>>>(P, PT);
  const int64_t total = P.batch * P.nheads * P.dstate * P.headdim;
  fwd_state_passing_kernel<T><<<static_cast<unsigned>((total + 255) / 256), 256, 0, stream>>>(P);
  fwd_chunk_kernel<T, E, true><<<grid, R * PT, 0, stream>>>(P, PT);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

template <typename T, int E>
const char *run_backward(const Params &P, cudaStream_t stream) {
  // Sub-chunks of K tokens; K grows with the chunk so that the sub-checkpoints
  // and the recomputed states fit in shared memory together.
  const int64_t clen = P.chunk < P.seqlen ? P.chunk : P.seqlen;
  int K = 16;
  while (static_cast<int64_t>(K) * K < clen) K *= 2;
  const int nsub = static_cast<int>((clen + K - 1) / K);
  int device = 0, optin = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  auto smem_for = [&](int PT) {
    return static_cast<size_t>((static_cast<int64_t>(nsub + K) * E + K) * R * PT) * sizeof(T);
  };
  int PT = PT_MAX;
  while (PT > 4 && smem_for(PT) > static_cast<size_t>(optin)) PT /= 2;
  const size_t smem = smem_for(PT);
  if (smem > static_cast<size_t>(optin))
    return "ssd_scan cuda: chunk_size x d_state needs more shared memory than this GPU has; "
           "use a smaller chunk_size";
  cudaFuncSetAttribute(bwd_chunk_kernel<T, E>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                       static_cast<int>(smem));
  const dim3 grid(static_cast<unsigned>(P.nchunks), static_cast<unsigned>(P.batch * P.nheads),
                  static_cast<unsigned>((P.headdim + PT - 1) / PT));
  bwd_chunk_local_kernel<T, E><<<grid, R * PT, 0, stream>>>(P, PT);
  const int64_t total = P.batch * P.nheads * P.dstate * P.headdim;
  bwd_state_passing_kernel<T><<<static_cast<unsigned>((total + 255) / 256), 256, 0, stream>>>(P);
  bwd_chunk_kernel<T, E><<<grid, R * PT, smem, stream>>>(P, PT, K, nsub);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

const char *check(const Params &P) {
  if (pick_e(P.dstate) < 0) return "ssd_scan cuda: d_state up to 256 is supported";
  if (P.batch * P.nheads > 65535) return "ssd_scan cuda: batch x heads up to 65535 is supported";
  if (P.nchunks > 2147483647LL) return "ssd_scan cuda: too many chunks";
  return nullptr;
}

}  // namespace

#define SSD_DISPATCH_E(FN)                        \
  switch (pick_e(P.dstate)) {                     \
    case 1: return FN<T, 1>(P, stream);           \
    case 2: return FN<T, 2>(P, stream);           \
    case 4: return FN<T, 4>(P, stream);           \
    case 8: return FN<T, 8>(P, stream);           \
    case 16: return FN<T, 16>(P, stream);         \
    default: return FN<T, 32>(P, stream);         \
  }

template <typename T>
const char *forward(const Params &P, cudaStream_t stream) {
  if (const char *err = check(P)) return err;
  if (P.seqlen == 0 || P.batch * P.nheads == 0) return nullptr;
  SSD_DISPATCH_E(run_forward)
}

template <typename T>
const char *backward(const Params &P, cudaStream_t stream) {
  if (const char *err = check(P)) return err;
  if (P.seqlen == 0 || P.batch * P.nheads == 0) return nullptr;
  SSD_DISPATCH_E(run_backward)
}

template const char *forward<float>(const Params &, cudaStream_t);
template const char *forward<double>(const Params &, cudaStream_t);
template const char *backward<float>(const Params &, cudaStream_t);
template const char *backward<double>(const Params &, cudaStream_t);

}  // namespace patchscale_ssd_cuda
