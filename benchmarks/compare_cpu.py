"""Did anything that was fast get slower? ``auto``'s ratios in two runs of benchmarks/cpu.py.

Each run's ratio is attend ``auto``'s time over SDPA's in the same run (SDPA causal for the
causal variants), so the two runs can be compared on one machine across days. A cell counts
as *fast before* when its earlier ratio was at most ``--fast`` (default 1.5x). It counts as
*slower* when its ratio grew by more than ``--tolerance`` (default 15%). That is about the
spread of one cell between two runs of the same code on this machine:
``benchmarks/results/cpu.md`` names the spreads measured. Cells missing from either run are
listed apart. Runs before commit 035c1fd timed the reference once per shape; later runs time it
side by side with each cell. A comparison across that change mixes the two ways, and the
results file says so.

    python benchmarks/compare_cpu.py OLD NEW [--out FILE]

OLD and NEW are results files (``benchmarks/results/cpu.json``), or ``git:REV`` for that
file as committed at REV.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess

from _machine import RESULTS, results_path, write_results

DEFAULT_FILE = "benchmarks/results/cpu.json"


def load(where: str) -> dict:
    if where.startswith("git:"):
        rev = where[4:]
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        text = subprocess.run(["git", "show", f"{rev}:{DEFAULT_FILE}"], cwd=root, check=True, capture_output=True,
                              text=True).stdout
        return json.loads(text)
    with open(where) as f:
        return json.load(f)


def auto_ratios(run: dict) -> dict:
    out = {}
    for row in run["rows"]:
        if row["method"] == "auto" and row.get("ratio_value") is not None:
            out[(row["shape"], row["variant"], row["pass"])] = (row["ratio_value"], row.get("note", ""))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--fast", type=float, default=1.5, help="an earlier ratio at most this counts as fast")
    ap.add_argument("--tolerance", type=float, default=0.15, help="growth above this fraction counts as slower")
    ap.add_argument("--out", default=os.path.join(RESULTS, "cpu-compare.md"))
    args = ap.parse_args()
    old_run, new_run = load(args.old), load(args.new)
    old, new = auto_ratios(old_run), auto_ratios(new_run)
    rows, slower, missing, data = [], [], [], []
    for key in sorted(set(old) | set(new)):
        if key not in old or key not in new:
            missing.append(f"{' '.join(key)} ({'only in the new run' if key in new else 'only in the old run'})")
            continue
        (r0, n0), (r1, n1) = old[key], new[key]
        change = r1 / r0 - 1
        fast = r0 <= args.fast
        worse = fast and change > args.tolerance
        data.append({"shape": key[0], "variant": key[1], "pass": key[2], "old": r0, "new": r1, "change": change,
                     "fast_before": fast, "slower": worse})
        mark = " **slower**" if worse else ""
        rows.append(f"| {key[0]} | {key[1]} | {key[2]} | {r0:.2f}x {n0} | {r1:.2f}x {n1} | {change:+.0%}{mark} |")
        if worse:
            slower.append(f"{' '.join(key)}: {r0:.2f}x -> {r1:.2f}x")
    body = [
        f"Old: `{args.old}` ({old_run.get('date', '?')}, `{old_run.get('command', '?')}`); "
        f"new: `{args.new}` ({new_run.get('date', '?')}, `{new_run.get('command', '?')}`).",
        "",
        f"attend `auto` over SDPA, each in its own run. Fast before: an old ratio of at most {args.fast}x. "
        f"Slower: more than {args.tolerance:.0%} above the old ratio." + " Runs before commit 035c1fd timed "
        "SDPA once per shape, later ones side by side with each cell: across that change, part of a "
        "difference can be the timing's.",
        "",
        f"**{len(slower)} of {sum(d['fast_before'] for d in data)} cells that were fast got slower**"
        + (": " + "; ".join(slower) if slower else "."),
        "",
        "| shape | variant | pass | old | new | change |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    if missing:
        body += ["", "Not in both runs: " + "; ".join(missing)]
    write_results(results_path(args.out), "attend auto on the CPU: two runs of benchmarks/cpu.py compared", body,
                  data={"cells": data, "slower": slower})


if __name__ == "__main__":
    main()
