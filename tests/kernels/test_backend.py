"""kernels.backend: the switch, the CPU fallback, installs without Triton, and the GPU build of every kernel
(compiled ahead of time for sm_90 on this CPU machine: Triton's front end and ptxas need no GPU)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from kernel_support import DEVICE

import kernels
import kernels.backend as backend
import kernels.langevin_update as klu
from kernels.backend import get_backend, set_backend, triton_available, use_backend

REPO = Path(__file__).resolve().parents[2]


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | env
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=240)


def test_switch_values_and_restore() -> None:
    assert kernels.get_backend is get_backend
    before = get_backend()  # "auto" unless an earlier test ran engine.runtime.system.apply_perf
    with use_backend("torch"):
        assert get_backend() == "torch"
        with use_backend("triton"):
            assert get_backend() == "triton"
        assert get_backend() == "torch"
    assert get_backend() == before
    with pytest.raises(ValueError, match="must be one of auto, triton, torch"):
        set_backend("cuda")  # type: ignore[arg-type]
    assert get_backend() == before


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the CPU fallback")
def test_auto_on_cpu_runs_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even with the interpreter available, "auto" never routes CPU tensors to a kernel."""
    monkeypatch.setattr(klu, "_langevin_update_triton", lambda *a, **k: pytest.fail("kernel launched"))
    z, g = torch.randn(2, 7, 8).unbind(0)
    with use_backend("auto"):
        assert torch.equal(klu.langevin_update(z, g, 0.1, None), klu.langevin_update_ref(z, g, 0.1, None))


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_forced_triton_on_cpu_without_interpreter_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "interpreting", lambda: False)
    z = torch.randn(7, 8)
    with use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        klu.langevin_update(z, z, 0.1, None)

@pytest.mark.skipif(DEVICE.type != "cpu" or not triton_available(), reason="the interpreter on a CPU")
def test_forced_triton_where_torch_rejects_interpreted_kernels_is_one_clear_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """torch 2.11's ``wrap_triton`` rejects the interpreter's kernels (seen with triton 3.6): a forced Triton
    backend on CPU tensors says so, naming the versions, before anything launches."""
    monkeypatch.setattr(backend, "interpreting", lambda: True)
    monkeypatch.setattr(backend, "_wrap_triton_takes_interpreted_kernels", lambda: False)
    monkeypatch.setattr(klu, "_langevin_update_triton", lambda *a, **k: pytest.fail("kernel launched"))
    z = torch.randn(7, 8)
    says = re.escape(f"torch {torch.__version__}'s torch.library.wrap_triton rejects the interpreter's kernels")
    with use_backend("triton"), pytest.raises(RuntimeError, match=says):
        klu.langevin_update(z, z, 0.1, None)



