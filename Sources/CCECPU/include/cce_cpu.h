/*
 * cce_cpu.h — Cut Cross-Entropy on the CPU (this Swift package's engine) behind a C ABI.
 *
 * The library: libcce_cpu.so (libcce_cpu.dylib on macOS), built from the repository root by
 *     swift build -c release --product cce_cpu          (.build/release/libcce_cpu.so)
 * with the target CPU named as README.md says (-target-cpu native; CCE_TARGET_CPU overrides).
 * This header lives in Sources/CCECPU/include/; the Python package (python/) ships a copy of both.
 *
 * It mirrors cuda/cce_cuda.h, so that one binding drives both engines: the same element-type
 * codes (F32 0, F16 1, BF16 2), reduction codes (NONE 0, SUM 1, MEAN 2), status codes 0 and 1,
 * a per-thread last-error message, and the options fields that mean the same have the same
 * names and order (ignore_index, reduction, shift, batch, softcap, label_smoothing, z_loss,
 * filter_eps, sort_vocab). Differences from cce_cuda.h:
 *   - every name has the prefix cce_cpu_ / CCE_CPU_ (both headers can be included together);
 *   - softcap, label_smoothing, z_loss and filter_eps are double (the exact mode is a Float64
 *     reference: α = 0.1 must be 0.1), and ε is given explicitly: filter_eps_mode AUTO / NONE /
 *     VALUE plus the value in filter_eps (cce_cuda.h: one float, < 0 auto, 0 off);
 *   - CPU-only fields: filter_correction, mode, threads, check_finite, saved_logits_per_row;
 *     no lean_memory or dc_chunk_rows (GPU memory knobs);
 *   - E, C and the bias each have their own element type, and the per-class weight (V float32,
 *     PyTorch's `weight`) is an argument of every call (cce_cuda.h: of cce_forward_weighted and
 *     cce_backward_weighted, at the same place, just before the options, in device memory);
 *   - host memory, no workspace, no stream: every call is synchronous;
 *   - loss and lse are double, lse is per target position (NaN where no row is paired or the
 *     target is ignored), the backward keeps its O(N) state in an opaque handle, and
 *     gradients come back in a type chosen per output (F32, F16, BF16 or F64);
 *   - more status codes: one per kind of bad input (the Swift API's CCEError cases).
 *
 * Mathematics (row i of E paired with target t, classifier C, optional bias b):
 *   y_iv  = C_v . E_i + b_v;   z_iv = s tanh(y_iv / s) if softcap s > 0, else y_iv
 *   lse_i = log sum_v exp(z_iv)
 *   loss_i = lse_i - (1 - a) z_it - (a / V) sum_v z_iv + zl lse_i^2
 * a = label smoothing (PyTorch's definition), zl = z-loss. With per-class weights w (W = sum_v w_v):
 *   loss_i = w_t [(1 - a)(lse_i - z_it) + zl lse_i^2] + (a / V)(W lse_i - sum_v w_v z_iv)
 * which is F.cross_entropy(z, t, weight=w, label_smoothing=a) per token, the z-loss weighted
 * like the token's own loss. MEAN divides the sum over tokens with a loss by their count, or
 * with weights by sum_i w_{t_i} (NaN when that is 0, as in PyTorch; the gradients are then 0).
 *
 * Shapes (host memory, row-major, contiguous):
 *   E (N, D), C (V, D), bias (V) or NULL, targets (N) int64, weight (V) float32 or NULL.
 * With shift k > 0 the N rows are B = opt->batch sequences of T = N / B rows (batch <= 0
 * means 1); row (b, j) is paired with target (b, j + k) for j < T - k; the first k targets of
 * each sequence and targets equal to ignore_index have no loss. Targets must be in [0, V) or
 * equal ignore_index.
 *
 * Every function returns CCE_CPU_OK (0) or a cce_cpu_status; cce_cpu_last_error() then
 * describes the failure (per thread, valid until this thread's next call). Nothing is written
 * to any output when a call fails, with one exception: cce_cpu_loss_and_gradients writes F32
 * gradients in place as it computes them, so when it fails with CCE_CPU_ERR_NON_FINITE (inputs
 * not checked beforehand) or CCE_CPU_ERR_OVERFLOW, its F32 gradient buffers hold partial values.
 * Calls are thread-safe; each uses opt->threads threads.
 *
 * Memory: E, C and the bias are read in place during the call (not copied; pointers aligned to
 * their element size, else they are copied), and nothing keeps a pointer to them after it
 * returns. Their pages keep the caller's NUMA policy (the Swift API interleaves its own copy of
 * C over the nodes). cce_cpu_loss_and_gradients computes gradients in Float32: F32 outputs
 * directly in the caller's buffers; F16, BF16 and F64 outputs (and gradients not asked for, and
 * dbias when NULL with a bias) in a Float32 scratch that the library keeps for the next call
 * (4 * (N*D + V*D) bytes of address space at most, the largest call's, of which only the dC rows
 * the calls write take memory); cce_cpu_release_scratch() frees it.
 */
