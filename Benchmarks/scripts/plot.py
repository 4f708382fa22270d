#!/usr/bin/env python3
"""Plot `cce bench --json` results against vocabulary size, as a hand-written SVG.

What it does
------------
Reads one or more JSON files written by `cce bench --json` (or by
pytorch_baseline.py --json, which uses the same schema):

    {"shape": {"tokens": N, "dim": D, "vocab": V, "dtype": "f32"},
     "rows": [{"method": "...", "kind": "loss+grad",
               "median_seconds": 0.12, "peak_bytes": 123456789}, ...], ...}

and draws two panels side by side, for one kind of operation (default
loss+grad):

  left   median time in seconds (linear axis; --time-log for a log axis)
  right  peak extra memory in MB (10^6 bytes), log axis

both against the vocabulary size V (log axis), one line per method.  Each file
gives one point per method, at its shape's V; give one file per vocabulary size.
If files with different dtypes are mixed, each (method, dtype) pair gets its own
line.  If two files give the same method, dtype and V, the later file wins (with
a warning).  A peak of 0 bytes cannot sit on a log axis: it is drawn as a hollow
marker on the bottom edge of the memory panel.

No dependencies beyond the Python standard library.

How to run
----------
  python3 Benchmarks/scripts/plot.py --kind loss+grad \\
      --out Docs/figures/vocab-scaling.svg bench-*.json

Options: --kind KIND, --out FILE.svg (default vocab-scaling.svg), --title TEXT,
--time-log, --methods a,b,c (only these, in this order).
Exits 1 with a one-line message on unreadable input or when nothing matches.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from xml.sax.saxutils import escape

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
           "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]
DASHES = ["", "6,3", "2,3", "8,3,2,3"]

# Figure geometry (px).
WIDTH = 1040
PANEL_W = 420
PANEL_H = 300
LEFT = 80        # left margin of the first panel (room for tick labels)
GAP = 120        # between the panels
TOP = 70         # title + subtitle
FONT = "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\""


def fail(message: str) -> None:
    print(f"plot: error: {message}", file=sys.stderr)
    sys.exit(1)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        fail(message)


# --------------------------------------------------------------------------- #
# Data


def load(paths: list[str], kind: str, only: list[str] | None):
    """Return ({(method, dtype): {V: (seconds, bytes)}}, shapes seen)."""
    series: dict[tuple[str, str], dict[int, tuple[float, float | None]]] = {}
    shapes = []
    for path in paths:
        try:
            with open(path) as f:
                doc = json.load(f)
            shape = doc["shape"]
            v = int(shape["vocab"])
            rows = doc["rows"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            fail(f"cannot read {path}: {type(e).__name__}: {e}")
        shapes.append(shape)
        dtype = str(shape.get("dtype", "?"))
        for r in rows:
            if r.get("kind") != kind:
                continue
            m = str(r.get("method"))
            if only is not None and m not in only:
                continue
            t = r.get("median_seconds")
            if t is None:
                continue
            key = (m, dtype)
            if v in series.get(key, {}):
                print(f"plot: warning: {m} ({dtype}) at V={v} given twice; using {path}",
                      file=sys.stderr)
            series.setdefault(key, {})[v] = (float(t), r.get("peak_bytes"))
    return series, shapes


# --------------------------------------------------------------------------- #
# Axes


def nice_step(span: float, target: int = 5) -> float:
    raw = span / max(1, target)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


def linear_ticks(hi: float):
    hi = hi if hi > 0 else 1.0
    step = nice_step(hi)
    top = math.ceil(hi * 1.04 / step) * step
    n = int(round(top / step))
    return 0.0, top, [i * step for i in range(n + 1)]


def log_ticks(lo: float, hi: float):
    """Axis bounds (decade-aligned, or tighter 1-2-5) and major ticks."""
    lo_e = math.floor(math.log10(lo))
    hi_e = math.ceil(math.log10(hi))
    if hi_e == lo_e:
        hi_e += 1
    decades = hi_e - lo_e
    mults = (1,) if decades > 3 else (1, 2, 5)
    ticks = [m * 10.0 ** e for e in range(lo_e, hi_e + 1) for m in mults]
    # Trim to the 1-2-5 ticks just around the data.
    below = [t for t in ticks if t <= lo * 1.0000001]
    above = [t for t in ticks if t >= hi / 1.0000001]
    a = below[-1] if below else ticks[0]
    b = above[0] if above else ticks[-1]
    if a == b:
        b = ticks[ticks.index(b) + 1] if ticks.index(b) + 1 < len(ticks) else b * 10
    return a, b, [t for t in ticks if a <= t <= b]


def fmt_num(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1e6 or abs(x) < 1e-3:
        e = math.floor(math.log10(abs(x)))
        m = x / 10 ** e
        return f"1e{e}" if abs(m - 1) < 1e-9 else f"{m:g}e{e}"
    return f"{x:.6g}"


def fmt_vocab(v: float) -> str:
    """8192 -> 8.19k, 32000 -> 32k, 128256 -> 128k, 1e6 -> 1M."""
    if v >= 1e6:
        return f"{v / 1e6:.3g}M"
    if v >= 1000:
        return f"{v / 1000:.3g}k"
    return f"{v:g}"


class Axis:
    def __init__(self, lo, hi, log, px_lo, px_hi):
        self.lo, self.hi, self.log = lo, hi, log
        self.px_lo, self.px_hi = px_lo, px_hi

    def __call__(self, x: float) -> float:
        if self.log:
            f = (math.log10(x) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            f = (x - self.lo) / (self.hi - self.lo)
        return self.px_lo + f * (self.px_hi - self.px_lo)


def x_axis(vocabs: list[int]):
    lo, hi = min(vocabs), max(vocabs)
    if lo == hi:
        lo, hi = lo / 2, hi * 2
    pad = (hi / lo) ** 0.06
    lo, hi = lo / pad, hi * pad
    distinct = sorted(set(vocabs))
    if len(distinct) <= 10:
        ticks = distinct
    else:
        ticks = [10.0 ** e for e in range(math.ceil(math.log10(lo)), math.floor(math.log10(hi)) + 1)]
    return lo, hi, ticks


# --------------------------------------------------------------------------- #
# SVG


def text(x, y, s, size=12, anchor="middle", extra=""):
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'{FONT} {extra}>{escape(s)}</text>')


def panel(out, x0, title, ylabel, xs: Axis, ys: Axis, xticks, yticks, yfmt,
          lines, y_of, floor_val=None):
    y0 = TOP
    out.append(f'<g>')
    out.append(f'<rect x="{x0}" y="{y0}" width="{PANEL_W}" height="{PANEL_H}" '
               f'fill="#ffffff" stroke="#444" stroke-width="1"/>')
    for t in yticks:
        py = ys(t)
        out.append(f'<line x1="{x0}" x2="{x0 + PANEL_W}" y1="{py:.1f}" y2="{py:.1f}" '
                   f'stroke="#e4e4e4" stroke-width="1"/>')
        out.append(f'<line x1="{x0 - 5}" x2="{x0}" y1="{py:.1f}" y2="{py:.1f}" stroke="#444"/>')
        out.append(text(x0 - 8, py + 4, yfmt(t), 11, "end"))
    for t in xticks:
        px = xs(t)
        out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{y0}" y2="{y0 + PANEL_H}" '
                   f'stroke="#e4e4e4" stroke-width="1"/>')
        out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{y0 + PANEL_H}" '
                   f'y2="{y0 + PANEL_H + 5}" stroke="#444"/>')
        out.append(text(px, y0 + PANEL_H + 19, fmt_vocab(t), 11))
    out.append(f'<rect x="{x0}" y="{y0}" width="{PANEL_W}" height="{PANEL_H}" '
               f'fill="none" stroke="#444" stroke-width="1"/>')
    out.append(text(x0 + PANEL_W / 2, y0 - 8, title, 14, extra='font-weight="bold"'))
    out.append(text(x0 + PANEL_W / 2, y0 + PANEL_H + 40, "vocabulary size V (log scale)", 12))
    cy = y0 + PANEL_H / 2
    out.append(text(x0 - 58, cy, ylabel, 12,
                    extra=f'transform="rotate(-90 {x0 - 58} {cy})"'))
    # Data, clipped to the panel.
    cid = f"clip{x0}"
    out.append(f'<clipPath id="{cid}"><rect x="{x0 - 6}" y="{y0 - 6}" '
               f'width="{PANEL_W + 12}" height="{PANEL_H + 12}"/></clipPath>')
    out.append(f'<g clip-path="url(#{cid})">')
    for (label, color, dash, pts) in lines:
        vals = [(v, y_of(p)) for v, p in pts]
        vals = [(v, y) for v, y in vals if y is not None]
        if not vals:
            continue
        coords = []
        for v, y in vals:
            hollow = floor_val is not None and y <= 0
            yy = floor_val if hollow else y
            coords.append((xs(v), ys(yy), hollow))
        if len(coords) > 1:
            d = " ".join(f"{px:.1f},{py:.1f}" for px, py, _ in coords)
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(f'<polyline points="{d}" fill="none" stroke="{color}" '
                       f'stroke-width="2"{dash_attr}/>')
        for px, py, hollow in coords:
            fill = "#ffffff" if hollow else color
            out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{fill}" '
                       f'stroke="{color}" stroke-width="1.5"/>')
    out.append('</g></g>')


def render(series, shapes, kind, title, time_log) -> str:
    keys = list(series.keys())
    dtypes = sorted({k[1] for k in keys})
    vocabs = [v for pts in series.values() for v in pts]
    xlo, xhi, xticks = x_axis(vocabs)

    times = [t for pts in series.values() for t, _ in pts.values()]
    if time_log:
        pos = [t for t in times if t > 0] or [1e-3]
        tlo, thi, tticks = log_ticks(min(pos), max(pos))
    else:
        tlo, thi, tticks = linear_ticks(max(times))
    mems = [b / 1e6 for pts in series.values() for _, b in pts.values()
            if b is not None and b > 0]
    has_zero = any(b is not None and b <= 0 for pts in series.values() for _, b in pts.values())
    if mems:
        mlo, mhi, mticks = log_ticks(min(mems), max(mems))
    else:
        mlo, mhi, mticks = 0.1, 1.0, [0.1, 1.0]

    x1 = LEFT
    x2 = LEFT + PANEL_W + GAP
    xs1 = Axis(xlo, xhi, True, x1, x1 + PANEL_W)
    xs2 = Axis(xlo, xhi, True, x2, x2 + PANEL_W)
    ts = Axis(tlo, thi, time_log, TOP + PANEL_H, TOP)
    ms = Axis(mlo, mhi, True, TOP + PANEL_H, TOP)

    lines = []
    for i, key in enumerate(keys):
        method, dtype = key
        label = method if len(dtypes) == 1 else f"{method} ({dtype})"
        color = PALETTE[i % len(PALETTE)]
        dash = DASHES[(i // len(PALETTE)) % len(DASHES)]
        pts = sorted(series[key].items())
        lines.append((label, color, dash, pts))

    # Subtitle: the shapes the points come from.
    def uniq(field):
        vals = sorted({str(s.get(field, "?")) for s in shapes})
        return "/".join(vals)
    sub = f"{kind}; N = {uniq('tokens')}, D = {uniq('dim')}, dtype {uniq('dtype')}"
    if title is None:
        title = f"Linear + cross-entropy, {kind}, against vocabulary size"

    # Legend rows below the panels.
    per_row = 3
    legend_top = TOP + PANEL_H + 62
    rows = math.ceil(len(lines) / per_row)
    height = legend_top + rows * 22 + (22 if has_zero else 0) + 12

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}">',
           f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
           text(WIDTH / 2, 24, title, 16, extra='font-weight="bold"'),
           text(WIDTH / 2, 44, sub, 12, extra='fill="#555"')]
    panel(out, x1, "Median time", "seconds" + (" (log scale)" if time_log else ""),
          xs1, ts, xticks, tticks, fmt_num, lines, lambda p: p[0])
    panel(out, x2, "Peak extra memory", "MB (log scale)", xs2, ms, xticks, mticks,
          fmt_num, lines,
          lambda p: None if p[1] is None else (p[1] / 1e6 if p[1] > 0 else 0.0),
          floor_val=mlo)
    col_w = (2 * PANEL_W + GAP) / per_row
    for i, (label, color, dash, _) in enumerate(lines):
        lx = LEFT + (i % per_row) * col_w
        ly = legend_top + (i // per_row) * 22
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<line x1="{lx:.1f}" x2="{lx + 28:.1f}" y1="{ly:.1f}" y2="{ly:.1f}" '
                   f'stroke="{color}" stroke-width="2"{dash_attr}/>')
        out.append(f'<circle cx="{lx + 14:.1f}" cy="{ly:.1f}" r="3.5" fill="{color}"/>')
        out.append(text(lx + 36, ly + 4, label, 12, "start"))
    if has_zero:
        out.append(text(LEFT, legend_top + rows * 22 + 4,
                        "hollow marker on the bottom edge: peak extra memory of 0 bytes",
                        11, "start", extra='fill="#555"'))
    out.append('</svg>')
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    p = _Parser(description="Plot `cce bench --json` files against vocabulary size (SVG).")
    p.add_argument("files", nargs="*", help="JSON files from `cce bench --json`")
    p.add_argument("--kind", default="loss+grad", help="which kind of row (default loss+grad)")
    p.add_argument("--out", default="vocab-scaling.svg", help="output SVG path")
    p.add_argument("--title", default=None, help="figure title")
    p.add_argument("--methods", default=None, help="comma list: only these methods, in order")
    p.add_argument("--time-log", action="store_true", help="log scale for the time panel")
    a = p.parse_args(argv)
    if not a.files:
        fail("no input files")
    only = [m.strip() for m in a.methods.split(",")] if a.methods else None
    series, shapes = load(a.files, a.kind, only)
    if not series:
        fail(f"no rows of kind {a.kind!r} in the input")
    if only is not None:
        order = {m: i for i, m in enumerate(only)}
        series = dict(sorted(series.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])))
    for field in ("tokens", "dim"):
        if len({s.get(field) for s in shapes}) > 1:
            print(f"plot: warning: the files differ in {field}; points are not comparable",
                  file=sys.stderr)
    svg = render(series, shapes, a.kind, a.title, a.time_log)
    d = os.path.dirname(a.out)
    if d:
        os.makedirs(d, exist_ok=True)
    with open(a.out, "w") as f:
        f.write(svg)
    npts = sum(len(v) for v in series.values())
    print(f"plot: wrote {a.out} ({len(series)} lines, {npts} points)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
