/*
 * cce_cuda.h — Cut Cross-Entropy on NVIDIA GPUs, behind a C ABI.
 *
 * Mathematics (one row i of E, classifier C, optional bias b, target t_i):
 *   y_iv  = C_v . E_i + b_v                          (V logits, never stored whole)
 *   z_iv  = s * tanh(y_iv / s)   if softcap s > 0, else y_iv
 *   lse_i = log sum_v exp(z_iv)
 *   loss_i = lse_i - (1 - a) z_{i,t_i} - (a / V) sum_v z_iv + zl * lse_i^2
 * a = label smoothing (PyTorch's definition), zl = z-loss coefficient.
 * Rows whose target equals ignore_index contribute nothing.
 * With per-class weights w (V float32, PyTorch's `weight` of F.cross_entropy; W = sum_v w_v),
 * through cce_forward_weighted / cce_backward_weighted, as in cce_cpu.h:
 *   loss_i = w_t [(1 - a)(lse_i - z_it) + zl lse_i^2] + (a / V)(W lse_i - sum_v w_v z_iv)
 * (F.cross_entropy(z, t, weight=w, label_smoothing=a) per row, the z-loss weighted like the
 * row's own loss), and MEAN divides the sum by sum_i w_{t_i} over rows with a target (NaN when
 * that is 0, as in PyTorch; the gradients are then 0). Without weights (weight == NULL) this
 * is the formula above with every w_v = 1.
 *
 * Shapes (all row-major, contiguous, device memory):
 *   E (N, D), C (V, D), bias (V) or NULL, targets (N) int64,
 *   lse (N) float32, loss: (N) float32 for reduction NONE, else (1).
 *   dE (N, D), dC (V, D), dbias (V) in the input element type.
 * With shift k > 0 the N rows are B sequences of T = N / B rows; row (b, j) is paired
 * with target (b, j + k) for j < T - k and the last k rows of each sequence are ignored.
 *
 * Gradients are accumulated in float32 whatever the input type, without atomics. The
 * backward skips the two gradient products of (128 token x 128 vocabulary) tiles whose every
 * |dz / g| is below filter_eps (after sorting the vocabulary by average logit so that
 * significant entries share tiles) and adds, for each skipped tile, its first-order part
 * (the tile's row / column sums of dz times the mean of its C / E rows); dbias is exact.
 * filter_eps is used as given: the caller picks it (see cce_options).
 * While dE has not been finished the backward stages its tiles in the caller's dE buffer too,
 * so dE's contents are undefined until cce_backward's work completes.
 *
 * Every function returns 0 on success or a nonzero cce_status; cce_last_error() then
 * describes the failure (per host thread). All work is enqueued on `stream`
 * (a cudaStream_t, NULL for the default stream); nothing synchronizes unless stated.
 */
#ifndef CCE_CUDA_H
#define CCE_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum cce_dtype { CCE_F32 = 0, CCE_F16 = 1, CCE_BF16 = 2 } cce_dtype;

typedef enum cce_reduction {
  CCE_REDUCE_NONE = 0,
  CCE_REDUCE_SUM = 1,
  CCE_REDUCE_MEAN = 2 /* over rows whose target is not ignored */
} cce_reduction;

typedef enum cce_status {
  CCE_OK = 0,
  CCE_ERR_ARGUMENT = 1,  /* a null pointer, a bad shape, a misaligned buffer */
  CCE_ERR_WORKSPACE = 2, /* workspace smaller than the *_workspace_size answer */
  CCE_ERR_CUDA = 3       /* a CUDA runtime call or a kernel launch failed */
} cce_status;

/* Field order and types are part of the ABI (56 bytes, natural alignment). */
typedef struct cce_options {
  int64_t ignore_index;    /* default -100 */
  int32_t reduction;       /* cce_reduction, default CCE_REDUCE_MEAN */
  int32_t shift;           /* k >= 0, default 0 */
  int64_t batch;           /* B for shift (N = B * T); <= 0 means 1 */
  float softcap;           /* s; 0 = off */
  float label_smoothing;   /* a in [0, 1] */
  float z_loss;            /* zl >= 0 */
  float filter_eps;        /* the filter threshold, as resolved by the caller: > 0 skips tiles
                              whose every active |dz / g| is below it; 0 (default) turns
                              filtering off; negative or NaN is an argument error. The library
                              picks no value by element type: callers that want the usual one
                              pass f32 2^-28, f16 2^-15, bf16 2^-12. Label smoothing together
                              with softcap turns filtering off whatever the value. */
  int32_t sort_vocab;      /* 1 (default): sort the vocabulary by average logit in the backward */
  int32_t lean_memory;     /* 1 (default): keep the f32 dE accumulator inside dC's buffer */
  int64_t dc_chunk_rows;   /* sorted vocabulary rows per backward chunk (multiple of 128);
                              0 (default): automatic, about 24 MiB of staged gradient tiles */
} cce_options;

