"""compare(reference, candidate, budgets): the error report of `cce compare`, from Python.

The rules are those of Sources/CCEReference/Compare.swift: for every array present on both
sides (by name), in the reference's sorted order, the largest absolute difference, the
relative norm error ||cand - ref|| / ||ref|| (over the reference's finite entries; 0 / 0 = 0,
x / 0 = inf) and the worst element with both values. Positions where both are NaN agree; a
NaN on one side only is an infinite error. Budgets bound the relative error (`budgets`) and
the largest absolute difference (`max_abs`), for every array ("*" or a bare number) or per
name. str(report) is the table `cce compare` prints.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._core import shape_text


@dataclass
class TensorComparison:
    name: str
    shape: tuple
    max_abs: float | None
    relative: float | None
    worst: int | None
    reference_value: float | None
    candidate_value: float | None
    relative_budget: float | None
    absolute_budget: float | None
    problem: str | None
    non_finite: int = 0                      # candidate NaN or infinity where the reference has no NaN
    first_non_finite: int | None = None

    @property
    def passed(self) -> bool:
        """Whether every budget that applies holds (and the shapes agree)."""
        if self.problem is not None or self.relative is None or self.max_abs is None:
            return False
        ok_r = self.relative_budget is None or self.relative <= self.relative_budget
        ok_a = self.absolute_budget is None or self.max_abs <= self.absolute_budget
        return bool(ok_r and ok_a)

    @property
    def failed(self) -> bool:
        """Counted as a failure by `cce compare` (a mismatch, or a budget that does not hold)."""
        return self.problem is not None or (
            (self.relative_budget is not None or self.absolute_budget is not None) and not self.passed)


@dataclass
class CompareReport:
    rows: list[TensorComparison]
    only_in_reference: list[str] = field(default_factory=list)
    file_names: bool = False  # print missing arrays as NAME.npy (folders), as the CLI does
    allow_missing: bool = False       # `cce compare --allow-missing`
    allow_non_finite: bool = False    # `cce compare --allow-non-finite`

    def _row_failures(self, r: TensorComparison) -> list[str]:
        if r.problem is not None:
            return [f"{r.name} ({r.problem})"]
        why = []
        if r.non_finite > 0 and not self.allow_non_finite:
            why.append(f"{r.non_finite} non-finite value{'' if r.non_finite == 1 else 's'}, "
                       f"the first at {index_text(r.first_non_finite, r.shape)}")
        if (r.relative_budget is not None or r.absolute_budget is not None) and not r.passed:
            why.append("over budget")
        return [f"{r.name} ({', '.join(why)})"] if why else []

    @property
    def failures(self) -> list[str]:
        """Why the gate fails, one phrase per cause, as `cce compare` says it (empty: it passes)."""
        out = [f for r in self.rows for f in self._row_failures(r)]
        if self.only_in_reference and not self.allow_missing:
            names = [n + ".npy" if self.file_names else n for n in self.only_in_reference]
            out.append("missing from the candidate: " + ", ".join(names))
        return out

    @property
    def failed(self) -> list[TensorComparison]:
        return [r for r in self.rows if self._row_failures(r)]

    @property
    def passed(self) -> bool:
        return not self.failures

    def __getitem__(self, name: str) -> TensorComparison:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    @property
    def summary(self) -> str:
        """`cce compare`'s last line: 'compare failed: …' with the causes, or that all passed."""
        f = self.failures
        if not f:
            return f"{len(self.rows)} tensors compared, none over budget"
        hint = []
        if not self.allow_non_finite and any(r.non_finite > 0 for r in self.rows):
            hint.append("--allow-non-finite")
        if not self.allow_missing and self.only_in_reference:
            hint.append("--allow-missing")
        return "compare failed: " + "; ".join(f) + (f" ({', '.join(hint)} to let these through)" if hint else "")

    def __str__(self) -> str:
        def pad(s, n):
            return s + " " if len(s) >= n else s + " " * (n - len(s))

        def lpad(s, n):
            return " " + s if len(s) >= n else " " * (n - len(s)) + s

        def sci(x):
            return "-" if x is None else _swift_sci(x)

        lines = [pad("tensor", 8) + pad("shape", 16) + lpad("max |Δ|", 11) + lpad("rel err", 11) + "  "
                 + pad("worst element (reference → candidate)", 46) + pad("budget", 22) + "status"]
        for r in self.rows:
            if r.worst is not None:
                worst = f"{index_text(r.worst, r.shape)} {_g6(r.reference_value)} → {_g6(r.candidate_value)}"
            else:
                worst = r.problem or "-"
            budgets = []
            if r.relative_budget is not None:
                budgets.append(f"rel ≤ {_swift_double(r.relative_budget)}")
            if r.absolute_budget is not None:
                budgets.append(f"abs ≤ {_swift_double(r.absolute_budget)}")
            status = "FAIL" if self._row_failures(r) else (("non-finite" if r.non_finite > 0 else "-") if not budgets else "ok")
            lines.append(pad(r.name, 8) + pad(shape_text(r.shape), 16) + lpad(sci(r.max_abs), 11)
                         + lpad(sci(r.relative), 11) + "  " + pad(worst, 46)
                         + pad(", ".join(budgets) if budgets else "-", 22) + status)
        if self.only_in_reference:
            names = [n + ".npy" if self.file_names else n for n in self.only_in_reference]
            lines.append("not in the candidate: " + ", ".join(names))
        return "\n".join(lines)


def _swift_sci(x: float) -> str:
    """String(format: "%.3e") as Swift prints it (nan, inf like C)."""
    return "%.3e" % x


def _g6(x: float) -> str:
    return "%.6g" % x


