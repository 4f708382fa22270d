"""A small decoder-only transformer language model trained on the CPU, with the head's loss
switchable between this repository's engine (cce_swift.linear_cross_entropy) and PyTorch's
materialized F.cross_entropy(F.linear(hidden, W), targets).

    python python/examples/train_lm.py --loss cce              # the head through the engine
    python python/examples/train_lm.py --loss torch            # the head through F.cross_entropy
    python python/examples/train_lm.py --compare --out train   # both, same weights and batches,
                                                               # train.json + train.csv
    python python/examples/plot_training.py train.json --out Docs/figures/train-pytorch.svg

The corpus is the repository's own documentation (README.md and Docs/*.md, read at run time
and concatenated in sorted order), tokenized at word level. The model: token and position
embeddings, --layers pre-LayerNorm blocks of causal multi-head self-attention and a GELU MLP,
a final LayerNorm, and an untied head W (V, D) without bias. Seeded and deterministic.

Each step is timed in three parts: the body's forward, the head's forward + backward (the
loss from the detached hidden states h, backward to dh and dW), then the body's backward from
dh and the optimizer step. The head's memory is its peak extra resident memory (RSSProbe),
measured in a fresh process per loss (memory_probe) so that neither the allocator setting it
needs nor the training's heap history touches the numbers. Docs/TRAINING_PYTORCH.md has a
measured run.
"""
from __future__ import annotations

import argparse
import collections
import copy
import csv
import ctypes
import ctypes.util
import gc
import hashlib
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
LOSSES = ("cce", "torch", "torch64")   # torch64: the float64 control (head_loss)
PAIRS = (("cce", "torch"), ("cce", "torch64"), ("torch", "torch64"))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# ----------------------------------------------------------------------------- corpus


def corpus_files(root: Path = REPO) -> list[Path]:
    """README.md and the Markdown files directly under Docs/, in sorted order."""
    return [root / "README.md"] + sorted((root / "Docs").glob("*.md"))


def corpus_at(rev: str, root: Path = REPO) -> tuple[list[str], str]:
    """The same files as they are in commit rev (git show), so that a documented run can be
    repeated after the documentation has changed: (names, text)."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True).stdout.decode()

    docs = [n for n in git("ls-tree", "--name-only", rev, "Docs/").split("\n")
            if n.endswith(".md") and n.count("/") == 1]
    names = ["README.md"] + sorted(docs)
    return names, "\n".join(git("show", f"{rev}:{n}") for n in names)


TOKEN = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")


def tokenize(text: str) -> list[str]:
    """Word level, as cce train's WordTokenizer: lowercased; a word is a run of letters, digits
    and apostrophes; every other non-space character is a token of its own."""
    return TOKEN.findall(text.lower())


@dataclass
class Corpus:
    files: list[str]
    sha256: str
    words: int
    vocab: list[str]          # id -> word; id 0 is <unk>
    ids: torch.Tensor         # int64 token ids of the whole text
    unk_fraction: float


def load_corpus(files: list[Path] | None = None, vocab_cap: int = 0, rev: str | None = None) -> Corpus:
    """Reads the files (default corpus_files(); with rev, corpus_at(rev)), tokenizes, and builds
    the vocabulary: <unk> (id 0) and the words by descending count, ties broken by spelling;
    vocab_cap > 0 keeps the vocab_cap - 1 most frequent words (the rest become <unk>), 0 keeps
    every word."""
    if rev:
        files, text = corpus_at(rev)
    else:
        files = corpus_files() if files is None else files
        text = "\n".join(Path(f).read_text(encoding="utf-8") for f in files)
    words = tokenize(text)
    counts = collections.Counter(words)
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    if vocab_cap > 0:
        ranked = ranked[: vocab_cap - 1]
    vocab = ["<unk>"] + ranked
    index = {w: i for i, w in enumerate(vocab)}
    ids = torch.tensor([index.get(w, 0) for w in words], dtype=torch.int64)
    names = [str(f) if rev else str(Path(f).resolve().relative_to(REPO))
             if Path(f).resolve().is_relative_to(REPO) else str(f) for f in files]
    return Corpus(files=names, sha256=hashlib.sha256(text.encode()).hexdigest(), words=len(words), vocab=vocab,
                  ids=ids, unk_fraction=float((ids == 0).float().mean()))


def batches(ids: torch.Tensor, steps: int, batch: int, context: int, seed: int):
    """steps batches of (inputs, targets), each (batch, context): windows of context + 1 tokens
    at positions drawn uniformly from a generator seeded with seed (the same for every run)."""
    g = torch.Generator().manual_seed(seed + 1)
    offsets = torch.arange(context + 1)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - context, (batch,), generator=g)
        window = ids[starts[:, None] + offsets]
        yield window[:, :-1].contiguous(), window[:, 1:].contiguous()


# ----------------------------------------------------------------------------- model


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal multi-head self-attention, then a GELU MLP."""

    def __init__(self, dim: int, heads: int, context: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        mask = torch.triu(torch.ones(context, context, dtype=torch.bool), diagonal=1)
        self.register_buffer("mask", mask, persistent=False)   # True above the diagonal: the future

    def forward(self, x):
        b, t, d = x.shape
        hd = d // self.heads
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, hd).transpose(1, 2) for z in (q, k, v))   # (B, H, T, hd)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)                              # (B, H, T, T)
        scores = scores.masked_fill(self.mask[:t, :t], float("-inf"))
        y = scores.softmax(dim=-1) @ v
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class LanguageModel(nn.Module):
    def __init__(self, vocab: int, dim: int, layers: int, heads: int, context: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, context) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)   # W (V, D): the classifier CCE computes over
        for name, p in self.named_parameters():         # GPT-2's initialization
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "fc2.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def body(self, idx):
        """Hidden states (B, T, D) before the head."""
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)


