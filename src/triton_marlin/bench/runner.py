"""BenchRunner: the standard command line, the JSON-lines records and the closing table of a benchmark script."""
from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import math
import platform
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..device import device_name, select_device
from .timing import Stats

__all__ = ["BenchRunner", "RECORD_FIELDS", "format_table"]

# Fields every JSON record carries.
RECORD_FIELDS = ("benchmark", "case", "device", "gpu", "metric", "value", "unit", "stats", "roofline",
                 "version", "commit", "torch", "triton", "timestamp")

DEFAULT_WARMUP, DEFAULT_REPEATS = 10, 50
QUICK_WARMUP, QUICK_REPEATS = 2, 5


@functools.lru_cache(maxsize=None)
def _versions() -> dict:
    from .. import __version__
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = None
    commit = None
    try:
        repo = Path(__file__).resolve().parents[3]
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0:
            commit = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"version": __version__, "commit": commit, "torch": torch.__version__, "triton": triton_version,
            "python": platform.python_version()}


def _fmt(v) -> str:
    if isinstance(v, float):
        if v == 0 or (1e-3 <= abs(v) < 1e6):
            return f"{v:.4g}"
        return f"{v:.3e}"
    return str(v)


def _one_table(records: list[dict]) -> str:
    case_keys: list[str] = []
    for r in records:
        for k in r["case"]:
            if k not in case_keys:
                case_keys.append(k)
    has_stats = any(r.get("stats") for r in records)
    has_roof = any(r.get("roofline") is not None for r in records)
    has_ci = any("ci_low" in r for r in records)
    has_verdict = any("verdict" in r for r in records)
    header = case_keys + ["metric", "value", "unit"] + (["p10..p90 us"] if has_stats else []) + \
        (["roofline"] if has_roof else []) + (["CI"] if has_ci else []) + (["verdict"] if has_verdict else [])
    rows = []
    for r in records:
        row = [_fmt(r["case"].get(k, "")) for k in case_keys] + [r["metric"], _fmt(r["value"]), r["unit"]]
        if has_stats:
            s = r.get("stats")
            row.append(f"{_fmt(s['p10_us'])}..{_fmt(s['p90_us'])}" if s else "")
        if has_roof:
            row.append(f"{100 * r['roofline']:.1f}%" if r.get("roofline") is not None else "")
        if has_ci:
            row.append(f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]" if "ci_low" in r else "")
        if has_verdict:
            row.append(str(r.get("verdict", "")))
        rows.append(row)
    widths = [max(len(str(h)), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    numeric = {header.index("value")}

    def line(cells):
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def format_table(records: list[dict]) -> str:
    """Plain-text tables: one row per record, case keys as columns; records whose cases have different keys
    go to separate tables (in order of first appearance)."""
    if not records:
        return "(no records)"
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r["case"]), []).append(r)
    return "\n\n".join(_one_table(g) for g in groups.values())


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the script docstring's layout; shows a flag's default only when it says something."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


