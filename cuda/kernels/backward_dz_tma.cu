// backward_dz_tma.cu — stage 1 of the backward (backward.cuh) on Hopper: the dz tiles, with the
// logit tiles computed by the forward's bulk-copy ring (tma.cuh) instead of the cp.async tile.
//
// The copy engine cannot gather rows, so the host first copies the chunk's C rows in sorted
// order into a contiguous buffer Cs (gather_rows_kernel: Cs[i] = C[perm[p_begin + i]]) and
// describes that buffer with a tensor map. A block of three warpgroups then owns one 128-row
// token block and a run of pairs of vocabulary tiles: its 128 x 256 logit tile is two of the
// backward's 128 x 128 tiles side by side (columns 0..127: tile 2 pr, 128..255: 2 pr + 1).
// For each pair the consumers turn the accumulators into dy in place (the formula of
// backward_dz.cu), decide each tile's filter, write the row sums (S) from the registers, the
// column sums (Tc, from which dbias is formed afterwards) through shared memory, the kept
// flags, and the kept tiles into the staging buffer, while the producer already loads the
// next pair. Outputs, layouts and
// meanings are those of dz_kernel, so the products stage is unchanged.
#include <algorithm>
#include <cstdlib>

#include "backward.cuh"

namespace cce {

#if CCE_USE_WGMMA
// Cs[i] = C[perm[p_begin + i]] for i < rows, 16 bytes a copy.
template <class T>
__global__ void gather_rows_kernel(const T *__restrict__ C, const int *__restrict__ perm, int64_t p_begin,
                                   int64_t rows, int64_t D, T *__restrict__ Cs) {
  const int64_t chunks = D * int64_t(sizeof(T)) / 16, total = rows * chunks;
  for (int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; q < total; q += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = q / chunks, c = q % chunks;
    reinterpret_cast<uint4 *>(Cs + r * D)[c] = reinterpret_cast<const uint4 *>(C + int64_t(perm[p_begin + r]) * D)[c];
  }
}

constexpr float kLog2e = 1.4426950408889634f;
// 2^x by the multifunction unit (what __expf uses after scaling by log2 e).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// A consumer thread's rows, as dz_row_terms takes them: row0 and row0 + 8 of the token block.
struct TmaRows {
  static constexpr int R = 2;
  int row0;
  __device__ __forceinline__ int row(int r) const { return row0 + 8 * r; }
};

__device__ __forceinline__ void consumers_sync() { asm volatile("bar.sync 1, 256;\n" ::: "memory"); }

template <class T>
__global__ void __launch_bounds__(kTThreads, 1)
    dz_tma_kernel(const __grid_constant__ CUtensorMap mapE, const __grid_constant__ CUtensorMap mapCs, DzParams p,
                  int vtc, int pairs, int pairs_per_block) {
  extern __shared__ __align__(16) char smem_raw[];
  const TmaRing ring(smem_raw);
  // [8][256] column sums: each consumer warp's own (over its 16 rows), added in warp order
  float *sColW = reinterpret_cast<float *>(ring.after());
  int *sKeep = reinterpret_cast<int *>(sColW + 8 * kTmaFN);  // [2][2] kept flags, by pair parity
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wg = warp >> 2;
  const int64_t b = blockIdx.x;  // token block
  const int tok0 = static_cast<int>(b) * kTmaFM;
  const int pr0 = blockIdx.y * pairs_per_block, pr1 = min(pr0 + pairs_per_block, pairs);
  const int KT = static_cast<int>((p.D + kTK - 1) / kTK);
  if (tid == 0) ring.init();
  if (tid < 4) sKeep[tid] = 0;
  __syncthreads();

  if (!tma_roles(ring, &mapE, &mapCs, tok0, pr0 * kTmaFN, pr1 - pr0, KT)) return;

  // consumers
  const int row0 = wg * 64 + (warp & 3) * 16 + (lane >> 2);
  const float gm = *p.gmax, inv = gm > 0.f ? 1.f / gm : 0.f;
  const T *bias = static_cast<const T *>(p.bias);
  // The rows' terms (dz_row_terms), and lse in log2 units for ex2.
  const TmaRows rows{row0};
  DzRowTerms<TmaRows> rw;
  dz_row_terms(rw, p, rows, tok0, inv);
  float lse2[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) lse2[r] = rw.lse[r] * kLog2e;
  const bool plain = !bias && !p.cw && !(p.softcap > 0.f);
  float acc[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) acc[i] = 0.f;

  int q = 0;
  for (int pr = pr0; pr < pr1; ++pr) {
    tma_consume<T>(ring, acc, q, KT, wg);
    const int buf = (pr - pr0) & 1;
    int *keepf = sKeep + buf * 2;
    const int64_t p0 = p.p_begin + int64_t(pr) * kTmaFN;  // sorted position of column 0

    // dy in place, and whether each half holds a significant entry.
    bool keep[2] = {false, false};
    const int pos0 = static_cast<int>(p0) + tcol(lane, 0), pend = static_cast<int>(p.p_end);
    if (plain) {  // no bias, class weights or softcap: the straight-line form
#pragma unroll
      for (int c = 0; c < 64; ++c) {
        const int pos = pos0 + tcol(0, c);
        const bool in = pos < pend;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float d = fmaf(rw.coef[r], fast_exp2(fmaf(tat(acc, r, c), kLog2e, -lse2[r])), -p.uniform);
          const bool is_t = pos == rw.tp[r];
          if (is_t) d -= rw.tc[r];
          const bool on = rw.act[r] && in;
          keep[c >> 5] |= on && (is_t || fabsf(d) >= p.eps);
          tat(acc, r, c) = on ? rw.w[r] * d : 0.f;
        }
      }
    } else {  // bias, class weights or softcap
#pragma unroll
      for (int c = 0; c < 64; ++c) {
        const int pos = pos0 + tcol(0, c);
        const bool in = pos < pend;
        float bv = 0.f, uv = p.uniform;
        if (in && (bias || p.cw)) {
          const int v = p.perm[pos];
          if (bias) bv = Elt<T>::load(bias[v]);
          if (p.cw) uv = p.uniform * p.cw[v];
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const float z = cap(tat(acc, r, c) + bv, p.softcap);
          const bool on = rw.act[r] && in;
          const bool is_t = pos == rw.tp[r];
          float d = rw.coef[r] * fast_exp2(fmaf(z, kLog2e, -lse2[r])) - uv;
          if (is_t) d -= rw.tc[r];
          keep[c >> 5] |= on && (is_t || fabsf(d) >= p.eps);
          float dy = 0.f;
          if (on) {
            dy = rw.w[r] * d;
            if (p.softcap > 0.f) {
              const float t = z / p.softcap;
              dy *= 1.f - t * t;
            }
          }
          tat(acc, r, c) = dy;
        }
      }
    }
    if (keep[0]) keepf[0] = 1;
    if (keep[1]) keepf[1] = 1;
    // Row sums of each half (a row lives in one quad of lanes), straight to S.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int j = 2 * pr + h;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float s = 0.f;
#pragma unroll
        for (int c = 32 * h; c < 32 * h + 32; ++c) s += tat(acc, r, c);
        s += __shfl_xor_sync(0xffffffffu, s, 1);
        s += __shfl_xor_sync(0xffffffffu, s, 2);
        if ((lane & 3) == 0 && j < vtc) p.S[(b * vtc + j) * kBM + row0 + 8 * r] = s;
      }
    }
    // Column sums: a column lives in the 8 quads of a warp (lanes xor 4, 8, 16). A
    // reduce-scatter over them (each step keeps half the columns and adds the partner's
    // other half: 56 shuffles instead of 192) leaves each lane 8 whole-warp column sums,
    // which go to the warp's row of shared memory (not atomic adds: the block adds the 8
    // warps' sums in warp order, so the bits do not depend on timing).
    {
      float v[64];
#pragma unroll
      for (int c = 0; c < 64; ++c) v[c] = tat(acc, 0, c) + tat(acc, 1, c);
      const bool b1 = lane & 4, b2 = lane & 8, b3 = lane & 16;
#pragma unroll
      for (int i = 0; i < 32; ++i) {
        const float mine = b1 ? v[i + 32] : v[i], other = b1 ? v[i] : v[i + 32];
        v[i] = mine + __shfl_xor_sync(0xffffffffu, other, 4);
      }
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const float mine = b2 ? v[i + 16] : v[i], other = b2 ? v[i] : v[i + 16];
        v[i] = mine + __shfl_xor_sync(0xffffffffu, other, 8);
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const float mine = b3 ? v[i + 8] : v[i], other = b3 ? v[i] : v[i + 8];
        v[i] = mine + __shfl_xor_sync(0xffffffffu, other, 16);
      }
      const int cb = (b1 ? 32 : 0) + (b2 ? 16 : 0) + (b3 ? 8 : 0);  // v[i] is entry cb + i's sum
