// tiles.cuh — the logit tile product Y = E_blk . C_blkᵀ for a (BM token x 128 vocabulary)
// tile, K = D, accumulated in float32.
//
//   WgTile<T, WGS> (16-bit T, built with CCE_USE_WGMMA=1 for sm_90a; the default there):
//              Hopper wgmma m64n128k16 from swizzled shared memory, WGS warpgroups, BM = 64 WGS
//              (default WGS = 4: 256 x 128 tiles, 512 threads). Described further below.
//   TcTile<T>  (T = __half or __nv_bfloat16; BM = 128): tensor cores through mma.sync m16n8k16,
//              operands staged by cp.async in a 3-deep shared-memory ring (BK = 64),
//              fragments read with ldmatrix. 8 warps as 2 (tokens) x 4 (vocabulary),
//              each warp 64 x 32.
//   SimtTile   (float): plain FMA, each of 256 threads computes 8 x 8 outputs. A portable,
//              exact-precision reference path; not tuned.
//
// Both expose the same view of the accumulators for the epilogues: each thread holds
// R x Cc values at(r, c) for tile row row(r) and tile column col(c); the threads that share
// a row are told apart by slot() in [0, SLOTS). Index at() only inside unrolled loops.
//
// Vocabulary rows are gathered: tile column j is C row perm[p0 + j] (perm == nullptr:
// identity); columns at or past p_end, and token rows at or past N, are zero-filled.
#pragma once

#include "cce_common.cuh"

#ifndef CCE_USE_WGMMA
#define CCE_USE_WGMMA 0
#endif


namespace cce {

// ---- PTX helpers -------------------------------------------------------------------

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool pred) {
  unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  int n = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void *p) {
  unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void *p) {
  unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

template <class T> struct Mma;
template <> struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4],
                                             uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <> struct Mma<__half> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4],
                                             uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

constexpr int kBM = 128;  // tokens per tile
constexpr int kBN = 128;  // vocabulary entries per tile
constexpr int kThreads = 256;

// ---- tensor-core tile ----------------------------------------------------------------

