"""The benchmark report's arithmetic and policy, on synthetic input (CPU, fast).

Checks the FLOP counter against hand computation and torch's own flop counter, the table/JSON assembly
from a synthetic pytest-benchmark document, when results may be written, and the configuration registry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench import report
from bench.flops import (
    count_macs,
    energy_macs,
    generator_macs,
    layer_macs,
    posterior_chain_flops,
    sequential_macs,
)
from bench.phases import (
    CONFIGURATIONS,
    ITERATIONS_PER_EPOCH,
    MODES,
    PHASE_INFO,
    PHASES,
    REPO,
    SMOKE_OVERRIDES,
    SUITE,
    VARIANT_SUITE,
    bench_config,
    build_phases,
    build_with_chains,
)
from engine.config import ModelConfig, load_config
from engine.models import IMAGE_SHAPES, EnergyMLP, Generator
from engine.runtime.fast import FastChains
from engine.runtime.perf import PerfPlan

# ---------------------------------------------------------------------------------------------------------
# FLOP counter

CIFAR = ModelConfig()  # cifar10, nz 128, ngf 128, ndf 200


def test_cifar10_generator_macs_by_hand() -> None:
    # ConvT MACs = C_in·H_in·W_in · C_out·k² per sample (every input element meets every output-side weight).
    by_hand = [
        128 * 1 * 1 * 1024 * 8 * 8,  # ConvT(128→1024, k8, s1): 1×1 → 8×8
        1024 * 8 * 8 * 512 * 4 * 4,  # ConvT(1024→512, k4, s2, p1): 8×8 → 16×16
        512 * 16 * 16 * 256 * 4 * 4,  # ConvT(512→256, k4, s2, p1): 16×16 → 32×32
        256 * 32 * 32 * 3 * 3 * 3,  # ConvT(256→3, k3, s1, p1): 32×32 → 32×32
    ]
    count = generator_macs(CIFAR)
    assert [m for _, m in count.layers] == by_hand
    assert count.total == sum(by_hand) == 1_089_208_320  # spec performance.md §0: "1.09 GMAC per sample"
    assert count.flops == 2 * count.total


def test_energy_macs_and_posterior_chain_total() -> None:
    assert energy_macs(CIFAR).total == 128 * 200 + 200 * 200 + 200 * 1
    total = posterior_chain_flops(CIFAR, batch=128, n_steps=30)
    assert total == 30 * 128 * 2 * 2 * (1_089_208_320 + 65_800)
    assert total == pytest.approx(16.7e12, rel=0.01)  # spec §0: "16.7 TFLOP per iteration"


def _torch_flops(fn: Any) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def test_counter_matches_torch_flop_counter_forward_and_input_gradient() -> None:
    torch.manual_seed(0)
    g, e = Generator("digits", 16, 16), EnergyMLP(16, 32)
    b = 3
    ours_fwd = 2 * b * (count_macs(g, (1, 16)).total + count_macs(e, (1, 16)).total)
    z_leaf = torch.randn(b, 16)
    assert _torch_flops(lambda: (g(z_leaf), e(z_leaf))) == ours_fwd

    def input_grad() -> None:
        # torch's counter cannot see autograd.grad on a leaf, so differentiate w.r.t. a non-leaf copy. Only
        # the data gradient is requested, as in a Langevin step: no weight gradients are computed.
        z = z_leaf.clone().requires_grad_(True) * 1.0
        torch.autograd.grad(g(z).sum() + e(z).sum(), z)

    assert _torch_flops(input_grad) == 2 * ours_fwd  # forward + input gradient = 2 × forward


@pytest.mark.parametrize("arch", sorted(IMAGE_SHAPES))
def test_shape_propagation_matches_a_real_forward(arch: str) -> None:
    # generator_macs propagates shapes analytically; a real forward with hooks must see the same layers.
    model = ModelConfig(arch=arch, nz=8, ngf=4, ndf=16)
    g = Generator(arch, model.nz, model.ngf)
    assert generator_macs(model).layers == count_macs(g, (1, model.nz)).layers
    assert energy_macs(model).total == count_macs(EnergyMLP(model.nz, model.ndf), (1, model.nz)).total
    assert sequential_macs(g.net, (2, model.nz, 1, 1)).total == 2 * generator_macs(model).total


@pytest.mark.parametrize("layer, shape", [
    (nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1, groups=2), (2, 8, 5, 5)),
    (nn.Conv2d(6, 8, 4, stride=2, padding=1, groups=2), (2, 6, 9, 9)),
    (nn.Linear(7, 5), (2, 3, 7)),
])
def test_layer_macs_match_torch(layer: nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape)
    out = layer(x)
    assert 2 * layer_macs(layer, x.shape, out.shape) == _torch_flops(lambda: layer(x))
    assert layer_macs(nn.LeakyReLU(), x.shape, x.shape) == 0  # elementwise layers are not counted


# ---------------------------------------------------------------------------------------------------------
# Report assembly on a synthetic pytest-benchmark document

ENV_GPU = {"device_type": "cuda", "device_name": "NVIDIA Test GPU", "device_slug": "nvidia-test-gpu",
           "torch": "2.13.0", "triton": "3.7.1", "cuda": "12.9", "cudnn": 91000, "python": "3.11.7",
           "cpu_threads": 16}
ENV_CPU = {**ENV_GPU, "device_type": "cpu", "device_name": "Some CPU", "device_slug": "cpu-some-cpu",
           "cuda": None, "cudnn": None}
FLOPS = 16_731_250_483_200
MATMUL = {"flops_per_call": 2 * 8192**3 * 10, "median_s": 0.02}  # 549.8 TFLOP/s


def _bench(extra: dict[str, Any], median: float) -> dict[str, Any]:
    stats = {"min": median * 0.9, "max": median * 1.2, "mean": median, "stddev": 0.0, "rounds": 5,
             "median": median, "data": [median] * 5}
    return {"group": extra.get("phase"), "name": "x", "fullname": f"bench/x.py::{extra.get('phase')}",
            "extra_info": extra, "stats": stats}


NOTES = {"reference": "eager fp32", "fast": "perf.preset=fast → graphs, amp"}


def _doc(env: dict[str, Any] = ENV_GPU, sizes: str = "paper", drop: tuple[str, ...] = (),
         speedup: float = 2.0, fast_implemented: bool = True) -> dict[str, Any]:
    benches = []
    for i, p in enumerate(PHASES):
        for m in MODES:
            if f"{p.key}-{m}" in drop:
                continue
            t = 0.01 * (i + 1) / (speedup if m == "fast" else 1.0)
            benches.append(_bench({
                "suite": SUITE, "phase": p.key, "mode": m, "implemented": m == "reference" or fast_implemented,
                "note": NOTES[m] if fast_implemented or m == "reference" else "same as reference",
                "build_s": 0.5, "warmup_calls": 2, "warmup_s": 1.5,
                "first_call_s": 1.0, "peak_mem_bytes": 3 << 30, "resident_mem_bytes": 1 << 30,
                "flops_per_call": FLOPS if p.key == "posterior_chain" else None,
                "size": {"sizes": sizes, "arch": "cifar10", "nz": 128, "ngf": 128, "train_batch": 128,
                         "sample_batch": 64, "lebm_posterior_steps": 100},
                "env": env}, t))
    benches.append(_bench({"suite": SUITE, "phase": "matmul", "dtype": "bfloat16", "n": 8192, "reps": 10,
                           "flops_per_call": MATMUL["flops_per_call"], "env": env}, MATMUL["median_s"]))
    benches.append(_bench({"kernel": "langevin_update"}, 1e-5))  # someone else's benchmark in bench/
    return {"benchmarks": benches, "datetime": "2026-01-01T00:00:00", "version": "5.2.3",
            "commit_info": {"id": "0123456789abcdef", "dirty": False, "branch": "main"}}


def _row(result: dict[str, Any], phase: str) -> dict[str, Any]:
    return next(r for r in result["rows"] if r["phase"] == phase)


def test_assemble_ratios_epoch_and_roofline() -> None:
    result = report.assemble(_doc())
    assert result["kind"] == "measured" and result["smoke_reasons"] == []
    assert [r["phase"] for r in result["rows"]] == [p.key for p in PHASES]

    it = _row(result, "train_iteration")
    t_ref = it["modes"]["reference"]["median_s"]
    assert it["fast_vs_reference"] == pytest.approx(2.0)
    assert it["epoch_s"]["reference"] == pytest.approx(ITERATIONS_PER_EPOCH * t_ref)
    assert it["fast_vs_paper"] == pytest.approx(PHASE_INFO["train_iteration"].paper_s / (t_ref / 2))
    assert PHASE_INFO["train_iteration"].paper_s == pytest.approx(15.2 * 60 / 390)

    post = _row(result, "posterior_chain")
    t = post["modes"]["reference"]["median_s"]
    peak = MATMUL["flops_per_call"] / MATMUL["median_s"] / 1e12
    assert result["matmul"]["tflops"] == pytest.approx(peak)
    assert post["tflops"]["reference"] == pytest.approx(FLOPS / t / 1e12)
    assert post["fraction_of_matmul"]["reference"] == pytest.approx(FLOPS / t / 1e12 / peak)
    assert _row(result, "sample_lebm_posterior")["epoch_s"] is None  # sampling rows are not per-epoch
    assert _row(result, "prior_chain")["tflops"] is None
    assert result["other_benchmarks"][0]["median_s"] == 1e-5


def test_render_table() -> None:
    result = report.assemble(_doc())
    table = report.render(result)
    lines = table.splitlines()
    header = next(ln for ln in lines if ln.startswith("| phase"))
    for col in ("paper (A6000)", "reference", "fast", "fast vs reference", "fast vs paper", "s/epoch",
                "peak mem", "set-up", "TFLOP/s"):
        assert col in header
    it = next(ln for ln in lines if ln.startswith("| DAMC iteration"))
    assert "15.2 min/epoch" in it and "2.00×" in it and "3.00 GiB" in it
    post = next(ln for ln in lines if ln.startswith("| posterior chain"))
    assert "%)" in post
    assert "`fast`: perf.preset=fast → graphs, amp." in table
    assert "SMOKE" not in table
    assert "bench/x.py::None" in table  # other benchmarks are listed, not mixed into the rows


def test_smoke_runs_are_labelled_and_not_comparable() -> None:
    result = report.assemble(_doc(env=ENV_CPU, sizes="smoke", fast_implemented=False, speedup=1.0))
    assert result["kind"] == "smoke"
    assert "CPU run" in result["smoke_reasons"] and "smoke sizes" in result["smoke_reasons"]
    assert result["configurations"]["fast"] == {"implemented": False, "note": "same as reference"}
    it = _row(result, "train_iteration")
    assert it["fast_vs_paper"] is None and it["epoch_s"] is None and it["fast_vs_reference"] == 1.0
    table = report.render(result)
    assert "SMOKE RUN" in table and "`fast`: **same as reference**." in table


def test_partial_run_is_not_a_result() -> None:
    result = report.assemble(_doc(drop=("posterior_chain-fast",)))
    assert result["kind"] == "smoke"
    assert any("posterior_chain-fast" in r for r in result["smoke_reasons"])
    assert _row(result, "posterior_chain")["fast_vs_reference"] is None


def test_no_phase_benchmarks_is_an_error() -> None:
    doc = _doc()
    doc["benchmarks"] = [b for b in doc["benchmarks"] if b["extra_info"].get("suite") != SUITE]
    with pytest.raises(report.ReportError):
        report.assemble(doc)


def test_write_policy(tmp_path: Path) -> None:
    measured = report.assemble(_doc())
    json_path, md_path = report.write_result(measured, report.render(measured), tmp_path, allow_smoke=False)
    assert json_path.name == "nvidia-test-gpu.json" and md_path.name == "nvidia-test-gpu.md"
    saved = json.loads(json_path.read_text())
    assert saved["kind"] == "measured" and saved["env"]["torch"] == "2.13.0"
    assert saved["table_markdown"] == md_path.read_text()

    smoke = report.assemble(_doc(env=ENV_CPU, sizes="smoke"))
    with pytest.raises(report.ReportError):
        report.write_result(smoke, report.render(smoke), tmp_path, allow_smoke=False)
    json_path, _ = report.write_result(smoke, report.render(smoke), tmp_path, allow_smoke=True)
    assert json_path.name == "cpu-some-cpu.smoke.json"


def test_main_from_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "run.json"
    src.write_text(json.dumps(_doc(env=ENV_CPU, sizes="smoke")))
    out = tmp_path / "results"
    assert report.main(["--from-json", str(src), "--out", str(out)]) == 0
    assert "| DAMC iteration" in capsys.readouterr().out
    assert not out.exists()  # a CPU run is printed, never written by default
    src.write_text(json.dumps(_doc()))
    assert report.main(["--from-json", str(src), "--out", str(out)]) == 0
    assert (out / "nvidia-test-gpu.json").is_file()


# ---------------------------------------------------------------------------------------------------------
# Configuration registry


def test_registry_and_fast_on_cpu() -> None:
    assert set(MODES) <= set(CONFIGURATIONS)
    cfg = bench_config("smoke")
    cpu = torch.device("cpu")
    assert CONFIGURATIONS["reference"].status(cfg, cpu)[0]
    implemented, note = CONFIGURATIONS["fast"].status(cfg, cpu)
    assert not implemented and "same as reference" in note  # the CPU gets none of the GPU fast path
    with pytest.raises(KeyError):
        build_phases(cfg, cpu, "nonexistent")
    with pytest.raises(KeyError):
        build_phases(cfg, cpu, "reference", only=["no_such_phase"])


TINY = [*SMOKE_OVERRIDES, "train.batch_size=4", "eval.n_samples=4", "diffusion.n_steps=4",
        "langevin.posterior.n_steps=2", "langevin.prior.n_steps=2", "diffusion.updates_per_iter=2",
        "eval.lebm_steps=2", "eval.recon_steps=2"]


@pytest.mark.parametrize("mode", [*MODES, "fast-chains-eager"])
def test_every_phase_runs(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(REPO / "configs" / "quickstart.yaml", TINY)
    monkeypatch.setattr("bench.phases.LEBM_POSTERIOR_STEPS", 2)
    cpu = torch.device("cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: OpenMP fan-out only adds spin-wait on a loaded 2-core runner
    try:
        if mode == "fast-chains-eager":
            # The fast path's own loop code (FastChains), eager with nothing enabled: the only part of it
            # a CPU can run, so the shared phase bodies are exercised against its interface here.
            phases = build_with_chains(cfg, cpu, list(PHASE_INFO), lambda lr: FastChains(lr, PerfPlan()))
        else:
            phases = build_phases(cfg, cpu, mode)
        assert list(phases) == [p.key for p in PHASES]
        for fn in phases.values():
            fn()
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------------
# Issue 14: GPU time, the EMA row, variants, one commit


def _with_gpu_and_variants() -> dict[str, Any]:
    doc = _doc()
    for b in doc["benchmarks"]:
        e = b["extra_info"]
        if e.get("suite") == SUITE and e.get("phase") != "matmul":
            e["gpu_s"] = b["stats"]["median"] * 0.9
            e["size"]["ema_every"] = 10
    fast_post = next(b for b in doc["benchmarks"] if b["extra_info"].get("phase") == "posterior_chain"
                     and b["extra_info"].get("mode") == "fast")
    doc["benchmarks"].append(_bench({"suite": VARIANT_SUITE, "phase": "posterior_chain", "variant": "g_gemm_first",
                                     "overrides": ["perf.g_gemm_first=on"], "question": "G's first layer as a GEMM",
                                     "gpu_s": 0.001, "env": ENV_GPU}, fast_post["stats"]["median"] / 2))
    return doc


def test_gpu_time_variants_and_ema_amortization(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(report.COMMIT_ENV, raising=False)
    result = report.assemble(_with_gpu_and_variants())
    it, ema = _row(result, "train_iteration"), _row(result, "ema_update")
    t_it, t_ema = it["modes"]["fast"]["median_s"], ema["modes"]["fast"]["median_s"]
    assert it["epoch_s"]["fast"] == pytest.approx(ITERATIONS_PER_EPOCH * (t_it + t_ema / 10))
    assert it["modes"]["fast"]["gpu_s"] == pytest.approx(0.9 * t_it)
    (v,) = result["variants"]
    assert v["variant"] == "g_gemm_first" and v["speedup_vs_fast"] == pytest.approx(2.0)
    assert result["git"]["commit"] == "0123456789abcdef" and "commit_info" in result["git"]["source"]
    table = report.render(result)
    assert "GPU time reference / fast" in table and "| g_gemm_first | `perf.g_gemm_first=on` | posterior_chain" in table
    assert "2.00×" in next(ln for ln in table.splitlines() if ln.startswith("| g_gemm_first"))
    assert "adds 1/10 of the EMA row" in table


def test_the_pinned_commit_wins_everywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(report.COMMIT_ENV, "b011f0d+dirty")
    result = report.assemble(_doc())
    assert result["git"] == {"commit": "b011f0d", "dirty": True, "branch": None, "source": report.COMMIT_ENV}
    assert "at commit `b011f0d+dirty` (from DAMC_COMMIT)" in report.render(result)


def test_merge_json_adds_a_stage_and_skips_a_missing_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main_doc = _doc()
    variants = {"benchmarks": [b for b in _with_gpu_and_variants()["benchmarks"]
                               if b["extra_info"].get("suite") == VARIANT_SUITE]}
    (tmp_path / "main.json").write_text(json.dumps(main_doc))
    (tmp_path / "variants.json").write_text(json.dumps(variants))
    out = tmp_path / "results"
    assert report.main(["--from-json", str(tmp_path / "main.json"), "--merge-json", str(tmp_path / "variants.json"),
                        "--merge-json", str(tmp_path / "missing.json"), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "| g_gemm_first" in captured.out and "missing.json not found" in captured.err
    assert json.loads((out / "nvidia-test-gpu.json").read_text())["variants"][0]["variant"] == "g_gemm_first"


def test_every_variant_builds_and_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variants' overrides are valid config and their phases run (on CPU: the fast plan falls back)."""
    from bench.phases import VARIANTS, build_fast

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for v in VARIANTS:
            cfg = load_config(REPO / "configs" / "quickstart.yaml", [*TINY, *v.overrides])
            for fn in build_fast(cfg, torch.device("cpu"), list(v.phases)).values():
                fn()
    finally:
        torch.set_num_threads(threads)


def test_a_streamed_run_is_read_like_its_json(tmp_path: Path) -> None:
    """bench/gpu_all.sh streams each finished benchmark to a .jsonl (a stage killed by its time limit writes no
    JSON); the report reads the stream as it reads pytest-benchmark's document."""
    doc = _doc()
    stream = tmp_path / "main.jsonl"
    stream.write_text("".join(json.dumps(b) + "\n" for b in doc["benchmarks"]))
    data = report.read_run(stream)
    assert data["benchmarks"] == doc["benchmarks"] and data["datetime"]
    assert report.assemble(data)["kind"] == "measured"
