// Fused feature construction + feature-space products of method="approx" (top-degree split).
//
// Math and layout: src/polyattn/planning/approx_split.py. With G = the symmetric-power features of
// degree <= p-1 (rank r1) and slot s reading G rows [a_s, b_s) (slot 0: the low part, all rows;
// slot s >= 1: the degree-p block of coordinate coord_s, a prefix of degree p-1):
//
//   apply:     out[z, l]       = sum_s q_s[l] * sum_{f in [a_s, b_s)} P[s][f][z] * G[f, l]   (q_0 = 1)
//   summary:   C[s*Z + z, f]  += sum_l M[z, l] * q_s[l] * G[f, l]                          (f in [a_s, b_s))
//
// (M is read through two strides: the tree kernel's messages are often transposed views.)
//
// Why a kernel of our own: the torch path runs these as slot-stacked BLAS GEMMs over a materialised
// chunk of G. Those GEMMs have only (dv+1) x (active slots) rows (18-45 in the staircase's tail),
// so BLAS spends its time packing G, the merged segments compute zero padding, and G makes a round
// trip through memory. Here G is built tile by tile straight into the layout the register block
// reads (the packing *is* the construction), every slot sweeps exactly its own rows (no padding),
// and the q_s multiply is folded into the flush of the register block.
//
// Register blocks (GCC vector extensions, compiled with -march=native): MR <= 9 value channels x NV
// vectors. apply: vectors run over rows (lanes) of a [r1][TL] tile, the summary P broadcast;
// summary: vectors run over features of a row-major [rows][r1] tile, M*q_s broadcast. No
// horizontal reductions anywhere. Both split their work over `threads` std::threads: apply by lane
// tiles (disjoint outputs); summary by rows, each thread building only its own rows' features into
// a private summary that is added in at the end (threads past the first).
// Only float32; everything else stays on the torch path (the plan says which runs).

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#if defined(__AVX512F__)
#define PA_VW 16
#define PA_NV 3
#elif defined(__AVX__)
#define PA_VW 8
#define PA_NV 1
#else
#define PA_VW 4
#define PA_NV 1
#endif

namespace {

constexpr int VW = PA_VW, NV = PA_NV, TL = VW * NV;
typedef float vf __attribute__((vector_size(VW * 4)));

inline vf ld(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void st(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf bc(float x) { return vf{} + x; }

inline size_t up16(size_t n) { return (n + 15) / 16 * 16; }
inline float* align64(float* p) { return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t(63)); }

// Work buffers come from the caller (one allocation reused across calls: a fresh ~1 MB buffer per
// call costs page faults on every call, more than the arithmetic of a short chunk).
size_t apply_work(int r1, int Z) { return up16((size_t)r1 * TL) + up16((size_t)Z * TL); }
int64_t summary_ldg(int r1) { return ((r1 + TL + 15) / 16) * 16; }
size_t summary_work(int r1, int S, int Z, int LT) { return up16((size_t)LT * summary_ldg(r1)) + up16((size_t)LT * S * Z); }
// threads past the first accumulate into a private [S Z, up16(r1)] summary, added into C at the end
size_t summary_private(int r1, int S, int Z) { return (size_t)S * Z * up16(r1); }

// The register block both products share: acc[m][v] = sum_i A[i*lda + m] * B[i*ldb + v*VW]
// (A broadcast, B loaded as NV vectors; MR x NV accumulators stay in registers).
template <int MR>
__attribute__((always_inline)) inline void block(const float* __restrict A, int64_t lda, const float* __restrict B,
                                                 int64_t ldb, int len, vf (&acc)[MR][NV]) {
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[m][v] = vf{};
  for (int i = 0; i < len; ++i) {
    vf b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = ld(B + (size_t)i * ldb + v * VW);
    const float* a = A + (size_t)i * lda;
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      vf ab = bc(a[m]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[m][v] += ab * b[v];
    }
  }
}

// apply: out[m][:] (= | += | += q *) sum_f P[f*Z + m] * G[f*TL + :]
template <int MR>
void kapply(const float* __restrict P, int Z, const float* __restrict G, int len, float* __restrict out,
            const float* __restrict qs, bool first) {
  vf acc[MR][NV];
  block<MR>(P, Z, G, TL, len, acc);
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* o = out + (size_t)m * TL + v * VW;
      if (first) st(o, acc[m][v]);
      else if (qs) st(o, ld(o) + ld(qs + v * VW) * acc[m][v]);
      else st(o, ld(o) + acc[m][v]);
    }
}

// summary: C[m*ldc + j] += sum_l MQ[l*ldmq + m] * G[l*ldg + j]   for j < w (w <= TL)
template <int MR>
void ksum(const float* __restrict MQ, int ldmq, const float* __restrict G, int64_t ldg, int rows,
          float* __restrict C, int64_t ldc, int w) {
  vf acc[MR][NV];
  block<MR>(MQ, ldmq, G, ldg, rows, acc);
  if (w == TL) {
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        float* c = C + (size_t)m * ldc + v * VW;
        st(c, ld(c) + acc[m][v]);
      }
  } else {  // the last, partial block of a slot: only its own columns
    alignas(64) float tmp[TL];
    for (int m = 0; m < MR; ++m) {
      for (int v = 0; v < NV; ++v) st(tmp + v * VW, acc[m][v]);
      float* c = C + (size_t)m * ldc;
      for (int j = 0; j < w; ++j) c[j] += tmp[j];
    }
  }
}