template <class T> struct TcTile {
  static constexpr int BK = 64, STAGES = 3, LDS = BK + 8;  // 144-byte rows: ldmatrix conflict-free
  static constexpr int MINB = 1, BM = kBM, THREADS = kThreads;
  static constexpr size_t SMEM = size_t(STAGES) * (kBM + kBN) * LDS * sizeof(T);
  static constexpr int R = 8, Cc = 8, SLOTS = 16;
  static constexpr int RSLOTS = SLOTS, CSLOTS = 16;  // dz_sums' partials a row (slot()), a column
  static constexpr int CPR = BK / 8;                 // 16-byte chunks per row per stage
  static constexpr int RPP = kThreads / CPR;         // rows per loader pass
  static constexpr int PASSES = kBM / RPP;

  float acc[4][4][4];
  int lane, wm, wn;

  __device__ TcTile() {
    lane = threadIdx.x & 31;
    int warp = threadIdx.x >> 5;
    wm = warp >> 2;
    wn = warp & 3;
  }
  __device__ __forceinline__ int row(int r) const {
    return wm * 64 + (r >> 1) * 16 + (lane >> 2) + (r & 1) * 8;
  }
  __device__ __forceinline__ int col(int c) const {
    return wn * 32 + (c >> 1) * 8 + (lane & 3) * 2 + (c & 1);
  }
  // Which of the threads sharing its columns this one is (its rows: slot()).
  __device__ __forceinline__ int cslot() const { return wm * 8 + (lane >> 2); }
  __device__ __forceinline__ float &at(int r, int c) {
    return acc[r >> 1][c >> 1][(r & 1) * 2 + (c & 1)];
  }
  __device__ __forceinline__ int slot() const { return wn * 4 + (lane & 3); }

  // E: (N, D) rows tok0.. ; C: (V, D) rows perm[p0 + j] for p0 + j < p_end.
  __device__ void run(const T *__restrict__ E, int64_t N, int64_t tok0,
                      const T *__restrict__ C, const int *__restrict__ perm, int64_t p0,
                      int64_t p_end, int64_t D, char *smem) {
    T *sA = reinterpret_cast<T *>(smem);
    T *sB = sA + STAGES * kBM * LDS;
    const int tid = threadIdx.x;
    const int kc = (tid % CPR) * 8;
    const T *aptr[PASSES], *bptr[PASSES];
    bool aok[PASSES], bok[PASSES];
#pragma unroll
    for (int i = 0; i < PASSES; ++i) {
      int r = tid / CPR + i * RPP;
      int64_t gr = tok0 + r;
      aok[i] = gr < N;
      aptr[i] = E + (aok[i] ? gr : 0) * D + kc;
      int64_t pos = p0 + r;
      bok[i] = pos < p_end;
      int64_t vr = bok[i] ? (perm ? perm[pos] : pos) : 0;
      bptr[i] = C + vr * D + kc;
    }
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
      for (int b = 0; b < 4; ++b)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[a][b][e] = 0.f;

    const int KT = static_cast<int>((D + BK - 1) / BK);
    auto load = [&](int stage, int kt) {
      int64_t k = int64_t(kt) * BK;
      bool kin = k + kc < D;  // D % 8 == 0: a chunk is wholly inside or outside
#pragma unroll
      for (int i = 0; i < PASSES; ++i) {
        int r = tid / CPR + i * RPP;
        bool pa = aok[i] && kin, pb = bok[i] && kin;
        cp_async16(sA + (stage * kBM + r) * LDS + kc, pa ? (const void *)(aptr[i] + k) : (const void *)E, pa);
        cp_async16(sB + (stage * kBN + r) * LDS + kc, pb ? (const void *)(bptr[i] + k) : (const void *)C, pb);
      }
    };

    __syncthreads();  // the ring may still be read by a previous use of this shared memory
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (s < KT) load(s, s);
      cp_async_commit();
    }
    for (int kt = 0; kt < KT; ++kt) {
      cp_async_wait<STAGES - 2>();
      __syncthreads();
      int nk = kt + STAGES - 1;
      if (nk < KT) load(nk % STAGES, nk);
      cp_async_commit();
      const T *a = sA + (kt % STAGES) * kBM * LDS;
      const T *b = sB + (kt % STAGES) * kBN * LDS;
#pragma unroll
      for (int ks = 0; ks < BK / 16; ++ks) {
        uint32_t af[4][4], bf[2][4];
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
          ldsm_x4(af[mi], a + (wm * 64 + mi * 16 + (lane & 15)) * LDS + ks * 16 + (lane >> 4) * 8);
#pragma unroll
        for (int pr = 0; pr < 2; ++pr)
          ldsm_x4(bf[pr], b + (wn * 32 + pr * 16 + (lane & 7) + ((lane >> 4) << 3)) * LDS +
                              ks * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
#pragma unroll
          for (int ni = 0; ni < 4; ++ni)
            Mma<T>::run(acc[mi][ni], af[mi], bf[ni >> 1][(ni & 1) * 2], bf[ni >> 1][(ni & 1) * 2 + 1]);
      }
    }
    cp_async_wait<0>();
    __syncthreads();
  }
};

// ---- float32 tile (plain FMA) -----------------------------------------------------------

struct SimtTile {
  static constexpr int BK = 8, LDS = BK + 1;
  static constexpr int MINB = 1, BM = kBM, THREADS = kThreads;
  static constexpr size_t SMEM = size_t(kBM + kBN) * LDS * sizeof(float);
  static constexpr int R = 8, Cc = 8, SLOTS = 16;
  static constexpr int RSLOTS = SLOTS, CSLOTS = 16;  // dz_sums' partials a row (slot()), a column