def test_without_triton_everything_runs_the_reference_quietly() -> None:
    """A CPU install without Triton: the ops import silently, "auto" gives the references, "triton" is a clear
    error. (The import is blocked in a fresh interpreter, since this one may already hold triton.)"""
    proc = _run("""
        import sys
        sys.modules["triton"] = None  # `import triton` now raises ImportError
        import torch
        from kernels import set_backend, triton_available
        from kernels.langevin_update import langevin_update, langevin_update_ref, langevin_update_philox
        from kernels.ddpm_step import ddpm_step, ddpm_step_ref, pack_sampler_table
        from kernels.philox_noise import philox_noise
        from engine.sampling.diffusion import sampler_table
        assert not triton_available()
        z, g, e = torch.randn(3, 5, 4).unbind(0)
        assert torch.equal(langevin_update(z, g, 0.1, e), langevin_update_ref(z, g, 0.1, e))
        table, k = pack_sampler_table(sampler_table(10)), torch.tensor(3)
        assert torch.equal(ddpm_step(z, g, table, k, e), ddpm_step_ref(z, g, table, k, e))
        langevin_update_philox(z, g, 0.1, torch.tensor([1, 2]), torch.tensor(0))
        assert philox_noise(z, torch.tensor([1, 2]), torch.tensor(0)).shape == z.shape
        set_backend("triton")
        try:
            langevin_update(z, g, 0.1, e)
        except RuntimeError as err:
            assert "not installed" in str(err)
        else:
            raise AssertionError("forced triton without triton must fail")
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert proc.stderr.strip() == "", proc.stderr  # no warning from torch.library.triton_op


def _nvidia_backend_available() -> bool:
    if not triton_available():
        return False
    from triton.backends import backends

    return "nvidia" in backends


@pytest.mark.skipif(not _nvidia_backend_available(), reason="triton with its NVIDIA backend is not installed")
def test_kernels_compile_for_sm90_and_vectorise() -> None:
    """Every kernel, as the GPU would build it (no interpreter), for an H100 (sm_90): the front end accepts the
    code the interpreter cannot check (constexpr branches, dtypes), ptxas assembles it, and the contiguous
    fp32 path moves data with 128-bit accesses (``ld.global.v4`` / ``st.global.v4``): the premise of
    reaching copy bandwidth; and torch.compile's mutation analysis sees ``out_ptr`` as the only write (no
    defensive clones in compiled graphs). Runs in a fresh interpreter without TRITON_INTERPRET."""
    proc = _run("""
        import re
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from kernels.langevin_update import _langevin_update_kernel
        from kernels.ddpm_step import _ddpm_step_kernel
        from kernels.philox_noise import _philox_noise_kernel

        def build(kernel, types, constexprs, aligned):
            names = list(types) + list(constexprs)
            sig = dict(types) | {name: "constexpr" for name in constexprs}
            # what Triton's launcher specialises at run time: 16-byte pointers, int args divisible by 16
            attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
            src = ASTSource(fn=kernel, signature=sig, constexprs=constexprs, attrs=attrs)
            return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]

        i32, f32 = "i32", "fp32"
        strides = {n: i32 for n in ("z_s0", "z_s1", "a_s0", "a_s1", "e_s0", "e_s1")}
        # In parameter order: the arguments kernels.elementwise passes to both, then each kernel's own.
        head = {"z_ptr": "*fp32", "a_ptr": "*fp32", "noise_ptr": "*fp32", "seed_offset_ptr": "*i64",
                "out_ptr": "*fp32"}
        sizes = {"n_elements": i32, "n_ctr": i32, "n_cols": i32}
        langevin = head | {"step_ptr": "*i64"} | sizes | strides | {"half_s2": f32, "step_size": f32}
        ddpm = head | {"table_ptr": "*fp32", "k_ptr": "*i64"} | sizes | strides
        aligned_l = aligned_d = ["z_ptr", "a_ptr", "noise_ptr", "out_ptr", "n_elements", "n_ctr", "n_cols"]
        for noise in (0, 1, 2):
            ptx = build(_langevin_update_kernel, langevin, {"NOISE": noise, "STRIDED": False, "QUARTER": 512},
                        aligned_l)
            assert len(re.findall(r"ld\\.global\\.v4\\.b32", ptx)) >= 8 and "st.global.v4.b32" in ptx, noise
            ptx = build(_ddpm_step_kernel, ddpm, {"NOISE": noise, "STRIDED": False, "QUARTER": 512}, aligned_d)
            assert len(re.findall(r"ld\\.global\\.v4\\.b32", ptx)) >= 8 and "st.global.v4.b32" in ptx, noise
        bf16 = langevin | {"a_ptr": "*bf16"}
        build(_langevin_update_kernel, bf16, {"NOISE": 2, "STRIDED": True, "QUARTER": 128}, [])
        build(_ddpm_step_kernel, ddpm | {"a_ptr": "*bf16"}, {"NOISE": 1, "STRIDED": True, "QUARTER": 256}, [])
        build(_philox_noise_kernel, {"seed_offset_ptr": "*i64", "step_ptr": "*i64", "out_ptr": "*fp32",
                                     "n_elements": i32, "n_ctr": i32}, {"QUARTER": 512}, [])

        # torch.compile's view of the kernels: its TTIR analysis must find out_ptr as the only write, or
        # the compiled graph clones every input before each launch. It asks the driver for the target:
        # stand in an H100 (no GPU here).
        import torch
        from torch._higher_order_ops import triton_kernel_wrap as wrap

        class _H100:
            def get_current_target(self):
                return GPUTarget("cuda", 90, 32)

        triton.runtime.driver._active = _H100()
        z, st = torch.empty(129, 128), torch.zeros((), dtype=torch.int64)
        seed_offset = torch.zeros(2, dtype=torch.int64)
        common = {"z_ptr": z, "a_ptr": z, "noise_ptr": z, "seed_offset_ptr": seed_offset, "out_ptr": z.clone(),
                  "n_elements": z.numel(), "n_ctr": 4128, "n_cols": 128, "z_s0": 128, "z_s1": 1, "a_s0": 128,
                  "a_s1": 1, "e_s0": 128, "e_s1": 1, "QUARTER": 128}
        for noise in (0, 1, 2):
            for strided in (False, True):
                flags = {"NOISE": noise, "STRIDED": strided}
                lk = common | flags | {"step_ptr": st, "half_s2": 0.005, "step_size": 0.1}
                dk = common | flags | {"table_ptr": torch.empty(100, 6), "k_ptr": st}
                for kernel, kw in ((_langevin_update_kernel, lk), (_ddpm_step_kernel, dk)):
                    if hasattr(wrap, "identify_accessed_tensors"):  # torch >= 2.12
                        writes = [d.name for d in wrap.identify_accessed_tensors(kernel, kw, {}).read_writes.writes]
                    else:  # torch 2.11 (the lent GPU image)
                        writes = list(wrap.identify_mutated_tensors(kernel, kw, {}))
                    assert writes == ["out_ptr"], (kernel, flags, writes)
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"


