"""The benchmark harness: timing, Stats, BenchRunner records/table, baseline file."""
import json
import math
import time

import numpy as np
import pytest
import torch

from triton_marlin import bench
from triton_marlin.bench import BenchRunner, Stats, load_baseline, save_baseline, time_fn
from triton_marlin.bench.baseline import ENV_BASELINE


def test_stats_from_samples():
    samples = [5.0, 1.0, 3.0, 2.0, 4.0, 100.0]
    s = Stats.from_samples(samples)
    arr = np.array(samples)
    assert s.median_us == pytest.approx(np.median(arr))
    assert s.mean_us == pytest.approx(arr.mean())
    assert s.std_us == pytest.approx(arr.std(ddof=1))
    assert s.p10_us == pytest.approx(np.percentile(arr, 10))
    assert s.p90_us == pytest.approx(np.percentile(arr, 90))
    assert (s.n, s.min_us, s.max_us) == (6, 1.0, 100.0)
    assert "samples_us" not in s.to_dict()
    with pytest.raises(ValueError, match="finite"):
        Stats.from_samples([1.0, float("inf")])
    with pytest.raises(ValueError, match="at least one"):
        Stats.from_samples([])


def test_time_fn_measures_known_sleep():
    st = time_fn(lambda: time.sleep(0.002), device="cpu", warmup=1, repeats=5)
    assert st.n == 5
    assert 1900 <= st.median_us < 20000  # a 2 ms sleep never returns early; allow a loaded machine
    assert st.p10_us <= st.median_us <= st.p90_us


def test_time_fn_inner_divides_per_call():
    calls = []
    st = time_fn(lambda: (calls.append(1), time.sleep(0.001)), device="cpu", warmup=2, repeats=3, inner=4)
    assert len(calls) == 2 + 3 * 4
    assert st.median_us >= 900


def test_time_fn_setup_runs_untimed_before_each_sample():
    order = []
    st = time_fn(lambda: order.append("fn"), device="cpu", warmup=1, repeats=3,
                 setup=lambda: (order.append("setup"), time.sleep(0.01)))
    assert order == ["fn"] + ["setup", "fn"] * 3
    assert st.median_us < 5000  # the 10 ms sleep in setup is not timed


