"""cce_swift: the Swift package's CPU Cut Cross-Entropy engine for NumPy and PyTorch.

    import torch
    from cce_swift import linear_cross_entropy
    loss = linear_cross_entropy(hidden, head.weight, labels, shift=1)   # like F.cross_entropy(hidden @ W.T, ...)
    loss.backward()

Arguments have apple/ml-cross-entropy's names, order and meanings (e, c, targets, bias,
ignore_index, softcap, reduction, shift, return_lse, filter_eps, accum_e_fp32, accum_c_fp32,
filter_e_grad, filter_c_grad, impl, vocab_parallel_options); label_smoothing and weight are PyTorch's
(F.cross_entropy), z_loss adds z_loss·lse² per token, and mode picks the engine's accumulation
("default", "kahan", "kahan-full-e", "kahan-full-c", "exact"; apple's impl names "cce",
"cce_kahan_full_e", "cce_kahan_full_c", "cce_exact" too). Docs/PYTHON.md has the details.
"""
from __future__ import annotations

from ._core import LinearCrossEntropyImpl
from ._lib import CCEError, CCERuntimeError, CCEValueError
from .compare import CompareReport, TensorComparison, compare

__all__ = ["linear_cross_entropy", "LinearCrossEntropy", "LinearCrossEntropyImpl", "reference", "compare",
           "CompareReport", "TensorComparison", "Gradients", "VocabParallelOptions",
           "CCEError", "CCEValueError", "CCERuntimeError", "library_path", "release_scratch"]
__version__ = "0.1.0"


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def linear_cross_entropy(e, c, targets, bias=None, ignore_index=-100, softcap=None, reduction="mean", shift=0,
                         return_lse=False, filter_eps="auto", accum_e_fp32=False, accum_c_fp32=False,
                         filter_e_grad=True, filter_c_grad=True, impl="cce", vocab_parallel_options=None, *,
                         label_smoothing=0.0, z_loss=0.0, weight=None, mode=None, filter_correction=True,
                         sort_vocab=True, threads=None, check_finite=False, saved_logits_per_row=None,
                         allow_copy=True, return_grads=False, grad_output=None, grad_dtype=None):
    """Cross-entropy of the logits e @ c.T (+ bias) against targets, without materializing them.

    e (..., D), c (V, D), targets (...) integers in [0, V) or ignore_index, bias (V) optional,
    weight (V) optional (PyTorch's per-class weight: the mean is then weighted).
    torch tensors: a differentiable loss (gradients for e, c, bias in their dtypes); NumPy
    arrays: the loss, and with return_grads=True also a Gradients(e, c, bias) of the reduced
    loss times grad_output (default 1), float32 (float64 in exact mode; grad_dtype="input" for
    each input's dtype). reduction "none" returns per-position losses of shape
    targets[..., shift:]; return_lse adds the log-sum-exp in that shape (0 where no loss).
    The loss is float32 (float64 in exact mode).

    The positional arguments are apple's, in its order, up to vocab_parallel_options; impl
    (a name or apple's LinearCrossEntropyImpl), accum_e_fp32, accum_c_fp32, filter_e_grad and
    filter_c_grad map onto mode (this package's name for the variant: "default", "kahan",
    "kahan-full-e", "kahan-full-c", "exact"; pass one or the other). The engine accumulates in
    Float32 always, so accum_*_fp32 gives Kahan-compensated gradients; impl="cce_exact" is the
    Float64 exact mode; impl="torch_compile" is refused (Docs/PYTHON.md, "From apple's API").

    Options beyond apple's (keyword-only): label_smoothing, z_loss, weight, mode,
    filter_correction (add the first-order part of filtered gradient segments back to dE, and
    their mass to dbias), sort_vocab, threads (None: every CPU), check_finite,
    saved_logits_per_row (logits the fused forward keeps a row for its backward, 0...65536,
    0 off; None: 2048), allow_copy (False: raise instead of copying a non-contiguous input).
    Bad input raises ValueError or TypeError with the engine's message (CCEValueError has the
    C status code).

    vocab_parallel_options: a VocabParallelOptions(start, stop, group) as apple's (torch tensors
    on the CPU, torch.distributed initialized), or with NumPy arrays VocabParallelOptions(start,
    stop, gather=fn) (fn: this rank's 1-D array to every rank's, mpi4py's comm.allgather say);
    c and bias hold this rank's classes start ..< stop, e, targets and weight are the same on
    every rank, and every rank gets the whole vocabulary's loss (and lse), its shard's
    gradients for c and bias, and e's gradient summed over the ranks in rank order
    (Docs/PYTHON.md, "Vocabulary parallel")."""
    from ._core import apple_options

    mode, filter_eps = apple_options(mode, impl, accum_e_fp32, accum_c_fp32, filter_e_grad, filter_c_grad, filter_eps)
    options = dict(ignore_index=ignore_index, softcap=softcap, label_smoothing=label_smoothing, z_loss=z_loss,
                   filter_eps=filter_eps, filter_correction=filter_correction, sort_vocab=sort_vocab, threads=threads,
                   check_finite=check_finite, saved_logits_per_row=saved_logits_per_row)
    if _is_torch(e) or _is_torch(c):
        from . import _torch

        _torch.refuse_dtensors(e=e, c=c, targets=targets, bias=bias)
        e, c, bias = _torch.autocast(e, c, bias)   # inside torch.autocast: its dtype, as a matrix product
    if vocab_parallel_options is not None:
        if not (_is_torch(e) or _is_torch(c)):
            from . import _shards

            return _shards.run_numpy(e, c, targets, bias, weight, vocab_parallel_options, reduction=reduction,
                                     shift=shift, mode=mode, return_lse=return_lse, return_grads=return_grads,
                                     grad_output=grad_output, grad_dtype=grad_dtype, allow_copy=allow_copy, **options)
        if return_grads or grad_output is not None or grad_dtype is not None:
            raise TypeError("return_grads, grad_output and grad_dtype are for NumPy arrays; "
                            "with torch tensors use loss.backward() (autograd)")
        from . import _vocab_parallel

        return _vocab_parallel.run(e, c, targets, bias, weight, vocab_parallel_options, reduction=reduction,
                                   shift=shift, mode=mode, return_lse=return_lse, allow_copy=allow_copy, **options)
    if _is_torch(e) or _is_torch(c):
        if return_grads or grad_output is not None or grad_dtype is not None:
            raise TypeError("return_grads, grad_output and grad_dtype are for NumPy arrays; "
                            "with torch tensors use loss.backward() (autograd)")
        return _torch.run(e, c, targets, bias, weight, reduction=reduction, shift=shift, mode=mode,
                          return_lse=return_lse, allow_copy=allow_copy, **options)
    from . import _numpy

    return _numpy.run(e, c, targets, bias, weight, reduction=reduction, shift=shift, mode=mode, return_lse=return_lse,
                      return_grads=return_grads, grad_output=grad_output, grad_dtype=grad_dtype,
                      allow_copy=allow_copy, **options)


