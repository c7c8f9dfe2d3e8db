"""bench.codegen: the launch count of Inductor's wrapper code, its refusals, and (where torch is a CUDA build) the
CUDA code generation itself, which needs no GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import engine.files as files
from bench import codegen
from tests.test_files import FullDisk

# The shapes of line Inductor writes in a wrapper's call() (torch 2.11, CUDA), kernel sources before it.
WRAPPER = '''
triton_poi_fused__to_copy_0 = async_compile.triton('triton_poi_fused__to_copy_0', """
def triton_poi_fused__to_copy_0(in_ptr0, out_ptr0, xnumel, XBLOCK : tl.constexpr):
    tmp0.run(x)  # not a launch: kernel source, before call()
""", device_str='cuda')

class Runner:
    def call(self, args):
        primals_1, primals_2, primals_3 = args
        args.clear()
        assert_size_stride(primals_1, (128, 3, 32, 32), (3072, 1, 96, 3))
        with torch.cuda._DeviceGuard(0):
            buf0 = empty_strided_cuda((64, 3, 4, 4), (48, 1, 12, 3), torch.bfloat16)
            # Topologically Sorted Source Nodes: [conv], Original ATen: [aten._to_copy]
            stream0 = get_raw_stream(0)
            triton_poi_fused__to_copy_0.run(primals_2, buf0, 3072, stream=stream0)
            buf2 = extern_kernels.convolution(buf1, buf0, stride=(1, 1), padding=(1, 1), bias=None)
            assert_size_stride(buf2, (128, 64, 32, 32), (65536, 1, 2048, 64), 'torch.ops.aten.convolution.default')
            extern_kernels.mm(buf3, buf4, out=buf5)
            extern_kernels.addmm(primals_3, buf5, buf6, alpha=1, beta=1, out=buf7)
            buf8 = torch.ops.aten.convolution_backward.default(buf7, buf1, buf0, [64], [1, 1], [1, 1], [1, 1], False)
            assert_alignment(buf9, 16, 'torch.ops.aten.convolution_backward.default')
            triton_for_fused_1.run(buf8, buf10, stream=stream0)  # a combo kernel
        return (buf10, )
'''


def test_counts_the_launches_of_call_only() -> None:
    got = codegen.count_launches(WRAPPER)
    assert (got.triton, got.extern, got.aten, got.total) == (2, 3, 1, 6)


def test_a_file_without_call_is_refused() -> None:
    with pytest.raises(ValueError, match="not an Inductor output module"):
        codegen.count_launches("x = 1\n")


def test_unknown_region_or_variant_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert codegen.main(["--out", str(tmp_path), "--regions", "q_update,decode"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "['decode']" in err and "q_update, sampler_step" in err
    assert not any(tmp_path.iterdir())


def _fake_wrapper(region: str, switches: tuple[str, ...]) -> list[str]:
    if switches == ("combo_kernels",):
        raise AttributeError("module 'torch._inductor.fx_passes.joint_graph' has no attribute 'lazy_init'\nmore")
    return [WRAPPER]


def test_a_failing_region_is_one_line_and_the_others_are_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A torch whose internals moved fails one lowering: one line for it, the rest counted and written, exit 1."""
    monkeypatch.setattr(codegen, "cuda_build_problem", lambda: None)
    monkeypatch.setattr(codegen, "count_region", _fake_wrapper)
    assert codegen.main(["--out", str(tmp_path), "--regions", "q_update",
                         "--variants", "fast,combo_kernels"]) == 1
    err = capsys.readouterr().err
    assert err == ("bench.codegen: q_update combo_kernels failed: AttributeError: module "
                   "'torch._inductor.fx_passes.joint_graph' has no attribute 'lazy_init'\n")
    saved = json.loads((tmp_path / "codegen.json").read_text())
    assert [r["variant"] for r in saved["rows"]] == ["fast"] and saved["rows"][0]["total"] == 6
    assert saved["failed"] == ["q_update combo_kernels"]


def test_a_full_disk_is_one_line_and_leaves_the_previous_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(codegen, "cuda_build_problem", lambda: None)
    monkeypatch.setattr(codegen, "count_region", _fake_wrapper)
    (tmp_path / "codegen.md").write_text("previous\n")
    real_fdopen = files.os.fdopen
    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode), 10))
    assert codegen.main(["--out", str(tmp_path), "--regions", "q_update", "--variants", "fast"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device (disk full)" in err and "codegen.json" in err
    assert (tmp_path / "codegen.md").read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codegen.md"]  # no temporaries, no half file


@pytest.mark.skipif(codegen.cuda_build_problem() is None, reason="this torch is a CUDA build")
def test_a_cpu_build_of_torch_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert codegen.main(["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs a CUDA build of torch" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(codegen.cuda_build_problem() is not None, reason="needs a CUDA build of torch (no GPU)")
def test_sampler_step_code_generated_for_cuda(tmp_path: Path) -> None:
    """One sampler trunk, lowered for an H200 with no GPU: the Fourier projection and the seven blocks' GEMMs are
    cuBLAS calls, the rest Triton kernels, and no GPU state leaks into the CPU process afterwards."""
    import torch

    assert codegen.main(["--out", str(tmp_path), "--regions", "sampler_step", "--keep-code"]) == 0
    code = (tmp_path / "codegen_sampler_step_fast_0.py").read_text()
    assert "empty_strided_cuda" in code
    counts = codegen.count_launches(code)
    assert counts.extern == 8 and counts.triton > 0 and counts.aten == 0
    assert "| sampler_step | fast | **all** |" in (tmp_path / "codegen.md").read_text()
    assert not torch.cuda.is_available()  # the fake device is gone
