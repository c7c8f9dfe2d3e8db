"""bench.codegen: the launch count of Inductor's wrapper code, its refusals, and (where torch is a CUDA build) the
CUDA code generation itself, which needs no GPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import codegen

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