#ifndef CCE_CPU_H
#define CCE_CPU_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 2: cce_cpu_options gained saved_logits_per_row (88 bytes; 80 in version 1).
 * 3: cce_cpu_backward_f64 and cce_cpu_loss_and_gradients_f64 (grad_loss as double).
 * 4: vocabulary-parallel calls over a caller's all-gather (cce_cpu_shard_forward,
 *    cce_cpu_shard_loss_and_gradients); nothing before them changed. */
#define CCE_CPU_ABI_VERSION 4

/* Storage types: inputs are F32, F16 or BF16; outputs (gradients) may also be F64. */
typedef enum cce_cpu_dtype {
  CCE_CPU_F32 = 0,
  CCE_CPU_F16 = 1,
  CCE_CPU_BF16 = 2,
  CCE_CPU_F64 = 3 /* outputs only */
} cce_cpu_dtype;

typedef enum cce_cpu_reduction {
  CCE_CPU_REDUCE_NONE = 0,
  CCE_CPU_REDUCE_SUM = 1,
  CCE_CPU_REDUCE_MEAN = 2 /* over targets that have a loss (weighted with class weights) */
} cce_cpu_reduction;

/* How gradients are filtered and accumulated (Docs/NUMERICS.md), as apple/ml-cross-entropy's impl. */
typedef enum cce_cpu_mode {
  CCE_CPU_MODE_DEFAULT = 0,      /* float32, filtered with ε (cce) */
  CCE_CPU_MODE_KAHAN = 1,        /* compensated dE and dC sums */
  CCE_CPU_MODE_KAHAN_FULL_E = 2, /* kahan, dE unfiltered (cce_kahan_full_e) */
  CCE_CPU_MODE_KAHAN_FULL_C = 3, /* kahan, dC unfiltered (cce_kahan_full_c) */
  CCE_CPU_MODE_EXACT = 4         /* float64 tiles and sums, nothing filtered (cce_exact) */
} cce_cpu_mode;

typedef enum cce_cpu_filter_eps_mode {
  CCE_CPU_EPS_AUTO = 0,  /* by element type: f32 2^-28, f16 2^-15, bf16 2^-12 (the lower precision of E, C) */
  CCE_CPU_EPS_NONE = 1,  /* no filtering */
  CCE_CPU_EPS_VALUE = 2  /* filter_eps (finite, >= 0) */
} cce_cpu_filter_eps_mode;

typedef enum cce_cpu_status {
  CCE_CPU_OK = 0,
  CCE_CPU_ERR_ARGUMENT = 1,        /* a null pointer, a negative size, an unknown element type, N not a multiple
                                      of batch, dbias without a bias */
  /* 2 and 3 are cce_cuda.h's WORKSPACE and CUDA errors; the CPU engine has neither. */
  CCE_CPU_ERR_SHAPE = 4,           /* shapes that disagree (e.g. V weights expected) */
  CCE_CPU_ERR_EMPTY = 5,           /* N, D or V is 0 */
  CCE_CPU_ERR_TARGET = 6,          /* a target outside [0, V) that is not ignore_index */
  CCE_CPU_ERR_NON_FINITE = 7,      /* NaN or infinity (weights always; E, C, bias with check_finite) */
  CCE_CPU_ERR_OPTION = 8,          /* an option outside its domain (an unknown reduction, mode or filter_eps_mode
                                      code too), a negative class weight */
  CCE_CPU_ERR_UPSTREAM = 9,        /* grad_loss does not fit the reduction */
  CCE_CPU_ERR_STATE = 10,          /* a backward state that does not fit its inputs */
  CCE_CPU_ERR_BACKEND = 11,        /* an optional engine could not be loaded or failed */
  CCE_CPU_ERR_INTERNAL = 12,       /* anything else (a bug: please report it) */
  CCE_CPU_ERR_OVERFLOW = 13        /* finite inputs overflowed the Float32 arithmetic: try mode exact */
} cce_cpu_status;