def _swift_double(x: float) -> str:
    """A Double as Swift's description prints it: the shortest round trip, as Python's repr."""
    return repr(float(x))


def index_text(flat: int, shape) -> str:
    shape = tuple(shape)
    if not shape:
        return "[]"
    idx = [0] * len(shape)
    r = flat
    for k in range(len(shape) - 1, -1, -1):
        if shape[k] > 0:
            idx[k] = r % shape[k]
            r //= shape[k]
    return "[" + ", ".join(str(i) for i in idx) + "]"


def _budget_table(spec, option: str) -> dict:
    """Budgets as a dict name -> value ("*": every tensor), from a number, a dict or CLI strings."""
    if spec is None:
        return {}
    if isinstance(spec, (int, float)):
        spec = {"*": float(spec)}
    if isinstance(spec, dict):
        out = {}
        for k, v in spec.items():
            v = float(v)
            if not v >= 0:
                raise ValueError(f"{option}: budget {k}={v} is not a number >= 0")
            out[str(k)] = v
        return out
    out = {}
    for s in spec:
        name, _, value = s.partition("=") if "=" in s else ("*", "", s)
        try:
            x = float(value)
        except ValueError:
            x = -1.0
        if not x >= 0:
            raise ValueError(f"{option}: budget '{s}' is not NAME=X or X with X a number >= 0")
        out[name] = x
    return out


def _load(side, what: str) -> tuple[dict, bool]:
    if isinstance(side, (str, os.PathLike)):
        folder = Path(side)
        if not folder.is_dir():
            raise ValueError(f"{folder}: no such folder")
        arrays = {}
        for p in sorted(folder.glob("*.npy")):
            a = np.load(p, allow_pickle=False)
            if a.dtype.kind == "V" and a.dtype.itemsize == 2:
                # ml_dtypes writes bfloat16 as a 2-byte void ('<V2'); the cce tools read it so too.
                from ._numpy import BFLOAT16

                a = a.view(BFLOAT16)
            arrays[p.stem] = a
        return arrays, True
    if isinstance(side, dict):
        return {k: v for k, v in side.items() if v is not None}, False
    raise TypeError(f"{what} must be a folder of .npy files or a dict of arrays, got {type(side).__name__}")


def _as_float64(a, where: str) -> np.ndarray:
    from ._numpy import to_numpy

    a = to_numpy(a)
    if a.dtype.kind not in "fc" and a.dtype.name != "bfloat16":
        raise ValueError(f"{where}: expected floating-point values, got {a.dtype}")
    return np.asarray(a, dtype=np.float64)


def compare(reference, candidate, budgets=None, max_abs=None, allow_missing=False,
            allow_non_finite=False) -> CompareReport:
    """Compares every array the two sides share: folders of .npy files (as `cce reference`
    writes them) or dicts of arrays (numpy or torch). budgets / max_abs: a number (every
    array), a dict {name: value, "*": value}, or CLI strings ["dE=5e-3", "1e-3"]. As `cce
    compare`, the report fails on reference arrays missing from the candidate and on NaN or
    infinity in the candidate where the reference has no NaN, unless allowed."""
    ref, ref_files = _load(reference, "reference")
    cand, _ = _load(candidate, "candidate")
    rel_b = _budget_table(budgets, "budgets")
    abs_b = _budget_table(max_abs, "max_abs")
    ref_names = sorted(ref)
    shared = [n for n in ref_names if n in cand]
    if not shared:
        raise ValueError(f"the candidate has none of the reference's arrays ({', '.join(ref_names)})")
    for name in list(rel_b) + list(abs_b):
        if name != "*" and name not in shared:
            raise ValueError(f"a budget names {name}, but {name} is not on both sides")
    rows = []
    for name in shared:
        rb = rel_b.get(name, rel_b.get("*"))
        ab = abs_b.get(name, abs_b.get("*"))
        r = _as_float64(ref[name], f"reference {name}")
        c = _as_float64(cand[name], f"candidate {name}")
        if r.shape != c.shape:
            rows.append(TensorComparison(name, r.shape, None, None, None, None, None, rb, ab,
                                         f"shape {shape_text(c.shape)} in the candidate, {shape_text(r.shape)} in the reference"))
            continue
        a, b = r.reshape(-1), c.reshape(-1)
        both = np.isnan(a) & np.isnan(b)
        one = np.isnan(a) ^ np.isnan(b)
        with np.errstate(invalid="ignore", over="ignore"):
            err = np.where(one, np.inf, np.abs(b - a))
        err = np.where(both, 0.0, err)
        den = float(np.sum(np.where(np.isfinite(a) & ~both, a, 0.0) ** 2))
        with np.errstate(invalid="ignore", over="ignore"):
            num = float(np.sum(np.where(both, 0.0, err) ** 2))
        if a.size == 0 or both.all():
            worst, at = 0.0, None
        else:
            considered = np.where(both, -np.inf, err)
            at = int(np.argmax(np.where(np.isnan(considered), -np.inf, considered)))
            worst = float(err[at])
        if den > 0:
            rel = (num / den) ** 0.5 if np.isfinite(num) else float(num)
        else:
            rel = 0.0 if num == 0 else float("inf")
        bad = ~np.isfinite(b) & ~both
        first_bad = int(np.argmax(bad)) if bad.any() else None
        rows.append(TensorComparison(name, r.shape, worst, rel, at, None if at is None else float(a[at]),
                                     None if at is None else float(b[at]), rb, ab, None,
                                     int(bad.sum()), first_bad))
    return CompareReport(rows, [n for n in ref_names if n not in cand], file_names=ref_files,
                         allow_missing=allow_missing, allow_non_finite=allow_non_finite)
