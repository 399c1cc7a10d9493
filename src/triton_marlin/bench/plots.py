"""Optional PNG plots of benchmark records (matplotlib is an optional dependency)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

__all__ = ["have_matplotlib", "plot_lines"]


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_lines(records: list[dict], x: str, series: str, path: str | Path, *, metric: str | None = None,
               title: str | None = None, logx: bool = False, logy: bool = False) -> Path | None:
    """One line per value of ``case[series]``, ``value`` against ``case[x]``.

    Returns the PNG path, or ``None`` (with the reason printed) when matplotlib is not installed.
    """
    if not have_matplotlib():
        print(f"note: matplotlib is not installed; skipping plot {path} (pip install matplotlib)")
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if metric is None or r["metric"] == metric]
    if not rows:
        raise ValueError(f"records: none with metric {metric!r} to plot")
    units = {r["unit"] for r in rows}
    lines: dict = defaultdict(list)
    for r in rows:
        if x not in r["case"] or series not in r["case"]:
            raise ValueError(f"records: case {r['case']} lacks the key {x!r} or {series!r}")
        lines[r["case"][series]].append((r["case"][x], r["value"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, pts in sorted(lines.items(), key=lambda kv: str(kv[0])):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=str(label))
    ax.set_xlabel(x)
    ax.set_ylabel(f"{metric or 'value'} ({', '.join(sorted(units))})")
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(title=series)
    if title:
        ax.set_title(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
