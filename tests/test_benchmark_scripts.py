"""Every benchmark script runs on CPU with --quick and writes the JSON records it promises.

Scripts are discovered: every benchmarks/*.py and scripts/*.py except helpers whose name starts with "_" and
mixed_precision_bench.py (a library other scripts import).
"""
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_SCRIPTS = {"mixed_precision_bench.py"}
REQUIRED = ("benchmark", "case", "device", "metric", "value", "unit")
TIMEOUT_S = 120


def discover():
    found = []
    for folder in ("benchmarks", "scripts"):
        for path in sorted((ROOT / folder).glob("*.py")):
            if path.name.startswith("_") or path.name in NOT_SCRIPTS:
                continue
            found.append(path)
    return found


SCRIPTS = discover()


def _env(baseline=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")  # 2-core CI: one thread per script keeps timings sane and fast
    if baseline is not None:
        env["TRITON_MARLIN_BASELINE"] = str(baseline)
    return env


def _run(args, cwd, baseline=None, timeout=TIMEOUT_S):
    try:
        return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=_env(baseline), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(exc.cmd, returncode=None, stdout=str(exc.stdout or ""),
                                           stderr=f"timed out after {timeout} s")


def _ok(proc, what):
    if proc.returncode is None:
        pytest.fail(f"{what} did not finish in time; --quick runs must take seconds\n{proc.stdout[-2000:]}")
    assert proc.returncode == 0, f"{what}: exit {proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\n" \
                                 f"stderr:\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def baseline_file(tmp_path_factory):
    """One quick baseline file for every script of this module (so none measures its own)."""
    path = tmp_path_factory.mktemp("baseline") / "baseline.json"
    proc = _run([ROOT / "benchmarks" / "baseline_benchmark.py", "--quick", "--device", "cpu", "--save",
                 "--baseline-out", path], cwd=path.parent)
    _ok(proc, "baseline_benchmark.py --quick --save")
    data = json.loads(path.read_text())
    assert data["copy_GBps"] > 0
    assert all(data["matmul_TFLOPs"][dt] > 0 for dt in ("float16", "bfloat16", "float32"))
    return path


@pytest.fixture(scope="module")
def runs(request, baseline_file, tmp_path_factory):
    """Start every selected script run at once, one per CPU core; each test waits for its own run."""
    wanted = set()
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.module is request.module and "script" in params:
            wanted.add((item.originalname, params["script"]))
    pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2))
    futures = {}
    for test, script in sorted(wanted, key=str):
        if test == "test_script_help":
            futures[test, script] = pool.submit(_run, [script, "--help"], ROOT, None, 60)
        else:
            tmp = tmp_path_factory.mktemp(script.stem)
            out = tmp / "out.jsonl"
            futures[test, script] = pool.submit(
                lambda s=script, o=out, t=tmp: (_run([s, "--quick", "--device", "cpu", "--output", o], t,
                                                     baseline_file), o))
    yield futures
    pool.shutdown(cancel_futures=True)


def test_discovery_finds_the_foundation_scripts():
    names = {p.name for p in SCRIPTS}
    assert {"bench_clean.py", "baseline_benchmark.py", "ab_test_kernels.py", "bench_quantization.py"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_help(script, runs):
    proc = runs["test_script_help", script].result()
    _ok(proc, f"{script.name} --help")
    assert "--quick" in proc.stdout and "--output" in proc.stdout and "--device" in proc.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_quick_cpu(script, runs):
    proc, out = runs["test_script_quick_cpu", script].result()
    _ok(proc, f"{script.name} --quick --device cpu")
    assert out.is_file(), f"{script.name} wrote no --output file"
    lines = [line for line in out.read_text().splitlines() if line.strip()]
    assert lines, f"{script.name} recorded nothing"
    for line in lines:
        rec = json.loads(line)
        missing = [k for k in REQUIRED if k not in rec]
        assert not missing, f"record lacks {missing}: {rec}"
        assert rec["benchmark"] == script.stem, "BenchRunner's name should be the script's file name"
        assert isinstance(rec["case"], dict)
        assert rec["device"] == "cpu"
        assert isinstance(rec["metric"], str) and rec["metric"]
        assert isinstance(rec["unit"], str)
        assert isinstance(rec["value"], (int, float)) and math.isfinite(rec["value"]), rec
    assert "metric" in proc.stdout, "the closing table is missing from stdout"


def test_readme_lists_every_script():
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    missing = [p.name for p in SCRIPTS if f"`{p.name}`" not in readme]
    assert not missing, f"add a row for {missing} to the Quick Reference table of benchmarks/README.md"
