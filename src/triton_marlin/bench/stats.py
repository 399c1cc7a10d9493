"""Two-sample statistics for A/B timing comparisons, in numpy only (scipy is not a runtime dependency).

* :func:`welch_t_test` - Welch's unequal-variance t-test, two-sided p from the Student t distribution
  (regularized incomplete beta by continued fraction).
* :func:`mann_whitney_u` - Mann-Whitney U, exact null distribution for small samples without ties,
  normal approximation with tie and continuity correction otherwise (scipy's ``method="auto"`` rule).
* :func:`bootstrap_ratio_ci` - percentile bootstrap CI of median(a) / median(b).
* :func:`cohens_d`, :func:`cliffs_delta` - effect sizes.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = [
    "TTestResult", "MWUResult", "welch_t_test", "mann_whitney_u", "bootstrap_ratio_ci",
    "cohens_d", "cliffs_delta", "student_t_sf", "normal_sf", "regularized_incomplete_beta",
]


def _as_sample(x, name: str, min_size: int = 1) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).ravel()
    if arr.size < min_size:
        raise ValueError(f"{name}: expected at least {min_size} values, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    return arr


# ---------------------------------------------------------------- distributions

def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function, evaluated by the modified Lentz method."""
    tiny = 1e-300
    c = 1.0
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        # even step
        num = m * (b - m) * x / ((a + m2 - 1.0) * (a + m2))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        # odd step
        num = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if a <= 0 or b <= 0:
        raise ValueError(f"a, b: expected positive shape parameters, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x: expected a value in [0, 1], got {x}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    # The continued fraction converges fast for x < (a+1)/(a+b+2); use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom (df may be fractional)."""
    if df <= 0:
        raise ValueError(f"df: expected > 0, got {df}")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


# ---------------------------------------------------------------- tests

@dataclasses.dataclass(frozen=True)
class TTestResult:
    statistic: float
    pvalue: float
    df: float


def welch_t_test(a, b) -> TTestResult:
    """Welch's two-sided t-test of equal means without assuming equal variances."""
    a = _as_sample(a, "a", 2)
    b = _as_sample(b, "b", 2)
    va = a.var(ddof=1) / a.size
    vb = b.var(ddof=1) / b.size
    se2 = va + vb
    diff = a.mean() - b.mean()
    if se2 == 0.0:
        # Both samples constant: the means are equal (p = 1) or differ with certainty (p = 0).
        return TTestResult(0.0 if diff == 0 else math.copysign(math.inf, diff),
                           1.0 if diff == 0 else 0.0, float(a.size + b.size - 2))
    t = diff / math.sqrt(se2)
    df = se2 ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    p = min(1.0, 2.0 * student_t_sf(abs(t), df))
    return TTestResult(float(t), float(p), float(df))


@dataclasses.dataclass(frozen=True)
class MWUResult:
    statistic: float  # U of the first sample: pairs (a_i, b_j) with a_i > b_j, ties counted 1/2
    pvalue: float
    method: str


def _rank_with_ties(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks (1-based) and the sizes of the tie groups."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    boundaries = np.flatnonzero(np.diff(sorted_x)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [x.size]))
    ranks = np.empty(x.size, dtype=np.float64)
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks, (ends - starts)


def _mwu_exact_sf(u: int, n1: int, n2: int) -> float:
    """P(U >= u) under the null, by counting rank arrangements (no ties)."""
    # counts[k] = number of arrangements of n1 'a' and n2 'b' values with U = k, built one sample size
    # at a time with the recurrence f(m, n, k) = f(m-1, n, k-n) + f(m, n-1, k).
    prev_row = None  # f(m-1, n, .) for n = 0..n2
    for m in range(n1 + 1):
        row = []
        for n in range(n2 + 1):
            arr = np.zeros(m * n + 1, dtype=np.float64)
            if m == 0 or n == 0:
                arr[0] = 1.0
            else:
                from_m = prev_row[n]
                arr[n:n + from_m.size] += from_m
                from_n = row[n - 1]
                arr[:from_n.size] += from_n
            row.append(arr)
        prev_row = row
    counts = prev_row[n2]
    total = counts.sum()
    u = max(int(u), 0)
    return float(counts[u:].sum() / total) if u < counts.size else 0.0


def mann_whitney_u(a, b, method: str = "auto", continuity: bool = True) -> MWUResult:
    """Two-sided Mann-Whitney U test.

    ``method="auto"`` uses the exact null distribution when one sample has at most 8 values and there
    are no ties, else the normal approximation (with tie correction and, if ``continuity``, a 0.5
    continuity correction).
    """
    a = _as_sample(a, "a")
    b = _as_sample(b, "b")
    if method not in ("auto", "exact", "asymptotic"):
        raise ValueError(f"method: expected 'auto', 'exact' or 'asymptotic', got {method!r}")
    n1, n2 = a.size, b.size
    ranks, tie_sizes = _rank_with_ties(np.concatenate((a, b)))
    u1 = ranks[:n1].sum() - n1 * (n1 + 1) / 2.0
    u2 = n1 * n2 - u1
    has_ties = bool(np.any(tie_sizes > 1))
    if method == "auto":
        method = "exact" if (min(n1, n2) <= 8 and not has_ties) else "asymptotic"
    u_big = max(u1, u2)
    if method == "exact":
        p = 2.0 * _mwu_exact_sf(int(round(u_big)), n1, n2)
    else:
        n = n1 + n2
        tie_term = float(np.sum(tie_sizes.astype(np.float64) ** 3 - tie_sizes))
        var = n1 * n2 / 12.0 * ((n + 1) - tie_term / (n * (n - 1)))
        if var <= 0:
            return MWUResult(float(u1), 1.0, method)
        num = u_big - n1 * n2 / 2.0 - (0.5 if continuity else 0.0)
        p = 2.0 * normal_sf(num / math.sqrt(var))
    return MWUResult(float(u1), float(min(1.0, max(0.0, p))), method)


# ---------------------------------------------------------------- bootstrap and effect sizes

def bootstrap_ratio_ci(a, b, confidence: float = 0.95, n_boot: int = 4000, seed: int = 0,
                       stat=np.median) -> tuple[float, float, float]:
    """``(ratio, low, high)``: stat(a)/stat(b) and its percentile bootstrap CI.

    Each sample is resampled with replacement independently, ``n_boot`` times.
    """
    a = _as_sample(a, "a")
    b = _as_sample(b, "b")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a value in (0, 1), got {confidence}")
    if n_boot < 100:
        raise ValueError(f"n_boot: expected >= 100 resamples, got {n_boot}")
    if stat(b) == 0:
        raise ValueError("b: its statistic is 0, the ratio is undefined")
    rng = np.random.default_rng(seed)
    ratios = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, 2_000_000 // max(a.size, b.size))  # bound the index matrices' memory
    for lo in range(0, n_boot, chunk):
        hi = min(n_boot, lo + chunk)
        ia = rng.integers(0, a.size, size=(hi - lo, a.size))
        ib = rng.integers(0, b.size, size=(hi - lo, b.size))
        ratios[lo:hi] = stat(a[ia], axis=1) / stat(b[ib], axis=1)
    alpha = 1.0 - confidence
    low, high = np.percentile(ratios, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(stat(a) / stat(b)), float(low), float(high)


def cohens_d(a, b) -> float:
    """(mean(a) - mean(b)) / pooled standard deviation (ddof=1)."""
    a = _as_sample(a, "a", 2)
    b = _as_sample(b, "b", 2)
    pooled = ((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2)
    diff = a.mean() - b.mean()
    if pooled == 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return float(diff / math.sqrt(pooled))


def cliffs_delta(a, b) -> float:
    """P(a > b) - P(a < b) over all pairs, in [-1, 1]."""
    a = _as_sample(a, "a")
    b = _as_sample(b, "b")
    sorted_b = np.sort(b)
    below = np.searchsorted(sorted_b, a, side="left")           # b values < a_i
    above = b.size - np.searchsorted(sorted_b, a, side="right")  # b values > a_i
    return float((below.sum() - above.sum()) / (a.size * b.size))
