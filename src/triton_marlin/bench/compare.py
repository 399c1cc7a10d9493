"""Compare two benchmark result files (JSON lines): ``python -m triton_marlin.bench.compare OLD NEW``.

Records are matched by (benchmark, case, metric). For each match the ratio NEW / OLD is printed; where both
records carry timing samples (scripts run with ``--samples``) the A/B statistics of :func:`ab_from_samples` say
whether the change is significant. The two runs were not interleaved, so drift between them (clocks,
temperature, other load) is not controlled: rerun both sides on the same machine, close together in time.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .ab import ab_from_samples

__all__ = ["load_records", "compare_records", "main"]


def load_records(path: str | Path) -> list[dict]:
    records = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not a JSON record ({exc})") from None
        for key in ("benchmark", "case", "metric", "value", "unit"):
            if key not in rec:
                raise ValueError(f"{path}:{lineno}: record lacks {key!r}")
        records.append(rec)
    return records


def _key(rec: dict) -> tuple:
    return rec["benchmark"], json.dumps(rec["case"], sort_keys=True), rec["metric"]


def compare_records(old: list[dict], new: list[dict], alpha: float = 0.05) -> list[dict]:
    """One row per (benchmark, case, metric) present in both: old and new values, ratio new/old, and, with
    samples on both sides, the A/B verdict (A = new, B = old)."""
    old_by_key = {_key(r): r for r in old}
    rows = []
    for rec in new:
        base = old_by_key.get(_key(rec))
        if base is None:
            continue
        row = {"benchmark": rec["benchmark"], "case": rec["case"], "metric": rec["metric"], "unit": rec["unit"],
               "old": base["value"], "new": rec["value"],
               "ratio": rec["value"] / base["value"] if base["value"] else None}
        s_old = (base.get("stats") or {}).get("samples_us")
        s_new = (rec.get("stats") or {}).get("samples_us")
        if s_old and s_new and len(s_old) >= 2 and len(s_new) >= 2:
            res = ab_from_samples(s_new, s_old, "new", "old", alpha=alpha)
            row.update(ci_low=res.ratio_ci_low, ci_high=res.ratio_ci_high, mwu_p=res.mwu_p, verdict=res.verdict)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m triton_marlin.bench.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old", help="baseline results (JSON lines)")
    p.add_argument("new", help="results to compare (JSON lines)")
    p.add_argument("--metric", action="append", default=None, help="only these metrics (repeatable)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level")
    a = p.parse_args(argv)
    rows = compare_records(load_records(a.old), load_records(a.new), alpha=a.alpha)
    if a.metric:
        rows = [r for r in rows if r["metric"] in a.metric]
    if not rows:
        print("no (benchmark, case, metric) in common")
        return 1
    from .runner import format_table
    table = [{"case": {"benchmark": r["benchmark"], **r["case"]}, "metric": r["metric"],
              "value": r["ratio"] if r["ratio"] is not None else float("nan"), "unit": "new/old",
              "stats": None, "roofline": None,
              **({k: r[k] for k in ("ci_low", "ci_high", "verdict")} if "verdict" in r else {})} for r in rows]
    print(format_table(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
