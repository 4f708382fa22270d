"""The PyTorch path inside torch.compile: the CPU engine as two registered custom operators.

Dynamo cannot trace the ctypes calls of the eager path (_torch.py): a compiled function that
calls the loss broke its graph at each of them (18 breaks per call with torch 2.13), and
`fullgraph=True` failed. While compiling, `_torch.run` calls these operators instead, which
the compiler keeps as opaque nodes: no graph break, the surrounding operations compiled
around them. Outside torch.compile nothing here runs.

Vocabulary-parallel calls (_vocab_parallel.py) have two more, `cce_swift::shard_loss` and
`cce_swift::shard_grads`: loss_op's and grads_op's arguments plus the shard, the process group
by name, reduce_e_grad and the exchange chunk; the agreement and the collectives run inside
them, when the compiled code runs.

CUDA tensors (the CUDA library, _cuda.py) have their own two: `cce_swift::cuda_loss` (the
library's forward: loss and lse rows, the lse kept for the backward) and `cce_swift::cuda_grads`
(its backward for the upstream gradient), the eager CudaFunction's calls, so the same values.

- `cce_swift::loss`: loss (and lse), and for reduction mean or sum the gradients too (the
  fused call, upstream gradient 1, as the eager path). Its autograd formula scales those
  gradients by the upstream gradient (out of place: the compiled backward may hold a second
  copy of dE and dC while it does).
- `cce_swift::grads`: reduction none's gradients for a per-position upstream gradient. The
  eager path keeps the forward's O(N) state for its backward; an operator's outputs must be
  tensors, so this one runs the fused call again (one more forward's work).

The values are the eager path's, bit for bit (the same engine calls), and every option
works. Operators need torch >= 2.4 (torch.library.custom_op); older versions keep the eager
path, graph breaks included. Options travel as plain arguments; filter_eps as text ("auto",
"none" or the number's repr). Tensors an operator does not produce are empty.
"""
# No `from __future__ import annotations`: torch.library.custom_op reads the annotations.
from typing import Optional

import torch

from . import _core

AVAILABLE = hasattr(torch.library, "custom_op") and hasattr(torch, "compiler") \
    and hasattr(torch.compiler, "is_compiling")


def compiling() -> bool:
    """Whether torch.compile is tracing this call (and the operators exist)."""
    return AVAILABLE and torch.compiler.is_compiling()


def _eps_text(filter_eps) -> str:
    return "none" if filter_eps is None else filter_eps if isinstance(filter_eps, str) else repr(float(filter_eps))


def _eps_value(text: str):
    return None if text == "none" else text if text == "auto" else float(text)


def _options(reduction, shift, mode, ignore_index, softcap, label_smoothing, z_loss, filter_eps, filter_correction,
             sort_vocab, threads, check_finite, saved_logits_per_row) -> dict:
    return dict(reduction=reduction, shift=shift, mode=mode, ignore_index=ignore_index, softcap=softcap,
                label_smoothing=label_smoothing, z_loss=z_loss, filter_eps=_eps_value(filter_eps),
                filter_correction=filter_correction, sort_vocab=sort_vocab, threads=threads,
                check_finite=check_finite, saved_logits_per_row=saved_logits_per_row)


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty((0,))