const char *cce_last_error(void);
void cce_default_options(cce_options *opt);

/* Bytes of device workspace that cce_forward needs. */
size_t cce_forward_workspace_size(int64_t N, int64_t D, int64_t V, int dtype,
                                  const cce_options *opt);

/* Forward: loss (and, when lse != NULL, the per-row log-sum-exp, needed by the backward). */
int cce_forward(const void *E, const void *C, const void *bias, const int64_t *targets,
                int64_t N, int64_t D, int64_t V, int dtype, const cce_options *opt,
                float *loss, float *lse, void *workspace, size_t workspace_bytes,
                void *stream);

/* Bytes of device workspace that cce_backward needs for the gradients asked for. */
size_t cce_backward_workspace_size(int64_t N, int64_t D, int64_t V, int dtype,
                                   const cce_options *opt, int want_dE, int want_dC,
                                   int want_dbias);

/* Backward. grad_loss (device, float32): one value for SUM/MEAN, N values for NONE.
 * lse: the forward's output. dE, dC, dbias may each be NULL (not computed).
 * stats (host, nullable): {tiles in the (token, vocabulary) plane, tiles not skipped};
 * asking for it synchronizes the stream. */
int cce_backward(const void *E, const void *C, const void *bias, const int64_t *targets,
                 int64_t N, int64_t D, int64_t V, int dtype, const cce_options *opt,
                 const float *lse, const float *grad_loss, void *dE, void *dC, void *dbias,
                 void *workspace, size_t workspace_bytes, int64_t *stats, void *stream);

/* Per-class weights (the `weight` of cce_cpu.h's cce_cpu_forward): weight is NULL or V float32
 * values in DEVICE memory, finite and >= 0; the library does not read them back to check them
 * (that would synchronize the stream): the caller checks (the Python binding does). A NULL
 * weight makes these exactly cce_forward / cce_backward. Pass the same weight to both calls.
 * The workspace sizes are those of cce_forward_workspace_size / cce_backward_workspace_size
 * (they always include the few per-row values the weights need). */
int cce_forward_weighted(const void *E, const void *C, const void *bias, const int64_t *targets,
                         int64_t N, int64_t D, int64_t V, int dtype, const float *weight,
                         const cce_options *opt, float *loss, float *lse, void *workspace,
                         size_t workspace_bytes, void *stream);
int cce_backward_weighted(const void *E, const void *C, const void *bias, const int64_t *targets,
                          int64_t N, int64_t D, int64_t V, int dtype, const float *weight,
                          const cce_options *opt, const float *lse, const float *grad_loss,
                          void *dE, void *dC, void *dbias, void *workspace,
                          size_t workspace_bytes, int64_t *stats, void *stream);

/* ---- host-memory convenience (host.cu) ------------------------------------------------ */

typedef struct cce_host_report {
  double forward_ms;        /* median over `repeats` timed runs of cce_forward (CUDA events), 0 if repeats == 0 */
  double backward_ms;       /* median of cce_backward alone; 0 when no gradient asked */
  double loss_backward_ms;  /* median of forward + backward back to back */
  double peak_device_mib;   /* peak device memory beyond the inputs during one forward+backward (workspace + outputs) */
  double tiles_kept;        /* fraction of backward tiles not skipped, -1 if unknown */
  char device_name[128];
} cce_host_report;

/* Host-memory convenience for callers without CUDA headers (the Swift tool loads it with dlopen).
 * E (N*D), C (V*D), bias (V or NULL) are HOST arrays of `dtype`; targets (N) host int64.
 * Copies the inputs to the GPU, runs cce_forward and, when any of dE/dC/dbias is non-NULL, cce_backward
 * with grad_loss = 1 (for NONE: N ones, i.e. gradients of the summed loss), copies back:
 * loss (host float32: N values for CCE_REDUCE_NONE, else 1), lse (host float32 N, or NULL),
 * dE (N*D), dC (V*D), dbias (V) as HOST float32 (converted from the kernel's typed outputs), each nullable.
 * repeats > 0 additionally times the calls (warm-up first) and fills `report` (nullable).
 * Frees everything it allocated; returns 0 or a cce_status, with cce_last_error() set.
 *
 * Details: runs on the current CUDA device, on a stream of its own, and returns after
 * synchronizing. loss may be NULL too. lse is written for every row, ignored or unpaired rows
 * included (it is the plain log-sum-exp of that row's logits, never NaN). dbias may be asked for
 * without a bias (the gradient with respect to a zero bias). peak_device_mib counts the device
 * buffers allocated beyond E, C, bias and targets: loss, lse, the upstream gradient, the typed
 * dE / dC / dbias and one workspace of max(forward, backward) size. `report`, when given, is
 * filled also with repeats == 0 (times 0, the rest measured on the run that is returned);
 * tiles_kept comes from that run's backward statistics. With no gradient asked,
 * loss_backward_ms equals forward_ms. */