@pytest.mark.skipif(not _nvidia_backend_available(), reason="triton with its NVIDIA backend is not installed")
def test_squash_block_compiles_for_sm90() -> None:
    """kernels.squash_block as the GPU builds it (sm_90, no interpreter) for every mode the sampler uses: bf16 and
    fp32 operands (tensor-core dots, IEEE fp32 for the Fourier phases), the cat of two inputs, the Fourier-feature
    first block, the last block with the ancestral step, each batch tile (BM 16/32/64); and torch.compile's
    mutation analysis finds ``out_ptr`` as its only write."""
    proc = _run("""
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from kernels.squash_block import _squash_block_kernel

        def signature(dt):
            ptrs = {n: f"*{dt}" for n in ("h1_ptr", "h2_ptr", "w_ptr", "b_ptr", "g_ptr", "bb_ptr")}
            return ptrs | {"k_ptr": "*i64", "out_ptr": f"*{dt}", "z_ptr": "*fp32", "table_ptr": "*fp32",
                           "noise_ptr": "*fp32", "n_rows": "i32", "k1": "i32", "k2": "i32", "half": "i32",
                           "n_out": "i32"}

        n = 0
        for dt in ("bf16", "fp32"):
            for mode in ("plain", "two", "fourier", "ddpm"):
                for bm in (16, 32, 64):
                    sig = signature(dt)
                    if mode == "fourier":
                        sig |= {"h1_ptr": "*fp32", "h2_ptr": "*fp32"}
                    if mode == "ddpm":
                        sig |= {"out_ptr": "*fp32"}
                    ce = {"ACT": mode != "fourier", "TWO": mode in ("two", "ddpm"), "FOURIER": mode == "fourier",
                          "DDPM": mode == "ddpm", "NOISE": mode == "ddpm", "RESIDUAL": True, "IEEE": dt == "fp32",
                          "NZP": 128, "BM": bm, "BN": 32, "BK": 64}
                    src = ASTSource(fn=_squash_block_kernel, signature=sig | {c: "constexpr" for c in ce},
                                    constexprs=ce)
                    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]
                    # bf16 (the fast path): the block's GEMM on tensor cores; fp32 stays IEEE (FMA), as the reference
                    assert ("mma" in ptx) == (dt == "bf16"), (dt, mode, bm)
                    n += 1

        import torch
        from torch._higher_order_ops import triton_kernel_wrap as wrap

        class _H100:
            def get_current_target(self):
                return GPUTarget("cuda", 90, 32)

        triton.runtime.driver._active = _H100()
        b16 = torch.bfloat16
        kw = {"h1_ptr": torch.empty(64, 256, dtype=b16), "h2_ptr": torch.empty(64, 256, dtype=b16),
              "w_ptr": torch.empty(512, 512, dtype=b16), "b_ptr": torch.empty(512, dtype=b16),
              "g_ptr": torch.empty(100, 64, 256, dtype=b16), "bb_ptr": torch.empty(100, 64, 256, dtype=b16),
              "k_ptr": torch.zeros((), dtype=torch.int64), "out_ptr": torch.empty(64, 256, dtype=b16),
              "z_ptr": torch.empty(64, 256), "table_ptr": torch.empty(100, 6), "noise_ptr": torch.empty(64, 256),
              "n_rows": 64, "k1": 256, "k2": 256, "half": 0, "n_out": 256, "ACT": True, "TWO": True,
              "FOURIER": False, "DDPM": False, "NOISE": False, "RESIDUAL": True, "IEEE": False, "NZP": 128,
              "BM": 64, "BN": 32, "BK": 64}
        if hasattr(wrap, "identify_accessed_tensors"):  # torch >= 2.12
            writes = [d.name for d in wrap.identify_accessed_tensors(_squash_block_kernel, kw, {}).read_writes.writes]
        else:  # torch 2.11 (the lent GPU image)
            writes = list(wrap.identify_mutated_tensors(_squash_block_kernel, kw, {}))
        assert writes == ["out_ptr"], writes
        print("ok", n)
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok 24"
