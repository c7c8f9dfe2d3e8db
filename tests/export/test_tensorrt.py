"""``--format tensorrt`` and the ``tensorrt`` extra.

What runs everywhere: the extra's pin is the torch-tensorrt release built for the pinned torch, and the refusals
are one line. The ``tensorrt``-marked tests (``python -m pytest -m tensorrt tests/export``) run only where the
extra is installed and skip otherwise, each with the first step that failed as its reason. Measured on the 2-core
CPU sandbox (README "TensorRT"): torch-tensorrt 2.13.0 and tensorrt-cu13-bindings 11.0.0.114 install from PyPI with
``--no-deps`` and the metadata test passes; ``tensorrt-cu13-libs`` (libnvinfer) comes only from NVIDIA's package
index, so ``import tensorrt`` / ``import torch_tensorrt`` fail and the converter, parser and engine tests skip.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.export import to_tensorrt
from engine.export.artifact import ExportError
from engine.export.to_tensorrt import require

REPO = Path(__file__).resolve().parents[2]

try:
    TRT_VERSION = importlib.metadata.version("torch-tensorrt")
except importlib.metadata.PackageNotFoundError:
    TRT_VERSION = ""
HAS_TRT = importlib.util.find_spec("torch_tensorrt") is not None
NOT_INSTALLED = "the tensorrt extra is not installed (pip install -e '.[tensorrt]'; README \"TensorRT\")"
WHY_NOT = to_tensorrt.unavailable() if HAS_TRT else NOT_INSTALLED  # "" when torch_tensorrt imports


def _tensorrt_import_error() -> str:
    """"" when the TensorRT Python API (``import tensorrt``) loads, else its error in one line."""
    if importlib.util.find_spec("tensorrt") is None:
        return NOT_INSTALLED
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # ImportError: libnvonnxparser.so.11: cannot open shared object file
        return f"import tensorrt: {type(e).__name__}: {str(e).strip().splitlines()[0]}"
    return ""


TRT_API_ERROR = _tensorrt_import_error()


def extra_pin() -> str:
    """The version in pyproject.toml's ``tensorrt = ["torch-tensorrt==X.Y.Z"]``."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        tomllib = pytest.importorskip("tomli")
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["tensorrt"]
    assert len(extra) == 1, extra
    m = re.fullmatch(r"torch-tensorrt==(\d+\.\d+\.\d+)", extra[0].replace(" ", ""))
    assert m, f"the tensorrt extra must pin one torch-tensorrt release: {extra}"
    return m.group(1)


def torch_pins() -> set[str]:
    """Every ``torch==X.Y.Z`` that CI (.ci/run) and README's set-up commands install."""
    pins = set(re.findall(r'"torch==([0-9.]+)"', (REPO / ".ci" / "run").read_text()))
    assert pins, ".ci/run pins no torch"
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith('pip install "torch=='):
            pins |= set(re.findall(r'"torch==([0-9.]+)"', line))
    return pins


def series(version: str) -> str:
    return ".".join(version.split(".")[:2])


def test_the_tensorrt_extra_pins_the_release_built_for_the_pinned_torch() -> None:
    """torch-tensorrt X.Y requires torch >= X.Y, < X.(Y+1): any other series would replace the pinned torch."""
    pins = torch_pins()
    assert len(pins) == 1, f"CI and README pin different torch releases: {sorted(pins)}"
    assert series(extra_pin()) == series(pins.pop())


def test_tensorrt_on_cpu_is_refused_with_the_onnx_route() -> None:
    with pytest.raises(ExportError, match="CUDA GPU.*--format onnx.*trtexec"):
        require(torch.device("cpu"))


@pytest.mark.skipif(HAS_TRT, reason="torch_tensorrt is installed here")
def test_a_missing_torch_tensorrt_names_the_install_and_the_onnx_route(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ExportError, match="needs torch-tensorrt built for torch .*trtexec") as info:
        require(torch.device("cuda"))
    assert "\n" not in str(info.value)