#pragma unroll
      for (int i = 0; i < 8; ++i) sColW[warp * kTmaFN + tcol(lane, cb + i)] = v[i];
    }
    consumers_sync();
    {  // thread tid: column tid of the pair (tile 2 pr + tid / 128)
      const int h = tid >> 7, j = 2 * pr + h;
      float sv = 0.f;
#pragma unroll
      for (int w = 0; w < 8; ++w) sv += sColW[w * kTmaFN + tid];
      if (j < vtc) p.Tc[(b * vtc + j) * kBN + (tid & 127)] = sv;
      if (tid < 2) {
        sKeep[(buf ^ 1) * 2 + tid] = 0;
        const int jt = 2 * pr + tid;
        const bool kept = p.eps > 0.f ? keepf[tid] != 0 : true;
        if (jt < vtc) {
          p.kept[b * vtc + jt] = kept ? 1 : 0;
          if (kept && p.kept_count) atomicAdd(p.kept_count, 1ull);
        }
      }
    }
    // The kept tiles into the staging buffer, two values (4 bytes) a store; for the dense
    // products (p.ldz > 0) every tile, at its place in the chunk's row-major matrix.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int j = 2 * pr + h;
      if (j >= vtc || (p.eps > 0.f && keepf[h] == 0)) continue;
      const int64_t ld = p.ldz > 0 ? p.ldz : kBN;
      T *dst = p.ldz > 0 ? static_cast<T *>(p.dz) + b * kBM * p.ldz + int64_t(j) * kBN
                         : tile_ptr<T>(p.dz, p.dz2, p.split, b * vtc + j);