def head_loss(kind: str, h, w, targets, threads: int | None, filter_eps="auto", mode="default"):
    """Mean cross-entropy of the logits h @ w.T against targets: through the engine without the
    (B·T, V) logits ("cce"), materialized by F.linear ("torch"; bf16 logits are cast to float32
    for the softmax, as the engine accumulates in float32), or materialized in float64
    ("torch64": a control, the most exact head, whose gradients come back to h and W in their
    dtypes through the casts' backward). filter_eps is the engine's gradient filter ("auto":
    2^-28 for float32 inputs, 2^-12 for bfloat16; None: no filtering) and mode its accumulation
    ("default", "kahan", "exact": Float64, no filtering; Docs/PYTHON.md)."""
    if kind == "cce":
        from cce_swift import linear_cross_entropy

        return linear_cross_entropy(h, w, targets, threads=threads, filter_eps=filter_eps, mode=mode)
    if kind == "torch64":
        return F.cross_entropy(F.linear(h.double(), w.double()).flatten(0, 1), targets.flatten())
    logits = F.linear(h, w)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


# ----------------------------------------------------------------------------- memory


class RSSProbe:
    """Peak extra resident memory of an operation, from the kernel's own accounting: Linux keeps
    the peak resident set size (VmHWM in /proc/self/status) and resets it to the current size
    when "5" is written to /proc/self/clear_refs. extra = VmHWM after - VmRSS before. This sees
    every byte the operation touches, PyTorch's tensors and the Swift engine's buffers alike.

    Freed memory that malloc keeps would hide an operation's allocations (they would reuse
    pages already resident), and freed blocks it keeps mid-operation would count twice, so
    prepare() fixes glibc's mmap threshold at 64 KiB (every larger block becomes its own
    mapping, returned to the system when freed) and each measurement trims the heap first.
    Swift's MemoryProbe (Sources/CCERuntime/MemoryProbe.swift) does the same for `cce train`.
    The threshold only governs new heap growth: a heap that already holds large free blocks
    (as a training process's does) still serves allocations from them, and the result then
    depends on that history (here: up to one N x V buffer more for the torch head). Hence
    memory_probe prepares first, in a fresh process. The setting also makes large
    allocations slower (fresh pages each time), so it is never on during the timed steps."""

    M_MMAP_THRESHOLD = -3

    def __init__(self):
        self.available = False
        self.why = ""
        try:
            self.libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.field("VmHWM:")
            self.available = True
        except (OSError, AttributeError, ValueError) as error:
            self.why = f"resident-set probe unavailable: {error}"

    def prepare(self):
        if self.available:
            self.libc.mallopt(self.M_MMAP_THRESHOLD, 64 << 10)

    @staticmethod
    def field(name: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1]) * 1024
        raise ValueError(f"{name} not in /proc/self/status")

    def measure(self, fn) -> int | None:
        if not self.available:
            return None
        gc.collect()
        self.libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = self.field("VmRSS:")
        fn()
        return max(0, self.field("VmHWM:") - before)


