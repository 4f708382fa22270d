#!/usr/bin/env python3
"""What the device scripts do with the `cce bench --json` files they leave in OUT: one line per
row (run name, kind, median and minimum seconds, peak and later calls' peak, tile kernel, the
filter note of a loss+grad row (kept segments, token blocks), and for runs under mpirun each
rank's peak, bytes sent, communication time and saved logits), then every run in one JSON file.

    python3 scripts/device/collect_bench.py OUT PATTERN [NAME.json]

PATTERN is a glob within OUT (e.g. '*_r*.json'); with NAME the runs go into OUT/NAME.json
(keyed by file name, without .json) and the run files are removed."""
import glob
import json
import os
import sys


def line(name: str, run: dict, row: dict) -> str:
    text = f'{name:16s} {row["kind"]:10s} median {row["median_seconds"]:.3f} min {row["min_seconds"]:.3f}'
    if "peak_bytes" in row:
        text += f' peak {row["peak_bytes"] / 1e6:.1f}MB'
    if row.get("later_peak_bytes") is not None:
        text += f' later {row["later_peak_bytes"] / 1e6:.1f}MB'
    if "ranks" in run:
        text += f' {run["ranks"]}x{run.get("threads_per_rank", "?")}'
    if "loss" in row:
        text += f' loss {row["loss"]:.6f}'
    text += f' {row.get("kernel", "")}'
    if row["kind"] == "loss+grad" and run.get("filter"):
        text += f' | {run["filter"]}'
    for r in row.get("ranks", []):
        text += (f' r{r["rank"]}:peak {r["peak_bytes"] / 1e6:.1f}MB sent {r.get("sent_bytes", 0) / 1e6:.2f}MB'
                 f' comm {r.get("communication_seconds_per_step", 0):.3f}s'
                 + (f' saved {r["saved_logits"]}' if r.get("saved_logits") else ''))
    return text


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    out, pattern = argv[1], argv[2]
    runs = {}
    files = sorted(glob.glob(os.path.join(out, pattern)))
    for f in files:
        name = os.path.basename(f)[:-5]
        try:
            runs[name] = json.load(open(f))
        except Exception as e:   # a run that failed: its .err says why
            err = f[:-5] + ".err"
            print(name, "unreadable:", e, open(err).read()[-600:] if os.path.exists(err) else "")
            continue
        for row in runs[name]["rows"]:
            print(line(name, runs[name], row))
    if len(argv) == 4:
        json.dump(runs, open(os.path.join(out, argv[3]), "w"), indent=1, sort_keys=True)
        for f in files:
            os.remove(f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