/* Field order and types are part of the ABI (80 bytes, natural alignment). */
typedef struct cce_cpu_options {
  int64_t ignore_index;      /* default -100 */
  int32_t reduction;         /* cce_cpu_reduction, default CCE_CPU_REDUCE_MEAN */
  int32_t shift;             /* k >= 0, default 0 */
  int64_t batch;             /* B for shift (N = B * T); <= 0 means 1 */
  double softcap;            /* s > 0; 0 = off (default) */
  double label_smoothing;    /* a in [0, 1], default 0 */
  double z_loss;             /* zl >= 0, default 0 */
  double filter_eps;         /* ε when filter_eps_mode == CCE_CPU_EPS_VALUE */
  int32_t sort_vocab;        /* 1 (default): sort the vocabulary by average logit for the backward */
  int32_t filter_eps_mode;   /* cce_cpu_filter_eps_mode, default CCE_CPU_EPS_AUTO */
  int32_t filter_correction; /* 1 (default): add the first-order part of filtered segments to dE */
  int32_t mode;              /* cce_cpu_mode, default CCE_CPU_MODE_DEFAULT */
  int32_t threads;           /* worker threads; 0 (default): every CPU this process may use */
  int32_t check_finite;      /* 1: check E, C and the bias for NaN and infinities; default 0 */
  int32_t saved_logits_per_row; /* fused call: logits its forward keeps a row for the backward
                                   (0...65536; 0 off), default 2048 (Swift: Options.savedLogitsPerRow) */
} cce_cpu_options;                /* 88 bytes (4 of them trailing padding) */

/* The forward's O(N) state, for cce_cpu_backward. */
typedef struct cce_cpu_state cce_cpu_state;

int cce_cpu_abi_version(void);
const char *cce_cpu_last_error(void);
void cce_cpu_default_options(cce_cpu_options *opt);

/* Forward: loss (1 value for MEAN and SUM; for NONE N values, one per target position, 0
 * where there is no loss), and when lse != NULL the log-sum-exp per target position (N).
 * When state != NULL, *state receives the forward's state for cce_cpu_backward (free it with
 * cce_cpu_state_free). e_dtype, c_dtype, bias_dtype: cce_cpu_dtype of E, C, bias (bias_dtype
 * is ignored without a bias). loss may be NULL. */
int cce_cpu_forward(const void *E, const void *C, const void *bias, const int64_t *targets,
                    int64_t N, int64_t D, int64_t V, int e_dtype, int c_dtype, int bias_dtype,
                    const float *weight, const cce_cpu_options *opt,
                    double *loss, double *lse, cce_cpu_state **state);

/* Backward from a forward's state: pass the same E, C and bias again. grad_loss: 1 value for
 * SUM and MEAN, N for NONE (one per target position); NULL: ones. dE (N, D), dC (V, D),
 * dbias (V, needs a bias) may each be NULL; each is written in its own *_dtype (F32, F16,
 * BF16 or F64). stats (nullable, 5 values): tiles, tiles skipped, row segments, row segments
 * kept, row segments never recomputed (fused call only). */
int cce_cpu_backward(const cce_cpu_state *state, const void *E, const void *C, const void *bias,
                     const float *grad_loss, void *dE, void *dC, void *dbias,
                     int dE_dtype, int dC_dtype, int dbias_dtype, int64_t *stats);

void cce_cpu_state_free(cce_cpu_state *state);

/* Forward and backward in one call (faster than the two: rows known negligible from the
 * forward are never recomputed). Arguments as in cce_cpu_forward and cce_cpu_backward. */
int cce_cpu_loss_and_gradients(const void *E, const void *C, const void *bias, const int64_t *targets,
                               int64_t N, int64_t D, int64_t V, int e_dtype, int c_dtype, int bias_dtype,
                               const float *weight, const cce_cpu_options *opt, const float *grad_loss,
                               double *loss, double *lse, void *dE, void *dC, void *dbias,
                               int dE_dtype, int dC_dtype, int dbias_dtype, int64_t *stats);

/* The same two calls with grad_loss as double: the exact mode (CCE_CPU_MODE_EXACT) computes in
 * Float64, and a float grad_loss would round its upstream gradient to Float32 first (a relative
 * 1e-9 to 3e-8 in every gradient for an upstream such as 0.7). In the other modes the engine
 * rounds each g_i to Float32 itself, so both entry points give the same results there when the
 * values are floats. */
int cce_cpu_backward_f64(const cce_cpu_state *state, const void *E, const void *C, const void *bias,
                         const double *grad_loss, void *dE, void *dC, void *dbias,
                         int dE_dtype, int dC_dtype, int dbias_dtype, int64_t *stats);