  float acc[8][8];
  int ty, tx;

  __device__ SimtTile() {
    ty = threadIdx.x >> 4;
    tx = threadIdx.x & 15;
  }
  __device__ __forceinline__ int row(int r) const { return ty + 16 * r; }
  __device__ __forceinline__ int col(int c) const { return tx + 16 * c; }
  __device__ __forceinline__ float &at(int r, int c) { return acc[r][c]; }
  __device__ __forceinline__ int slot() const { return tx; }
  __device__ __forceinline__ int cslot() const { return ty; }  // among the threads sharing a column

  __device__ void run(const float *__restrict__ E, int64_t N, int64_t tok0,
                      const float *__restrict__ C, const int *__restrict__ perm, int64_t p0,
                      int64_t p_end, int64_t D, char *smem) {
    float *sA = reinterpret_cast<float *>(smem);
    float *sB = sA + kBM * LDS;
    const int tid = threadIdx.x;
    const int r = tid >> 1, kc = (tid & 1) * 4;
    int64_t gr = tok0 + r;
    bool aok = gr < N;
    const float *aptr = E + (aok ? gr : 0) * D + kc;
    int64_t pos = p0 + r;
    bool bok = pos < p_end;
    const float *bptr = C + (bok ? (perm ? perm[pos] : pos) : 0) * D + kc;
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;
    for (int64_t k = 0; k < D; k += BK) {
      bool kin = k + kc < D;  // D % 4 == 0
      float4 av = (aok && kin) ? *reinterpret_cast<const float4 *>(aptr + k) : make_float4(0, 0, 0, 0);
      float4 bv = (bok && kin) ? *reinterpret_cast<const float4 *>(bptr + k) : make_float4(0, 0, 0, 0);
      __syncthreads();
      sA[r * LDS + kc + 0] = av.x; sA[r * LDS + kc + 1] = av.y;
      sA[r * LDS + kc + 2] = av.z; sA[r * LDS + kc + 3] = av.w;
      sB[r * LDS + kc + 0] = bv.x; sB[r * LDS + kc + 1] = bv.y;
      sB[r * LDS + kc + 2] = bv.z; sB[r * LDS + kc + 3] = bv.w;
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < BK; ++kk) {
        float a[8], b[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) a[i] = sA[(ty + 16 * i) * LDS + kk];
#pragma unroll
        for (int j = 0; j < 8; ++j) b[j] = sB[(tx + 16 * j) * LDS + kk];
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
};

#if CCE_USE_WGMMA
// ---- Hopper warpgroup tile (sm_90a) ---------------------------------------------------------
//
// The same 128 x 128 tile through wgmma.mma_async m64n128k16: two warpgroups, each owning 64
// token rows and all 128 vocabulary columns, both operands read by the tensor cores straight
// from shared memory. cp.async writes the operands K-major in the 128-byte swizzled layout
// (16-byte chunk c of row r at chunk c ^ (r % 8); 8-row atoms of 1024 bytes) that the
// matrix descriptors name; 3 stages of BK = 64; two blocks per multiprocessor.

__device__ __forceinline__ uint64_t wg_desc(const void *p) {
  uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  uint64_t d = 0;
  d |= uint64_t((a & 0x3FFFF) >> 4);   // start address
  d |= uint64_t(1) << 16;              // leading byte offset (unused for swizzled K-major)
  d |= uint64_t(1024 >> 4) << 32;      // stride byte offset: next 8-row atom
  d |= uint64_t(1) << 62;              // 128-byte swizzle
  return d;
}

#define CCE_WG_ACC8(i) "+f"(c[i]), "+f"(c[i + 1]), "+f"(c[i + 2]), "+f"(c[i + 3]), \
                       "+f"(c[i + 4]), "+f"(c[i + 5]), "+f"(c[i + 6]), "+f"(c[i + 7])
#define CCE_WG_ASM(TY)                                                                             \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                        \
               "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " "                      \
               "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"                          \
               "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"                 \
               "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"                 \
               "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "               \
               "%64, %65, p, 1, 1, 0, 0;\n}\n"                                                   \
               : CCE_WG_ACC8(0), CCE_WG_ACC8(8), CCE_WG_ACC8(16), CCE_WG_ACC8(24),               \
                 CCE_WG_ACC8(32), CCE_WG_ACC8(40), CCE_WG_ACC8(48), CCE_WG_ACC8(56)              \
               : "l"(da), "l"(db))

template <class T> struct Wgmma;
template <> struct Wgmma<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&c)[64], uint64_t da, uint64_t db) { CCE_WG_ASM("bf16"); }
};
template <> struct Wgmma<__half> {
  static __device__ __forceinline__ void run(float (&c)[64], uint64_t da, uint64_t db) { CCE_WG_ASM("f16"); }
};