typedef void (*kapply_t)(const float*, int, const float*, int, float*, const float*, bool);
typedef void (*ksum_t)(const float*, int, const float*, int64_t, int, float*, int64_t, int);
const kapply_t KAPPLY[10] = {nullptr, kapply<1>, kapply<2>, kapply<3>, kapply<4>, kapply<5>,
                             kapply<6>, kapply<7>, kapply<8>, kapply<9>};
const ksum_t KSUM[10] = {nullptr, ksum<1>, ksum<2>, ksum<3>, ksum<4>, ksum<5>, ksum<6>, ksum<7>, ksum<8>, ksum<9>};

inline int zblock(int Z, int z0) {  // the next block of value channels: blocks of <= 9, as even as possible
  int left = Z - z0, nb = (left + 8) / 9;
  return (left + nb - 1) / nb;
}

struct Tables {  // construction steps (src row, coordinate, dst row, length) and slots (a, b, coordinate or -1)
  int d, r1, nsteps, S;
  const int* steps;
  const int *sa, *sb, *sc;
};

// body(t, first, end) over [0, items), split evenly over `threads` (part t runs on thread t, the
// calling thread takes part 0; a thread that cannot be started runs its part here).
template <class F>
void run_threads(int threads, int64_t items, F&& body) {
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) {
    int64_t b0 = items * t / threads, b1 = items * (t + 1) / threads;
    try {
      pool.emplace_back([&body, t, b0, b1] { body(t, b0, b1); });
    } catch (...) {
      body(t, b0, b1);
    }
  }
  body(0, 0, items / threads);
  for (auto& th : pool) th.join();
}

inline int clamp_threads(int threads, int64_t items) { return (int)std::max<int64_t>(1, std::min<int64_t>(threads, items)); }