class BenchRunner:
    """The shell of a benchmark script.

    ``BenchRunner(name, description, add_args)`` parses the command line at once (``argv`` for tests):
    standard flags ``--device --quick --output --warmup --repeats --seed`` plus what ``add_args(parser)``
    adds. ``runner.args.device`` is a ``torch.device`` chosen by :func:`triton_marlin.device.select_device`
    (falling back with a warning). Records go to ``--output`` as JSON lines as they are made; ``finish()``
    prints the table.
    """

    def __init__(self, name: str, description: str = "", add_args: Callable[[argparse.ArgumentParser], object]
                 | None = None, argv: list[str] | None = None):
        if not name or not isinstance(name, str):
            raise ValueError(f"name: expected the benchmark's name, got {name!r}")
        self.name = name
        parser = argparse.ArgumentParser(prog=name, description=description, formatter_class=_HelpFormatter)
        std = parser.add_argument_group("standard benchmark options")
        std.add_argument("--device", default="auto",
                         help="auto | cuda | cuda:N | mps | cpu (an unavailable device falls back with a warning)")
        std.add_argument("--quick", action="store_true",
                         help="small cases and few repeats: a smoke run that takes seconds")
        std.add_argument("--output", "-o", default=None, metavar="PATH",
                         help="write one JSON record per figure to PATH (JSON lines)")
        std.add_argument("--warmup", type=int, default=None,
                         help=f"untimed calls before timing (default {DEFAULT_WARMUP}; {QUICK_WARMUP} with --quick)")
        std.add_argument("--repeats", type=int, default=None,
                         help=f"timed samples per case (default {DEFAULT_REPEATS}; {QUICK_REPEATS} with --quick)")
        std.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
        std.add_argument("--samples", action="store_true",
                         help="keep every timing sample in the records (stats.samples_us), for later comparison "
                              "with python -m triton_marlin.bench.compare")
        std.add_argument("--plot-dir", default=None, metavar="DIR",
                         help="write PNG plots (where the script draws any) into DIR; needs matplotlib")
        std.add_argument("--threads", type=int, default=None,
                         help="CPU threads torch may use (default: torch's choice); 1 gives steadier CPU timings "
                              "on a shared machine")
        if add_args is not None:
            add_args(parser)
        self.parser = parser
        args = parser.parse_args(argv)
        if args.warmup is None:
            args.warmup = QUICK_WARMUP if args.quick else DEFAULT_WARMUP
        if args.repeats is None:
            args.repeats = QUICK_REPEATS if args.quick else DEFAULT_REPEATS
        if args.warmup < 0:
            parser.error(f"--warmup: expected >= 0, got {args.warmup}")
        if args.repeats < 1:
            parser.error(f"--repeats: expected >= 1, got {args.repeats}")
        try:
            args.device = select_device(args.device)
        except (ValueError, RuntimeError) as exc:
            parser.error(f"--device: {exc}")
        if args.threads is not None:
            if args.threads < 1:
                parser.error(f"--threads: expected >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        self.args = args
        self.device = args.device
        self.gpu = device_name(args.device)
        self.records: list[dict] = []
        self.notes: list[str] = []
        self._baseline = None
        self._out = None
        if args.output:
            path = Path(args.output)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._out = open(path, "w")
        v = _versions()
        print(f"# {name} on {self.gpu} ({self.device}); torch {v['torch']}, triton {v['triton']}, "
              f"triton_marlin {v['version']}{' @ ' + v['commit'] if v['commit'] else ''}"
              f"{' [quick]' if args.quick else ''}", flush=True)

    # ------------------------------------------------------------------ records
    def record(self, case: dict, metric: str, value: float, unit: str, stats: Stats | dict | None = None,
               roofline: float | None = None, **extra) -> dict:
        """Add one figure. ``case`` says what was measured (shape, dtype, ...); ``roofline`` is the fraction of
        the device's measured ceiling it reaches; ``extra`` keys go into the record as they are."""
        if not isinstance(case, dict):
            raise TypeError(f"case: expected a dict describing the case, got {type(case).__name__}")
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"metric: expected a non-empty name, got {metric!r}")
        if not isinstance(unit, str):
            raise TypeError(f"unit: expected a string, got {type(unit).__name__}")
        if isinstance(value, torch.Tensor):
            value = value.item()
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"value: metric {metric!r} of case {case} is {value}; expected a finite number")
        if roofline is not None:
            roofline = float(roofline)
            if not math.isfinite(roofline):
                raise ValueError(f"roofline: expected a finite fraction, got {roofline}")
        if isinstance(stats, Stats):
            stats = stats.to_dict(with_samples=self.args.samples)
        clash = set(extra) & set(RECORD_FIELDS)
        if clash:
            raise ValueError(f"extra: keys {sorted(clash)} are reserved record fields")
        v = _versions()
        rec = {
            "benchmark": self.name,
            "case": {k: _jsonable(val) for k, val in case.items()},
            "device": str(self.device),
            "gpu": self.gpu,
            "metric": metric,
            "value": value,
            "unit": unit,
            "stats": stats,
            "roofline": roofline,
            "version": v["version"],
            "commit": v["commit"],
            "torch": v["torch"],
            "triton": v["triton"],
            "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        rec.update({k: _jsonable(val) for k, val in extra.items()})
        self.records.append(rec)
        if self._out is not None:
            self._out.write(json.dumps(rec) + "\n")
            self._out.flush()
        return rec

    def record_timing(self, case: dict, stats: Stats, *, bytes_moved: float | None = None,
                      flops: float | None = None, dtype: torch.dtype | str = torch.float16, metric: str = "time",
                      **extra) -> list[dict]:
        """Record a timing and what follows from it: ``metric`` in us; with ``bytes_moved`` the bandwidth in GB/s
        against the measured copy bandwidth; with ``flops`` the rate in TFLOP/s against the measured matmul rate
        of ``dtype``. Returns the records made."""
        if not isinstance(stats, Stats):
            raise TypeError(f"stats: expected a Stats from time_fn, got {type(stats).__name__}")
        recs = [self.record(case, metric, stats.median_us, "us", stats=stats, **extra)]
        seconds = stats.median_us * 1e-6
        if bytes_moved is not None:
            gbps = bytes_moved / seconds / 1e9
            recs.append(self.record(case, "bandwidth", gbps, "GB/s", roofline=gbps / self.baseline()["copy_GBps"],
                                    **extra))
        if flops is not None:
            name = str(dtype).removeprefix("torch.")
            peak = self.baseline()["matmul_TFLOPs"].get(name)
            tflops = flops / seconds / 1e12
            recs.append(self.record(case, "rate", tflops, "TFLOP/s", roofline=tflops / peak if peak else None,
                                    **extra))
        return recs

    def note(self, text: str) -> None:
        """Print a remark now and again under the table (e.g. a measurement that does not apply here)."""
        self.notes.append(text)
        print(f"note: {text}", flush=True)

    # ------------------------------------------------------------------ helpers
    def progress(self, iterable: Iterable, desc: str | None = None, total: int | None = None):
        """Iterate with a progress bar on an interactive terminal (plain iteration otherwise)."""
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return iterable
        return tqdm(iterable, desc=desc, total=total, disable=None, leave=False, file=sys.stderr)

    def baseline(self) -> dict:
        """The measured ceilings of this device (see :func:`triton_marlin.bench.load_baseline`), loaded once."""
        if self._baseline is None:
            from .baseline import load_baseline
            self._baseline = load_baseline(self.device)
        return self._baseline

    def plot(self, name: str, x: str, series: str, metric: str, *, title: str | None = None,
             logx: bool = False, logy: bool = False, where: dict | Callable[[dict], bool] | None = None):
        """Plot ``metric`` against ``case[x]``, one line per ``case[series]``, into ``--plot-dir/<benchmark>_<name>.png``
        (records filtered by ``where``: a dict of case key -> value, or a predicate on the record). Does nothing
        without ``--plot-dir``."""
        if not self.args.plot_dir:
            return None
        from .plots import plot_lines
        if where is None or callable(where):
            keep = where or (lambda r: True)
        else:
            def keep(r):
                return all(r["case"].get(k) == v for k, v in where.items())
        rows = [r for r in self.records if r["metric"] == metric and x in r["case"] and series in r["case"]
                and keep(r)]
        if not rows:
            self.note(f"plot {name}: no {metric!r} records to draw")
            return None
        path = plot_lines(rows, x=x, series=series, metric=metric,
                          path=Path(self.args.plot_dir) / f"{self.name}_{name}.png",
                          title=title or f"{self.name} on {self.gpu}", logx=logx, logy=logy)
        if path is not None:
            print(f"plot: {path}")
        return path

    def finish(self) -> list[dict]:
        """Close the output file and print the table of every record (and the notes). Returns the records."""
        if self._out is not None:
            self._out.close()
            self._out = None
        print()
        print(format_table(self.records))
        for text in self.notes:
            print(f"note: {text}")
        if self.args.output:
            print(f"wrote {len(self.records)} records to {self.args.output}")
        sys.stdout.flush()
        return self.records

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.finish()
        elif self._out is not None:
            self._out.close()
            self._out = None
        return False


def _jsonable(v):
    if isinstance(v, torch.dtype):
        return str(v).removeprefix("torch.")
    if isinstance(v, torch.device):
        return str(v)
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        warnings.warn(f"non-finite value {v} in a record is written as null", RuntimeWarning, stacklevel=3)
        return None
    return v