int cce_host_run(const void *E, const void *C, const void *bias, const int64_t *targets,
                 int64_t N, int64_t D, int64_t V, int dtype, const cce_options *opt,
                 float *loss, float *lse, float *dE, float *dC, float *dbias,
                 int repeats, cce_host_report *report);

/* cce_host_run with per-class weights (cce_forward_weighted / cce_backward_weighted): weight is
 * NULL (then exactly cce_host_run) or V float32 values in HOST memory, each finite and >= 0
 * (checked here: CCE_ERR_ARGUMENT naming the first that is not), copied to the GPU with the inputs. */
int cce_host_run_weighted(const void *E, const void *C, const void *bias, const int64_t *targets,
                          int64_t N, int64_t D, int64_t V, int dtype, const float *weight,
                          const cce_options *opt, float *loss, float *lse, float *dE, float *dC,
                          float *dbias, int repeats, cce_host_report *report);

/* ---- the functions' types, for callers that load the library at run time ---------------
 * (dlopen / dlsym: the Swift package imports this header through include/module.modulemap and
 * types the symbols it looks up with these; prep.cu checks that they match the declarations). */
typedef const char *(*cce_last_error_fn)(void);
typedef void (*cce_default_options_fn)(cce_options *opt);
typedef size_t (*cce_forward_workspace_size_fn)(int64_t N, int64_t D, int64_t V, int dtype,
                                                const cce_options *opt);
typedef int (*cce_forward_fn)(const void *E, const void *C, const void *bias,
                              const int64_t *targets, int64_t N, int64_t D, int64_t V, int dtype,
                              const cce_options *opt, float *loss, float *lse, void *workspace,
                              size_t workspace_bytes, void *stream);
typedef size_t (*cce_backward_workspace_size_fn)(int64_t N, int64_t D, int64_t V, int dtype,
                                                 const cce_options *opt, int want_dE,
                                                 int want_dC, int want_dbias);
typedef int (*cce_backward_fn)(const void *E, const void *C, const void *bias,
                               const int64_t *targets, int64_t N, int64_t D, int64_t V, int dtype,
                               const cce_options *opt, const float *lse, const float *grad_loss,
                               void *dE, void *dC, void *dbias, void *workspace,
                               size_t workspace_bytes, int64_t *stats, void *stream);
typedef int (*cce_forward_weighted_fn)(const void *E, const void *C, const void *bias,
                                       const int64_t *targets, int64_t N, int64_t D, int64_t V,
                                       int dtype, const float *weight, const cce_options *opt,
                                       float *loss, float *lse, void *workspace,
                                       size_t workspace_bytes, void *stream);
typedef int (*cce_backward_weighted_fn)(const void *E, const void *C, const void *bias,
                                        const int64_t *targets, int64_t N, int64_t D, int64_t V,
                                        int dtype, const float *weight, const cce_options *opt,
                                        const float *lse, const float *grad_loss, void *dE,
                                        void *dC, void *dbias, void *workspace,
                                        size_t workspace_bytes, int64_t *stats, void *stream);
typedef int (*cce_host_run_fn)(const void *E, const void *C, const void *bias,
                               const int64_t *targets, int64_t N, int64_t D, int64_t V, int dtype,
                               const cce_options *opt, float *loss, float *lse, float *dE,
                               float *dC, float *dbias, int repeats, cce_host_report *report);
typedef int (*cce_host_run_weighted_fn)(const void *E, const void *C, const void *bias,
                                        const int64_t *targets, int64_t N, int64_t D, int64_t V,
                                        int dtype, const float *weight, const cce_options *opt,
                                        float *loss, float *lse, float *dE, float *dC, float *dbias,
                                        int repeats, cce_host_report *report);

#ifdef __cplusplus
}
#endif

#endif /* CCE_CUDA_H */
