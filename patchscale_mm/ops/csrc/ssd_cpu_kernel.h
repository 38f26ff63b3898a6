// Mamba-2 selective scan (SSD) kernels for one instruction set.
//
// Included by ssd_cpu_{avx512,avx2,generic}.cpp inside a `#pragma GCC target`
// region and a namespace of its own, with SSD_VB (vector bytes), SSD_NB_FWD /
// SSD_NB_BWD (vectors of p kept in registers) and SSD_TILE_ROWS (state rows of
// a register tile) defined. Standard
// headers are included by those files *before* the target pragma, so no
// inline function of the library is compiled for a wider ISA than the caller.
//
// Per (batch, head) the scan is the recurrence, in the (n, p) layout
// (p contiguous, so the p loop vectorises and y accumulates without
// horizontal sums):
//     s_t[n, :] = a_t * s_{t-1}[n, :] + B_t[n] * u_t,   u_t = dt_t * x_t
//     y_t[:]    = sum_n C_t[n] * s_t[n, :]
// The state (n x p, 16 KiB in fp32 for 64 x 64) lives in L1/L2, and a tile of
// it in registers over blocks of SUB tokens (see Block below). The forward
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

// Aligned blocks a thread keeps between kernel calls: the backward runs once
// per slice of (batch, head) pairs, and a fresh block of a few hundred KiB
// would come from mmap each time, page faults and all.
class BlockPool {
 public:
  ~BlockPool() {
    for (const auto &b : free_) std::free(b.first);
  }
  // The smallest kept block of at least `bytes`, or a new one; its size in
  // `bytes`.
  void *take(size_t &bytes) {
    size_t best = free_.size();
    for (size_t i = 0; i < free_.size(); ++i) {
      const bool fits = free_[i].second >= bytes;
      if (fits && (best == free_.size() || free_[i].second < free_[best].second)) best = i;
    }
    if (best < free_.size()) {
      void *p = free_[best].first;
      bytes = free_[best].second;
      free_.erase(free_.begin() + best);
      return p;
    }
    void *p = std::aligned_alloc(ALIGN, bytes);
    if (p == nullptr) throw std::bad_alloc();
    return p;
  }
  void give_back(void *p, size_t bytes) {
    if (free_.size() < kKept) {
      free_.emplace_back(p, bytes);
    } else {
      std::free(p);
    }
  }

 private:
  static constexpr size_t kKept = 16;
  std::vector<std::pair<void *, size_t>> free_;
};

static inline BlockPool &thread_block_pool() {
  static thread_local BlockPool pool;
  return pool;
}