void apply_range(const Tables& T, int Z, const float* Pk, const float* qT, int64_t ldq, int64_t n, float* out,
                 int64_t ldo, float* work, int64_t tile0, int64_t tile1) {
  float *G = work, *ot = work + up16((size_t)T.r1 * TL);
  for (int64_t tile = tile0; tile < tile1; ++tile) {
    int64_t l0 = tile * TL;
    int w = (int)std::min<int64_t>(TL, n - l0);
    for (int j = 0; j < TL; ++j) G[j] = 1.f;
    for (int c = 0; c < T.d; ++c) {
      float* g = G + (size_t)(1 + c) * TL;
      const float* q = qT + c * ldq + l0;
      for (int j = 0; j < w; ++j) g[j] = q[j];
      for (int j = w; j < TL; ++j) g[j] = 0.f;
    }
    for (int i = 0; i < T.nsteps; ++i) {
      const int* s = T.steps + 4 * i;
      const float* qc = G + (size_t)(1 + s[1]) * TL;
      vf qv[NV];
      for (int v = 0; v < NV; ++v) qv[v] = ld(qc + v * VW);
      for (int k = 0; k < s[3]; ++k) {
        const float* src = G + (size_t)(s[0] + k) * TL;
        float* dst = G + (size_t)(s[2] + k) * TL;
        for (int v = 0; v < NV; ++v) st(dst + v * VW, ld(src + v * VW) * qv[v]);
      }
    }
    for (int s = 0; s < T.S; ++s) {
      int a = T.sa[s], b = T.sb[s];
      const float* qs = T.sc[s] < 0 ? nullptr : G + (size_t)(1 + T.sc[s]) * TL;
      for (int z0 = 0; z0 < Z;) {
        int mr = zblock(Z, z0);
        KAPPLY[mr](Pk + ((size_t)s * T.r1 + a) * Z + z0, Z, G + (size_t)a * TL, b - a, ot + (size_t)z0 * TL, qs,
                   s == 0);
        z0 += mr;
      }
    }
    for (int z = 0; z < Z; ++z) std::memcpy(out + z * ldo + l0, ot + (size_t)z * TL, w * sizeof(float));
  }
}

// rows [r0, r1) of the chunk into C (ldc): every register block, tile by tile
void summary_rows(const Tables& T, int Z, const float* M, int64_t smz, int64_t sml, const float* qT, int64_t ldq,
                  int64_t r0, int64_t r1, float* C, int64_t ldc, int LT, const std::vector<int>& blocks, float* work) {
  if (r0 >= r1) return;
  int64_t ldg = summary_ldg(T.r1);
  float *G = work, *MQ = work + up16((size_t)LT * ldg);
  for (int l = 0; l < LT; ++l)  // the columns past r1 that partial blocks read: finite
    std::memset(G + (size_t)l * ldg + T.r1, 0, sizeof(float) * (size_t)(ldg - T.r1));
  int ldmq = T.S * Z;
  int64_t nb = (int64_t)blocks.size() / 2;
  for (int64_t l0 = r0; l0 < r1; l0 += LT) {
    int w = (int)std::min<int64_t>(LT, r1 - l0);
    for (int l = 0; l < w; ++l) {
      float* g = G + (size_t)l * ldg;
      g[0] = 1.f;
      for (int c = 0; c < T.d; ++c) g[1 + c] = qT[c * ldq + l0 + l];
      for (int i = 0; i < T.nsteps; ++i) {
        const int* s = T.steps + 4 * i;
        float qc = g[1 + s[1]];
        float* __restrict dst = g + s[2];
        const float* __restrict src = g + s[0];
        for (int k = 0; k < s[3]; ++k) dst[k] = src[k] * qc;
      }
      float* mq = MQ + (size_t)l * ldmq;
      for (int s = 0; s < T.S; ++s) {
        float f = T.sc[s] < 0 ? 1.f : g[1 + T.sc[s]];
        for (int z = 0; z < Z; ++z) mq[s * Z + z] = M[z * smz + (l0 + l) * sml] * f;
      }
    }
    for (int64_t i = 0; i < nb; ++i) {
      int s = blocks[2 * i], fb = blocks[2 * i + 1];
      int wf = std::min(TL, T.sb[s] - fb);
      for (int z0 = 0; z0 < Z;) {
        int mr = zblock(Z, z0);
        KSUM[mr](MQ + s * Z + z0, ldmq, G + fb, ldg, w, C + (size_t)(s * Z + z0) * ldc + fb, ldc, wf);
        z0 += mr;
      }
    }
  }
}

}  // namespace

