"""roofline/: arithmetic (I_crit, knee fit, policy), measurement plumbing, graceful degradation."""

import errno
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from roofline import bandwidth as bw
from roofline import knee as knee_mod
from roofline import policy
from roofline.compute import MODES, mode_unavailable, peak_flops, search_mode
from roofline.device_facts import _parse_size, collect_device_facts
from roofline.latency_curve import verify_curve
from roofline.nvml_sampler import NvmlSampler
from roofline.nvtx_ranges import phase
from roofline.profile_doc import ProfileRecord
from roofline.spec_sheet import (
    match_spec,
    nvml_bandwidth_bytes_per_s,
    nvml_flops_per_s,
    spec_entries,
)
from roofline.timing import CacheFlusher, Timer
from roofline.triton_kernels import LaunchConfig
from scylla_impl import precision
from workloads.errors import ScyllaError

# -- policy (Theorem 1.3) ---------------------------------------------------------------------


def test_total_tokens_tie_rule():
    assert policy.total_tokens_for(10, 5) == 60  # EAGLE-2's default pairing
    assert policy.total_tokens_for(1, 5) == 6  # a chain: root + depth
    assert policy.pool_size(4, 5) == 4 + 4 * 16
    for depth in (1, 2, 5, 8):
        previous = 0
        for k in range(1, 40):
            n = policy.total_tokens_for(k, depth)
            assert n >= previous, "total_tokens must not shrink as top_k grows"
            assert 2 <= n <= policy.pool_size(k, depth) + 1
            previous = n
    with pytest.raises(ValueError):
        policy.total_tokens_for(0, 5)


@pytest.mark.parametrize("knee", [3, 17, 64, 300, 2048, 10000])
@pytest.mark.parametrize("depth", [1, 3, 5, 8])
def test_policy_monotone_and_respects_knee(knee, depth):
    table = policy.policy_table(knee, batch_sizes=range(1, 129), depth=depth)
    for a, b in zip(table, table[1:]):
        assert b.top_k <= a.top_k, f"top_k rose from b={a.batch_size} to b={b.batch_size}"
        assert b.total_tokens <= a.total_tokens
    for e in table:
        assert e.tokens_in_flight == e.batch_size * e.total_tokens
        assert e.total_tokens == policy.total_tokens_for(e.top_k, depth) or e.top_k == 1
        if e.batch_size * 2 <= knee:  # at least one draft token fits: the knee must hold
            assert e.within_knee and e.tokens_in_flight <= knee
        # largest: the next wider tree would not fit (or is capped)
        if e.within_knee and e.top_k < policy.MAX_TOP_K:
            assert e.batch_size * policy.total_tokens_for(e.top_k + 1, depth) > knee


def test_policy_falls_as_inverse_sqrt_of_batch():
    knee, depth = 16384, 5
    batches = [1, 2, 4, 8, 16, 32, 64, 128]
    ks = [policy.policy_entry(knee, b, depth, max_top_k=10_000).top_k for b in batches]
    # k^2 * 0.6 * b ~= knee  =>  k * sqrt(b) ~= sqrt(knee / 0.6), within rounding of k
    expected = math.sqrt(knee / policy.TOKENS_PER_TOPK_SQUARED)
    for b, k in zip(batches, ks):
        assert abs(k * math.sqrt(b) / expected - 1) < 0.15, (b, k)
    slope = np.polyfit(np.log(batches), np.log(ks), 1)[0]
    assert -0.6 < slope < -0.4  # log-log slope of -1/2


def test_policy_floor_when_nothing_fits():
    e = policy.policy_entry(knee_tokens=4, batch_size=8, depth=5)
    assert (e.top_k, e.total_tokens, e.within_knee) == (1, 2, False)
    e = policy.policy_entry(knee_tokens=12, batch_size=3, depth=5)  # budget 4 per row: shortened chain
    assert (e.top_k, e.total_tokens, e.within_knee) == (1, 4, True)