# ----------------------------------------------------------------------------- training


@dataclass
class Config:
    steps: int = 500
    batch: int = 16
    context: int = 64
    dim: int = 128
    layers: int = 2
    heads: int = 4
    lr: float = 2e-3
    vocab: int = 0            # cap on the vocabulary (0: every word of the corpus)
    seed: int = 0
    dtype: str = "float32"
    threads: int | None = None
    holdout: float = 0.1      # the last 10% of the corpus's tokens: the validation text
    eval_every: int = 50      # validation loss after every eval_every updates (0: never)
    eval_batches: int = 4     # validation batches (fixed windows of the held-out text)
    filter_eps: str | float | None = "auto"   # the engine's gradient filter (--loss cce)
    cce_mode: str = "default"                 # the engine's accumulation (--loss cce)
    corpus_rev: str | None = None             # read the corpus from this git commit (None: the files)
    compile: bool = False                     # torch.compile the body and the head's loss (each run's own)


class Run:
    """One model, its optimizer and its head's loss."""

    def __init__(self, kind: str, model: LanguageModel, cfg: Config):
        self.kind = kind
        self.model = model
        self.cfg = cfg
        self.dtype = DTYPES[cfg.dtype]
        self.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        self.losses: list[float] = []
        self.step_s: list[float] = []
        self.head_s: list[float] = []
        self.val: list[tuple[int, float]] = []   # (updates done, mean validation loss)
        # With cfg.compile, the body and the head's loss as torch.compile makes them (the engine's
        # loss as registered operators, fullgraph, Docs/PYTHON.md); the first steps pay the compile.
        self.body = torch.compile(model.body) if cfg.compile else model.body
        self.head_loss = torch.compile(head_loss, fullgraph=True) if cfg.compile else head_loss

    def head(self, h, targets):
        w = self.model.head.weight
        if self.dtype != torch.float32:
            h, w = h.to(self.dtype), w.to(self.dtype)
        return self.head_loss(self.kind, h, w, targets, self.cfg.threads, self.cfg.filter_eps, self.cfg.cce_mode)

    def step(self, x, y) -> tuple[float, torch.Tensor, torch.Tensor]:
        """One training step; returns the loss and the head's gradients (dh, dW) before the update."""
        model = self.model
        self.opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=self.dtype, enabled=self.dtype != torch.float32):
            hidden = self.body(x)
        h = hidden.detach().requires_grad_(True)
        t1 = time.perf_counter()
        loss = self.head(h, y)
        loss.backward()
        t2 = time.perf_counter()
        hidden.backward(h.grad)
        self.opt.step()
        t3 = time.perf_counter()
        value = loss.item()
        self.losses.append(value)
        self.step_s.append(t3 - t0)
        self.head_s.append(t2 - t1)
        return value, h.grad, model.head.weight.grad

    def evaluate(self, val_batches, updates: int) -> float:
        """Mean loss over the validation batches, forward only (the engine's forward without
        gradients; F.cross_entropy under no_grad)."""
        with torch.no_grad(), torch.autocast("cpu", dtype=self.dtype, enabled=self.dtype != torch.float32):
            value = statistics.fmean(self.head(self.body(x), y).item() for x, y in val_batches)
        self.val.append((updates, value))
        return value

    def head_memory(self, probe: RSSProbe, x, y) -> int | None:
        """Peak extra resident bytes of the head's forward + backward on one batch: the loss from
        hidden states h (a leaf) and a fresh copy of W (so that dW is allocated, as in a step)."""
        with torch.no_grad(), torch.autocast("cpu", dtype=self.dtype, enabled=self.dtype != torch.float32):
            h = self.model.body(x).float()
        h.requires_grad_(True)
        w = self.model.head.weight.detach().clone().requires_grad_(True)

        def call():
            hh, ww = (h, w) if self.dtype == torch.float32 else (h.to(self.dtype), w.to(self.dtype))
            head_loss(self.kind, hh, ww, y, self.cfg.threads, self.cfg.filter_eps, self.cfg.cce_mode).backward()
            h.grad = w.grad = None

        return probe.measure(call)

    def step_memory(self, probe: RSSProbe, x, y) -> int | None:
        """Peak extra resident bytes of a whole training step's forward and backward (body and
        head, the gradients of every parameter allocated), on a copy of the model."""
        model = copy.deepcopy(self.model)
        run = Run(self.kind, model, self.cfg)

        def call():
            with torch.autocast("cpu", dtype=self.dtype, enabled=self.dtype != torch.float32):
                hidden = model.body(x)
            h = hidden.detach().requires_grad_(True)
            run.head(h, y).backward()
            hidden.backward(h.grad)
            model.zero_grad(set_to_none=True)

        return probe.measure(call)