int cce_cpu_loss_and_gradients_f64(const void *E, const void *C, const void *bias, const int64_t *targets,
                                   int64_t N, int64_t D, int64_t V, int e_dtype, int c_dtype, int bias_dtype,
                                   const float *weight, const cce_cpu_options *opt, const double *grad_loss,
                                   double *loss, double *lse, void *dE, void *dC, void *dbias,
                                   int dE_dtype, int dC_dtype, int dbias_dtype, int64_t *stats);

/* Vocabulary-parallel calls (Docs/SCALING.md): P processes ("ranks") each hold a contiguous
 * shard of C's rows, classes shard_offset ..< shard_offset + shard_count of the whole V (and
 * the same entries of the bias); E, the targets, the options and the weight (V entries) are
 * the same on every rank. The shards, in rank order, must tile [0, V) (shard_count may be 0).
 * The library moves no bytes itself: `gather` is the caller's all-gather over the P ranks
 * (MPI_Allgather, torch.distributed.all_gather, ...). It is called with this rank's `count`
 * values of `dtype` (CCE_CPU_F32, or CCE_CPU_F64 for the exact mode's partials and for the
 * agreement below) at `mine` and must write every rank's `count` values, in rank order (this
 * rank's among them), to `all` (ranks * count values), then return 0; any other return
 * stops the call with CCE_CPU_ERR_BACKEND. Every rank calls it the same number of times with
 * the same counts, from the thread that made the call (never concurrently), so a
 * collective per call is right; `user` is passed through. The first call is an agreement:
 * each rank checks its inputs and the ranks compare N, D, V, the types, the options, the
 * shards, and fingerprints (64-bit FNV-1a) of E, the targets and the weight's values; when
 * any rank's check fails, every rank returns an error (the failing one its own, the others
 * CCE_CPU_ERR_STATE naming that rank), when they disagree every rank returns
 * CCE_CPU_ERR_STATE naming what differs, and no rank is left waiting.
 *
 * Forward: loss and lse as cce_cpu_forward, the whole vocabulary's, the same on every rank
 * (one gather of 2 or 3 values per token). *state (nullable) is this shard's: pass it to
 * cce_cpu_backward / _f64 with this rank's C and bias rows, and dC and dbias come back for
 * the shard's rows (shard_count x D, shard_count) and dE as this shard's part, which the
 * ranks sum (in rank order, for the same bits on every run). */
int cce_cpu_shard_forward(const void *E, const void *C, const void *bias, const int64_t *targets,
                          int64_t N, int64_t D, int64_t V, int64_t shard_offset, int64_t shard_count,
                          int64_t ranks, int e_dtype, int c_dtype, int bias_dtype, const float *weight,
                          const cce_cpu_options *opt, double *loss, double *lse, cce_cpu_state **state,
                          int (*gather)(const void *mine, int64_t count, int dtype, void *all, void *user),
                          void *user);

/* Forward and backward of a shard in one call (the fused path: the forward in chunks of
 * exchange_chunk active tokens, each chunk's partials gathered before its backward, so that
 * the rows the forward rules out are not recomputed; with P > 1 each chunk is preceded by a
 * gather of one Float32 a token that bounds the global LSE from below). exchange_chunk <= 0:
 * the library's default for opt->threads; every rank uses rank 0's. dE receives this shard's
 * part of dE (the ranks sum them), dC and dbias the shard's rows. */
int cce_cpu_shard_loss_and_gradients(const void *E, const void *C, const void *bias, const int64_t *targets,
                                     int64_t N, int64_t D, int64_t V, int64_t shard_offset, int64_t shard_count,
                                     int64_t ranks, int e_dtype, int c_dtype, int bias_dtype, const float *weight,
                                     const cce_cpu_options *opt, int64_t exchange_chunk, const double *grad_loss,
                                     double *loss, double *lse, void *dE, void *dC, void *dbias,
                                     int dE_dtype, int dC_dtype, int dbias_dtype, int64_t *stats,
                                     int (*gather)(const void *mine, int64_t count, int dtype, void *all, void *user),
                                     void *user);

/* Frees the Float32 gradient scratch kept between cce_cpu_loss_and_gradients calls (see
 * "Memory" above); returns the bytes freed (0 when none was kept). Thread-safe; a call running
 * at the same time keeps its own scratch, and the next call allocates one again. */
int64_t cce_cpu_release_scratch(void);

#ifdef __cplusplus
}
#endif

#endif /* CCE_CPU_H */