@pytest.mark.skipif("torch_tensorrt" in sys.modules, reason="the real torch_tensorrt is already imported")
def test_a_torch_tensorrt_without_its_libraries_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """What torch-tensorrt 2.13.0 does without libnvinfer (measured here): two printed lines, a bare Exception."""
    fake = tmp_path / "torch_tensorrt"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        'print("import error when try to import _TensorRTProxyModule, got error Could not find libnvinfer.so.11\\n'
        '  Search paths: [\'/usr/local/cuda-13.2/lib64\', \'/usr/lib\', \'/usr/lib64\']")\n'
        'raise Exception("import error when try to import _TensorRTProxyModule, got error Could not find '
        'libnvinfer.so.11\\n  Search paths: [\'/usr/lib\']")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ExportError, match=r"does not import \(.*libnvinfer\.so\.11\).*NVIDIA's package index.*"
                                          r"--format onnx") as info:
        require(torch.device("cuda"))
    assert "\n" not in str(info.value)
    assert capsys.readouterr().out == ""  # its prints do not reach the user
    assert "torch_tensorrt" not in sys.modules


# --- the tensorrt extra installed: what runs without a GPU, then the GPU steps ------------------------------------


@pytest.mark.tensorrt
@pytest.mark.skipif(not TRT_VERSION, reason=NOT_INSTALLED)
def test_the_installed_torch_tensorrt_is_the_pin_and_was_built_for_this_torch() -> None:
    from packaging.requirements import Requirement
    from packaging.version import Version

    assert extra_pin() == TRT_VERSION
    reqs = {r.name: r for r in map(Requirement, importlib.metadata.requires("torch-tensorrt") or [])
            if r.marker is None}
    here = Version(Version(torch.__version__).public)  # 2.13.0+cpu -> 2.13.0
    assert here in reqs["torch"].specifier, (torch.__version__, str(reqs["torch"]))
    major, minor = here.release[:2]
    assert Version(f"{major}.{minor + 1}.0") not in reqs["torch"].specifier  # one torch series only
    assert any(name.startswith("tensorrt") for name in reqs), sorted(reqs)  # the TensorRT wheels it needs


@pytest.mark.tensorrt
@pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT)
def test_torch_tensorrt_and_tensorrt_import() -> None:
    import tensorrt
    import torch_tensorrt

    assert torch_tensorrt.__version__ == extra_pin()
    assert tensorrt.__version__.split(".")[0] == torch_tensorrt._version.__tensorrt_version__.split(".")[0]