#pragma unroll
      for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int c = 32 * h; c < 32 * h + 32; c += 2) {
          union { uint32_t u; T x[2]; } pk;
          pk.x[0] = Elt<T>::store(tat(acc, r, c));
          pk.x[1] = Elt<T>::store(tat(acc, r, c + 1));
          *reinterpret_cast<uint32_t *>(dst + (row0 + 8 * r) * ld + tcol(lane, c) - 128 * h) = pk.u;
        }
    }
#pragma unroll
    for (int i = 0; i < 128; ++i) acc[i] = 0.f;
    consumers_sync();  // the next pair's flags are zeroed; this pair's flags and column sums are read
  }
}

constexpr size_t kDzTmaSmem = kTRingSmem + (8 * kTmaFN + 4) * sizeof(float);

template <class T>
static int launch_dz_tma_t(const DzParams &p, void *Cs, int dtype, int vtc, cudaStream_t s) {
  const int64_t rows = p.p_end - p.p_begin;
  const int64_t chunks16 = rows * p.D * int64_t(sizeof(T)) / 16;
  const void *crows = static_cast<const T *>(p.C) + p.p_begin * p.D;  // c_direct: in place
  if (!p.c_direct) {
    const int gb = static_cast<int>(std::min<int64_t>((chunks16 + 255) / 256, 4096));
    gather_rows_kernel<T><<<gb, 256, 0, s>>>(static_cast<const T *>(p.C), p.perm, p.p_begin, rows, p.D,
                                             static_cast<T *>(Cs));
    CCE_LAUNCHED("gather_rows_kernel");
    crows = Cs;
  }
  CUtensorMap mapE, mapCs;  // (encoding one is a host call of about a microsecond)
  CCE_TRY(encode_rows(&mapE, p.E, dtype, p.N, p.D, kTmaFM));
  CCE_TRY(encode_rows(&mapCs, crows, dtype, rows, p.D, kTmaFN));
  const int sms = sm_count();
  const int NT = static_cast<int>((p.N + kTmaFM - 1) / kTmaFM);
  const int pairs = (vtc + 1) / 2;
  // About one block per multiprocessor: a block's pairs share its ring, so the copies of the
  // next pair overlap the current pair's epilogue.
  int ppb = static_cast<int>((int64_t(NT) * pairs + sms - 1) / sms);
  ppb = std::max(1, std::min(ppb, pairs));
  const int splits = (pairs + ppb - 1) / ppb;
  CCE_CUDA(cudaFuncSetAttribute(dz_tma_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(kDzTmaSmem)));
  dz_tma_kernel<T><<<dim3(NT, splits), kTThreads, kDzTmaSmem, s>>>(mapE, mapCs, p, vtc, pairs, ppb);
  CCE_LAUNCHED("dz_tma_kernel");
  return 0;
}

bool tma_dz_usable(int dtype) { return dtype != CCE_F32 && !std::getenv("CCE_DZ_CPASYNC") && tma_device(); }

int launch_dz_tma(const DzParams &p, void *Cs, int dtype, int vtc, cudaStream_t s) {
  return dtype == CCE_BF16 ? launch_dz_tma_t<__nv_bfloat16>(p, Cs, dtype, vtc, s)
                           : launch_dz_tma_t<__half>(p, Cs, dtype, vtc, s);
}
#else
bool tma_dz_usable(int) { return false; }
int launch_dz_tma(const DzParams &, void *, int, int, cudaStream_t) {
  return fail(CCE_ERR_CUDA, "the bulk-copy dz stage needs the sm_90a build");
}
#endif

}  // namespace cce
