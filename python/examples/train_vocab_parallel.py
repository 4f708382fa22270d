"""train_lm.py's language model with its head split over processes: vocab_parallel_options.

    python python/examples/train_vocab_parallel.py --ranks 2 [--steps 200] [--dtype bfloat16]

Trains the same model from the same weights on the same batches twice: in this process with
the whole head W (V, D) through the plain call, then in --ranks processes (a gloo group) that
each hold the body and a shard of W's rows, classes start ..< stop
(VocabParallelOptions.from_vocab), and run loss = linear_cross_entropy(h, W_shard, y,
vocab_parallel_options=vp). Each rank gets the whole vocabulary's loss and the whole dh (dE,
summed over the ranks in rank order, the same bits on every rank), so the ranks' bodies stay
identical without any other communication, and each updates only its rows of W (Adam works
element by element: a shard's update is the whole update's rows). Prints both loss curves'
agreement per step, each rank's time a step, and checks that every rank ended with the same
body. --out writes the record as JSON. The data, model and batches are train_lm.py's.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_lm as lm  # noqa: E402

import cce_swift  # noqa: E402


def train(cfg: lm.Config, rank: int | None, world: int, corpus) -> dict:
    """cfg.steps steps; rank None: one process with the whole head, else this rank's shard."""
    torch.set_num_threads(cfg.threads or 1)
    torch.use_deterministic_algorithms(True)
    v = len(corpus.vocab)
    torch.manual_seed(cfg.seed)
    model = lm.LanguageModel(v, cfg.dim, cfg.layers, cfg.heads, cfg.context)
    dtype = lm.DTYPES[cfg.dtype]
    vp = None
    if rank is None:
        head = model.head.weight
    else:
        vp = cce_swift.VocabParallelOptions.from_vocab(v)
        head = torch.nn.Parameter(model.head.weight.detach()[vp.start:vp.stop].clone())
        del model.head   # this rank's rows only
    body = [p for name, p in model.named_parameters() if not name.startswith("head.")]
    opt = torch.optim.Adam(body + [head], lr=cfg.lr)
    train_ids, _ = lm.split(corpus, cfg)
    losses, seconds = [], []
    for x, y in lm.batches(train_ids, cfg.steps, cfg.batch, cfg.context, cfg.seed):
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            hidden = model.body(x)
        h = hidden.detach().to(dtype).requires_grad_(True)
        w = head.to(dtype) if dtype != torch.float32 else head
        loss = cce_swift.linear_cross_entropy(h, w, y, threads=cfg.threads, vocab_parallel_options=vp)
        loss.backward()
        hidden.backward(h.grad.to(hidden.dtype))
        opt.step()
        seconds.append(time.perf_counter() - t0)
        losses.append(loss.item())
    digest = hashlib.sha256()
    for p in body:
        digest.update(p.detach().numpy().tobytes())
    return {"rank": rank, "shard": None if vp is None else [vp.start, vp.stop], "loss": losses, "step_s": seconds,
            "body_sha256": digest.hexdigest()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--dtype", choices=tuple(lm.DTYPES), default="float32")
    p.add_argument("--threads", type=int, default=1, help="torch's and the engine's threads, per process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the record as JSON here")
    p.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--init", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    cfg = lm.Config(steps=a.steps, dtype=a.dtype, threads=a.threads, seed=a.seed)
    if a.rank is not None:   # one rank of the group, on the launcher's corpus (the docs may change meanwhile)
        import torch.distributed as dist

        corpus = torch.load(os.path.join(os.path.dirname(a.init), "corpus.pt"), weights_only=False)
        dist.init_process_group("gloo", init_method=f"file://{a.init}", rank=a.rank, world_size=a.ranks)
        print(json.dumps(train(cfg, a.rank, a.ranks, corpus)), flush=True)
        dist.destroy_process_group()
        return
    corpus = lm.load_corpus(vocab_cap=cfg.vocab)
    n = cfg.batch * cfg.context
    print(f"V = {len(corpus.vocab)}, D = {cfg.dim}, {cfg.steps} steps of {n} tokens, {cfg.dtype}, "
          f"{a.threads} thread(s) a process; one process, then {a.ranks} ranks")
    one = train(cfg, None, 1, corpus)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(corpus, os.path.join(tmp, "corpus.pt"))
        args = [sys.executable, os.path.abspath(__file__), "--ranks", str(a.ranks), "--steps", str(a.steps),
                "--dtype", a.dtype, "--threads", str(a.threads), "--seed", str(a.seed),
                "--init", os.path.join(tmp, "init")]
        procs = [subprocess.Popen(args + ["--rank", str(r)], stdout=subprocess.PIPE, text=True)
                 for r in range(a.ranks)]
        outs = [q.communicate()[0] for q in procs]
    if any(q.returncode != 0 for q in procs):
        sys.exit("a rank failed")
    ranks = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    same_loss = all(r["loss"] == ranks[0]["loss"] for r in ranks)
    same_body = len({r["body_sha256"] for r in ranks}) == 1
    rel = [abs(x - y) / abs(y) for x, y in zip(ranks[0]["loss"], one["loss"])]
    for i in sorted({0, 1, 10, 50, 100, cfg.steps - 1} & set(range(cfg.steps))):
        print(f"step {i:4d}: one process {one['loss'][i]:.6f}  ranks {ranks[0]['loss'][i]:.6f}  rel diff {rel[i]:.1e}")
    print(f"loss curves: largest rel diff {max(rel):.1e}, median {statistics.median(rel):.1e}; "
          f"every rank the same loss each step: {same_loss}; every rank the same body at the end: {same_body}")
    print(f"time a step (median after the first 5): one process {statistics.median(one['step_s'][5:]):.4f} s, "
          + ", ".join(f"rank {r['rank']} {statistics.median(r['step_s'][5:]):.4f} s" for r in ranks))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"config": vars(a), "one": one, "ranks": ranks, "rel": rel, "same_loss": same_loss,
                       "same_body": same_body}, f)
    if not (same_loss and same_body):
        sys.exit("the ranks disagree")


if __name__ == "__main__":
    main()
