"""Other implementations of linear cross-entropy behind the conformance suite's signature
(cce_swift.conformance), for the GPU runs in Docs/CONFORMANCE.md:

    PYTHONPATH=python/benchmarks python -m cce_swift.conformance peers:apple_cce --device cuda

Each adapter passes the options through to the implementation's own arguments and raises
NotImplementedError for an option the implementation does not have (the suite then reports
the case as "unsupported"); it adds nothing to the computation except where its docstring says
so (shift as slicing for implementations that have no shift; apple's z-loss from its returned
lse, as apple's README describes).

    apple_cce, apple_cce_exact   apple/ml-cross-entropy, cut_cross_entropy.linear_cross_entropy,
                                 impl="cce" / "cce_exact" (Triton)
    liger                        Liger Kernel's liger_fused_linear_cross_entropy (Triton)
    torch_compile                torch.compile of F.cross_entropy(F.linear(e, c, bias).float(), ...)
    cce_cuda                     this project's CUDA library through cce_swift (CUDA tensors)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _shifted(e, targets, shift):
    """apple's shift: row j of a sequence is paired with target j + shift."""
    if not shift:
        return e, targets
    return e[..., :-shift, :], targets[..., shift:]


def _weighted_reduce(loss, tokens_w, reduction, shape):
    if reduction == "none":
        return loss.reshape(shape)
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / tokens_w.sum()


# ---- apple/ml-cross-entropy -------------------------------------------------------------------

def _apple(impl, e, c, targets, bias=None, ignore_index=-100, softcap=None, reduction="mean", shift=0,
           label_smoothing=0.0, z_loss=0.0, weight=None, filter_eps="auto", return_lse=False):
    from cut_cross_entropy import linear_cross_entropy

    if label_smoothing:
        raise NotImplementedError("label_smoothing: apple/ml-cross-entropy has no label smoothing")
    if weight is not None:
        raise NotImplementedError("weight: apple/ml-cross-entropy has no per-class weight")
    kw = dict(bias=bias, ignore_index=ignore_index, softcap=softcap, shift=shift, impl=impl)
    if impl == "cce":
        kw["filter_eps"] = filter_eps
    if not z_loss:
        return linear_cross_entropy(e, c, targets, reduction=reduction, **kw)
    # z-loss as apple's README has it: from the returned lse (differentiable), per token.
    loss, lse = linear_cross_entropy(e, c, targets, reduction="none", return_lse=True, **kw)
    t = targets[..., shift:] if shift else targets
    valid = (t != ignore_index).to(loss.dtype)
    per = loss + z_loss * lse.float() ** 2 * valid
    return _weighted_reduce(per.reshape(-1), valid.reshape(-1), reduction, t.shape)


def apple_cce(e, c, targets, **kw):
    """apple/ml-cross-entropy, impl="cce" (filtered gradients)."""
    return _apple("cce", e, c, targets, **kw)


def apple_cce_exact(e, c, targets, **kw):
    """apple/ml-cross-entropy, impl="cce_exact" (nothing filtered, float32 accumulation)."""
    kw.pop("filter_eps", None)
    return _apple("cce_exact", e, c, targets, **kw)


# ---- Liger Kernel -----------------------------------------------------------------------------

def liger(e, c, targets, bias=None, ignore_index=-100, softcap=None, reduction="mean", shift=0,
          label_smoothing=0.0, z_loss=0.0, weight=None, filter_eps="auto", return_lse=False):
    """liger_fused_linear_cross_entropy(input (BT, H), weight (V, H), target, bias, ce_weight,
    ignore_index, lse_square_scale, label_smoothing, reduction, softcap). Shift is done here by
    slicing (Liger has none); filter_eps does not apply (Liger filters nothing)."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    e, t = _shifted(e, targets, shift)
    out = liger_fused_linear_cross_entropy(e.reshape(-1, e.shape[-1]), c, t.reshape(-1), bias=bias, ce_weight=weight,
                                           ignore_index=ignore_index, lse_square_scale=z_loss,
                                           label_smoothing=label_smoothing, reduction=reduction, softcap=softcap)
    return out.reshape(t.shape) if reduction == "none" else out


# ---- torch.compile ----------------------------------------------------------------------------

def _materialized(e2, c, bias, t, weight, ignore_index: int, softcap, label_smoothing: float, z_loss: float,
                  reduction: str):
    z = F.linear(e2, c, bias).float()
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    w = None if weight is None else weight.float()
    loss = F.cross_entropy(z, t, weight=w, ignore_index=ignore_index, label_smoothing=label_smoothing,
                           reduction="none")
    active = t != ignore_index
    wt = active.float() if w is None else torch.where(active, w[t.clamp(min=0)], 0.0)
    if z_loss:
        loss = loss + z_loss * wt * torch.logsumexp(z, -1) ** 2
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / wt.sum()


_compiled = None


def torch_compile(e, c, targets, bias=None, ignore_index=-100, softcap=None, reduction="mean", shift=0,
                  label_smoothing=0.0, z_loss=0.0, weight=None, filter_eps="auto", return_lse=False):
    """torch.compile of F.cross_entropy(F.linear(e, c, bias).float(), t, weight, label_smoothing)
    with the z-loss term z_loss * w_t * logsumexp(z)^2 (F.cross_entropy has none) and PyTorch's
    weighted mean; shift by slicing. The logits are materialized (in the inputs' dtype, then
    float32), as a user of PyTorch would write it."""
    global _compiled
    if _compiled is None:
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = 512  # every case compiled, none falls back to eager
        if hasattr(torch._dynamo.config, "recompile_limit"):
            torch._dynamo.config.recompile_limit = 512
        _compiled = torch.compile(_materialized)
    e, t = _shifted(e, targets, shift)
    out = _compiled(e.reshape(-1, e.shape[-1]), c, bias, t.reshape(-1), weight, ignore_index, softcap,
                    float(label_smoothing), float(z_loss), reduction)
    return out.reshape(t.shape) if reduction == "none" else out


# ---- this project's CUDA library ---------------------------------------------------------------

def cce_cuda(e, c, targets, **kw):
    """cce_swift.linear_cross_entropy on CUDA tensors: the CUDA library (cce_forward(_weighted) /
    cce_backward(_weighted)), refusing to run on anything but CUDA tensors."""
    import cce_swift

    if not e.is_cuda:
        raise RuntimeError("cce_cuda runs on CUDA tensors (--device cuda)")
    return cce_swift.linear_cross_entropy(e, c, targets, **kw)
