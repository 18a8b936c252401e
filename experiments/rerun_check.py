"""Does a rerun of an experiment reproduce its committed results?

Walks a committed ``summary.json`` (or ``frontier.json``) and a rerun's side by side, rows matched by what they
are about. Every number ``x`` with a 95% interval beside it (``x_ci95``, or ``x_lo``/``x_hi`` for a bounded
quantity) is checked against the committed interval: is the rerun's mean inside it, and is it the same to
rounding? Every verdict is compared as written. A rerun repeats a
result bitwise only with the same torch thread count and library versions (the results' machine line names
them); elsewhere its training differs by float summation order, and this says how far the numbers moved.

    python experiments/luck/run.py work_dir=outputs/rerun/luck results_dir=outputs/rerun/luck/results
    python experiments/rerun_check.py experiments/luck/results/summary.json outputs/rerun/luck/results/summary.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def cells(committed, rerun, path: str = ""):
    """Yield (path, name, committed mean, committed 95% interval (low, high), rerun mean), and (path, name, committed
    verdict, None, rerun verdict) for every key that names a verdict."""
    if isinstance(committed, dict) and isinstance(rerun, dict):
        for key, value in committed.items():
            if key not in rerun:
                continue
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if number and f"{key}_ci95" in committed and finite(committed[f"{key}_ci95"]):
                half = committed[f"{key}_ci95"]
                yield path, key, value, (value - half, value + half), rerun[key]
            elif number and f"{key}_lo" in committed and f"{key}_hi" in committed:  # a bounded quantity's interval
                yield path, key, value, (committed[f"{key}_lo"], committed[f"{key}_hi"]), rerun[key]
            elif "verdict" in key and isinstance(value, str):
                yield path, key, value, None, rerun[key]
            elif isinstance(value, (dict, list)):
                yield from cells(value, rerun[key], f"{path}/{key}")
    elif isinstance(committed, list) and isinstance(rerun, list):
        for name, a, b in pairs(committed, rerun):
            yield from cells(a, b, f"{path}[{name}]")


IDENTITY = ("label", "target_spec", "budget", "cost_target", "cost_limit", "cost_bound", "cost", "target", "q", "curve", "return")


def identity(row) -> tuple:
    """What a row of a results list is about (a policy and target, a budget and the families compared, ...)."""
    if not isinstance(row, dict):
        return ()
    names = [k for k in IDENTITY if k in row and f"{k}_ci95" not in row and not isinstance(row[k], (dict, list))]  # not a metric
    if "target_spec" in names and "target" in names:
        names.remove("target")  # the spec names the row; the resolved return is a measurement
    key = tuple(str(row[k]) for k in names)
    return key + tuple(f"vs {row[side]['family']}" for side in ("reference", "other") if isinstance(row.get(side), dict))


def pairs(committed: list, rerun: list):
    """The rows of two results lists matched by what each is about (by position where that is not unique)."""
    keys_a, keys_b = [identity(r) for r in committed], [identity(r) for r in rerun]
    if all(keys_a) and len(set(keys_a)) == len(keys_a) and len(set(keys_b)) == len(keys_b):
        by_key = dict(zip(keys_b, rerun))
        return [(" ".join(k), a, by_key[k]) for k, a in zip(keys_a, committed) if k in by_key]
    if len(committed) != len(rerun):
        return []
    return [(" ".join(k) or str(i), a, b) for i, (k, a, b) in enumerate(zip(keys_a, committed, rerun))]


def finite(*xs) -> bool:
    return all(isinstance(x, (int, float)) and x is not None and math.isfinite(x) for x in xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("committed", type=Path)
    ap.add_argument("rerun", type=Path)
    ap.add_argument("--list", type=int, default=20, help="how many numbers outside the committed interval to list")
    args = ap.parse_args()
    try:
        committed, rerun = (json.loads(p.read_text()) for p in (args.committed, args.rerun))
    except (OSError, ValueError) as exc:
        print(f"rerun_check: error: {exc}", file=sys.stderr)
        sys.exit(2)
    found = list(cells(committed, rerun))
    numbers = [c for c in found if c[3] is not None and finite(c[2], *c[3], c[4])]
    verdicts = [c for c in found if c[3] is None]
    same = [c for c in numbers if abs(c[4] - c[2]) <= 1e-6 * max(1.0, abs(c[2]))]
    outside = [c for c in numbers if not c[3][0] <= c[4] <= c[3][1]]
    changed = [c for c in verdicts if c[2] != c[4]]
    print(f"{args.rerun} against {args.committed}:")
    print(f"  {len(numbers)} means with a committed 95% interval: {len(same)} the same to rounding, "
          f"{len(numbers) - len(outside)} inside the committed interval, {len(outside)} outside")
    for path, name, a, (low, high), b in outside[: args.list]:
        print(f"    outside: {path} {name}: committed {a:.4g} [{low:.4g}, {high:.4g}], rerun {b:.4g}")
    print(f"  {len(verdicts)} verdicts: {len(verdicts) - len(changed)} the same, {len(changed)} changed")
    for path, name, a, _, b in changed:
        print(f"    changed: {path} {name}: committed '{a}', rerun '{b}'")


if __name__ == "__main__":
    main()