// m64n256k16 with operand transposes TA / TB (1: MN-major in shared memory).
#define CCE_WG256_ASM(TY)                                                                     \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                    \
               "wgmma.mma_async.sync.aligned.m64n256k16.f32." TY "." TY " "                  \
               "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95,%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111,%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127}, "                                                                    \
               "%128, %129, p, 1, 1, %130, %131;\n}\n"                                    \
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]), "+f"(c[4]), "+f"(c[5]), "+f"(c[6]), "+f"(c[7]),\
                 "+f"(c[8]), "+f"(c[9]), "+f"(c[10]), "+f"(c[11]), "+f"(c[12]), "+f"(c[13]), "+f"(c[14]), "+f"(c[15]),\
                 "+f"(c[16]), "+f"(c[17]), "+f"(c[18]), "+f"(c[19]), "+f"(c[20]), "+f"(c[21]), "+f"(c[22]), "+f"(c[23]),\
                 "+f"(c[24]), "+f"(c[25]), "+f"(c[26]), "+f"(c[27]), "+f"(c[28]), "+f"(c[29]), "+f"(c[30]), "+f"(c[31]),\
                 "+f"(c[32]), "+f"(c[33]), "+f"(c[34]), "+f"(c[35]), "+f"(c[36]), "+f"(c[37]), "+f"(c[38]), "+f"(c[39]),\
                 "+f"(c[40]), "+f"(c[41]), "+f"(c[42]), "+f"(c[43]), "+f"(c[44]), "+f"(c[45]), "+f"(c[46]), "+f"(c[47]),\
                 "+f"(c[48]), "+f"(c[49]), "+f"(c[50]), "+f"(c[51]), "+f"(c[52]), "+f"(c[53]), "+f"(c[54]), "+f"(c[55]),\
                 "+f"(c[56]), "+f"(c[57]), "+f"(c[58]), "+f"(c[59]), "+f"(c[60]), "+f"(c[61]), "+f"(c[62]), "+f"(c[63]),\
                 "+f"(c[64]), "+f"(c[65]), "+f"(c[66]), "+f"(c[67]), "+f"(c[68]), "+f"(c[69]), "+f"(c[70]), "+f"(c[71]),\
                 "+f"(c[72]), "+f"(c[73]), "+f"(c[74]), "+f"(c[75]), "+f"(c[76]), "+f"(c[77]), "+f"(c[78]), "+f"(c[79]),\
                 "+f"(c[80]), "+f"(c[81]), "+f"(c[82]), "+f"(c[83]), "+f"(c[84]), "+f"(c[85]), "+f"(c[86]), "+f"(c[87]),\
                 "+f"(c[88]), "+f"(c[89]), "+f"(c[90]), "+f"(c[91]), "+f"(c[92]), "+f"(c[93]), "+f"(c[94]), "+f"(c[95]),\
                 "+f"(c[96]), "+f"(c[97]), "+f"(c[98]), "+f"(c[99]), "+f"(c[100]), "+f"(c[101]), "+f"(c[102]), "+f"(c[103]),\
                 "+f"(c[104]), "+f"(c[105]), "+f"(c[106]), "+f"(c[107]), "+f"(c[108]), "+f"(c[109]), "+f"(c[110]), "+f"(c[111]),\
                 "+f"(c[112]), "+f"(c[113]), "+f"(c[114]), "+f"(c[115]), "+f"(c[116]), "+f"(c[117]), "+f"(c[118]), "+f"(c[119]),\
                 "+f"(c[120]), "+f"(c[121]), "+f"(c[122]), "+f"(c[123]), "+f"(c[124]), "+f"(c[125]), "+f"(c[126]), "+f"(c[127]) \
               : "l"(da), "l"(db), "n"(TA), "n"(TB))

