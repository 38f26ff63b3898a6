// Mamba-2 selective scan (SSD) kernels for one instruction set.
//
// Included by ssd_cpu_{avx512,avx2,generic}.cpp inside a `#pragma GCC target`
// region and a namespace of its own, with SSD_VB (vector bytes) and
// SSD_NB_FWD / SSD_NB_BWD (vectors of p kept in registers) defined. Standard
// headers are included by those files *before* the target pragma, so no
// inline function of the library is compiled for a wider ISA than the caller.
//
// Per (batch, head) the scan is the recurrence, in the (n, p) layout
// (p contiguous, so the p loop vectorises and y accumulates without
// horizontal sums):
//     s_t[n, :] = a_t * s_{t-1}[n, :] + B_t[n] * u_t,   u_t = dt_t * x_t
//     y_t[:]    = sum_n C_t[n] * s_t[n, :]
// The state (n x p, 16 KiB in fp32 for 64 x 64) lives in L1/L2. The forward
// saves the state entering every chunk; the backward walks the chunks in
// reverse, recomputes sub-checkpoints every SUB tokens, then the states of one
// sub-chunk (SUB x 16 KiB, in L2) and runs the adjoint recurrence over them:
//     ds_t  = ds + C_t (x) dy_t          (gradient w.r.t. s_t)
//     dC_t  = ds-free:  s_t . dy_t       (over p)
//     du_t  = ds_t^T B_t,  dB_t = ds_t u_t
//     a_t * da_t = <ds_t, s_t> - <u_t, du_t>   (= <ds_t, a_t s_{t-1}>, so
//                                               s_{t-1} need not be loaded)
//     ds    = a_t * ds_t                 (gradient w.r.t. s_{t-1})

template <typename T>
struct Vec {
  // may_alias: rows of T scratch are read and written through this type.
  typedef T v __attribute__((vector_size(SSD_VB), __may_alias__));
  static constexpr int W = SSD_VB / sizeof(T);
};
template <typename T>
using V = typename Vec<T>::v;

template <typename T>
static inline V<T> vload(const T *p) { return *reinterpret_cast<const V<T> *>(p); }
template <typename T>
static inline void vstore(T *p, V<T> v) { *reinterpret_cast<V<T> *>(p) = v; }
// Lane 0 shuffled into every lane: one broadcast instruction. (`V<T>{} + s`
// costs a scalar add, as 0 + s is not s when s is -0; a lane-by-lane fill
// goes through the stack.)
template <typename T, int... J>
static inline V<T> splat_lanes(T s, std::integer_sequence<int, J...>) {
  const V<T> v = {s};
  return __builtin_shufflevector(v, v, (J * 0)...);
}
template <typename T>
static inline V<T> vsplat(T s) {
  return splat_lanes<T>(s, std::make_integer_sequence<int, Vec<T>::W>{});
}
// Horizontal sum by halving: log2(W) adds instead of a serial chain of W.
template <typename T, int VB>
struct HSum {
  typedef T v __attribute__((vector_size(VB), __may_alias__));
  typedef T half __attribute__((vector_size(VB / 2), __may_alias__));
  static inline T run(v x) {
    half lo, hi;
    std::memcpy(&lo, &x, VB / 2);
    std::memcpy(&hi, reinterpret_cast<const char *>(&x) + VB / 2, VB / 2);
    return HSum<T, VB / 2>::run(lo + hi);
  }
};
template <typename T>
struct HSum<T, 2 * sizeof(T)> {
  typedef T v __attribute__((vector_size(2 * sizeof(T)), __may_alias__));
  static inline T run(v x) { return x[0] + x[1]; }
};
template <typename T>
static inline T vhsum(V<T> v) { return HSum<T, SSD_VB>::run(v); }

// Lane j of one transposed-reduction level with output segments of SEG
// lanes: a's segments (halved) first, then b's; `second` picks the upper half
// of each input segment.
template <int W, int SEG>
constexpr int shuffle_index(int j, bool second) {
  return (j >= W / 2 ? W : 0) + ((j % (W / 2)) / SEG) * 2 * SEG + j % SEG + (second ? SEG : 0);
}

