"""Vocabulary-parallel CCE over torch.distributed (any CPU backend: gloo, mpi).

Each rank of a process group holds a contiguous shard of the classifier's rows, classes
start ..< stop of V (and the same entries of the bias); e, the targets, the options and the
class weights (V entries) are the same on every rank. The engine's shard calls (cce_cpu.h:
cce_cpu_shard_forward, cce_cpu_shard_loss_and_gradients) compute each shard's per-token
partials (its log-sum-exp, its target logit), gather every rank's through the binding's
callback (_shards.EngineGather over torch.distributed.all_gather, torch_gather below) and
combine them in rank order, so every rank gets the whole
vocabulary's loss and lse; then each computes its shard's dC and dbias and its part of dE,
which the ranks sum in rank order (the same bits on every rank and every run). What moves per
step: 2 or 3 values per token in the forward (plus one per token bounding the LSE with P > 1),
and dE's N x D floats in the backward; never anything of size N x V. Docs/PYTHON.md, "Vocabulary
parallel", has an example and the measurements.
"""
from __future__ import annotations

import ctypes

import torch
import torch.distributed as dist

from . import _core, _lib, _torch
from ._shards import EngineGather, Gatherer, VocabParallelOptions, agree, check_library, check_shard, ordered_sum


def torch_gather(group) -> Gatherer:
    """torch.distributed.all_gather over `group` as a Gatherer (CPU tensors sharing the arrays'
    memory)."""
    world = dist.get_world_size(group)

    def gather(mine):
        src = torch.from_numpy(mine)
        parts = [torch.empty_like(src) for _ in range(world)]
        dist.all_gather(parts, src, group=group)
        return [p.numpy() for p in parts]

    return Gatherer(gather, ranks=world)


class _ShardCall:
    """One rank's call: layout of the whole vocabulary, the shard, options and codes."""

    def __init__(self, e, c, bias, targets, weight, shift, mode, reduction, options, vp: VocabParallelOptions):
        rows = check_shard(vp, c.shape, None if bias is None else bias.shape, e.shape)
        # Every check that needs no V, here on this rank (agree() compares the weights' lengths).
        batch = _core.layout(e.shape, (rows, e.shape[-1]), targets.shape, None, None, shift).batch
        self.opt = _core.make_options(reduction=reduction, shift=shift, mode=mode, batch=batch, **options)
        self.vp = vp
        self.gatherer = torch_gather(vp.group)
        self.world = self.gatherer.ranks
        self.vocab = None   # set by agree()
        self.shape = (e.shape, targets.shape, None if weight is None else weight.shape, shift)
        self.reduction = reduction
        self.exact = mode == "exact"
        self.codes = (_torch.dtype_code(e, "e"), _torch.dtype_code(c, "c"),
                      0 if bias is None else _torch.dtype_code(bias, "bias"))
        self.out_dtype = torch.float64 if self.exact else torch.float32
        self.sum_dtype = self.out_dtype   # dE's parts, summed over the ranks
        self.gather = EngineGather(self.gatherer)

    def with_vocabulary(self, vocab: int) -> "_ShardCall":
        """The layout once the ranks have agreed on V (and on the weights' length: nothing here
        can fail on one rank alone)."""
        e_shape, t_shape, w_shape, shift = self.shape
        self.vocab = vocab
        self.lay = _core.layout(e_shape, (vocab, e_shape[-1]), t_shape, None, w_shape, shift)
        return self

    loss_buffers = _torch._Call.loss_buffers
    outputs = _torch._Call.outputs

    def head(self, e, c, bias, targets, weight):
        lay, vp = self.lay, self.vp
        return (*_torch.ptrs(e, c, bias, targets), lay.n, lay.d, self.vocab, int(vp.start), int(vp.stop) - int(vp.start),
                self.world, *self.codes, _torch.ptr(weight), ctypes.byref(self.opt))

    def forward_only(self, e, c, bias, targets, weight, return_lse, state=False):
        loss, lse = self.loss_buffers(return_lse)
        handle = ctypes.c_void_p() if state else None
        status = _lib.lib().cce_cpu_shard_forward(*self.head(e, c, bias, targets, weight), _torch.ptr(loss),
                                                  _torch.ptr(lse), None if handle is None else ctypes.byref(handle),
                                                  self.gather.callback, None)
        self.gather.check(status)
        return loss, lse, (_lib.State(handle) if state else None)

    def fused(self, e, c, bias, targets, weight, need, return_lse, upstream=None):
        """loss, lse and (dE, dC, dB); `upstream`: reduction none's per-position upstream
        gradient as float64 rows (_torch.upstream_rows; None: ones)."""
        loss, lse = self.loss_buffers(return_lse)
        # dE in float32 (float64 in the exact mode) whatever e's dtype: the ranks' parts are
        # summed before one rounding.
        dE = torch.empty(e.shape, dtype=self.sum_dtype) if need[0] else None
        dC = torch.empty_like(c) if need[1] else None
        dB = torch.empty_like(bias) if need[2] and bias is not None else None
        chunk = 0 if self.vp.exchange_chunk is None else int(self.vp.exchange_chunk)
        status = _lib.lib().cce_cpu_shard_loss_and_gradients(
            *self.head(e, c, bias, targets, weight), chunk, _torch.ptr(upstream), _torch.ptr(loss), _torch.ptr(lse),
            *_torch.ptrs(dE, dC, dB), *_torch.grad_codes(dE, dC, dB), None, self.gather.callback, None)
        self.gather.check(status)
        return loss, lse, (self.finish_dE(dE, e), dC, dB)

    def backward(self, state, e, c, bias, full, need):
        """This shard's dC and dB and the whole dE from a forward's state. Every rank must take
        part in dE's sum, so each computes its part whether or not it needs dE."""
        dE = torch.empty(e.shape, dtype=self.sum_dtype)
        dC = torch.empty_like(c) if need[1] else None
        dB = torch.empty_like(bias) if need[2] and bias is not None else None
        _lib.backward(state.handle, *_torch.ptrs(e, c, bias, full, dE, dC, dB), *_torch.grad_codes(dE, dC, dB), None)
        dE = self.finish_dE(dE, e)
        return (dE if need[0] else None), dC, dB

    def finish_dE(self, dE, e):
        """This shard's part of dE summed over the ranks (when asked), in e's dtype."""
        if dE is None:
            return None
        if self.vp.reduce_e_grad:
            ordered_sum(dE.view(-1).numpy(), self.gatherer)
        return dE if dE.dtype == e.dtype else dE.to(e.dtype)