def test_load_profile(tmp_path):
    with pytest.raises(ScyllaError, match="no profile.json"):
        policy.load_profile(tmp_path)
    (tmp_path / "profile.json").write_text(json.dumps(
        {"knee_tokens": None, "unmeasured": [{"what": "knee", "reason": "no target"}]}))
    with pytest.raises(ScyllaError, match="no target"):
        policy.load_profile(tmp_path)
    (tmp_path / "profile.json").write_text("{not json")
    with pytest.raises(ScyllaError, match="not a readable profile"):
        policy.load_profile(tmp_path)
    (tmp_path / "profile.json").write_text(json.dumps({"knee_tokens": 480, "device": {"name": "X"}}))
    prof = policy.load_profile(tmp_path)
    assert prof.knee_tokens == 480 and prof.device_name == "X"
    # A version this code does not read is refused, not half-read.
    (tmp_path / "profile.json").write_text(json.dumps({"schema_version": 2, "knee_tokens": 480}))
    with pytest.raises(ScyllaError, match="schema_version 2.*scylla profile"):
        policy.load_profile(tmp_path)


# -- knee fit -------------------------------------------------------------------------------


def _grid_times(knee, t0=0.02, per_row=0.0005, slope=0.001, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for b in (1, 2, 4, 8, 16, 32, 64):
        for n in (1, 2, 4, 8, 16, 32, 64, 128):
            t = t0 + per_row * b + slope * max(0, b * n - knee)
            out.append((b, n, t * (1 + noise * rng.standard_normal())))
    return out


@pytest.mark.parametrize("knee", [24, 100, 700])
def test_fit_knee_recovers_hinge(knee):
    fit = knee_mod.fit_knee(_grid_times(knee, noise=0.02))
    assert fit.censored is None
    assert abs(fit.knee_tokens / knee - 1) < 0.15
    assert fit.per_token_s == pytest.approx(0.001, rel=0.15)
    assert fit.t0_s >= 0 and fit.per_row_s >= 0
    assert fit.predict(1, 1) == pytest.approx(0.02 + 0.0005, rel=0.1)


def test_fit_knee_censoring():
    flat = knee_mod.fit_knee([(b, n, 0.01) for b in (1, 2, 4) for n in (1, 2, 4)])
    assert flat.censored == "above" and flat.knee_tokens == 16
    linear = knee_mod.fit_knee([(b, n, 0.001 * b * n) for b in (1, 2, 4) for n in (1, 2, 4)])
    assert linear.censored == "below" and linear.knee_tokens == pytest.approx(1, abs=0.5)
    with pytest.raises(ValueError):
        knee_mod.fit_knee([(1, 1, 0.1)])


def test_nonneg_lstsq_never_negative():
    rng = np.random.default_rng(1)
    a = rng.random((20, 3))
    y = a @ np.array([1.0, -2.0, 0.5])  # the unconstrained optimum has a negative coefficient
    coef, _ = knee_mod._nonneg_lstsq(a, y)
    assert (coef >= 0).all()


def test_knee_grid():
    grid = knee_mod.knee_grid((1, 2, 4), (1, 8, 64), 64)
    assert grid == [(1, 1), (1, 8), (1, 64), (2, 1), (2, 8), (4, 1), (4, 8)]


# -- I_crit and the spec sheet ----------------------------------------------------------------


def test_spec_sheet_matching():
    assert match_spec("NVIDIA H200").name == "NVIDIA H200 SXM 141GB"
    assert match_spec("NVIDIA H200 NVL").name == "NVIDIA H200 NVL"
    assert match_spec("NVIDIA H100 80GB HBM3").name == "NVIDIA H100 SXM5 80GB"
    assert match_spec("NVIDIA H100 PCIe").name == "NVIDIA H100 PCIe 80GB"
    assert match_spec("NVIDIA A100-SXM4-80GB").name == "NVIDIA A100 SXM4 80GB"
    assert match_spec("NVIDIA A100-PCIE-40GB").name == "NVIDIA A100 40GB"
    assert match_spec("NVIDIA L40S").name == "NVIDIA L40S"
    assert match_spec("NVIDIA L4").name == "NVIDIA L4"
    assert match_spec("NVIDIA GeForce RTX 4090").name == "NVIDIA GeForce RTX 4090"
    assert match_spec("NVIDIA GH200 480GB") is None  # not an H200
    assert match_spec("AMD EPYC") is None and match_spec(None) is None
    for entry in spec_entries():
        assert entry.bandwidth_bytes_per_s > 0 and entry.flops_per_s["float16"]


def test_nvml_derived_peaks():
    # H100 SXM: 2619 MHz HBM3 on a 5120-bit bus is its 3.35 TB/s.
    assert nvml_bandwidth_bytes_per_s(2619, 5120) == pytest.approx(3.35e12, rel=0.01)
    assert nvml_bandwidth_bytes_per_s(None, 5120) is None
    h200 = match_spec("NVIDIA H200")
    same = nvml_flops_per_s(h200, h200.sms, h200.boost_clock_mhz)
    assert same["bfloat16"] == pytest.approx(989.4e12)
    assert nvml_flops_per_s(h200, 66, h200.boost_clock_mhz)["bfloat16"] == pytest.approx(989.4e12 / 2)


def test_icrit_arithmetic():
    from roofline import profile as prof

    facts = collect_device_facts("cpu")
    record = ProfileRecord(created_utc="", options={}, device=facts.to_json(), machine_load={})
    run = prof._Run(device=torch.device("cpu"), facts=facts, plan=prof.PLANS[("cpu", True)], record=record)
    record.bandwidth_peak_bytes_per_s, record.flops_per_s = 20e9, {"bfloat16": 15e9, "float32": 120e9}
    prof._spec_and_icrit(run)
    ic = record.i_crit
    assert ic.measured == pytest.approx(0.75)
    assert ic.measured_per_dtype["float32"] == pytest.approx(6.0)
    assert ic.spec is None and record.spec is None  # CPUs have no datasheet entry
    assert any(u.what == "spec" for u in run.unmeasured)
    # the same for an H200 as NVML would describe it
    facts.gpu = type("G", (), {"name": "NVIDIA H200", "max_mem_clock_mhz": 3201, "memory_bus_width_bits": 6144,
                               "sm_count": 132, "max_sm_clock_mhz": 1830})()
    record.bandwidth_peak_bytes_per_s, record.flops_per_s = 4.3e12, {"bfloat16": 750e12}
    prof._spec_and_icrit(run)
    ic = record.i_crit
    assert ic.spec == pytest.approx(989.4e12 / 4.8e12)
    assert ic.measured == pytest.approx(750e12 / 4.3e12)
    assert ic.nvml_derived == pytest.approx(989.4e12 / (2 * 3201e6 * 6144 / 8))


# -- measurement plumbing -----------------------------------------------------------------------


def test_timer_runs_before_outside_and_keeps_every_sample():
    calls = []
    timing = Timer("cpu").measure(lambda: calls.append("fn"), warmup=2, reps=4, before=lambda: calls.append("b"))
    assert calls == ["b", "fn"] * 6
    assert len(timing.samples_s) == 4 and timing.clock == "perf_counter"
    assert timing.min_s <= timing.median_s <= timing.max_s
    with pytest.raises(ValueError):
        Timer("cpu", clock="sundial")


@pytest.mark.parametrize("name,arrays", [("read", 1), ("copy", 2), ("triad", 3)])
def test_stream_kernels_torch_count_bytes_and_verify(name, arrays):
    block = 1024
    n = bw.elements_for(1 << 20, block)
    sample = bw.measure_stream(bw.KERNELS[name], "torch", n, torch.device("cpu"), Timer("cpu"),
                               flusher=CacheFlusher("cpu", 1 << 16), llc_bytes=1 << 16,
                               config=LaunchConfig(block), warmup=1, reps=3)
    assert sample.verified
    partials = n // block * 4 if name == "read" else 0
    assert sample.bytes_moved == arrays * n * 4 + partials
    assert sample.past_llc  # 1 MiB buffers >= 4 x a 64 KiB "LLC"
    rows = sample.rows()
    assert len(rows) == 3 and {r["rep"] for r in rows} == {0, 1, 2}
    assert all(r["bytes_per_s"] == pytest.approx(sample.bytes_moved / r["seconds"]) for r in rows)


def test_verification_catches_a_kernel_that_does_nothing():
    lazy = bw.StreamKernel("copy", ("src",), ("dst",), bw._make_copy, bw._check_copy,
                           impls={"torch": lambda b, cfg: None})
    sample = bw.measure_stream(lazy, "torch", 8192, torch.device("cpu"), Timer("cpu"), flusher=None,
                               llc_bytes=None, config=LaunchConfig(1024), warmup=0, reps=1)
    assert not sample.verified and not sample.past_llc
    assert bw.peak_by_kernel([sample], "torch") == {}


def test_backend_availability_reasons(monkeypatch):
    assert bw.backend_unavailable("torch", torch.device("cpu")) is None
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "GPU" in bw.backend_unavailable("triton", torch.device("cpu"))
    monkeypatch.setattr(bw.triton_kernels, "TRITON_ERROR", "triton not importable: ImportError: x")
    assert bw.backend_unavailable("triton", torch.device("cuda")).startswith("triton not importable")


def test_numpy_triad_crosscheck_structure():
    check = bw.numpy_triad_crosscheck(1 << 18, threads=2, flusher=None, warmup=1, reps=3)
    doc = check.to_json()
    assert check.numpy_verified
    assert check.numpy_bytes_per_call == 5 * 4 * (1 << 18) and check.torch_bytes_per_call == 3 * 4 * (1 << 18)
    assert doc["ratio_torch_over_numpy"] == pytest.approx(doc["torch_bytes_per_s"] / doc["numpy_bytes_per_s"])
    assert doc["agrees"] == (abs(doc["ratio_torch_over_numpy"] - 1) <= 0.2)
    assert len(check.rows()) == 6


def test_numpy_triad_is_verified_slice_by_slice(monkeypatch):
    monkeypatch.setattr(bw, "VERIFY_SLICE", 1000)  # 263 slices, the last one short
    check = bw.numpy_triad_crosscheck(1 << 18, threads=2, flusher=None, warmup=0, reps=1)
    assert check.numpy_verified


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_bandwidth_buffers_fit_in_the_memory_there_is(monkeypatch, device):
    from types import SimpleNamespace

    from roofline import profile as prof

    # A Xeon VM: 480 MiB of L3 and 23 GB of memory; 4 and 8 LLCs per array would need 3 x 3.75 GB.
    llc, available = 480 << 20, 12 << 30
    monkeypatch.setattr(prof, "host_available_bytes", lambda: available)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda _device: (available, 2 * available))
    run = SimpleNamespace(facts=SimpleNamespace(llc_bytes=llc), device=torch.device(device), unmeasured=[],
                          plan=SimpleNamespace(bw_llc_multiples=(1, 4, 8), bw_min_bytes=128 << 20))
    sizes = prof._buffer_sizes(run)
    assert sizes == [llc, available // 8]  # 4 and 8 LLCs are both cut to what three arrays can take
    monkeypatch.setattr(prof, "host_available_bytes", lambda: None)  # unknown: as the plan asks
    if device == "cpu":
        assert prof._buffer_sizes(run) == [llc, 4 * llc, 8 * llc]


def test_matmul_search_budget_and_flops():
    mode = MODES["float32"]
    # 8192^3 is predicted (cubic in size from 64^3) at >= 2M x the 64^3 time: past any budget
    result = search_mode(mode, torch.device("cpu"), Timer("cpu"), sizes=(32, 64, 8192), budget_s=1.0,
                         warmup=1, reps=2)
    assert {s.m for s in result.samples} == {32, 64} and {s.layout for s in result.samples} == {"nn", "nt"}
    assert any("8192" in why for why in result.skipped)
    best = result.best
    assert best.flops == 2 * best.m * best.n * best.k
    peaks, missing = peak_flops([result])
    assert peaks["float32"] == pytest.approx(best.flops_per_s) and not missing
    assert mode_unavailable(MODES["float32_tf32"], torch.device("cpu"))
    assert torch.get_float32_matmul_precision() == "highest"  # restored


def test_parse_cache_sizes():
    assert _parse_size("32768K") == 32 << 20
    assert _parse_size("1M") == 1 << 20
    assert _parse_size("512 KiB") == 512 << 10


# -- no GPU: facts, NVML, NVTX degrade silently --------------------------------------------------


def test_cpu_device_facts():
    facts = collect_device_facts("cpu")
    doc = json.loads(json.dumps(facts.to_json()))
    assert doc["kind"] == "cpu" and doc["gpu"] is None
    assert doc["cpu"]["threads_used"] == torch.get_num_threads()
    if facts.cpu.caches:
        assert facts.llc_bytes == max(c.size_bytes for c in facts.cpu.caches)
    if not torch.cuda.is_available():
        assert not facts.nvml_available or facts.gpu is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_nvml_sampler_is_a_silent_noop_without_gpu():
    with NvmlSampler(interval_s=0.01) as sampler, phase("anything"):
        pass
    assert sampler.samples == [] and not sampler.available
    summary = sampler.summary()
    assert summary["available"] is False and summary["reason"]
    assert summary["power_w_mean"] is None


# -- the whole profile, degraded: no target, no GPU -------------------------------------------------


def _tiny_plan(**over):
    from roofline.profile import Plan

    base = dict(bw_llc_multiples=(4,), bw_min_bytes=1 << 20, bw_configs=(LaunchConfig(1024, 4),), bw_warmup=1,
                bw_reps=2, mm_sizes=(64, 128), mm_budget_s=0.05, mm_warmup=1, mm_reps=2,
                knee_batches=(1, 2), knee_tokens=(1, 2, 4), knee_max_in_flight=8, knee_warmup=0, knee_reps=1,
                prefix_tokens=24)
    base.update(over)
    return Plan(**base)


def _target_fails_to_load(monkeypatch, tmp_path) -> None:
    """A target that passes the checks but cannot load on this device (too little memory, say);
    `auto` has no remembered verdict for it either, so it would have to load it to time it."""
    from scylla_impl import target as target_mod
    from scylla_impl.target import Target

    monkeypatch.setattr(target_mod, "scylla_home", lambda: tmp_path)

    def load(*args, **kwargs):
        raise RuntimeError("not enough memory on this device for the target")

    monkeypatch.setattr(Target, "load", load)


def test_profile_completes_without_a_target(tmp_path, monkeypatch, default_model_dir):
    from roofline import profile as prof
    from roofline.device_facts import DeviceFacts

    # Pretend the LLC is 256 KiB so 1 MiB buffers count as past it: a quick, complete run.
    monkeypatch.setattr(DeviceFacts, "llc_bytes", property(lambda self: 256 << 10))
    _target_fails_to_load(monkeypatch, tmp_path)
    doc = prof.run_profile(prof.ProfileOptions(out=tmp_path / "p", device="cpu", target="default",
                                               plan=_tiny_plan(), progress=False))
    on_disk = json.loads((tmp_path / "p" / "profile.json").read_text())
    assert on_disk["profile_id"] == doc["profile_id"]
    for key in ("device", "bandwidth_bytes_per_s", "flops_per_s", "i_crit", "knee_tokens", "topk_policy",
                "numpy_triad", "unmeasured", "tables", "figures"):
        assert key in on_disk
    assert set(on_disk["bandwidth_bytes_per_s"]) == {"read", "copy", "triad"}
    assert {"bfloat16", "float32"} <= set(on_disk["flops_per_s"])
    assert on_disk["knee_tokens"] is None and on_disk["topk_policy"] == []
    whats = {u["what"] for u in on_disk["unmeasured"]}
    assert {"knee", "topk_policy", "bandwidth.triton", "flops_per_s.float32_tf32", "spec"} <= whats
    # `--dtype auto` times the target where bulk bf16 is faster than fp32; one that cannot load then
    # leaves the bulk matmul rule, and says so. Where bf16 is not faster, fp32 needs no timing.
    quoted = on_disk["i_crit"]["dtype"]
    assert quoted == precision.fast_dtype("cpu") == on_disk["options"]["dtype"]
    assert ("dtype" in whats) == (quoted == "bfloat16")
    assert on_disk["i_crit"]["measured"] == pytest.approx(
        on_disk["flops_per_s"][quoted] / on_disk["bandwidth_peak_bytes_per_s"])
    import pandas as pd

    table = pd.read_parquet(tmp_path / "p" / "bandwidth.parquet")
    assert len(table) == 3 * 2 and table["verified"].all()
    assert (tmp_path / "p" / "roofline.png").stat().st_size > 0 and (tmp_path / "p" / "roofline.svg").exists()


def _fill(disk: Path) -> None:
    with open(disk / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC


@pytest.mark.parametrize("where", ["previous profile", "new folders"])
def test_profile_on_a_full_disk_is_one_error_and_leaves_nothing_behind(where, full_disk, monkeypatch, tmp_path,
                                                                        default_model_dir):
    """The disk fills while the profile measures: one error line; a previous profile in --out is
    kept as it was, folders the run would have made are not left behind, nor are temp files."""
    from roofline import profile as prof
    from roofline.device_facts import DeviceFacts

    monkeypatch.setattr(DeviceFacts, "llc_bytes", property(lambda self: 256 << 10))
    _target_fails_to_load(monkeypatch, tmp_path)  # the knee is not what this checks: skip its time
    if where == "previous profile":
        out = full_disk / "prof"
        out.mkdir()
        (out / "profile.json").write_text('{"profile_id": "earlier"}\n')
    else:
        out = full_disk / "new" / "prof"
    _fill(full_disk)
    before = sorted(str(p.relative_to(full_disk)) for p in full_disk.rglob("*"))

    with pytest.raises(ScyllaError) as caught:
        prof.run_profile(prof.ProfileOptions(out=out, device="cpu", plan=_tiny_plan(), progress=False))

    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"cannot write the profile to {out}: No space left on device;")
    assert "nothing was written" in message
    assert sorted(str(p.relative_to(full_disk)) for p in full_disk.rglob("*")) == before
    if where == "previous profile":
        assert (out / "profile.json").read_text() == '{"profile_id": "earlier"}\n'


def test_profile_dtype_auto_measures_the_knee_in_a_sweeps_default_dtype(tmp_path, monkeypatch, default_model_dir):
    """`--dtype auto`: the knee (and I_crit) in the precision a sweep with `--dtype auto` decodes in."""
    from roofline import profile as prof
    from roofline.device_facts import DeviceFacts
    from scylla_impl.target import resolve_dtype

    monkeypatch.setattr(DeviceFacts, "llc_bytes", property(lambda self: 256 << 10))
    doc = prof.run_profile(prof.ProfileOptions(out=tmp_path / "p", device="cpu", dtype="auto",
                                               plan=_tiny_plan(), progress=False))
    chosen = str(resolve_dtype("auto", "cpu")).removeprefix("torch.")
    assert doc["options"]["dtype"] == chosen and doc["options"]["dtype_requested"] == "auto"
    assert doc["knee"]["target"]["dtype"] == chosen and doc["i_crit"]["dtype"] == chosen


def test_profile_rejects_bad_arguments(tmp_path):
    from roofline import profile as prof

    with pytest.raises(ScyllaError, match="no such folder"):
        prof.run_profile(prof.ProfileOptions(out=tmp_path, device="cpu", target=str(tmp_path / "nope")))
    if not torch.cuda.is_available():
        with pytest.raises(ScyllaError, match="no CUDA device"):
            prof.resolve_device("cuda")
    with pytest.raises(ScyllaError):
        prof.resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cli_profile_cuda_without_gpu_is_a_user_error(tmp_path):
    from click.testing import CliRunner

    from harness.cli import cli

    result = CliRunner().invoke(cli, ["profile", "--device", "cuda", "--threads", "1", "--out", str(tmp_path)])
    assert isinstance(result.exception, ScyllaError)  # main() prints it as one line, exit status 1
    assert "--device cuda" in str(result.exception) and "no CUDA device" in str(result.exception)
    assert "\n" not in str(result.exception)
    assert not (tmp_path / "profile.json").exists()


# -- long checks (nox -s slow) -------------------------------------------------------------------


@pytest.mark.slow
def test_torch_triad_agrees_with_numpy_past_the_llc():
    llc = collect_device_facts("cpu").llc_bytes or 32 << 20
    n = bw.elements_for(8 * llc, bw.PATTERN_PERIOD)
    check = bw.numpy_triad_crosscheck(n, threads=torch.get_num_threads(), flusher=CacheFlusher("cpu", llc),
                                      warmup=1, reps=7)
    assert check.numpy_verified
    assert check.agrees, check.to_json()


@pytest.mark.slow
def test_quick_profile_end_to_end(tmp_path, default_model_dir):
    from click.testing import CliRunner

    from harness.cli import cli

    result = CliRunner().invoke(cli, ["profile", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "profile.json").read_text())
    assert doc["knee_tokens"] >= 1 and doc["knee"]["fit"]["points"] >= 3
    assert [e["batch_size"] for e in doc["topk_policy"]] == list(policy.DEFAULT_BATCH_SIZES)
    assert doc["numpy_triad"]["numpy_verified"]
    knee = doc["knee_tokens"]
    assert all(e == policy.policy_entry(knee, e["batch_size"], e["depth"]).to_json() for e in doc["topk_policy"])
    curve = verify_curve(doc)  # the latency curve top_k auto prices trees with: every measured point
    assert sum(len(p) for p in curve.points.values()) == len(doc["knee"]["points"]) >= 3
    for name in ("bandwidth", "compute", "knee", "numpy_triad"):
        assert (tmp_path / f"{name}.parquet").exists()


def test_auto_threads_takes_one_only_when_the_cpus_are_busy(monkeypatch):
    from roofline import cpu_threads

    monkeypatch.setattr(cpu_threads, "available_cpus", lambda: 2)
    monkeypatch.setattr(cpu_threads, "busy_cpus", lambda: 0.2)
    assert cpu_threads.auto_threads() == (2, 0.2)
    monkeypatch.setattr(cpu_threads, "busy_cpus", lambda: 1.6)
    assert cpu_threads.auto_threads() == (1, 1.6)


def test_busy_cpus_sees_a_spinning_process():
    """A real busy process: /proc/stat must count it (where there is a /proc)."""
    import multiprocessing
    from pathlib import Path

    from roofline.cpu_threads import busy_cpus

    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat on this system")
    stop = multiprocessing.Event()
    spinner = multiprocessing.Process(target=_spin, args=(stop,))
    spinner.start()
    try:
        time.sleep(0.2)
        assert busy_cpus(0.5) > 0.6
    finally:
        stop.set()
        spinner.join()


def _spin(stop) -> None:
    while not stop.is_set():
        pass