template <typename T, int SEG, int... J>
static inline V<T> reduce_pair(V<T> a, V<T> b, std::integer_sequence<int, J...>) {
  constexpr int W = Vec<T>::W;
  return __builtin_shufflevector(a, b, shuffle_index<W, SEG>(J, false)...) +
         __builtin_shufflevector(a, b, shuffle_index<W, SEG>(J, true)...);
}

// Given W vectors v[0..W), returns the vector whose lane i is the sum of the
// lanes of v[i]: W - 1 shuffle-and-add steps instead of W horizontal sums.
template <typename T, int SEG = Vec<T>::W / 2>
static inline V<T> transpose_sum(V<T> *v) {
  constexpr int W = Vec<T>::W;
  constexpr int m = 2 * SEG;  // vectors at this level, each holding W / m rows
  for (int i = 0; i < m / 2; ++i)
    v[i] = reduce_pair<T, SEG>(v[2 * i], v[2 * i + 1], std::make_integer_sequence<int, W>{});
  if constexpr (SEG > 1)
    return transpose_sum<T, SEG / 2>(v);
  else
    return v[0];
}

static constexpr int64_t SUB = 16;  // tokens per recomputed sub-chunk
static constexpr int64_t ALIGN = 64;

static inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Consecutive tokens of one head are h * p elements apart (2 KiB for 8 x 64
// fp32), two rows per page, which hardware prefetchers do not follow, and
// the backward walks them in reverse. Without these hints the kernels stall
// on these small rows rather than computing on the cached state. Forced
// inline: GCC deems a call to a function holding only prefetches free of
// effects and deletes it.
// LOCALITY 3 brings the row into L1, 2 into L2 (for rows needed a block
// ahead, which would otherwise push the state out of L1).
template <int RW = 0, int LOCALITY = 3, typename T>
__attribute__((always_inline)) static inline void prefetch_row(const T *p, int64_t n) {
  if (p == nullptr) return;
  const char *c = reinterpret_cast<const char *>(p);
  for (int64_t i = 0; i < n * static_cast<int64_t>(sizeof(T)); i += 64)
    __builtin_prefetch(c + i, RW, LOCALITY);
}
static constexpr int64_t PF = 2;  // tokens ahead

// Aligned scratch, zero-initialised (padding lanes of p must stay zero).
template <typename T>
struct Scratch {
  T *ptr = nullptr;
  explicit Scratch(int64_t n) {
    size_t bytes = static_cast<size_t>(round_up(n > 0 ? n : 1, ALIGN) * sizeof(T));
    bytes = static_cast<size_t>(round_up(static_cast<int64_t>(bytes), ALIGN));
    ptr = static_cast<T *>(std::aligned_alloc(ALIGN, bytes));
    if (ptr == nullptr) throw std::bad_alloc();
    std::memset(ptr, 0, bytes);
  }
  ~Scratch() { std::free(ptr); }
  Scratch(const Scratch &) = delete;
  Scratch &operator=(const Scratch &) = delete;
};

// dt after bias, softplus (threshold 20, as torch and the Triton kernel) and
// clamp, with d(dt)/d(raw dt).
template <typename T>
struct Dt {
  T dt, dfac;
};
template <typename T>
static inline Dt<T> process_dt(T raw, const SSDParams &P) {
  T v = raw, f = 1;
  if (P.dt_softplus && v <= T(20)) {
    const T e = std::exp(v);
    f = e / (e + T(1));
    v = std::log1p(e);
  }
  if (P.dt_clamp) {
    // torch.clamp's gradient passes where min <= v <= max.
    if (v < T(P.dt_min) || v > T(P.dt_max)) f = 0;
    v = std::min(std::max(v, T(P.dt_min)), T(P.dt_max));
  }
  return {v, f};
}

// One token over a block of NB vectors of p: dst = a * src + B (x) u and, if
// WITH_Y, y = dst^T C. src may equal dst (in-place update).
template <typename T, int NB, bool WITH_Y>
static inline void step_block(const T *src, T *dst, int64_t N, int64_t Pp,
                              const T *__restrict u, T a,
                              const T *__restrict Bt, const T *__restrict Ct,
                              T *__restrict y) {
  constexpr int W = Vec<T>::W;
  V<T> uu[NB], yy[NB];
  for (int k = 0; k < NB; ++k) {
    uu[k] = vload(u + k * W);
    yy[k] = V<T>{};
  }
  const V<T> av = vsplat(a);
  for (int64_t n = 0; n < N; ++n) {
    const T *sr = src + n * Pp;
    T *dr = dst + n * Pp;
    const V<T> bn = vsplat(Bt[n]);
    if (WITH_Y) {
      const V<T> cn = vsplat(Ct[n]);
      for (int k = 0; k < NB; ++k) {
        const V<T> s = av * vload(sr + k * W) + bn * uu[k];
        vstore(dr + k * W, s);
        yy[k] += cn * s;
      }
    } else {
      for (int k = 0; k < NB; ++k) vstore(dr + k * W, av * vload(sr + k * W) + bn * uu[k]);
    }
  }
  if (WITH_Y)
    for (int k = 0; k < NB; ++k) vstore(y + k * W, yy[k]);
}

template <typename T, bool WITH_Y>
static inline void step(const T *src, T *dst, int64_t N, int64_t Pp, const T *u, T a,
                        const T *Bt, const T *Ct, T *y) {
  constexpr int W = Vec<T>::W;
  const int64_t nv = Pp / W;
  int64_t k = 0;
  for (; k + SSD_NB_FWD <= nv; k += SSD_NB_FWD)
    step_block<T, SSD_NB_FWD, WITH_Y>(src + k * W, dst + k * W, N, Pp, u + k * W, a, Bt,
                                      Ct, y + k * W);
  for (; k < nv; ++k)
    step_block<T, 1, WITH_Y>(src + k * W, dst + k * W, N, Pp, u + k * W, a, Bt, Ct, y + k * W);
}

// Adjoint of one token over a block of NB vectors of p (see the top).
// Accumulates dC, dB (over blocks of p) and <ds_t, s_t> into q.
template <typename T, int NB>
static inline void back_block(T *__restrict ds, const T *__restrict s, int64_t N, int64_t Pp,
                              const T *__restrict u, const T *__restrict dy, T a,
                              const T *__restrict Bt, const T *__restrict Ct,
                              T *__restrict du, T *__restrict dCn, T *__restrict dBn,
                              V<T> &q) {
  constexpr int W = Vec<T>::W;
  V<T> uu[NB], dyy[NB], duu[NB], qq[NB];
  for (int k = 0; k < NB; ++k) {
    uu[k] = vload(u + k * W);
    dyy[k] = vload(dy + k * W);
    duu[k] = V<T>{};
    qq[k] = V<T>{};
  }
  const V<T> av = vsplat(a);
  // Rows in groups of W: the partial dC[n], dB[n] of each row stay vectors
  // over p and one transposed reduction per group sums them.
  for (int64_t n0 = 0; n0 < N; n0 += W) {
    const int rows = N - n0 < W ? static_cast<int>(N - n0) : W;
    V<T> vc[W], vb[W];
    for (int i = rows; i < W; ++i) {
      vc[i] = V<T>{};
      vb[i] = V<T>{};
    }
    for (int i = 0; i < rows; ++i) {
      const int64_t n = n0 + i;
      T *dr = ds + n * Pp;
      const T *sr = s + n * Pp;
      const V<T> bn = vsplat(Bt[n]), cn = vsplat(Ct[n]);
      V<T> c{}, b{};  // in registers; vc[i] is written once
      for (int k = 0; k < NB; ++k) {
        const V<T> d = vload(dr + k * W) + cn * dyy[k];
        const V<T> sv = vload(sr + k * W);
        c += sv * dyy[k];
        b += d * uu[k];
        duu[k] += d * bn;
        qq[k] += d * sv;
        vstore(dr + k * W, av * d);
      }
      vc[i] = c;
      vb[i] = b;
    }
    // dCn/dBn are padded to a multiple of W, so the last group may overrun N.
    vstore(dCn + n0, vload(dCn + n0) + transpose_sum<T>(vc));
    vstore(dBn + n0, vload(dBn + n0) + transpose_sum<T>(vb));
  }
  for (int k = 0; k < NB; ++k) {
    vstore(du + k * W, duu[k]);
    q += qq[k];
  }
}

template <typename T>
static inline void back(T *ds, const T *s, int64_t N, int64_t Pp, const T *u, const T *dy, T a,
                        const T *Bt, const T *Ct, T *du, T *dCn, T *dBn, V<T> &q) {
  constexpr int W = Vec<T>::W;
  const int64_t nv = Pp / W;
  int64_t k = 0;
  for (; k + SSD_NB_BWD <= nv; k += SSD_NB_BWD)
    back_block<T, SSD_NB_BWD>(ds + k * W, s + k * W, N, Pp, u + k * W, dy + k * W, a, Bt, Ct,
                              du + k * W, dCn, dBn, q);
  for (; k < nv; ++k)
    back_block<T, 1>(ds + k * W, s + k * W, N, Pp, u + k * W, dy + k * W, a, Bt, Ct, du + k * W,
                     dCn, dBn, q);
}

template <typename T>
static inline T silu_of(T z) { return z / (T(1) + std::exp(-z)); }

// The forward keeps a tile of the state (FWD_ROWS rows x SSD_NB_FWD vectors of
// p) in registers over a block of up to SUB tokens, so the state is loaded and
// stored once per block rather than once per token, and y is summed over the
// tiles in a small (tokens x p) buffer. Within a block the state is carried
// scaled: s_t = S_t * r_t with S_t the product of the decays since the block
// began, so a token costs one FMA per state element instead of a multiply and
// an FMA:
//     r_t = r_{t-1} + B_t (x) (u_t / S_t),   y_t = S_t * (r_t^T C_t).
// A token whose S_t would leave [2^-60, 2^60] folds the scale into r instead
// (r_t = a_t S_{t-1} r_{t-1} + B_t (x) u_t, S_t = 1), so 1 / S_t stays finite
// and u_t / S_t cannot overflow for any input an fp32 state could hold.
struct BlockPlan {
  int64_t len;
  bool fold[SUB];
};

template <typename T>
struct BlockScales {
  T scale[SUB];  // S_t, the factor of y_t
  T mult[SUB];   // a_t * S_{t-1} on folding tokens
};

// Decays a_t of one block -> where to fold, S_t and the multipliers; returns
// the scale of the state after the block's last token.
template <typename T>
static inline T plan_block(const T *a, BlockPlan &plan, BlockScales<T> &sc) {
  const T lo = std::ldexp(T(1), -60), hi = std::ldexp(T(1), 60);
  T S = 1;
  for (int64_t t = 0; t < plan.len; ++t) {
    const T m = a[t] * S;
    plan.fold[t] = !(m >= lo && m <= hi);  // NaN folds: it propagates as unscaled
    sc.mult[t] = m;
    S = plan.fold[t] ? T(1) : m;
    sc.scale[t] = S;
  }
  return S;
}

// One tile of the state (R rows x NB vectors of p at s) over one block: reads
// the state entering the block, adds the tile's share of r_t^T C_t to y, and
// writes back the state after the block (r times its scale end_scale).
template <typename T, int R, int NB>
static inline void scan_tile(T *s, int64_t Pp, const BlockPlan &plan, const BlockScales<T> &sc,
                             T end_scale, const T *__restrict w, const T *__restrict Bb,
                             const T *__restrict Cb, int64_t bc_stride, T *__restrict y) {
  constexpr int W = Vec<T>::W;
  V<T> r[R][NB];
  for (int i = 0; i < R; ++i)
    for (int k = 0; k < NB; ++k) r[i][k] = vload(s + i * Pp + k * W);
  for (int64_t t = 0; t < plan.len; ++t) {
    const T *Bt = Bb + t * bc_stride, *Ct = Cb + t * bc_stride;
    const T *wt = w + t * Pp;
    T *yt = y + t * Pp;
    V<T> ww[NB], yy[NB];
    for (int k = 0; k < NB; ++k) ww[k] = vload(wt + k * W);
    if (plan.fold[t]) {  // rare; apart, so the update below stays one FMA
      const V<T> m = vsplat(sc.mult[t]);
      for (int i = 0; i < R; ++i)
        for (int k = 0; k < NB; ++k) r[i][k] *= m;
    }
    for (int i = 0; i < R; ++i) {
      const V<T> bn = vsplat(Bt[i]);
      for (int k = 0; k < NB; ++k) r[i][k] += bn * ww[k];
    }
    for (int k = 0; k < NB; ++k) yy[k] = vload(yt + k * W);
    for (int i = 0; i < R; ++i) {
      const V<T> cn = vsplat(Ct[i]);
      for (int k = 0; k < NB; ++k) yy[k] += cn * r[i][k];
    }
    for (int k = 0; k < NB; ++k) vstore(yt + k * W, yy[k]);
  }
  const V<T> e = vsplat(end_scale);
  for (int i = 0; i < R; ++i)
    for (int k = 0; k < NB; ++k) vstore(s + i * Pp + k * W, e * r[i][k]);
}

template <typename T, int R>
static inline void scan_row_group(T *s, int64_t Pp, const BlockPlan &plan,
                                  const BlockScales<T> &sc, T end_scale, const T *w,
                                  const T *Bb, const T *Cb, int64_t bc_stride, T *y) {
  constexpr int W = Vec<T>::W;
  const int64_t nv = Pp / W;
  int64_t k = 0;
  for (; k + SSD_NB_FWD <= nv; k += SSD_NB_FWD)
    scan_tile<T, R, SSD_NB_FWD>(s + k * W, Pp, plan, sc, end_scale, w + k * W, Bb, Cb,
                                bc_stride, y + k * W);
  for (; k < nv; ++k)
    scan_tile<T, R, 1>(s + k * W, Pp, plan, sc, end_scale, w + k * W, Bb, Cb, bc_stride,
                       y + k * W);
}

// All tiles of the state over one block; y (len x Pp) must start at zero.
template <typename T>
static inline void scan_block(T *s, int64_t N, int64_t Pp, const BlockPlan &plan,
                              const BlockScales<T> &sc, T end_scale, const T *w, const T *Bb,
                              const T *Cb, int64_t bc_stride, T *y) {
  constexpr int R = SSD_FWD_ROWS;
  int64_t n = 0;
  for (; n + R <= N; n += R)
    scan_row_group<T, R>(s + n * Pp, Pp, plan, sc, end_scale, w, Bb + n, Cb + n, bc_stride, y);
  for (; n < N; ++n)
    scan_row_group<T, 1>(s + n * Pp, Pp, plan, sc, end_scale, w, Bb + n, Cb + n, bc_stride, y);
}

template <typename T>
static void fwd_kernel(const SSDParams &P, int64_t bh0, int64_t bh1) {
  const int64_t L = P.seqlen, H = P.nheads, Pd = P.headdim, G = P.ngroups, N = P.dstate;
  const int64_t Pp = round_up(Pd, Vec<T>::W), nchunks = (L + P.chunk - 1) / P.chunk;
  const T *x = static_cast<const T *>(P.x), *dt = static_cast<const T *>(P.dt);
  const T *A = static_cast<const T *>(P.A), *Bm = static_cast<const T *>(P.B);
  const T *Cm = static_cast<const T *>(P.C), *Dm = static_cast<const T *>(P.D);
  const T *z = static_cast<const T *>(P.z), *bias = static_cast<const T *>(P.dt_bias);
  const T *init = static_cast<const T *>(P.init);
  T *out = static_cast<T *>(P.out), *fin = static_cast<T *>(P.final_state);
  T *ckpt = static_cast<T *>(P.ckpt);

  Scratch<T> state(N * Pp), w(SUB * Pp), y(SUB * Pp);
  T a[SUB], dtv[SUB];
  BlockPlan plan;
  BlockScales<T> sc;
  for (int64_t bh = bh0; bh < bh1; ++bh) {
    const int64_t b = bh / H, h = bh % H, g = h / (H / G);
    T *s = state.ptr;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t p = 0; p < Pd; ++p) s[n * Pp + p] = init ? init[(bh * Pd + p) * N + n] : T(0);
    const T Ah = A[h], bh_bias = bias ? bias[h] : T(0);
    const T *Dh = Dm ? Dm + h * Pd : nullptr;
    // Blocks end at chunk boundaries, where the state is saved unscaled.
    for (int64_t t0 = 0; t0 < L; t0 += plan.len) {
      plan.len = std::min(std::min(SUB, L - t0), P.chunk - t0 % P.chunk);
      if (ckpt && t0 % P.chunk == 0) {
        T *c = ckpt + (bh * nchunks + t0 / P.chunk) * N * Pd;
        for (int64_t n = 0; n < N; ++n) std::memcpy(c + n * Pd, s + n * Pp, Pd * sizeof(T));
      }
      const int64_t tok0 = (b * L + t0) * H + h, bc0 = ((b * L + t0) * G + g) * N;
      for (int64_t k = 0; k < plan.len; ++k) {
        const int64_t t = t0 + k, tok = tok0 + k * H;
        if (t + SUB < L) {  // the next block's rows, into L2
          const int64_t tk = tok + SUB * H, bk = bc0 + (k + SUB) * G * N;
          prefetch_row<0, 2>(x + tk * Pd, Pd);
          prefetch_row<0, 2>(z ? z + tk * Pd : nullptr, Pd);
          prefetch_row<0, 2>(Bm + bk, N);
          prefetch_row<0, 2>(Cm + bk, N);
        }
        dtv[k] = process_dt<T>(dt[tok] + bh_bias, P).dt;
        a[k] = std::exp(dtv[k] * Ah);
      }
      const T end_scale = plan_block(a, plan, sc);
      for (int64_t k = 0; k < plan.len; ++k) {
        const T f = dtv[k] / sc.scale[k];
        const T *xr = x + (tok0 + k * H) * Pd;
        T *wr = w.ptr + k * Pp;
        for (int64_t p = 0; p < Pd; ++p) wr[p] = f * xr[p];
      }
      std::memset(y.ptr, 0, plan.len * Pp * sizeof(T));
      scan_block<T>(s, N, Pp, plan, sc, end_scale, w.ptr, Bm + bc0, Cm + bc0, G * N, y.ptr);
      for (int64_t k = 0; k < plan.len; ++k) {
        const int64_t tok = tok0 + k * H;
        const T *xr = x + tok * Pd, *yr = y.ptr + k * Pp;
        const T *zr = z ? z + tok * Pd : nullptr;
        T *orow = out + tok * Pd;
        for (int64_t p = 0; p < Pd; ++p) {
          T v = sc.scale[k] * yr[p];
          if (Dh) v += Dh[p] * xr[p];
          if (zr) v *= silu_of(zr[p]);
          orow[p] = v;
        }
      }
    }
    for (int64_t p = 0; p < Pd; ++p)
      for (int64_t n = 0; n < N; ++n) fin[(bh * Pd + p) * N + n] = s[n * Pp + p];
  }
}