def check_options(vp) -> None:
    """What needs no exchange and no library: raised on this rank alone, as a bad argument."""
    if not isinstance(vp, VocabParallelOptions):
        raise TypeError(f"vocab_parallel_options must be a VocabParallelOptions, got {type(vp).__name__}")
    if not dist.is_available() or not dist.is_initialized():
        raise _lib.CCEValueError("vocab_parallel_options needs torch.distributed initialized "
                                 "(torch.distributed.init_process_group)", 8)


def make_call(e, c, targets, bias, weight, vp: VocabParallelOptions, *, reduction, shift, mode, allow_copy,
              **options):
    """This rank's checks, whose outcome every rank learns before any other exchange (agree: it
    raises on every rank when one rank's checks failed), then the call and the prepared inputs."""
    failure, call = None, None
    try:
        for name, x in (("e", e), ("c", c), ("bias", bias), ("targets", targets), ("weight", weight)):
            if isinstance(x, torch.Tensor) and x.device.type != "cpu":
                raise _lib.CCEValueError(f"vocab_parallel_options runs the CPU engine; {name} is on {x.device}", 8)
        check_library()
        e, c, targets, bias, weight, shift, mode = _torch.prepared(e, c, targets, bias, weight, shift, mode, allow_copy)
        call = _ShardCall(e, c, bias, targets, weight, shift, mode, reduction, options, vp)
    except Exception as error:   # noqa: BLE001 - raised on this rank after the agreement
        failure = error
    gatherer = call.gatherer if call is not None else torch_gather(vp.group)
    weight_length = -1 if weight is None or failure is not None else int(weight.numel())
    vocab = agree(gatherer, vp, failure, weight_length)
    return call.with_vocabulary(vocab), (e, c, targets, bias, weight)


def run(e, c, targets, bias, weight, vp: VocabParallelOptions, *, reduction, shift, mode, return_lse, allow_copy,
        **options):
    check_options(vp)
    from . import _compile

    if _compile.compiling():   # torch.compile is tracing: the registered shard operators (_compile.py)
        e, c, targets, bias, weight, shift, mode = _torch.prepared(e, c, targets, bias, weight, shift, mode, allow_copy)
        return _compile.shard_run(e, c, bias, targets, weight, vp, reduction=reduction, shift=shift, mode=mode,
                                  return_lse=return_lse, **options)
    call, (e, c, targets, bias, weight) = make_call(e, c, targets, bias, weight, vp, reduction=reduction, shift=shift,
                                                    mode=mode, allow_copy=allow_copy, **options)
    wants_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (e, c, bias))
    if not wants_grad:
        loss, lse, _ = call.forward_only(e, c, bias, targets, weight, return_lse)
        out, lse_out = call.outputs(loss, lse)
        return (out, lse_out) if return_lse else out
    return _torch.LinearCrossEntropyFunction.apply(e, c, bias, targets, weight, call, return_lse)
