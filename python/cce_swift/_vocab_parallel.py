"""Vocabulary-parallel CCE over torch.distributed (any CPU backend: gloo, mpi).

Each rank of a process group holds a contiguous shard of the classifier's rows, classes
start ..< stop of V (and the same entries of the bias); e, the targets, the options and the
class weights (V entries) are the same on every rank. The engine's shard calls (cce_cpu.h:
cce_cpu_shard_forward, cce_cpu_shard_loss_and_gradients) compute each shard's per-token
partials (its log-sum-exp, its target logit), gather every rank's through the callback below
(torch.distributed.all_gather) and combine them in rank order, so every rank gets the whole
vocabulary's loss and lse; then each computes its shard's dC and dbias and its part of dE,
which the ranks sum in rank order (the same bits on every rank and every run). What moves per
step: 2 or 3 values per token in the forward (plus one per token bounding the LSE with P > 1),
and dE's N x D floats in the backward; never anything of size N x V. Docs/PYTHON.md, "Vocabulary
parallel", has an example and the measurements.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from . import _core, _lib, _torch

GATHER = _lib.GATHER

# dE's ordered sum moves this many values per collective (1 MiB a rank in float32).
SUM_PIECE = 1 << 18

# What this process has sent through the collectives of its vocabulary-parallel calls (each
# all-gather sends a rank's values once; each receives every rank's): a diagnostic that
# python/benchmarks/vocab_parallel.py reports. Keys: gathers, gathered_bytes (the engine's
# exchanges), sum_bytes (dE's ordered sum).
traffic = {"gathers": 0, "gathered_bytes": 0, "sum_bytes": 0}


def partition(vocab_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """Classes start ..< stop of rank `rank` of `world_size`: the first V mod P ranks one class
    larger (the Swift API's VocabularyShard.split, apple/ml-cross-entropy's split)."""
    base, extra = divmod(vocab_size, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@dataclass
class VocabParallelOptions:
    """This rank's shard of the vocabulary for `linear_cross_entropy(..., vocab_parallel_options=...)`,
    with apple/ml-cross-entropy's names: `c` (and `bias`) hold classes start ..< stop; `group` is
    the torch.distributed process group (None: the default group); with reduce_e_grad (the
    default) e's gradient is the whole dE, summed over the ranks in rank order, else this
    shard's part (summing is then the caller's). exchange_chunk: tokens per exchange of the
    fused call (None: the engine's default for rank 0's thread count; every rank uses rank 0's)."""

    start: int
    stop: int
    group: Any = None
    reduce_e_grad: bool = True
    exchange_chunk: int | None = None

    @classmethod
    def from_vocab(cls, vocab_size: int, group: Any = None, **kwargs) -> "VocabParallelOptions":
        """This rank's contiguous share of `vocab_size` classes in `group`."""
        start, stop = partition(vocab_size, dist.get_rank(group), dist.get_world_size(group))
        return cls(start, stop, group, **kwargs)


class _Gather:
    """The engine's `gather` callback over a process group. An exception raised inside it is
    kept and re-raised after the call (the engine stops with status BACKEND)."""

    def __init__(self, group):
        self.group = group
        self.world = dist.get_world_size(group)
        self.error: BaseException | None = None
        self.callback = GATHER(self._call)

    def _call(self, mine, count, dtype, out, user) -> int:
        try:
            kind, size = (torch.float32, 4) if dtype == _lib.F32 else (torch.float64, 8)
            if count > 0:   # every rank has the same count; none gathers zero values
                src = torch.empty(count, dtype=kind)
                ctypes.memmove(src.data_ptr(), mine, count * size)
                parts = [torch.empty(count, dtype=kind) for _ in range(self.world)]
                dist.all_gather(parts, src, group=self.group)
                for r, p in enumerate(parts):
                    ctypes.memmove(out + r * count * size, p.data_ptr(), count * size)
                traffic["gathers"] += 1
                traffic["gathered_bytes"] += count * size
            return 0
        except BaseException as e:   # noqa: BLE001 - handed back to the caller after the call
            self.error = e
            return 1

    def check(self, status: int) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise _lib.CCERuntimeError(f"the all-gather failed: {error!r}", 11) from error
        _lib.check(status)


def ordered_sum(t: torch.Tensor, group) -> None:
    """t (float32 or float64, contiguous) summed over the group's ranks in rank order, in place: every rank
    gets the same bits, run after run (an all_reduce adds in whatever order its algorithm takes)."""
    world = dist.get_world_size(group)
    if world == 1:
        return
    flat = t.view(-1)
    for lo in range(0, flat.numel(), SUM_PIECE):
        piece = flat[lo:lo + SUM_PIECE]
        parts = [torch.empty_like(piece) for _ in range(world)]
        dist.all_gather(parts, piece.clone(), group=group)
        traffic["sum_bytes"] += piece.numel() * piece.element_size()
        total = parts[0]
        for p in parts[1:]:
            total += p
        piece.copy_(total)


class _ShardCall:
    """One rank's call: layout of the whole vocabulary, the shard, options and codes."""

    def __init__(self, e, c, bias, targets, weight, shift, mode, reduction, options, vp: VocabParallelOptions):
        start, stop = int(vp.start), int(vp.stop)
        if start < 0 or stop < start:
            raise _lib.CCEValueError(f"invalid option: vocab_parallel_options start {start}, stop {stop}", 8)
        rows = stop - start
        if tuple(c.shape) != (rows, e.shape[-1]) or (bias is not None and tuple(bias.shape) != (rows,)):
            raise _lib.CCEValueError(
                f"invalid shape: this rank's shard holds classes {start} ..< {stop}, so c must be "
                f"({rows}, {e.shape[-1]}) and bias ({rows},); got c {tuple(c.shape)}"
                + ("" if bias is None else f", bias {tuple(bias.shape)}"), 4)
        # Every check that needs no V, here on this rank (agree() compares the weights' lengths).
        batch = _core.layout(e.shape, (rows, e.shape[-1]), targets.shape, None, None, shift).batch
        self.opt = _core.make_options(reduction=reduction, shift=shift, mode=mode, batch=batch, **options)
        self.vp = vp
        self.world = dist.get_world_size(vp.group)
        self.vocab = None   # set by agree()
        self.shape = (e.shape, targets.shape, None if weight is None else weight.shape, shift)
        self.reduction = reduction
        self.exact = mode == "exact"
        self.codes = (_torch.dtype_code(e, "e"), _torch.dtype_code(c, "c"),
                      0 if bias is None else _torch.dtype_code(bias, "bias"))
        self.out_dtype = torch.float64 if self.exact else torch.float32
        self.sum_dtype = self.out_dtype   # dE's parts, summed over the ranks
        self.gather = _Gather(vp.group)

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

    def fused(self, e, c, bias, targets, weight, need, return_lse):
        loss, lse = self.loss_buffers(return_lse)
        # dE in float32 (float64 in the exact mode) whatever e's dtype: the ranks' parts are
        # summed before one rounding.
        dE = torch.empty(e.shape, dtype=self.sum_dtype) if need[0] else None
        dC = torch.empty_like(c) if need[1] else None
        dB = torch.empty_like(bias) if need[2] and bias is not None else None
        chunk = 0 if self.vp.exchange_chunk is None else int(self.vp.exchange_chunk)
        status = _lib.lib().cce_cpu_shard_loss_and_gradients(
            *self.head(e, c, bias, targets, weight), chunk, None, _torch.ptr(loss), _torch.ptr(lse),
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
            ordered_sum(dE, self.vp.group)
        return dE if dE.dtype == e.dtype else dE.to(e.dtype)


def agree(vp: VocabParallelOptions, failure: BaseException | None, weight) -> int:
    """One all-gather of every rank's (outcome of its checks, start, stop, length of its class
    weights or -1), before anything else moves: when any rank's checks failed every rank raises
    (that rank its own error), so that none is left waiting in a later collective; then V, the
    last rank's stop, once the shards are seen to tile [0, V) in rank order and every weight
    to have V values. The library's own agreement (cce_cpu.h) then compares the rest."""
    world = dist.get_world_size(vp.group)
    try:
        mine = torch.tensor([int(failure is not None), int(vp.start), int(vp.stop),
                             -1 if weight is None else int(weight.numel())], dtype=torch.int64)
    except (TypeError, ValueError, AttributeError):
        mine = torch.tensor([1, 0, 0, -1], dtype=torch.int64)
    parts = [torch.empty(4, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(parts, mine, group=vp.group)
    if failure is not None:
        raise failure
    failed = [r for r, p in enumerate(parts) if int(p[0]) != 0]
    if failed:
        raise _lib.CCEValueError(f"rank {failed[0]} of {world} failed its checks (its own error says why)", 10)
    end = 0
    for r, p in enumerate(parts):
        s, t = int(p[1]), int(p[2])
        if s != end or t < s:
            raise _lib.CCEValueError(f"invalid option: vocab_parallel_options of rank {r} hold classes {s} ..< {t}, "
                                     f"where the ranks before it end at {end} (the shards must tile [0, V) in rank "
                                     "order)", 8)
        end = t
    for r, p in enumerate(parts):
        if int(p[3]) not in (-1, end):
            raise _lib.CCEValueError(f"invalid shape: rank {r}'s weight has {int(p[3])} values, V = {end}", 4)
    return end


def run(e, c, targets, bias, weight, vp: VocabParallelOptions, *, reduction, shift, mode, return_lse, allow_copy,
        **options):
    if not isinstance(vp, VocabParallelOptions):
        raise TypeError(f"vocab_parallel_options must be a VocabParallelOptions, got {type(vp).__name__}")
    if not dist.is_available() or not dist.is_initialized():
        raise _lib.CCEValueError("vocab_parallel_options needs torch.distributed initialized "
                                 "(torch.distributed.init_process_group)", 8)
    # This rank's checks, whose outcome every rank learns before any other exchange (agree).
    failure, call = None, None
    try:
        for name, x in (("e", e), ("c", c), ("bias", bias), ("targets", targets), ("weight", weight)):
            if isinstance(x, torch.Tensor) and x.device.type != "cpu":
                raise _lib.CCEValueError(f"vocab_parallel_options runs the CPU engine; {name} is on {x.device}", 8)
        if not hasattr(_lib.lib(), "cce_cpu_shard_loss_and_gradients"):
            raise _lib.CCERuntimeError(f"{_lib.lib().path} predates the vocabulary-parallel calls (C ABI 4); "
                                       "rebuild it (pip install ./python)", 12)
        from . import _compile

        if _compile.compiling():
            raise _lib.CCEValueError("vocab_parallel_options is not traced by torch.compile; call it outside the "
                                     "compiled region", 8)
        e, c, targets, bias, weight, shift, mode = _torch.prepared(e, c, targets, bias, weight, shift, mode, allow_copy)
        call = _ShardCall(e, c, bias, targets, weight, shift, mode, reduction, options, vp)
    except Exception as error:   # noqa: BLE001 - raised on this rank after the agreement
        failure = error
    vocab = agree(vp, failure, weight)   # raises on every rank when one rank's checks failed
    call.with_vocabulary(vocab)
    wants_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (e, c, bias))
    if not wants_grad:
        loss, lse, _ = call.forward_only(e, c, bias, targets, weight, return_lse)
        out, lse_out = call.outputs(loss, lse)
        return (out, lse_out) if return_lse else out
    return _torch.LinearCrossEntropyFunction.apply(e, c, bias, targets, weight, call, return_lse)