def rel_diffs(a: list[float], b: list[float]) -> list[float]:
    return [abs(x - y) / abs(y) if y != 0 else abs(x - y) for x, y in zip(a, b)]


def agreement(a: list[float], ref: list[float], first: int) -> dict:
    """How close curve a is to curve ref: |a - ref| / |ref| per step, summarized."""
    r = rel_diffs(a, ref)
    out = {"first_k": min(first, len(r)), "max_rel_first_k": max(r[:first]), "max_rel_all": max(r),
           "rel_last": r[-1], "abs_last": abs(a[-1] - ref[-1]), "rel_step0": r[0],
           "mean_rel_last_10pct": statistics.fmean(r[-max(1, len(r) // 10):])}
    for level in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2):
        above = [i for i, x in enumerate(r) if x > level]
        out[f"first_step_above_{level:g}"] = above[0] if above else None
    return out


def rel_norm(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def summary(run: Run, skip: int) -> dict:
    steps = run.step_s[skip:] or run.step_s
    heads = run.head_s[skip:] or run.head_s
    return {"step_s_median": statistics.median(steps), "step_s_mean": statistics.fmean(steps),
            "head_s_median": statistics.median(heads), "head_s_mean": statistics.fmean(heads),
            "step_s_min": min(steps), "head_s_min": min(heads),
            "timed_steps": len(steps), "first_loss": run.losses[0], "last_loss": run.losses[-1],
            "mean_loss_last_10": statistics.fmean(run.losses[-10:]), "val_last": run.val[-1][1] if run.val else None}


def machine() -> dict:
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu": model, "logical_cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "loadavg_start": load}


def split(corpus: Corpus, cfg: Config):
    """The training tokens and the held-out validation tokens (the last cfg.holdout)."""
    cut = int(len(corpus.ids) * (1 - cfg.holdout))
    return corpus.ids[:cut], corpus.ids[cut:]


def memory_probe(kinds: list[str], cfg: Config) -> dict:
    """Runs in a fresh process (--memory-probe): fixes malloc's threshold before anything is
    allocated, builds the initial model (the training's seed), and measures for each kind, on
    the first training batch, the head's forward + backward four times (the first call, "cold",
    also pays one-time costs such as thread start-up) and a whole step's forward + backward
    three times. Returns {kind: {...}}, or {"memory_note": why} when it cannot measure."""
    probe = RSSProbe()
    if not probe.available:
        return {"memory_note": probe.why}
    probe.prepare()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    corpus = load_corpus(vocab_cap=cfg.vocab, rev=cfg.corpus_rev)
    torch.manual_seed(cfg.seed)
    model = LanguageModel(len(corpus.vocab), cfg.dim, cfg.layers, cfg.heads, cfg.context)
    x, y = next(batches(split(corpus, cfg)[0], 1, cfg.batch, cfg.context, cfg.seed))
    result = {}
    for kind in kinds:
        run = Run(kind, model, cfg)
        head = [run.head_memory(probe, x, y) for _ in range(4)]
        step = [run.step_memory(probe, x, y) for _ in range(3)]
        result[kind] = {"head_bytes_cold": head[0], "head_bytes": head[1:], "step_bytes": step}
    return result


def measure_memory_in_subprocess(kinds: list[str], cfg: Config) -> dict:
    """memory_probe(kinds, cfg) in a fresh Python process (this file with --memory-probe). The
    example measures each kind in its own process; after prepare() the heap keeps no large
    free blocks, so kinds measured one after another in one process (the test) do not see each
    other's allocations."""
    import subprocess

    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--memory-probe", ",".join(kinds),
                          json.dumps(asdict(cfg))], capture_output=True, text=True)
    if out.returncode != 0:
        return {"memory_note": f"memory probe failed: {out.stderr.strip().splitlines()[-1:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def train(kinds: tuple[str, ...], cfg: Config, corpus: Corpus | None = None, *, measure_memory: bool = True,
          agree_k: int = 10, log=print, log_every: int = 1) -> dict:
    """Trains one model per kind from the same initial weights on the same batches. With two
    or more kinds the runs go in lockstep (each step runs each, the order reversing every step),
    so that all see the same machine load. Returns the record written to --out."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    corpus = corpus or load_corpus(vocab_cap=cfg.vocab, rev=cfg.corpus_rev)
    v = len(corpus.vocab)
    torch.manual_seed(cfg.seed)
    initial = LanguageModel(v, cfg.dim, cfg.layers, cfg.heads, cfg.context)
    host = machine()   # before training: its load average is the one at the start
    params = sum(p.numel() for p in initial.parameters())
    runs = {k: Run(k, copy.deepcopy(initial), cfg) for k in kinds}
    n = cfg.batch * cfg.context
    at = f" at {cfg.corpus_rev}" if cfg.corpus_rev else ""
    log(f"corpus: {len(corpus.files)} files{at}, {corpus.words} tokens, V = {v} "
        f"({100 * corpus.unk_fraction:.2f}% <unk>), sha256 {corpus.sha256[:16]}")
    log(f"model: {cfg.layers} layers, D = {cfg.dim}, {cfg.heads} heads, context {cfg.context}, "
        f"{params:,} parameters ({v * cfg.dim:,} in the head W)")
    log(f"steps {cfg.steps} x {cfg.batch} sequences = {n} tokens per step, Adam lr {cfg.lr}, {cfg.dtype}, "
        f"seed {cfg.seed}, threads {torch.get_num_threads()} (torch) / {cfg.threads or 'all'} (engine), "
        f"engine filter_eps {cfg.filter_eps}, mode {cfg.cce_mode}"
        + (", body and head loss through torch.compile" if cfg.compile else ""))
    log(f"logits a materialized head holds: N x V = {n} x {v} = {n * v * 4 / 2**20:.1f} MiB in float32")
    train_ids, val_ids = split(corpus, cfg)
    val_batches = list(batches(val_ids, cfg.eval_batches, cfg.batch, cfg.context, cfg.seed + 1)) \
        if cfg.eval_every and len(val_ids) > cfg.context + 1 else []
    log(f"training text: the first {len(train_ids)} tokens; validation: {len(val_batches)} fixed batches "
        f"from the last {len(val_ids)}")

    def evaluate(updates):
        if val_batches:
            log(f"validation after {updates:4d} updates: " + "  ".join(
                f"{k} {runs[k].evaluate(val_batches, updates):.6f}" for k in kinds))

    evaluate(0)
    grads0 = {}
    for i, (x, y) in enumerate(batches(train_ids, cfg.steps, cfg.batch, cfg.context, cfg.seed)):
        order = kinds if i % 2 == 0 else tuple(reversed(kinds))
        for k in order:
            _, dh, dw = runs[k].step(x, y)
            if i == 0:
                grads0[k] = (dh.clone(), dw.clone())
        if log_every and (i % log_every == 0 or i == cfg.steps - 1):
            parts = [f"step {i:4d}"]
            for k in kinds:
                r = runs[k]
                parts.append(f"{k}: loss {r.losses[-1]:.6f} step {r.step_s[-1]:.3f} s head {r.head_s[-1]:.3f} s")
            for a, b in PAIRS:
                if a in runs and b in runs:
                    x1, x2 = runs[a].losses[-1], runs[b].losses[-1]
                    parts.append(f"{a}/{b} rel diff {abs(x1 - x2) / abs(x2):.1e}")
            log("  ".join(parts))
        if cfg.eval_every and ((i + 1) % cfg.eval_every == 0 or i == cfg.steps - 1):
            evaluate(i + 1)
    record = {"config": asdict(cfg), "corpus": {"files": corpus.files, "sha256": corpus.sha256,
                                                "tokens": corpus.words, "vocab": v,
                                                "unk_fraction": corpus.unk_fraction},
              "model_parameters": params, "tokens_per_step": n, "machine": host, "runs": {}}
    skip = min(5, cfg.steps - 1)
    for k in kinds:
        r = runs[k]
        record["runs"][k] = {"loss": r.losses, "step_s": r.step_s, "head_s": r.head_s, "val": r.val,
                             **summary(r, skip)}
    if measure_memory:
        for k in kinds:
            m = measure_memory_in_subprocess([k], cfg)
            if "memory_note" in m:
                record["memory_note"] = m["memory_note"]
            else:
                record["runs"][k].update(m[k])
    record["machine"]["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    record["agreement"] = {}
    for a, b in PAIRS:
        if a in runs and b in runs:
            ag = agreement(runs[a].losses, runs[b].losses, agree_k)
            ag["step0_dh_rel"] = rel_norm(grads0[a][0], grads0[b][0])
            ag["step0_dW_rel"] = rel_norm(grads0[a][1], grads0[b][1])
            if runs[a].val:
                ag["val_rel"] = rel_diffs(*([v for _, v in runs[k].val] for k in (a, b)))
            record["agreement"][f"{a}-{b}"] = ag
    report(record, log)
    return record


def mib(b) -> str:
    return "n/a" if b is None else f"{b / 2**20:.2f} MiB"


def report(record: dict, log=print):
    log("")
    log(f"{'loss':7} {'first':>8} {'last':>8} {'val':>8} {'step: median (min)':>20} {'head fwd+bwd: median (min)':>27} "
        f"{'head peak extra memory':>23} {'(first call)':>12} {'step peak extra memory':>23}")
    for k, r in record["runs"].items():
        hm = statistics.median(r["head_bytes"]) if r.get("head_bytes") else None
        sm = statistics.median(r["step_bytes"]) if r.get("step_bytes") else None
        val = f"{r['val_last']:8.4f}" if r.get("val_last") is not None else f"{'-':>8}"
        step = f"{r['step_s_median'] * 1e3:.1f} ms ({r['step_s_min'] * 1e3:.1f})"
        head = f"{r['head_s_median'] * 1e3:.1f} ms ({r['head_s_min'] * 1e3:.1f})"
        log(f"{k:7} {r['first_loss']:8.4f} {r['last_loss']:8.4f} {val} {step:>20} {head:>27} "
            f"{mib(hm):>23} {mib(r.get('head_bytes_cold')):>12} {mib(sm):>23}")
    if "memory_note" in record:
        log(record["memory_note"])
    for pair, a in record.get("agreement", {}).items():
        x, ref = pair.split("-")
        log(f"{pair}: |{x} - {ref}| / {ref} per step: step 0 {a['rel_step0']:.1e}, "
            f"max over the first {a['first_k']} steps {a['max_rel_first_k']:.1e}, "
            f"last step {a['rel_last']:.1e}, max over all {a['max_rel_all']:.1e}")
        log("  first step above 1e-6 / 1e-5 / 1e-4 / 1e-3 / 1e-2: " + " / ".join(
            str(a[f"first_step_above_{lv:g}"]) for lv in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)))
        log(f"  step-0 gradients, relative norm difference: dh {a['step0_dh_rel']:.1e}, dW {a['step0_dW_rel']:.1e}")
        if a.get("val_rel"):
            log(f"  validation losses: max relative difference {max(a['val_rel']):.1e}, last {a['val_rel'][-1]:.1e}")


def write_outputs(record: dict, out: str):
    path = Path(out)
    path.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    kinds = list(record["runs"])
    with open(path.with_suffix(".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step"] + [f"{c}_{k}" for k in kinds for c in ("loss", "step_s", "head_s")])
        for i in range(len(record["runs"][kinds[0]]["loss"])):
            w.writerow([i] + [repr(record["runs"][k][c][i]) for k in kinds for c in ("loss", "step_s", "head_s")])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loss", choices=LOSSES, default="cce", help="the head's loss (default cce)")
    p.add_argument("--compare", nargs="?", const="cce,torch", default=None, metavar="LOSSES",
                   help="train one model per loss in lockstep (default cce,torch; e.g. cce,torch,torch64)")
    p.add_argument("--steps", type=int, default=Config.steps)
    p.add_argument("--batch", type=int, default=Config.batch, help="sequences per step")
    p.add_argument("--context", type=int, default=Config.context, help="tokens per sequence")
    p.add_argument("--dim", type=int, default=Config.dim)
    p.add_argument("--layers", type=int, default=Config.layers)
    p.add_argument("--heads", type=int, default=Config.heads)
    p.add_argument("--lr", type=float, default=Config.lr)
    p.add_argument("--vocab", type=int, default=Config.vocab, help="vocabulary cap (0: every word)")
    p.add_argument("--seed", type=int, default=Config.seed)
    p.add_argument("--dtype", choices=tuple(DTYPES), default=Config.dtype,
                   help="bfloat16: the body under CPU autocast, the head's h and W cast to bfloat16; "
                        "parameters and Adam stay float32")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads and the engine's threads "
                                                             "(default: torch's default and every CPU)")
    p.add_argument("--filter-eps", default="auto", help="the engine's gradient filter: auto (2^-28 for float32, "
                   "2^-12 for bfloat16), none, or a number")
    p.add_argument("--cce-mode", default="default",
                   choices=("default", "kahan", "kahan-full-e", "kahan-full-c", "exact"),
                   help="the engine's accumulation (exact: Float64, no filtering)")
    p.add_argument("--corpus-rev", default=None, metavar="COMMIT",
                   help="read README.md and Docs/*.md as they are in this git commit (default: the files now)")
    p.add_argument("--eval-every", type=int, default=Config.eval_every,
                   help="validation loss every this many updates (0: never)")
    p.add_argument("--agree-k", type=int, default=10, help="K of 'max relative difference over the first K steps'")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--compile", action="store_true", help="torch.compile each run's body and head loss")
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--out", default=None, help="write OUT.json (everything) and OUT.csv (per-step curves)")
    p.add_argument("--memory-probe", nargs=2, metavar=("LOSS", "CONFIG_JSON"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.memory_probe:   # the fresh process of measure_memory_in_subprocess
        print(json.dumps(memory_probe(a.memory_probe[0].split(","), Config(**json.loads(a.memory_probe[1])))))
        return 0
    for name in ("steps", "batch", "context", "dim", "layers", "heads"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1")
    if a.dim % a.heads:
        p.error(f"--dim ({a.dim}) must be a multiple of --heads ({a.heads})")
    if a.threads is not None and a.threads < 1:
        p.error("--threads must be >= 1")
    if a.lr <= 0:
        p.error("--lr must be > 0")
    filter_eps = {"auto": "auto", "none": None}.get(a.filter_eps.lower(), a.filter_eps)
    if isinstance(filter_eps, str) and filter_eps != "auto":
        try:
            filter_eps = float(filter_eps)
        except ValueError:
            p.error(f"--filter-eps must be auto, none or a number, got {a.filter_eps}")
    cfg = Config(steps=a.steps, batch=a.batch, context=a.context, dim=a.dim, layers=a.layers, heads=a.heads,
                 lr=a.lr, vocab=a.vocab, seed=a.seed, dtype=a.dtype, threads=a.threads,
                 eval_every=a.eval_every, filter_eps=filter_eps, cce_mode=a.cce_mode,
                 corpus_rev=a.corpus_rev, compile=a.compile)
    kinds = tuple(a.compare.split(",")) if a.compare else (a.loss,)
    if any(k not in LOSSES for k in kinds) or len(set(kinds)) != len(kinds):
        p.error(f"--compare takes distinct losses among {', '.join(LOSSES)}, got {a.compare}")
    record = train(kinds, cfg, measure_memory=not a.no_memory, agree_k=a.agree_k, log_every=a.log_every,
                   log=lambda s: print(s, flush=True))
    if a.out:
        write_outputs(record, a.out)
        print(f"wrote {Path(a.out).with_suffix('.json')} and {Path(a.out).with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
