"""The figure of a train_lm.py --compare run: the loss curves, and how far apart they are.

    python python/examples/plot_training.py RUN.json [--also OTHER.json ...] [--out FIGURE.svg]

Top: each loss's per-step training loss (the batch's mean loss before the update; the first
curve wide and light, the others thin, so that curves that agree all stay visible) and the
validation loss (markers). Bottom: |a - b| / |b| per step for each pair of runs, on a log
scale; steps where the two losses are the same float are drawn at the floor, 1e-17. --also adds
the pairs of other runs of the same configuration to the bottom panel (e.g. a run with
--cce-mode exact), labelled with the engine's mode and filter when they are not the default.
Needs matplotlib (pip install matplotlib).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"cce": dict(color="#f4a261", lw=3.0, alpha=0.55, label="cce_swift.linear_cross_entropy"),
         "torch": dict(color="#264653", lw=0.8, ls="--", label="F.cross_entropy(F.linear(h, W))"),
         "torch64": dict(color="#8a2be2", lw=0.6, ls=":", label="float64 control (materialized)")}
PAIR_STYLE = {"cce-torch": dict(color="#e76f51", lw=0.9), "cce-torch64": dict(color="#2a9d8f", lw=0.7),
              "torch-torch64": dict(color="#6c757d", lw=0.7, ls="--")}
ALSO_COLORS = ("#9b2226", "#005f73", "#ca6702")
FLOOR = 1e-17


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="the JSON written by train_lm.py --out")
    p.add_argument("--out", default=None, help="figure file (.svg or .png; default: beside the JSON, .svg)")
    p.add_argument("--also", nargs="*", default=[], metavar="OTHER.json",
                   help="other runs whose pairs are drawn in the bottom panel too")
    p.add_argument("--title", default=None)
    a = p.parse_args(argv)
    rec = json.loads(Path(a.run).read_text())
    cfg, runs = rec["config"], rec["runs"]
    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9})
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.4), sharex=True, height_ratios=(3, 2))
    for k, r in runs.items():
        st = STYLE.get(k, dict(lw=1, label=k))
        top.plot(range(len(r["loss"])), r["loss"], **st)
        if r.get("val"):
            xs, ys = zip(*r["val"])
            top.plot(xs, ys, ls="none", marker="o" if k == "cce" else "x", ms=7 if k == "cce" else 5,
                     color=st.get("color"), alpha=st.get("alpha", 1), label=f"{k}: validation loss")
    top.set_ylabel("loss (nats/token)")
    top.legend(fontsize=8, loc="upper right")
    top.grid(alpha=0.3)
    title = a.title or (f"{cfg['layers']}-layer transformer, D = {cfg['dim']}, V = {rec['corpus']['vocab']}, "
                        f"{rec['tokens_per_step']} tokens/step, {cfg['dtype']}, seed {cfg['seed']}\n"
                        f"{rec['machine']['cpu']}, {rec['machine']['torch_threads']} threads")
    top.set_title(title, fontsize=9)
    def pairs(rec, styles, suffix=""):
        runs = rec["runs"]
        for pair in rec.get("agreement", {}):
            x, ref = pair.split("-")
            rel = [max(abs(u - v) / abs(v), FLOOR) for u, v in zip(runs[x]["loss"], runs[ref]["loss"])]
            bottom.plot(range(len(rel)), rel, label=f"|{x} − {ref}| / {ref}{suffix}", **styles(pair))

    pairs(rec, lambda pair: PAIR_STYLE.get(pair, {}))
    colors = iter(ALSO_COLORS * 4)
    for other in a.also:
        o = json.loads(Path(other).read_text())
        notes = [f"engine mode {o['config'].get('cce_mode', 'default')}",
                 f"filter_eps {o['config'].get('filter_eps', 'auto')}"]
        notes = [n for n in notes if not n.endswith((" default", " auto"))]
        pairs(o, lambda pair: dict(color=next(colors), lw=0.8), f" ({', '.join(notes)})" if notes else "")
    bottom.set_yscale("log")
    bottom.set_ylim(FLOOR / 3, 1)
    bottom.set_xlabel("step")
    bottom.set_ylabel("relative difference of the step's loss")
    bottom.legend(fontsize=8, loc="lower right")
    bottom.grid(alpha=0.3, which="both")
    fig.tight_layout()
    out = Path(a.out) if a.out else Path(a.run).with_suffix(".svg")
    fig.savefig(out, metadata={"Date": None} if out.suffix == ".svg" else None)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