template <typename T>
static void bwd_kernel(const SSDParams &P, int64_t bh0, int64_t bh1) {
  constexpr int W = Vec<T>::W;
  const int64_t L = P.seqlen, H = P.nheads, Pd = P.headdim, G = P.ngroups, N = P.dstate;
  const int64_t Pp = round_up(Pd, W), NP = N * Pp, chunk = P.chunk;
  const int64_t nchunks = (L + chunk - 1) / chunk;
  const int64_t nsub_max = (std::min(chunk, L) + SUB - 1) / SUB;
  const T *x = static_cast<const T *>(P.x), *dt = static_cast<const T *>(P.dt);
  const T *A = static_cast<const T *>(P.A), *Bm = static_cast<const T *>(P.B);
  const T *Cm = static_cast<const T *>(P.C), *Dm = static_cast<const T *>(P.D);
  const T *z = static_cast<const T *>(P.z), *bias = static_cast<const T *>(P.dt_bias);
  const T *ckpt = static_cast<const T *>(P.ckpt), *dout = static_cast<const T *>(P.dout);
  const T *dfin = static_cast<const T *>(P.dfinal);
  T *dx = static_cast<T *>(P.dx), *ddt = static_cast<T *>(P.ddt);
  T *dB = static_cast<T *>(P.dB), *dC = static_cast<T *>(P.dC);
  T *dA = static_cast<T *>(P.dA), *dD = static_cast<T *>(P.dD);
  T *dz = static_cast<T *>(P.dz), *dinit = static_cast<T *>(P.dinit);

  Scratch<T> ds(NP), buf(SUB * NP), sub(nsub_max * NP), ybuf(z ? SUB * Pp : 1);
  Scratch<T> u(Pp), dy(Pp), du(Pp), dDacc(Pp), dCn(N), dBn(N);
  T dtv[SUB], av[SUB], dfac[SUB];

  for (int64_t bh = bh0; bh < bh1; ++bh) {
    const int64_t b = bh / H, h = bh % H, g = h / (H / G);
    const T Ah = A[h], bh_bias = bias ? bias[h] : T(0);
    const T *Dh = Dm ? Dm + h * Pd : nullptr;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t p = 0; p < Pd; ++p) ds.ptr[n * Pp + p] = dfin ? dfin[(bh * Pd + p) * N + n] : T(0);
    for (int64_t p = 0; p < Pp; ++p) dDacc.ptr[p] = 0;
    T dA_acc = 0;

    for (int64_t c = nchunks - 1; c >= 0; --c) {
      const int64_t t0 = c * chunk, t1 = std::min(L, t0 + chunk);
      const int64_t nsub = (t1 - t0 + SUB - 1) / SUB;
      // Sub-checkpoints: sub[j] is the state entering token t0 + j * SUB.
      const T *ck = ckpt + (bh * nchunks + c) * N * Pd;
      for (int64_t n = 0; n < N; ++n) std::memcpy(sub.ptr + n * Pp, ck + n * Pd, Pd * sizeof(T));
      for (int64_t j = 0; j + 1 < nsub; ++j) {
        for (int64_t k = 0; k < SUB; ++k) {
          const int64_t t = t0 + j * SUB + k, tok = (b * L + t) * H + h;
          if (t + PF < L) {
            prefetch_row(x + (tok + PF * H) * Pd, Pd);
            prefetch_row(Bm + ((b * L + t + PF) * G + g) * N, N);
          }
          const T d = process_dt<T>(dt[tok] + bh_bias, P).dt;
          const T *xr = x + tok * Pd;
          for (int64_t p = 0; p < Pd; ++p) u.ptr[p] = d * xr[p];
          const int64_t bc = ((b * L + t) * G + g) * N;
          const T *src = sub.ptr + (k == 0 ? j : j + 1) * NP;
          step<T, false>(src, sub.ptr + (j + 1) * NP, N, Pp, u.ptr, std::exp(d * Ah), Bm + bc,
                         Cm + bc, nullptr);
        }
      }
      for (int64_t j = nsub - 1; j >= 0; --j) {
        const int64_t ts = t0 + j * SUB, kn = std::min(t1, ts + SUB) - ts;
        // States after each token of the sub-chunk (and y before skip/gate).
        for (int64_t k = 0; k < kn; ++k) {
          const int64_t t = ts + k, tok = (b * L + t) * H + h;
          if (t + PF < L) {
            const int64_t bk = ((b * L + t + PF) * G + g) * N;
            prefetch_row(x + (tok + PF * H) * Pd, Pd);
            prefetch_row(Bm + bk, N);
            prefetch_row(z ? Cm + bk : nullptr, N);
          }
          const Dt<T> d = process_dt<T>(dt[tok] + bh_bias, P);
          dtv[k] = d.dt;
          dfac[k] = d.dfac;
          av[k] = std::exp(d.dt * Ah);
          const T *xr = x + tok * Pd;
          for (int64_t p = 0; p < Pd; ++p) u.ptr[p] = d.dt * xr[p];
          const int64_t bc = ((b * L + t) * G + g) * N;
          const T *src = k == 0 ? sub.ptr + j * NP : buf.ptr + (k - 1) * NP;
          if (z)
            step<T, true>(src, buf.ptr + k * NP, N, Pp, u.ptr, av[k], Bm + bc, Cm + bc,
                          ybuf.ptr + k * Pp);
          else
            step<T, false>(src, buf.ptr + k * NP, N, Pp, u.ptr, av[k], Bm + bc, Cm + bc, nullptr);
        }
        for (int64_t k = kn - 1; k >= 0; --k) {
          const int64_t t = ts + k, tok = (b * L + t) * H + h;
          if (t - PF >= 0) {
            const int64_t tk = tok - PF * H, bk = ((b * L + t - PF) * G + g) * N;
            prefetch_row(dout + tk * Pd, Pd);
            prefetch_row(z ? z + tk * Pd : nullptr, Pd);
            prefetch_row<1>(dx + tk * Pd, Pd);
            prefetch_row<1>(dz ? dz + tk * Pd : nullptr, Pd);
            prefetch_row(Cm + bk, N);
            prefetch_row<1>(dB + bk, N);
            prefetch_row<1>(dC + bk, N);
          }
          const T *xr = x + tok * Pd, *gr = dout + tok * Pd;
          const T *zr = z ? z + tok * Pd : nullptr;
          for (int64_t p = 0; p < Pd; ++p) {
            T g_out = gr[p];
            if (zr) {
              const T zz = zr[p], sg = T(1) / (T(1) + std::exp(-zz));
              T ypre = ybuf.ptr[k * Pp + p];
              if (Dh) ypre += Dh[p] * xr[p];
              dz[tok * Pd + p] = g_out * ypre * sg * (T(1) + zz * (T(1) - sg));
              g_out *= zz * sg;
            }
            dy.ptr[p] = g_out;
            dDacc.ptr[p] += g_out * xr[p];
            u.ptr[p] = dtv[k] * xr[p];
          }
          for (int64_t n = 0; n < N; ++n) dCn.ptr[n] = dBn.ptr[n] = 0;
          V<T> q{};
          const int64_t bc = ((b * L + t) * G + g) * N;
          back<T>(ds.ptr, buf.ptr + k * NP, N, Pp, u.ptr, dy.ptr, av[k], Bm + bc, Cm + bc,
                  du.ptr, dCn.ptr, dBn.ptr, q);
          T ada = vhsum<T>(q), dtx = 0;
          for (int64_t p = 0; p < Pd; ++p) {
            ada -= u.ptr[p] * du.ptr[p];
            dtx += xr[p] * du.ptr[p];
            dx[tok * Pd + p] = du.ptr[p] * dtv[k] + (Dh ? Dh[p] * dy.ptr[p] : T(0));
          }
          ddt[tok] = (dtx + ada * Ah) * dfac[k];
          dA_acc += ada * dtv[k];
          T *dBr = dB + bc, *dCr = dC + bc;  // this thread's sum over heads
          for (int64_t n = 0; n < N; ++n) {
            dBr[n] += dBn.ptr[n];
            dCr[n] += dCn.ptr[n];
          }
        }
      }
    }
    if (dinit)
      for (int64_t p = 0; p < Pd; ++p)
        for (int64_t n = 0; n < N; ++n) dinit[(bh * Pd + p) * N + n] = ds.ptr[n * Pp + p];
    dA[bh] = dA_acc;
    if (dD)
      for (int64_t p = 0; p < Pd; ++p) dD[bh * Pd + p] = dDacc.ptr[p];
  }
}

static inline KernelSet make_kernel_set(const char *name) {
  return KernelSet{&fwd_kernel<float>, &fwd_kernel<double>, &bwd_kernel<float>,
                   &bwd_kernel<double>, name};
}