@pytest.mark.tensorrt
@pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT)
@pytest.mark.parametrize("structure", ["per-step", "whole"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_every_operator_of_the_exported_sampler_has_a_tensorrt_converter(damc_run: Path, structure: str,
                                                                         precision: str) -> None:
    """Torch-TensorRT's own support check on the graphs ``--format tensorrt`` compiles: nothing falls back to torch.

    The steps of ``torch_tensorrt.dynamo.compile`` (2.13) before any engine is built: its pre-export lowering, its
    decompositions, its post-lowering passes, then each call_function node asked of its converter registry (what
    ``compile(..., dryrun=True)`` reports; ``compile`` itself also queries the GPU's free memory).
    """
    from torch_tensorrt.dynamo import CompilationSettings
    from torch_tensorrt.dynamo.lowering import get_decompositions, post_lowering, pre_export_lowering
    from torch_tensorrt.dynamo.partitioning._global_partitioner import TorchTensorRTOperatorSupport

    from engine.export.build import ExportSpec, build_graphs
    from engine.run import checkpoint

    learner = checkpoint.load_run(damc_run, torch.device("cpu"))
    for m in (learner.nets.amortizer, learner.nets.generator):
        assert m is not None
        m.eval().requires_grad_(False)
    bundles = build_graphs(learner, ExportSpec("tensorrt", structure, 4, precision, torch.device("cpu")))
    assert len(bundles) == (3 if structure == "per-step" else 1)
    settings = CompilationSettings(min_block_size=1, require_full_compilation=True)
    for name, b in bundles.items():
        ep = pre_export_lowering(torch.export.export(b.module, b.example, strict=False), settings)
        gm = post_lowering(ep.run_decompositions(get_decompositions()).module(), settings)
        support = TorchTensorRTOperatorSupport()
        modules = dict(gm.named_modules())
        calls = [n for n in gm.graph.nodes if n.op == "call_function"]
        unsupported = sorted({str(n.target) for n in calls if not support.is_node_supported(modules, n)})
        assert calls and not unsupported, f"{name}: ops without a TensorRT converter: {unsupported}"


def _builder(trt: Any) -> Any:
    """``trt.Builder``: the first TensorRT step that needs a CUDA device (it initialises CUDA)."""
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except Exception as e:  # no GPU: "CUDA initialization failure", then pybind11's "factory function returned nullptr"
        if not torch.cuda.is_available():
            pytest.skip(f"trt.Builder needs a CUDA device: {type(e).__name__}: {e}")
        raise
    return builder, logger


@pytest.mark.tensorrt
@pytest.mark.skipif(bool(TRT_API_ERROR), reason=TRT_API_ERROR)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrts_onnx_parser_accepts_all_three_onnx_files(request: pytest.FixtureRequest, tmp_path: Path,
                                                              precision: str) -> None:
    """``null_embedding.onnx``, ``step.onnx`` and ``generator.onnx`` (what ``--format onnx`` writes) parse into
    strongly typed TensorRT networks (README's ``trtexec --stronglyTyped``) with no parser error."""
    import tensorrt as trt

    pytest.importorskip("onnxscript", reason="needs the export extra: pip install 'damc-engine[export]'")
    from export_support import export

    from engine.export.artifact import read_sidecar

    builder, logger = _builder(trt)  # before training a run: skips first where there is no GPU
    out = export(request.getfixturevalue("damc_run"), "onnx", "per-step", tmp_path / "onnx", precision=precision)
    directory, sidecar = read_sidecar(out)
    files = sorted(g.file for g in sidecar.graphs.values())
    assert files == ["generator.onnx", "null_embedding.onnx", "step.onnx"]
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    for g in sidecar.graphs.values():
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        ok = parser.parse_from_file(str(directory / g.file))
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        assert ok and not errors, f"{g.file}: {errors}"
        assert network.num_layers > 0
        assert [network.get_input(i).name for i in range(network.num_inputs)] == [t.name for t in g.inputs]


if not HAS_TRT:
    SKIP = NOT_INSTALLED + "; the ONNX artifact is the TensorRT route (trtexec --onnx=...)"
elif WHY_NOT:
    SKIP = WHY_NOT
elif not torch.cuda.is_available():
    SKIP = "TensorRT engines are built and run on a CUDA GPU"
else:
    SKIP = ""


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(bool(SKIP), reason=SKIP)
@pytest.mark.parametrize("structure", ["per-step", "whole"])
def test_tensorrt_engine_matches_the_engine(damc_run: Path, tmp_path: Path, structure: str) -> None:
    from engine.export.build import ExportSpec, export_sampler, reference_images
    from engine.export.runner import load_artifact
    from engine.run import checkpoint
    from engine.sampling.noise import NoiseStream, prior_noise

    cuda = torch.device("cuda")
    learner = checkpoint.load_run(damc_run, cuda)
    export_sampler(learner, ExportSpec("tensorrt", structure, 4, "fp32", cuda), tmp_path / "trt", run_info={})
    sampler = load_artifact(tmp_path / "trt", cuda)
    noise = prior_noise(NoiseStream(41, 8, 4), 4)
    # TensorRT picks its own kernels (TF32 may be on): a looser bound than onnxruntime's.
    assert (sampler.images(noise) - reference_images(learner, noise.to(cuda))).abs().max() <= 1e-2