if AVAILABLE:
    from . import _torch

    def _loss_outputs(call, e, c, bias, targets, weight, need, return_lse, reduction):
        """loss_op's and shard_loss_op's outputs from a call object (_torch._Call, or
        _vocab_parallel._ShardCall: the same forward_only, fused and outputs)."""
        dE = dC = dB = None
        if reduction == "none" or not any(need):
            loss, lse, _ = call.forward_only(e, c, bias, targets, weight, return_lse)
        else:
            loss, lse, (dE, dC, dB) = call.fused(e, c, bias, targets, weight, need, return_lse)
        out, lse_out = call.outputs(loss, lse)
        return (out.clone(), _empty(out) if lse_out is None else lse_out.clone(),
                _empty(e) if dE is None else dE, _empty(c) if dC is None else dC,
                _empty(e) if dB is None else dB)

    def _loss_fakes(e, c, bias, lay, need, return_lse, reduction, mode):
        """The shapes and dtypes _loss_outputs gives, without running anything."""
        dtype = torch.float64 if _core.normalize_mode(mode) == "exact" else torch.float32
        out = e.new_empty(lay.sliced_shape if reduction == "none" else (), dtype=dtype)
        lse = e.new_empty(lay.sliced_shape, dtype=dtype) if return_lse else e.new_empty((0,), dtype=dtype)
        grads = reduction != "none" and any(need)
        return (out, lse, torch.empty_like(e) if grads and need[0] else _empty(e),
                torch.empty_like(c) if grads and need[1] else _empty(c),
                torch.empty_like(bias) if grads and need[2] and bias is not None else _empty(e))

    @torch.library.custom_op("cce_swift::loss", mutates_args=())
    def loss_op(e: torch.Tensor, c: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
                weight: Optional[torch.Tensor], need_e: bool, need_c: bool, need_b: bool, return_lse: bool,
                reduction: str, shift: int, mode: str, ignore_index: int, softcap: Optional[float],
                label_smoothing: float, z_loss: float, filter_eps: str, filter_correction: bool, sort_vocab: bool,
                threads: Optional[int], check_finite: bool, saved_logits_per_row: Optional[int]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        opts = _options(reduction, shift, mode, ignore_index, softcap, label_smoothing, z_loss, filter_eps,
                        filter_correction, sort_vocab, threads, check_finite, saved_logits_per_row)
        call = _torch._Call(e, c, bias, targets, weight, opts.pop("shift"), opts.pop("mode"), opts.pop("reduction"),
                            opts)
        return _loss_outputs(call, e, c, bias, targets, weight, (need_e, need_c, need_b), return_lse, reduction)

    @loss_op.register_fake
    def _(e, c, bias, targets, weight, need_e, need_c, need_b, return_lse, reduction, shift, mode, *rest):
        # The checks of the eager path that need no engine, here because Dynamo cannot trace
        # the construction of CCEValueError; the engine checks the rest when the operator runs.
        lay = _core.layout(e.shape, c.shape, targets.shape, None if bias is None else bias.shape,
                           None if weight is None else weight.shape, shift)
        _core.make_options(**_options(reduction, shift, mode, *rest))
        return _loss_fakes(e, c, bias, lay, (need_e, need_c, need_b), return_lse, reduction, mode)

    @torch.library.custom_op("cce_swift::grads", mutates_args=())
    def grads_op(e: torch.Tensor, c: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
                 weight: Optional[torch.Tensor], grad_loss: torch.Tensor, need_e: bool, need_c: bool, need_b: bool,
                 shift: int, mode: str, ignore_index: int, softcap: Optional[float], label_smoothing: float,
                 z_loss: float, filter_eps: str, filter_correction: bool, sort_vocab: bool, threads: Optional[int],
                 check_finite: bool, saved_logits_per_row: Optional[int]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        opts = _options("none", shift, mode, ignore_index, softcap, label_smoothing, z_loss, filter_eps,
                        filter_correction, sort_vocab, threads, check_finite, saved_logits_per_row)
        call = _torch._Call(e, c, bias, targets, weight, opts.pop("shift"), opts.pop("mode"), opts.pop("reduction"),
                            opts)
        return _grads_outputs(call, e, c, bias, targets, weight, grad_loss, (need_e, need_c, need_b))

    def _grads_outputs(call, e, c, bias, targets, weight, grad_loss, need):
        """grads_op's and shard_grads_op's outputs: the fused call again, with reduction none's
        upstream gradient."""
        _, _, (dE, dC, dB) = call.fused(e, c, bias, targets, weight, need, False,
                                        upstream=_torch.upstream_rows(call.lay, grad_loss))
        return (_empty(e) if dE is None else dE, _empty(c) if dC is None else dC, _empty(e) if dB is None else dB)

    @grads_op.register_fake
    def _grads_fake(e, c, bias, targets, weight, grad_loss, need_e, need_c, need_b, *rest):
        return (torch.empty_like(e) if need_e else _empty(e), torch.empty_like(c) if need_c else _empty(c),
                torch.empty_like(bias) if need_b and bias is not None else _empty(e))

    # Positions of loss_op's arguments that grads_op takes after grad_loss and the flags.
    _OPTION_ARGS = slice(10, None)   # shift ... saved_logits_per_row, skipping reduction (9)

    def _setup(ctx, inputs, output):
        e, c, bias, targets, weight, need_e, need_c, need_b = inputs[:8]
        ctx.reduction = inputs[9]
        ctx.flags = (need_e, need_c, need_b and bias is not None)
        if ctx.reduction == "none":
            ctx.save_for_backward(e, c, bias, targets, weight)
            ctx.options = inputs[_OPTION_ARGS]
        else:
            ctx.save_for_backward(*output[2:])

    def _backward(ctx, g_loss, g_lse, g_de, g_dc, g_db):
        need_e, need_c, need_b = ctx.flags
        if ctx.reduction == "none":
            e, c, bias, targets, weight = ctx.saved_tensors
            dE, dC, dB = grads_op(e, c, bias, targets, weight, g_loss, need_e, need_c, need_b, *ctx.options)
        else:
            dE, dC, dB = (x * g_loss for x in ctx.saved_tensors)
        return (dE if need_e else None, dC if need_c else None, dB if need_b else None) + (None,) * 19

    loss_op.register_autograd(_backward, setup_context=_setup)

    # Vocabulary-parallel calls (_vocab_parallel.py) as two more operators: the same arguments
    # and outputs as loss_op and grads_op, then the shard (start, stop), the process group by
    # name ("" for the default group: a group object cannot be an operator's argument),
    # reduce_e_grad and exchange_chunk (-1: the library's). Each runs the eager path's
    # agreement and shard call when the compiled code runs, so the ranks' collectives happen
    # there, in the order of the eager path.

    def _vocab_parallel_options(start, stop, group, reduce_e_grad, exchange_chunk):
        from ._shards import VocabParallelOptions

        return VocabParallelOptions(start, stop, group_by_name(group), reduce_e_grad,
                                    None if exchange_chunk < 0 else exchange_chunk)

    def _shard_call(e, c, bias, targets, weight, opts, vp):
        from . import _vocab_parallel

        reduction, shift, mode = opts.pop("reduction"), opts.pop("shift"), opts.pop("mode")
        call, _ = _vocab_parallel.make_call(e, c, targets, bias, weight, vp, reduction=reduction, shift=shift,
                                            mode=mode, allow_copy=True, **opts)
        return call

    @torch.library.custom_op("cce_swift::shard_loss", mutates_args=())
    def shard_loss_op(e: torch.Tensor, c: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
                      weight: Optional[torch.Tensor], need_e: bool, need_c: bool, need_b: bool, return_lse: bool,
                      reduction: str, shift: int, mode: str, ignore_index: int, softcap: Optional[float],
                      label_smoothing: float, z_loss: float, filter_eps: str, filter_correction: bool,
                      sort_vocab: bool, threads: Optional[int], check_finite: bool,
                      saved_logits_per_row: Optional[int], start: int, stop: int, group: str, reduce_e_grad: bool,
                      exchange_chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        opts = _options(reduction, shift, mode, ignore_index, softcap, label_smoothing, z_loss, filter_eps,
                        filter_correction, sort_vocab, threads, check_finite, saved_logits_per_row)
        call = _shard_call(e, c, bias, targets, weight, opts,
                           _vocab_parallel_options(start, stop, group, reduce_e_grad, exchange_chunk))
        return _loss_outputs(call, e, c, bias, targets, weight, (need_e, need_c, need_b), return_lse, reduction)

    @shard_loss_op.register_fake
    def _(e, c, bias, targets, weight, need_e, need_c, need_b, return_lse, reduction, shift, mode, *rest):
        # c and bias are the shard's rows and weight has the whole V: the layout without it.
        lay = _core.layout(e.shape, c.shape, targets.shape, None if bias is None else bias.shape, None, shift)
        _core.make_options(**_options(reduction, shift, mode, *rest[:10]))
        return _loss_fakes(e, c, bias, lay, (need_e, need_c, need_b), return_lse, reduction, mode)

    @torch.library.custom_op("cce_swift::shard_grads", mutates_args=())
    def shard_grads_op(e: torch.Tensor, c: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
                       weight: Optional[torch.Tensor], grad_loss: torch.Tensor, need_e: bool, need_c: bool,
                       need_b: bool, shift: int, mode: str, ignore_index: int, softcap: Optional[float],
                       label_smoothing: float, z_loss: float, filter_eps: str, filter_correction: bool,
                       sort_vocab: bool, threads: Optional[int], check_finite: bool,
                       saved_logits_per_row: Optional[int], start: int, stop: int, group: str, reduce_e_grad: bool,
                       exchange_chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        opts = _options("none", shift, mode, ignore_index, softcap, label_smoothing, z_loss, filter_eps,
                        filter_correction, sort_vocab, threads, check_finite, saved_logits_per_row)
        call = _shard_call(e, c, bias, targets, weight, opts,
                           _vocab_parallel_options(start, stop, group, reduce_e_grad, exchange_chunk))
        return _grads_outputs(call, e, c, bias, targets, weight, grad_loss, (need_e, need_c, need_b))

    shard_grads_op.register_fake(_grads_fake)

    _SHARD_ARGS = slice(22, None)   # start ... exchange_chunk, after loss_op's arguments

    def _shard_setup(ctx, inputs, output):
        _setup(ctx, inputs[:_SHARD_ARGS.start], output)
        ctx.shard = inputs[_SHARD_ARGS]

    def _shard_backward(ctx, g_loss, g_lse, g_de, g_dc, g_db):
        need_e, need_c, need_b = ctx.flags
        if ctx.reduction == "none":
            e, c, bias, targets, weight = ctx.saved_tensors
            dE, dC, dB = shard_grads_op(e, c, bias, targets, weight, g_loss, need_e, need_c, need_b, *ctx.options,
                                        *ctx.shard)
        else:
            dE, dC, dB = (x * g_loss for x in ctx.saved_tensors)
        return (dE if need_e else None, dC if need_c else None, dB if need_b else None) + (None,) * 24

    shard_loss_op.register_autograd(_shard_backward, setup_context=_shard_setup)

    # CUDA tensors: the CUDA library's forward and backward as two operators (_cuda.py's
    # CudaFunction, whose ctypes calls Dynamo cannot trace either). The forward keeps the lse
    # rows for the backward, as the eager path does.

    def _cuda_options(ignore_index, softcap, label_smoothing, z_loss, filter_eps, sort_vocab) -> dict:
        return dict(ignore_index=ignore_index, softcap=softcap, label_smoothing=label_smoothing, z_loss=z_loss,
                    filter_eps=_eps_value(filter_eps), sort_vocab=sort_vocab)

    @torch.library.custom_op("cce_swift::cuda_loss", mutates_args=(), device_types="cuda")
    def cuda_loss_op(e: torch.Tensor, c: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
                     weight: Optional[torch.Tensor], need_e: bool, need_c: bool, need_b: bool,
                     reduction: str, shift: int, ignore_index: int,
                     softcap: Optional[float], label_smoothing: float, z_loss: float, filter_eps: str,
                     sort_vocab: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from . import _cuda

        if weight is not None:
            _cuda.check_weight_values(weight)
        call = _cuda.make_call(e, c, bias, targets, weight, shift, reduction,
                               _cuda_options(ignore_index, softcap, label_smoothing, z_loss, filter_eps, sort_vocab))
        return _cuda.forward(call, e, c, bias, targets, weight)

    @cuda_loss_op.register_fake
    def _(e, c, bias, targets, weight, need_e, need_c, need_b, reduction, shift, ignore_index, softcap,
          label_smoothing, z_loss, filter_eps, sort_vocab):
        from . import _cuda

        # The checks that need no device values, here so that bad options fail while tracing.
        call = _cuda.make_call(e, c, bias, targets, weight, shift, reduction,
                               _cuda_options(ignore_index, softcap, label_smoothing, z_loss, filter_eps, sort_vocab))
        n = call.lay.n
        return (e.new_empty((n if reduction == "none" else 1,), dtype=torch.float32),
                e.new_empty((n,), dtype=torch.float32))

    @torch.library.custom_op("cce_swift::cuda_grads", mutates_args=(), device_types="cuda")
    def cuda_grads_op(e: torch.Tensor, c: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
                      weight: Optional[torch.Tensor], lse: torch.Tensor, grad_loss: torch.Tensor, need_e: bool,
                      need_c: bool, need_b: bool, reduction: str, shift: int, ignore_index: int,
                      softcap: Optional[float], label_smoothing: float, z_loss: float, filter_eps: str,
                      sort_vocab: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from . import _cuda

        call = _cuda.make_call(e, c, bias, targets, weight, shift, reduction,
                               _cuda_options(ignore_index, softcap, label_smoothing, z_loss, filter_eps, sort_vocab))
        # grad_loss is the loss rows' gradient (zeros where a row holds no position): the
        # library's upstream as it is.
        g = grad_loss.to(torch.float32).reshape(-1).contiguous()
        dE, dC, dB = _cuda.backward(call, e, c, bias, targets, weight, lse, g, need_e, need_c, need_b)
        return (_empty(e) if dE is None else dE, _empty(c) if dC is None else dC, _empty(e) if dB is None else dB)

    @cuda_grads_op.register_fake
    def _(e, c, bias, targets, weight, lse, grad_loss, need_e, need_c, need_b, *rest):
        return (torch.empty_like(e) if need_e else _empty(e), torch.empty_like(c) if need_c else _empty(c),
                torch.empty_like(bias) if need_b and bias is not None else _empty(e))

    def _cuda_setup(ctx, inputs, output):
        e, c, bias, targets, weight, need_e, need_c, need_b = inputs[:8]
        ctx.flags = (need_e, need_c, need_b and bias is not None)
        ctx.options = inputs[8:]
        ctx.save_for_backward(e, c, bias, targets, weight, output[1])

    def _cuda_backward(ctx, g_loss, g_lse):
        e, c, bias, targets, weight, lse = ctx.saved_tensors
        need_e, need_c, need_b = ctx.flags
        dE, dC, dB = cuda_grads_op(e, c, bias, targets, weight, lse, g_loss, need_e, need_c, need_b, *ctx.options)
        return (dE if need_e else None, dC if need_c else None, dB if need_b else None) + (None,) * 13

    cuda_loss_op.register_autograd(_cuda_backward, setup_context=_cuda_setup)


def cuda_run(e, c, bias, targets, weight, *, reduction, shift, return_lse, ignore_index, softcap, label_smoothing,
             z_loss, filter_eps, sort_vocab):
    """CUDA tensors through cuda_loss_op (inputs already checked, padded and made contiguous by
    _cuda.run); the library's rows become the caller's positions as in the eager path."""
    from . import _cuda

    grad = torch.is_grad_enabled()
    need = [grad and x is not None and x.requires_grad for x in (e, c, bias)]
    loss, lse = cuda_loss_op(e, c, bias, targets, weight, *need, reduction, shift, int(ignore_index),
                             None if softcap is None else float(softcap), float(label_smoothing), float(z_loss),
                             _eps_text(filter_eps), bool(sort_vocab))
    lay = _core.layout(e.shape, c.shape, targets.shape, None if bias is None else bias.shape, None, shift)
    out, lse_out = _cuda.outputs(lay, reduction, ignore_index, loss, lse if return_lse else None, targets)
    return (out, lse_out) if return_lse else out


def group_by_name(name: str):
    """A torch.distributed process group from its name ("" : the default group, None)."""
    if name == "":
        return None
    import torch.distributed as dist

    c10d = dist.distributed_c10d
    resolve = getattr(c10d, "_resolve_process_group", None)
    if resolve is not None:
        return resolve(name)
    for group, known in c10d._world.pg_names.items():
        if known == name:
            return group
    raise _lib.CCEValueError(f"no process group named {name!r}", 8)


def shard_run(e, c, bias, targets, weight, vp, *, reduction, shift, mode, return_lse, ignore_index=-100,
              softcap=None, label_smoothing=0.0, z_loss=0.0, filter_eps="auto", filter_correction=True,
              sort_vocab=True, threads=None, check_finite=False, saved_logits_per_row=None):
    """A vocabulary-parallel loss through shard_loss_op (inputs already prepared by
    _vocab_parallel.run); the group travels by its name."""
    grad = torch.is_grad_enabled()
    need = [grad and x is not None and x.requires_grad for x in (e, c, bias)]
    group = "" if vp.group is None else vp.group.group_name
    chunk = -1 if vp.exchange_chunk is None else int(vp.exchange_chunk)
    out, lse, _, _, _ = shard_loss_op(e, c, bias, targets, weight, *need, return_lse, reduction, shift, mode,
                                      int(ignore_index), None if softcap is None else float(softcap),
                                      float(label_smoothing), float(z_loss), _eps_text(filter_eps),
                                      bool(filter_correction), bool(sort_vocab), None if threads is None else int(threads),
                                      bool(check_finite), None if saved_logits_per_row is None else int(saved_logits_per_row),
                                      int(vp.start), int(vp.stop), group, bool(vp.reduce_e_grad), chunk)
    return (out, lse) if return_lse else out


def run(e, c, bias, targets, weight, *, reduction, shift, mode, return_lse, ignore_index=-100, softcap=None,
        label_smoothing=0.0, z_loss=0.0, filter_eps="auto", filter_correction=True, sort_vocab=True, threads=None,
        check_finite=False, saved_logits_per_row=None):
    """The loss through loss_op (inputs already made contiguous by _torch.run). Bad shapes and
    options raise while the operator's fake tensors are formed: Dynamo reports the
    CCEValueError as the cause of its own error (TorchRuntimeError)."""
    grad = torch.is_grad_enabled()
    need = [grad and x is not None and x.requires_grad for x in (e, c, bias)]
    out, lse, _, _, _ = loss_op(e, c, bias, targets, weight, *need, return_lse, reduction, shift, mode,
                                int(ignore_index), None if softcap is None else float(softcap),
                                float(label_smoothing), float(z_loss), _eps_text(filter_eps), bool(filter_correction),
                                bool(sort_vocab), None if threads is None else int(threads), bool(check_finite),
                                None if saved_logits_per_row is None else int(saved_logits_per_row))
    return (out, lse) if return_lse else out