extern "C" {

int pa_tile_lanes() { return TL; }

// Floats of the `work` buffer the entry points need (64-byte alignment is done inside: pass 16 more).
int64_t pa_apply_workspace(int r1, int Z, int threads) { return (int64_t)apply_work(r1, Z) * std::max(1, threads); }
int64_t pa_summary_workspace(int r1, int S, int Z, int LT, int threads) {
  return (int64_t)(summary_work(r1, S, Z, LT) + summary_private(r1, S, Z)) * std::max(1, threads);
}

// Both entry points return 0, or 1 when the bookkeeping could not be allocated.
int pa_apply(int d, int r1, int nsteps, const int* steps, int S, const int* sa, const int* sb, const int* sc,
             int Z, const float* Pk, const float* qT, int64_t ldq, int64_t n, float* out, int64_t ldo,
             float* work, int threads) {
  Tables T{d, r1, nsteps, S, steps, sa, sb, sc};
  int64_t tiles = (n + TL - 1) / TL;
  float* base = align64(work);
  size_t per = apply_work(r1, Z);
  try {
    run_threads(clamp_threads(threads, tiles), tiles, [&](int t, int64_t t0, int64_t t1) {
      apply_range(T, Z, Pk, qT, ldq, n, out, ldo, base + per * t, t0, t1);
    });
  } catch (...) {
    return 1;
  }
  return 0;
}

int pa_summary(int d, int r1, int nsteps, const int* steps, int S, const int* sa, const int* sb, const int* sc,
               int Z, const float* M, int64_t smz, int64_t sml, const float* qT, int64_t ldq, int64_t n, float* C,
               int64_t ldc, float* work, int LT, int threads) {
  Tables T{d, r1, nsteps, S, steps, sa, sb, sc};
  // (slot, first feature) of every register block's column range, by first feature: the slots of
  // the top degree share their start, so consecutive blocks read the same tile columns (from L1)
  std::vector<int> blocks;
  try {
    std::vector<std::pair<int, int>> order;
    for (int s = 0; s < S; ++s)
      for (int fb = sa[s]; fb < sb[s]; fb += TL) order.emplace_back(fb, s);
    std::sort(order.begin(), order.end());
    for (auto& [fb, s] : order) {
      blocks.push_back(s);
      blocks.push_back(fb);
    }
    // threads split the rows (whole tiles): each builds only its own rows' features
    int64_t tiles = (n + LT - 1) / LT;
    int nt = clamp_threads(threads, tiles);
    float* base = align64(work);
    size_t per = summary_work(r1, S, Z, LT) + summary_private(r1, S, Z);
    int64_t ldp = (int64_t)up16(r1);
    run_threads(nt, tiles, [&](int t, int64_t t0, int64_t t1) {
      float* w = base + per * t;
      float* own = C;
      int64_t ld = ldc;
      if (t > 0) {
        own = w + summary_work(r1, S, Z, LT);
        ld = ldp;
        std::memset(own, 0, sizeof(float) * summary_private(r1, S, Z));
      }
      summary_rows(T, Z, M, smz, sml, qT, ldq, t0 * LT, std::min(n, t1 * LT), own, ld, LT, blocks, w);
    });
    for (int t = 1; t < nt; ++t) {  // fold the private summaries in (slot ranges only)
      const float* own = base + per * t + summary_work(r1, S, Z, LT);
      for (int s = 0; s < S; ++s)
        for (int z = 0; z < Z; ++z) {
          float* __restrict c = C + (size_t)(s * Z + z) * ldc;
          const float* __restrict o = own + (size_t)(s * Z + z) * ldp;
          for (int f = sa[s]; f < sb[s]; ++f) c[f] += o[f];
        }
    }
  } catch (...) {
    return 1;
  }
  return 0;
}
}