// Aligned scratch, zero-initialised (padding lanes of p must stay zero).
template <typename T>
struct Scratch {
  T *ptr = nullptr;
  size_t bytes = 0;
  explicit Scratch(int64_t n) {
    bytes = static_cast<size_t>(round_up(n > 0 ? n : 1, ALIGN) * sizeof(T));
    bytes = static_cast<size_t>(round_up(static_cast<int64_t>(bytes), ALIGN));
    const size_t used = bytes;
    ptr = static_cast<T *>(thread_block_pool().take(bytes));
    std::memset(ptr, 0, used);
  }
  ~Scratch() { thread_block_pool().give_back(ptr, bytes); }
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

// Adjoint of one token over a block of NB vectors of p (see the top), with
// the state and its gradient both carried scaled: s_t = S r and ds = Q rho
// (see bwd_kernel). Updates rho to ds_t / Q (which, times a_t, is the
// gradient w.r.t. s_{t-1}: the caller moves a_t into Q), accumulates dC, and
// dB / Q (over blocks of p), writes du / Q and adds <ds_t, r> / Q into q.
template <typename T, int NB>
static inline void back_block(T *__restrict rho, const T *__restrict r, T S, T Q_inv, int64_t N,
                              int64_t Pp, const T *__restrict u, const T *__restrict dy,
                              const T *__restrict Bt, const T *__restrict Ct,
                              T *__restrict du, T *__restrict dCn, T *__restrict dBn,
                              V<T> &q) {
  constexpr int W = Vec<T>::W;
  V<T> uu[NB], dyq[NB], dys[NB], duu[NB], qq[NB];
  const V<T> sv_scale = vsplat(S), dy_scale = vsplat(Q_inv);
  for (int k = 0; k < NB; ++k) {
    const V<T> g = vload(dy + k * W);
    uu[k] = vload(u + k * W);
    dys[k] = sv_scale * g;  // dC = s . dy = r . (S dy)
    dyq[k] = dy_scale * g;  // ds_t / Q = rho + C (x) (dy / Q)
    duu[k] = V<T>{};
    qq[k] = V<T>{};
  }
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
      T *dr = rho + n * Pp;
      const T *sr = r + n * Pp;
      const V<T> bn = vsplat(Bt[n]), cn = vsplat(Ct[n]);
      // c and b in registers (vc[i], vb[i] are written once), begun by a
      // multiply: an FMA onto zero would make x86 compilers copy a
      // multiplicand for the destructive form.
      V<T> c, b;
      for (int k = 0; k < NB; ++k) {
        const V<T> d = vload(dr + k * W) + cn * dyq[k];
        const V<T> sv = vload(sr + k * W);
        c = k ? c + sv * dys[k] : sv * dys[k];
        b = k ? b + d * uu[k] : d * uu[k];
        duu[k] += d * bn;
        qq[k] += d * sv;
        vstore(dr + k * W, d);
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
static inline void back(T *rho, const T *r, T S, T Q_inv, int64_t N, int64_t Pp, const T *u,
                        const T *dy, const T *Bt, const T *Ct, T *du, T *dCn, T *dBn,
                        V<T> &q) {
  constexpr int W = Vec<T>::W;
  const int64_t nv = Pp / W;
  int64_t k = 0;
  for (; k + SSD_NB_BWD <= nv; k += SSD_NB_BWD)
    back_block<T, SSD_NB_BWD>(rho + k * W, r + k * W, S, Q_inv, N, Pp, u + k * W, dy + k * W,
                              Bt, Ct, du + k * W, dCn, dBn, q);
  for (; k < nv; ++k)
    back_block<T, 1>(rho + k * W, r + k * W, S, Q_inv, N, Pp, u + k * W, dy + k * W, Bt, Ct,
                     du + k * W, dCn, dBn, q);
}

// The scan runs in blocks of up to SUB tokens that never cross a chunk
// boundary. A tile of the state, R rows x NB vectors of p, stays in registers
// over a block, so the state is loaded and stored once per block rather than
// once per token. Within a block the state is carried scaled, s_t = S_t r_t
// with S_t the product of the decays since the block began, so a token costs
// one FMA per state element instead of a multiply and an FMA:
//     r_t = r_{t-1} + B_t (x) w_t,   w_t = u_t / S_t,   y_t = S_t (r_t^T C_t).
// A token whose S_t would leave [2^-60, 2^60] folds the scale into r instead
// (r_t = a_t S_{t-1} r_{t-1} + B_t (x) u_t, S_t = 1), so 1 / S_t stays finite
// and w_t cannot overflow where u_t and the state do not.
template <typename T>
struct Block {
  int64_t len = 0;
  bool fold[SUB];
  T dt[SUB], dfac[SUB], a[SUB];  // step (after bias, softplus, clamp), its derivative, decay
  T mult[SUB];                   // a_t S_{t-1}, applied to r where folding
  T scale[SUB];                  // S_t
};

// Steps, decays and scales of the block's tokens of one head, and w (len x
// Pp). dt0 and x0 point at the block's first token; consecutive tokens are H
// apart in dt and H * headdim in x.
template <typename T>
static inline bool scale_in_range(T m) {  // false for NaN: it propagates unscaled
  return m >= std::ldexp(T(1), -60) && m <= std::ldexp(T(1), 60);
}

template <typename T>
static inline void load_block(Block<T> &blk, const SSDParams &P, const T *dt0, const T *x0,
                              int64_t H, T Ah, T bias, T *w, int64_t Pp) {
  const int64_t Pd = P.headdim;
  T S = 1;
  for (int64_t k = 0; k < blk.len; ++k) {
    const Dt<T> d = process_dt<T>(dt0[k * H] + bias, P);
    blk.dt[k] = d.dt;
    blk.dfac[k] = d.dfac;
    blk.a[k] = std::exp(d.dt * Ah);
    const T m = blk.a[k] * S;
    blk.fold[k] = !scale_in_range(m);
    blk.mult[k] = m;
    S = blk.fold[k] ? T(1) : m;
    blk.scale[k] = S;
    const T f = d.dt / S;
    const T *xr = x0 + k * H * Pd;
    T *wr = w + k * Pp;
    for (int64_t p = 0; p < Pd; ++p) wr[p] = f * xr[p];
  }
}

// What a block reads besides the state, and writes: B and C rows of its first
// token (bc_stride apart), w; y (len x Pp) accumulates the tiles' shares of
// r_t^T C_t if WITH_Y; states (len x N x Pp, NP per token) receives every r_t
// if KEEP.
template <typename T>
struct BlockIO {
  const T *w, *B, *C;
  int64_t bc_stride;
  T *y, *states;
  int64_t NP;
};

// One tile (R rows x NB vectors of p at s, rows Pp apart) over one block:
// reads the state entering the block and, if write_back, writes the state
// after it (r times its scale). Offsets of the tile are applied by the caller.
template <typename T, int R, int NB, bool WITH_Y, bool KEEP>
static inline void scan_tile(T *s, bool write_back, int64_t Pp, const Block<T> &blk,
                             const BlockIO<T> &io) {
  constexpr int W = Vec<T>::W;
  V<T> r[R][NB];
  for (int i = 0; i < R; ++i)
    for (int k = 0; k < NB; ++k) r[i][k] = vload(s + i * Pp + k * W);
  for (int64_t t = 0; t < blk.len; ++t) {
    const T *Bt = io.B + t * io.bc_stride, *Ct = io.C + t * io.bc_stride;
    V<T> ww[NB];
    for (int k = 0; k < NB; ++k) ww[k] = vload(io.w + t * Pp + k * W);
    if (blk.fold[t]) {  // rare; apart, so that the update below stays one FMA
      const V<T> m = vsplat(blk.mult[t]);
      for (int i = 0; i < R; ++i)
        for (int k = 0; k < NB; ++k) r[i][k] *= m;
    }
    for (int i = 0; i < R; ++i) {
      const V<T> bn = vsplat(Bt[i]);
      for (int k = 0; k < NB; ++k) r[i][k] += bn * ww[k];
    }
    if (KEEP)
      for (int i = 0; i < R; ++i)
        for (int k = 0; k < NB; ++k) vstore(io.states + t * io.NP + i * Pp + k * W, r[i][k]);
    if (WITH_Y) {
      // One vector of y at a time: its load folds into its first FMA as the
      // addend, which costs a register copy of C's broadcast (x86 FMAs take
      // memory only as a multiplicand) where it is not that broadcast's last
      // use: NB - 1 copies per token (GCC 12 made 2 NB with the rows outermost).
      // Zen 4 renames such copies away; Intel's cores can run them on the FMA
      // ports (docs/benchmarks.md, the pipeline model).
      T *yt = io.y + t * Pp;
      V<T> cn[R];
      for (int i = 0; i < R; ++i) cn[i] = vsplat(Ct[i]);
      for (int k = 0; k < NB; ++k) {
        V<T> yy = vload(yt + k * W);
        for (int i = 0; i < R; ++i) yy += cn[i] * r[i][k];
        vstore(yt + k * W, yy);
      }
    }
  }
  if (write_back) {
    const V<T> e = vsplat(blk.scale[blk.len - 1]);
    for (int i = 0; i < R; ++i)
      for (int k = 0; k < NB; ++k) vstore(s + i * Pp + k * W, e * r[i][k]);
  }
}

template <typename T, int R, bool WITH_Y, bool KEEP>
static inline void scan_row_group(T *s, bool write_back, int64_t Pp, const Block<T> &blk,
                                  const BlockIO<T> &io) {
  constexpr int W = Vec<T>::W, NB = SSD_NB_FWD;
  const int64_t nv = Pp / W;
  auto tile_io = [&](int64_t k) {  // the buffers as seen from vector k of p
    BlockIO<T> v = io;
    v.w = io.w + k * W;
    v.y = io.y ? io.y + k * W : nullptr;
    v.states = io.states ? io.states + k * W : nullptr;
    return v;
  };
  int64_t k = 0;
  for (; k + NB <= nv; k += NB)
    scan_tile<T, R, NB, WITH_Y, KEEP>(s + k * W, write_back, Pp, blk, tile_io(k));
  for (; k < nv; ++k)
    scan_tile<T, R, 1, WITH_Y, KEEP>(s + k * W, write_back, Pp, blk, tile_io(k));
}

// All tiles of the state s (N rows of Pp) over one block; io.y must start at
// zero.
template <typename T, bool WITH_Y, bool KEEP>
static inline void scan_block(T *s, bool write_back, int64_t N, int64_t Pp, const Block<T> &blk,
                              const BlockIO<T> &io) {
  constexpr int R = SSD_TILE_ROWS;
  auto rows_io = [&](int64_t n) {  // the buffers as seen from row n
    BlockIO<T> v = io;
    v.B = io.B + n;
    v.C = io.C + n;
    v.states = io.states ? io.states + n * Pp : nullptr;
    return v;
  };
  int64_t n = 0;
  for (; n + R <= N; n += R)
    scan_row_group<T, R, WITH_Y, KEEP>(s + n * Pp, write_back, Pp, blk, rows_io(n));
  for (; n < N; ++n)
    scan_row_group<T, 1, WITH_Y, KEEP>(s + n * Pp, write_back, Pp, blk, rows_io(n));
}

template <typename T>
static inline T silu_of(T z) { return z / (T(1) + std::exp(-z)); }

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

  // The heads of one batch row advance together, a block of tokens at a
  // time: the block's rows of x, z and out are then contiguous over heads,
  // and its rows of B and C are read from memory once, not once per head.
  const int64_t NP = N * Pp, heads_max = std::min(bh1 - bh0, H);
  Scratch<T> states(heads_max * NP), w(SUB * Pp), y(SUB * Pp);
  Block<T> blk;
  for (int64_t b = bh0 / H; b * H < bh1; ++b) {
    const int64_t h0 = std::max(bh0 - b * H, int64_t(0)), h1 = std::min(bh1 - b * H, H);
    for (int64_t h = h0; h < h1; ++h) {
      T *s = states.ptr + (h - h0) * NP;
      const int64_t bh = b * H + h;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t p = 0; p < Pd; ++p) s[n * Pp + p] = init ? init[(bh * Pd + p) * N + n] : T(0);
    }
    for (int64_t t0 = 0, len = 0; t0 < L; t0 += len) {
      len = std::min(std::min(SUB, L - t0), P.chunk - t0 % P.chunk);
      // The next block's rows, into L2: per head they are H * Pd apart, a
      // stride the hardware prefetchers do not follow.
      for (int64_t t = t0 + SUB; t < std::min(L, t0 + 2 * SUB); ++t) {
        const int64_t row = ((b * L + t) * H + h0) * Pd, bk = (b * L + t) * G * N;
        prefetch_row<0, 2>(x + row, (h1 - h0) * Pd);
        prefetch_row<0, 2>(z ? z + row : nullptr, (h1 - h0) * Pd);
        prefetch_row<1, 2>(out + row, (h1 - h0) * Pd);
        prefetch_row<0, 2>(Bm + bk, G * N);
        prefetch_row<0, 2>(Cm + bk, G * N);
      }
      for (int64_t h = h0; h < h1; ++h) {
        const int64_t bh = b * H + h, g = h / (H / G);
        T *s = states.ptr + (h - h0) * NP;
        if (ckpt && t0 % P.chunk == 0) {  // the state entering the chunk, unscaled
          T *c = ckpt + (bh * nchunks + t0 / P.chunk) * N * Pd;
          for (int64_t n = 0; n < N; ++n) std::memcpy(c + n * Pd, s + n * Pp, Pd * sizeof(T));
        }
        const T Ah = A[h], bh_bias = bias ? bias[h] : T(0);
        const T *Dh = Dm ? Dm + h * Pd : nullptr;
        const int64_t tok0 = (b * L + t0) * H + h, bc0 = ((b * L + t0) * G + g) * N;
        blk.len = len;
        load_block(blk, P, dt + tok0, x + tok0 * Pd, H, Ah, bh_bias, w.ptr, Pp);
        std::memset(y.ptr, 0, len * Pp * sizeof(T));
        scan_block<T, true, false>(s, true, N, Pp, blk,
                                   {w.ptr, Bm + bc0, Cm + bc0, G * N, y.ptr, nullptr, 0});
        for (int64_t k = 0; k < len; ++k) {
          const int64_t tok = tok0 + k * H;
          const T *xr = x + tok * Pd, *yr = y.ptr + k * Pp;
          const T *zr = z ? z + tok * Pd : nullptr;
          T *orow = out + tok * Pd;
          for (int64_t p = 0; p < Pd; ++p) {
            T v = blk.scale[k] * yr[p];
            if (Dh) v += Dh[p] * xr[p];
            if (zr) v *= silu_of(zr[p]);
            orow[p] = v;
          }
        }
      }
    }
    for (int64_t h = h0; h < h1; ++h) {
      const T *s = states.ptr + (h - h0) * NP;
      const int64_t bh = b * H + h;
      for (int64_t p = 0; p < Pd; ++p)
        for (int64_t n = 0; n < N; ++n) fin[(bh * Pd + p) * N + n] = s[n * Pp + p];
    }
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

  // buf: the scaled states r_t of one sub-chunk; sub[j]: the state entering
  // sub-chunk j of the current chunk. The gradient w.r.t. the state is
  // carried scaled as the state is in the forward, ds = Q rho, with Q the
  // product of the decays walked back over (folded into rho where it would
  // leave the range): the step ds <- a_t ds_t is then a scalar product, and a
  // token costs five FMAs per state element rather than five and a multiply.
  Scratch<T> rho(NP), buf(SUB * NP), sub(nsub_max * NP), ybuf(z ? SUB * Pp : 1);
  Scratch<T> w(SUB * Pp), u(Pp), dy(Pp), du(Pp), dDacc(Pp), dCn(N), dBn(N);
  Block<T> blk;

  for (int64_t bh = bh0; bh < bh1; ++bh) {
    const int64_t b = bh / H, h = bh % H, g = h / (H / G);
    const T Ah = A[h], bh_bias = bias ? bias[h] : T(0);
    const T *Dh = Dm ? Dm + h * Pd : nullptr;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t p = 0; p < Pd; ++p)
        rho.ptr[n * Pp + p] = dfin ? dfin[(bh * Pd + p) * N + n] : T(0);
    T Q = 1;
    for (int64_t p = 0; p < Pp; ++p) dDacc.ptr[p] = 0;
    T dA_acc = 0;
    auto tok_of = [&](int64_t t) { return (b * L + t) * H + h; };
    auto bc_of = [&](int64_t t) { return ((b * L + t) * G + g) * N; };
    // Rows of the sub-chunk starting at ts, into L2 ahead of their use.
    auto prefetch_sub = [&](int64_t ts) {
      for (int64_t t = std::max<int64_t>(ts, 0); t < std::min(L, ts + SUB); ++t) {
        prefetch_row<0, 2>(x + tok_of(t) * Pd, Pd);
        prefetch_row<0, 2>(Bm + bc_of(t), N);
        prefetch_row<0, 2>(Cm + bc_of(t), N);
      }
    };

    for (int64_t c = nchunks - 1; c >= 0; --c) {
      const int64_t t0 = c * chunk, t1 = std::min(L, t0 + chunk);
      const int64_t nsub = (t1 - t0 + SUB - 1) / SUB;
      const T *ck = ckpt + (bh * nchunks + c) * N * Pd;
      for (int64_t n = 0; n < N; ++n) std::memcpy(sub.ptr + n * Pp, ck + n * Pd, Pd * sizeof(T));
      // Sub-checkpoints: the scan without outputs, the state in registers.
      for (int64_t j = 0; j + 1 < nsub; ++j) {
        const int64_t ts = t0 + j * SUB;
        prefetch_sub(ts + SUB);
        blk.len = SUB;
        load_block(blk, P, dt + tok_of(ts), x + tok_of(ts) * Pd, H, Ah, bh_bias, w.ptr, Pp);
        T *next = sub.ptr + (j + 1) * NP;
        std::memcpy(next, sub.ptr + j * NP, NP * sizeof(T));
        scan_block<T, false, false>(next, true, N, Pp, blk,
                                    {w.ptr, Bm + bc_of(ts), Cm + bc_of(ts), G * N, nullptr,
                                     nullptr, 0});
      }
      for (int64_t j = nsub - 1; j >= 0; --j) {
        const int64_t ts = t0 + j * SUB;
        blk.len = std::min(t1, ts + SUB) - ts;
        prefetch_sub(ts - SUB);
        // The scaled state after each token of the sub-chunk (and, for the
        // gate, y before skip and gate, unscaled).
        load_block(blk, P, dt + tok_of(ts), x + tok_of(ts) * Pd, H, Ah, bh_bias, w.ptr, Pp);
        const BlockIO<T> io{w.ptr, Bm + bc_of(ts), Cm + bc_of(ts), G * N, ybuf.ptr, buf.ptr, NP};
        if (z) {
          std::memset(ybuf.ptr, 0, blk.len * Pp * sizeof(T));
          scan_block<T, true, true>(sub.ptr + j * NP, false, N, Pp, blk, io);
        } else {
          scan_block<T, false, true>(sub.ptr + j * NP, false, N, Pp, blk, io);
        }
        for (int64_t k = blk.len - 1; k >= 0; --k) {
          const int64_t t = ts + k, tok = tok_of(t);
          if (t - PF >= 0) {
            const int64_t tk = tok - PF * H, bk = bc_of(t - PF);
            prefetch_row(dout + tk * Pd, Pd);
            prefetch_row(z ? z + tk * Pd : nullptr, Pd);
            prefetch_row<1>(dx + tk * Pd, Pd);
            prefetch_row<1>(dz ? dz + tk * Pd : nullptr, Pd);
            prefetch_row(Cm + bk, N);
            prefetch_row<1>(dB + bk, N);
            prefetch_row<1>(dC + bk, N);
          }
          const T S = blk.scale[k], dtk = blk.dt[k];
          const T *xr = x + tok * Pd, *gr = dout + tok * Pd;
          const T *zr = z ? z + tok * Pd : nullptr;
          for (int64_t p = 0; p < Pd; ++p) {
            T g_out = gr[p];
            if (zr) {
              const T zz = zr[p], sg = T(1) / (T(1) + std::exp(-zz));
              T ypre = S * ybuf.ptr[k * Pp + p];
              if (Dh) ypre += Dh[p] * xr[p];
              dz[tok * Pd + p] = g_out * ypre * sg * (T(1) + zz * (T(1) - sg));
              g_out *= zz * sg;
            }
            dy.ptr[p] = g_out;
            dDacc.ptr[p] += g_out * xr[p];
            u.ptr[p] = dtk * xr[p];
          }
          for (int64_t n = 0; n < N; ++n) dCn.ptr[n] = dBn.ptr[n] = 0;
          V<T> q{};
          const int64_t bc = bc_of(t);
          back<T>(rho.ptr, buf.ptr + k * NP, S, T(1) / Q, N, Pp, u.ptr, dy.ptr, Bm + bc, Cm + bc,
                  du.ptr, dCn.ptr, dBn.ptr, q);
          T ada = vhsum<T>(q) * (Q * S), dtx = 0;
          for (int64_t p = 0; p < Pd; ++p) {
            const T dup = Q * du.ptr[p];
            ada -= u.ptr[p] * dup;
            dtx += xr[p] * dup;
            dx[tok * Pd + p] = dup * dtk + (Dh ? Dh[p] * dy.ptr[p] : T(0));
          }
          ddt[tok] = (dtx + ada * Ah) * blk.dfac[k];
          dA_acc += ada * dtk;
          T *dBr = dB + bc, *dCr = dC + bc;  // this thread's sum over heads
          for (int64_t n = 0; n < N; ++n) {
            dBr[n] += Q * dBn.ptr[n];
            dCr[n] += dCn.ptr[n];
          }
          // Gradient w.r.t. s_{t-1}: a_t ds_t = (a_t Q) rho.
          const T m = blk.a[k] * Q;
          if (scale_in_range(m)) {
            Q = m;
          } else {
            const V<T> mv = vsplat(m);
            for (int64_t i = 0; i < NP; i += W) vstore(rho.ptr + i, mv * vload(rho.ptr + i));
            Q = 1;
          }
        }
      }
    }
    if (dinit)
      for (int64_t p = 0; p < Pd; ++p)
        for (int64_t n = 0; n < N; ++n) dinit[(bh * Pd + p) * N + n] = Q * rho.ptr[n * Pp + p];
    dA[bh] = dA_acc;
    if (dD)
      for (int64_t p = 0; p < Pd; ++p) dD[bh * Pd + p] = dDacc.ptr[p];
  }
}

static inline KernelSet make_kernel_set(const char *name) {
  return KernelSet{&fwd_kernel<float>, &fwd_kernel<double>, &bwd_kernel<float>,
                   &bwd_kernel<double>, name};
}