template <class T, int TA, int TB> struct Wgmma256;
template <int TA, int TB> struct Wgmma256<__nv_bfloat16, TA, TB> {
  static __device__ __forceinline__ void run(float (&c)[128], uint64_t da, uint64_t db) { CCE_WG256_ASM("bf16"); }
};
template <int TA, int TB> struct Wgmma256<__half, TA, TB> {
  static __device__ __forceinline__ void run(float (&c)[128], uint64_t da, uint64_t db) { CCE_WG256_ASM("f16"); }
};

// Descriptor with explicit leading / stride byte offsets, 128-byte swizzle.
__device__ __forceinline__ uint64_t wg_desc2(const void *p, uint32_t lbo, uint32_t sbo) {
  uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  return uint64_t((a & 0x3FFFF) >> 4) | (uint64_t((lbo >> 4) & 0x3FFF) << 16) |
         (uint64_t((sbo >> 4) & 0x3FFF) << 32) | (uint64_t(1) << 62);
}

// WGS warpgroups: a tile of 64 WGS token rows x 128 vocabulary columns. WGS = 4 (256 x 128,
// one block of 512 threads per multiprocessor) moves a quarter fewer operand bytes per
// product than WGS = 2 (128 x 128, two blocks of 256 threads per multiprocessor).
template <class T, int WGS> struct WgTile {
  static constexpr int BM = 64 * WGS, THREADS = 128 * WGS;
#ifndef CCE_WG_STAGES
#define CCE_WG_STAGES 3
#endif
  // STAGES-deep ring, loads STAGES - 1 steps ahead; the wgmma of a step is drained before the
  // next barrier, so the ring slot loaded at step k (last read at step k - 1) is free.
  static constexpr int BK = 64, STAGES = CCE_WG_STAGES, PD = STAGES - 1;
  static constexpr int MINB = (WGS == 2 && STAGES == 3) ? 2 : 1;
  static constexpr int ABYTES = BM * BK * 2, BBYTES = kBN * BK * 2;  // per stage
  static constexpr int STAGE_BYTES = ABYTES + BBYTES;
  static constexpr size_t SMEM = size_t(STAGES) * STAGE_BYTES + 1024;  // + alignment slack
  static constexpr int R = 2, Cc = 32, SLOTS = 4;
  // dz_sums: a row's sum is formed by shuffles (one slot); a column's by the 8 warps of its half
  static constexpr int RSLOTS = 1, CSLOTS = 8;
  static constexpr int AP = BM * 8 / THREADS, BP = kBN * 8 / THREADS;  // 16-byte loads per thread
  static constexpr int RPP = THREADS / 8;                                // rows per loader pass

  float acc[64];
  int lane, warp;

  __device__ WgTile() {
    lane = threadIdx.x & 31;
    warp = threadIdx.x >> 5;
  }
  __device__ __forceinline__ int row(int r) const { return (warp >> 2) * 64 + (warp & 3) * 16 + (lane >> 2) + 8 * r; }
  __device__ __forceinline__ int col(int c) const { return (c >> 1) * 8 + (lane & 3) * 2 + (c & 1); }
  __device__ __forceinline__ float &at(int r, int c) { return acc[(c >> 1) * 4 + r * 2 + (c & 1)]; }
  __device__ __forceinline__ int slot() const { return lane & 3; }

  __device__ void run(const T *__restrict__ E, int64_t N, int64_t tok0, const T *__restrict__ C,
                      const int *__restrict__ perm, int64_t p0, int64_t p_end, int64_t D, char *smem) {
    char *base = reinterpret_cast<char *>((reinterpret_cast<uintptr_t>(smem) + 1023) & ~uintptr_t(1023));
    const int tid = threadIdx.x;
    const int kc = tid & 7;  // 16-byte chunk within the 128-byte row slice
    const T *aptr[AP], *bptr[BP];
    bool aok[AP], bok[BP];
#pragma unroll
    for (int i = 0; i < AP; ++i) {
      int r = (tid >> 3) + RPP * i;
      int64_t gr = tok0 + r;
      aok[i] = gr < N;
      aptr[i] = E + (aok[i] ? gr : 0) * D + kc * 8;
    }
#pragma unroll
    for (int i = 0; i < BP; ++i) {
      int r = (tid >> 3) + RPP * i;
      int64_t pos = p0 + r;
      bok[i] = pos < p_end;
      int64_t vr = bok[i] ? (perm ? perm[pos] : pos) : 0;
      bptr[i] = C + vr * D + kc * 8;
    }
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = 0.f;
    const int KT = static_cast<int>((D + BK - 1) / BK);
    auto load = [&](int stage, int kt) {
      int64_t k = int64_t(kt) * BK;
      bool kin = k + kc * 8 < D;
      char *sa = base + stage * STAGE_BYTES;
      char *sb = sa + ABYTES;
#pragma unroll
      for (int i = 0; i < AP; ++i) {
        int r = (tid >> 3) + RPP * i;
        bool pa = aok[i] && kin;
        cp_async16(sa + r * 128 + ((kc ^ (r & 7)) << 4), pa ? (const void *)(aptr[i] + k) : (const void *)E, pa);
      }
#pragma unroll
      for (int i = 0; i < BP; ++i) {
        int r = (tid >> 3) + RPP * i;
        bool pb = bok[i] && kin;
        cp_async16(sb + r * 128 + ((kc ^ (r & 7)) << 4), pb ? (const void *)(bptr[i] + k) : (const void *)C, pb);
      }
    };
    __syncthreads();
#pragma unroll
    for (int s = 0; s < PD; ++s) {
      if (s < KT) load(s, s);
      cp_async_commit();
    }
    const int wg = warp >> 2;
    for (int kt = 0; kt < KT; ++kt) {
      cp_async_wait<PD - 1>();
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      __syncthreads();
      int nk = kt + PD;
      if (nk < KT) load(nk % STAGES, nk);
      cp_async_commit();
      const char *sa = base + (kt % STAGES) * STAGE_BYTES + wg * 64 * 128;
      const char *sb = base + (kt % STAGES) * STAGE_BYTES + ABYTES;
      asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
      for (int ks = 0; ks < BK / 16; ++ks) Wgmma<T>::run(acc, wg_desc(sa + ks * 32), wg_desc(sb + ks * 32));
      asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
      asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    }
    cp_async_wait<0>();
    __syncthreads();
  }
};

#ifndef CCE_WG_WGS
#define CCE_WG_WGS 4
#endif
template <class T> struct TileFor { using type = WgTile<T, CCE_WG_WGS>; };
#else
template <class T> struct TileFor { using type = TcTile<T>; };
#endif
template <> struct TileFor<float> { using type = SimtTile; };

// z = s tanh(y / s) when softcapped.
__device__ __forceinline__ float cap(float y, float s) { return s > 0.f ? s * tanhf(y / s) : y; }

}  // namespace cce