def reference(e, c, targets, bias=None, weight=None, *, ignore_index=-100, softcap=None, reduction="mean", shift=0,
              label_smoothing=0.0, z_loss=0.0, grad_output=None, threads=None) -> dict:
    """The Float64 reference (the engine's exact mode: Float64 tiles and sums, no filtering),
    as `cce reference` writes it: a dict of float64 NumPy arrays loss, lse, dE, dC and dBias
    (with a bias). loss is 0-d for mean and sum and has the targets' shape for none; lse has
    the targets' shape with NaN where a position has no loss; the gradients are those of the
    reduced loss (for none, of the sum, unless grad_output gives one value per position).
    Accepts NumPy arrays or torch tensors."""
    from . import _numpy

    return _numpy.reference(e, c, targets, bias, weight, ignore_index=ignore_index, softcap=softcap,
                            reduction=reduction, shift=shift, label_smoothing=label_smoothing, z_loss=z_loss,
                            grad_output=grad_output, threads=threads)


def library_path() -> str:
    """Where libcce_cpu was loaded from."""
    from . import _lib

    return _lib.lib().path


def release_scratch() -> int:
    """Frees the Float32 scratch the engine keeps between calls for gradients that are not
    float32 (bf16, f16 tensors: 4·(N·D + V·D) bytes of address space at most, the largest
    call's, of which only the dC rows the calls have written take memory; kept so that the
    next call does not page-fault them in again). Returns the bytes of address space freed.
    Called after every step it holds no memory between steps, for the page faults of each
    call's rows (11% of a bf16 call at N = 1024, D = 1024, V = 128256 on two Zen 3 cores)."""
    from . import _lib

    return _lib.release_scratch()


def __getattr__(name):
    if name == "VocabParallelOptions":
        from ._shards import VocabParallelOptions

        return VocabParallelOptions
    if name == "LinearCrossEntropy":   # needs torch
        from ._torch import LinearCrossEntropy

        return LinearCrossEntropy
    if name == "Gradients":
        from ._numpy import Gradients

        return Gradients
    raise AttributeError(name)