def test_time_fn_rejects_bad_arguments():
    with pytest.raises(TypeError, match="fn"):
        time_fn(3)
    with pytest.raises(ValueError, match="repeats"):
        time_fn(lambda: None, repeats=0)
    with pytest.raises(TypeError, match="warmup"):
        time_fn(lambda: None, warmup=1.5)
    with pytest.raises(ValueError, match="cuda_graph"):
        time_fn(lambda: None, device="cpu", cuda_graph=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_timing_excludes_launch_overhead():
    x = torch.randn(64, device="cuda")
    plain = time_fn(lambda: x.add_(1.0), device="cuda", warmup=5, repeats=30)
    graph = time_fn(lambda: x.add_(1.0), device="cuda", warmup=5, repeats=30, cuda_graph=True, graph_calls=20)
    assert graph.median_us < plain.median_us  # a tiny kernel is dominated by its launch
    big = torch.empty(64 << 20, device="cuda")
    fill = time_fn(lambda: big.fill_(1.0), device="cuda", warmup=3, repeats=10, cuda_graph=True)
    gbps = big.numel() * 4 / (fill.median_us * 1e-6) / 1e9
    assert 50 < gbps < 10000


def _runner(tmp_path, *extra, add_args=None):
    out = tmp_path / "out.jsonl"
    return BenchRunner("t_bench", description="test", add_args=add_args,
                       argv=["--device", "cpu", "--quick", "--output", str(out), *extra]), out


def test_runner_flags_and_records(tmp_path, capsys):
    runner, out = _runner(tmp_path, "--sizes", "3", "5",
                          add_args=lambda p: p.add_argument("--sizes", type=int, nargs="+", default=[1]))
    a = runner.args
    assert a.device == torch.device("cpu") and a.quick
    assert (a.warmup, a.repeats, a.sizes) == (2, 5, [3, 5])
    st = Stats.from_samples([1.0, 2.0, 3.0])
    runner.record({"M": 3, "dtype": torch.float16}, "time", st.median_us, "us", stats=st)
    runner.record({"M": 5, "dtype": torch.float16}, "bandwidth", 812.5, "GB/s", roofline=0.25, note="x")
    runner.note("strided case does not apply")
    recs = runner.finish()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == recs and len(lines) == 2
    for rec in lines:
        assert set(bench.RECORD_FIELDS) <= set(rec)
        assert rec["benchmark"] == "t_bench" and rec["device"] == "cpu" and rec["gpu"]
        assert math.isfinite(rec["value"])
    assert lines[0]["case"] == {"M": 3, "dtype": "float16"}
    assert lines[0]["stats"]["median_us"] == 2.0
    assert lines[1]["roofline"] == 0.25 and lines[1]["note"] == "x"
    text = capsys.readouterr().out
    table = text[text.index("metric"):]
    assert "bandwidth" in table and "25.0%" in table and "strided case does not apply" in table


def test_runner_defaults_without_quick(tmp_path):
    runner = BenchRunner("t", argv=["--device", "cpu"])
    assert (runner.args.warmup, runner.args.repeats, runner.args.output) == (10, 50, None)
    runner = BenchRunner("t", argv=["--device", "cpu", "--warmup", "0", "--repeats", "7"])
    assert (runner.args.warmup, runner.args.repeats) == (0, 7)


def test_runner_rejects_bad_records(tmp_path):
    runner, _ = _runner(tmp_path)
    with pytest.raises(ValueError, match="finite"):
        runner.record({"M": 1}, "time", float("nan"), "us")
    with pytest.raises(TypeError, match="case"):
        runner.record("M=1", "time", 1.0, "us")
    with pytest.raises(ValueError, match="reserved"):
        runner.record({"M": 1}, "time", 1.0, "us", device="x")
    runner.finish()


def test_runner_device_fallback_warns():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: nothing to fall back from")
    with pytest.warns(RuntimeWarning, match="falling back"):
        runner = BenchRunner("t", argv=["--device", "cuda", "--quick"])
    assert runner.args.device.type in ("mps", "cpu")


def test_runner_bad_flags_exit(capsys):
    with pytest.raises(SystemExit):
        BenchRunner("t", argv=["--device", "cpu", "--repeats", "0"])
    with pytest.raises(SystemExit):
        BenchRunner("t", argv=["--device", "tpu"])
    assert "--device" in capsys.readouterr().err


def test_format_table_aligns_columns_and_groups_by_case_keys():
    recs = [{"case": {"a": 1}, "metric": "time", "value": 12.5, "unit": "us", "stats": None, "roofline": None},
            {"case": {"a": 22}, "metric": "bw", "value": 1.5e9, "unit": "B/s", "stats": None, "roofline": 0.5},
            {"case": {"b": "x"}, "metric": "ratio", "value": 0.5, "unit": "x", "stats": None, "roofline": None,
             "ci_low": 0.4, "ci_high": 0.6, "verdict": "A faster"}]
    first, second = bench.format_table(recs).split("\n\n")
    lines = first.splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1  # every cell padded to its column
    assert "1.500e+09" in lines[3] and "50.0%" in lines[3] and "verdict" not in first
    assert second.splitlines()[0].split()[0] == "b"
    assert "[0.4, 0.6]" in second and "A faster" in second


def test_baseline_file_round_trip(tmp_path, monkeypatch):
    path = tmp_path / "base.json"
    monkeypatch.setenv(ENV_BASELINE, str(path))
    assert bench.baseline_path("cpu") == path
    written = save_baseline("cpu", {"copy_GBps": 12.5, "matmul_TFLOPs": {"float16": 0.1, "bfloat16": 0.2}})
    assert written == path
    base = load_baseline("cpu")
    assert base["copy_GBps"] == 12.5 and base["matmul_TFLOPs"]["bfloat16"] == 0.2
    assert base["source"] == str(path)
    with pytest.raises(ValueError, match="copy_GBps"):
        save_baseline("cpu", {"matmul_TFLOPs": {}})
    path.write_text(json.dumps({"gpu": "Another GPU", "copy_GBps": 1.0, "matmul_TFLOPs": {}}))
    with pytest.raises(ValueError, match="Another GPU"):
        load_baseline("cpu")


def test_baseline_measured_when_absent(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_BASELINE, str(tmp_path / "missing.json"))
    monkeypatch.setattr(bench.baseline, "_cache", {})
    with pytest.warns(RuntimeWarning, match="no baseline file"):
        base = load_baseline("cpu")
    assert base["copy_GBps"] > 0 and base["matmul_TFLOPs"]["float32"] > 0
    assert "measured" in base["source"]


@pytest.mark.skipif(not __import__("triton_marlin.device", fromlist=["x"]).triton_enabled_for(
    torch.device("cuda" if torch.cuda.is_available() else "cpu")), reason="Triton cannot run here")
@pytest.mark.parametrize("n,stride", [(1, 1), (1000, 1), (333, 7), (129, 32)])
def test_strided_copy_probe(n, stride):
    from triton_marlin.bench.probes import strided_copy, strided_copy_reference

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    src = torch.randn((n - 1) * stride + 1 + 5, device=dev)
    out = torch.full((n,), float("nan"), device=dev)
    strided_copy(src, out, stride, block=128)
    assert torch.equal(out, strided_copy_reference(src, n, stride))
    with pytest.raises(ValueError, match="src"):
        strided_copy(src[: n * stride // 2], torch.empty(n, device=dev), stride + 1)


def test_progress_yields_every_item(tmp_path):
    runner, _ = _runner(tmp_path)
    assert list(runner.progress(range(5), desc="x")) == [0, 1, 2, 3, 4]
    runner.finish()


def test_plot_lines(tmp_path, capsys):
    recs = [{"case": {"M": m, "impl": impl}, "metric": "time", "value": float(m * (i + 1)), "unit": "us"}
            for i, impl in enumerate(("a", "b")) for m in (1, 2, 4)]
    path = bench.plot_lines(recs, x="M", series="impl", path=tmp_path / "p.png", metric="time", logx=True)
    if bench.have_matplotlib():
        assert path.is_file() and path.stat().st_size > 0
    else:
        assert path is None and "matplotlib is not installed" in capsys.readouterr().out
        return
    with pytest.raises(ValueError, match="metric"):
        bench.plot_lines(recs, x="M", series="impl", path=tmp_path / "q.png", metric="bandwidth")


def test_runner_plot_only_with_plot_dir(tmp_path):
    runner, _ = _runner(tmp_path)
    runner.record({"n": 1, "impl": "a"}, "bandwidth", 1.0, "GB/s")
    assert runner.plot("x", x="n", series="impl", metric="bandwidth") is None  # no --plot-dir: nothing drawn
    runner.finish()
    runner, _ = _runner(tmp_path, "--plot-dir", str(tmp_path / "plots"))
    for n in (1, 2):
        runner.record({"n": n, "impl": "a"}, "bandwidth", float(n), "GB/s")
        runner.record({"n": n, "impl": "b"}, "bandwidth", float(n) / 2, "GB/s", sweep="x")
    path = runner.plot("bw", x="n", series="impl", metric="bandwidth", where=lambda r: "sweep" not in r)
    if bench.have_matplotlib():
        assert path == tmp_path / "plots" / "t_bench_bw.png" and path.is_file()
    runner.finish()


def test_samples_flag_keeps_samples(tmp_path):
    runner, out = _runner(tmp_path, "--samples")
    st = Stats.from_samples([3.0, 1.0, 2.0])
    runner.record({"M": 1}, "time", st.median_us, "us", stats=st)
    runner.finish()
    assert json.loads(out.read_text())["stats"]["samples_us"] == [3.0, 1.0, 2.0]


def test_compare_result_files(tmp_path, capsys):
    from triton_marlin.bench import compare

    rng = np.random.default_rng(0)

    def write(path, center, extra_case):
        lines = []
        for case, c in (({"M": 1}, center), ({"M": 2}, 50.0), (extra_case, 1.0)):
            s = Stats.from_samples(rng.normal(c, 1.0, 30)).to_dict(with_samples=True)
            lines.append(json.dumps({"benchmark": "b", "case": case, "metric": "time", "value": s["median_us"],
                                     "unit": "us", "stats": s}))
        path.write_text("\n".join(lines) + "\n")

    write(tmp_path / "old.jsonl", 100.0, {"M": 3})
    write(tmp_path / "new.jsonl", 80.0, {"M": 4})
    rows = compare.compare_records(compare.load_records(tmp_path / "old.jsonl"),
                                   compare.load_records(tmp_path / "new.jsonl"))
    by_m = {r["case"]["M"]: r for r in rows}
    assert set(by_m) == {1, 2}  # M=3 and M=4 exist on one side only
    assert by_m[1]["ratio"] == pytest.approx(0.8, rel=0.05) and by_m[1]["verdict"] == "new faster"
    assert by_m[2]["verdict"] == "no significant difference"
    assert compare.main([str(tmp_path / "old.jsonl"), str(tmp_path / "new.jsonl")]) == 0
    assert "new faster" in capsys.readouterr().out
    (tmp_path / "bad.jsonl").write_text('{"benchmark": "b"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        compare.load_records(tmp_path / "bad.jsonl")


def test_record_timing_derives_bandwidth_and_rate(tmp_path, monkeypatch):
    path = tmp_path / "base.json"
    monkeypatch.setenv(ENV_BASELINE, str(path))
    save_baseline("cpu", {"copy_GBps": 100.0, "matmul_TFLOPs": {"float16": 2.0, "float32": 1.0}})
    runner, _ = _runner(tmp_path)
    st = Stats.from_samples([10.0, 10.0, 10.0])  # 10 us
    recs = runner.record_timing({"n": 1}, st, bytes_moved=5e5, flops=4e6, dtype=torch.float32, impl="x")
    assert [r["metric"] for r in recs] == ["time", "bandwidth", "rate"]
    assert recs[1]["value"] == pytest.approx(50.0) and recs[1]["roofline"] == pytest.approx(0.5)
    assert recs[2]["value"] == pytest.approx(0.4) and recs[2]["roofline"] == pytest.approx(0.4)
    assert all(r["impl"] == "x" for r in recs)
    with pytest.raises(TypeError, match="stats"):
        runner.record_timing({"n": 1}, 10.0)
    runner.finish()
