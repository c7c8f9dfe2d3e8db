"""``--format onnx``: onnxruntime matches the engine, noise is an input, and every operator is one TensorRT parses.

Tolerances (fp32, images in [−1, 1], onnxruntime 1.32 CPU vs torch 2.13 eager, 2-core CPU sandbox): ≤ 1e-5 at 3
steps (measured 1.2e-6). At the paper's 100 steps the trained quickstart run's exports differ from the engine by
at most 2.3e-6 (per-step 2.25e-6, whole 1.97e-6, batch 64: README "Sampling and export"); the 100-step test below
bounds a per-step export at 1e-5 as well.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("onnx", reason="needs the export extra: pip install 'damc-engine[export]'")
pytest.importorskip("onnxruntime", reason="needs the export extra: pip install 'damc-engine[export]'")
pytest.importorskip("onnxscript", reason="needs the export extra: pip install 'damc-engine[export]'")

import onnx  # noqa: E402
from export_support import export  # noqa: E402

from engine.export.artifact import read_sidecar  # noqa: E402
from engine.export.build import reference_images  # noqa: E402
from engine.export.runner import load_artifact  # noqa: E402
from engine.export.to_onnx import OPSET, operator_types  # noqa: E402
from engine.run import checkpoint  # noqa: E402
from engine.sampling.noise import NoiseStream, prior_noise  # noqa: E402

CPU = torch.device("cpu")

# TensorRT's ONNX parser: the operators marked "Y" in onnx-tensorrt's support matrix, docs/operators.md
# ("TensorRT 10.15 supports operators in the inclusive range of opset 9 to opset 24"), github.com/onnx/onnx-tensorrt.
TRT_OPSET_RANGE = (9, 24)
_TRT_MATRIX = """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization BlackmanWindow
Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv
DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler
InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression
NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN RoiAlign
RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh
Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter ThresholdedRelu
Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
"""
TRT_SUPPORTED_OPS = frozenset(_TRT_MATRIX.split())
# The same file's "Supported Types" column for the float-only operators the sampler uses.
_FLOAT = frozenset({"FLOAT", "FLOAT16", "BFLOAT16"})
TRT_OP_TYPES = {op: _FLOAT for op in ("Atan", "Cos", "Exp", "Gemm", "LeakyRelu", "MatMul", "ConvTranspose", "Sigmoid",
                                      "Sin", "Tanh", "Sqrt", "Clip")}
# Element types TensorRT takes at all (same file: DOUBLE only by casting down, 8/4-bit only through quantization).
TRT_TYPES = frozenset({"FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64", "BOOL"})
# Supported by TensorRT but wrong for a sampler: TensorRT ignores their seed (and torch-tensorrt freezes them).
RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                        "Bernoulli"})


@pytest.fixture(scope="module")
def artifacts(damc_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    out = {s: export(damc_run, "onnx", s, root / s) for s in ("per-step", "whole")}
    out["per-step-fp16"] = export(damc_run, "onnx", "per-step", root / "fp16", precision="fp16")
    return out


@pytest.mark.parametrize("structure", ["per-step", "whole"])
def test_onnxruntime_matches_the_engine_for_two_noise_draws(damc_run: Path, artifacts: dict[str, Path],
                                                            structure: str) -> None:
    learner = checkpoint.load_run(damc_run, CPU)
    sampler = load_artifact(artifacts[structure], CPU)
    outs = []
    for seed in (21, 22):
        noise = prior_noise(NoiseStream(seed, 8, learner.table.n_steps + 1), 4)
        got = sampler.images(noise)
        err = (got - reference_images(learner, noise)).abs().max().item()
        assert err <= 1e-5, (seed, err)
        outs.append(got)
    assert (outs[0] - outs[1]).abs().max() > 1e-2  # the noise inputs really drive the output


def test_per_step_and_whole_onnx_agree(artifacts: dict[str, Path]) -> None:
    noise = prior_noise(NoiseStream(5, 8, 4), 4)
    a = load_artifact(artifacts["per-step"], CPU).images(noise)
    b = load_artifact(artifacts["whole"], CPU).images(noise)
    assert (a - b).abs().max() <= 1e-5


@pytest.mark.slow  # ~30-75 s on 2 cores (a 100-step model trained for the test); python -m pytest -m slow
def test_a_100_step_per_step_onnx_export_stays_within_1e_5(damc_run_100: Path, tmp_path: Path) -> None:
    out = export(damc_run_100, "onnx", "per-step", tmp_path / "a")
    learner = checkpoint.load_run(damc_run_100, CPU)
    noise = prior_noise(NoiseStream(0, 8, 101), 4)
    err = (load_artifact(out, CPU).images(noise) - reference_images(learner, noise)).abs().max().item()
    assert err <= 1e-5
    assert read_sidecar(out)[1].verification["max_abs_diff"] <= 1e-5


def _element_types(model: onnx.ModelProto) -> dict[str, str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {}
    for vi in [*g.input, *g.output, *g.value_info]:
        types[vi.name] = onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type)
    for init in g.initializer:
        types[init.name] = onnx.TensorProto.DataType.Name(init.data_type)
    return types


@pytest.mark.parametrize("structure", ["per-step", "whole", "per-step-fp16"])
def test_every_onnx_operator_is_in_tensorrts_support_matrix(artifacts: dict[str, Path], structure: str) -> None:
    directory, sidecar = read_sidecar(artifacts[structure])
    for g in sidecar.graphs.values():
        path = directory / g.file
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        versions = {o.domain: o.version for o in model.opset_import}
        assert versions.get("", versions.get("ai.onnx")) == OPSET
        assert TRT_OPSET_RANGE[0] <= OPSET <= TRT_OPSET_RANGE[1]
        ops = operator_types(path)
        assert {d for d, _ in ops} <= {""}, f"{g.file}: custom domains {ops}"
        names = {op for _, op in ops}
        assert names <= TRT_SUPPORTED_OPS, f"{g.file}: not parsed by TensorRT: {sorted(names - TRT_SUPPORTED_OPS)}"
        assert not names & RANDOM_OPS, f"{g.file}: random ops {sorted(names & RANDOM_OPS)}"
        assert not model.functions
        types = _element_types(model)
        constants = {n.output[0] for n in model.graph.node if n.op_type == "Constant"} | {
            i.name for i in model.graph.initializer}
        for node in model.graph.node:
            for name in [*node.input, *node.output]:
                if not name or name not in types:
                    continue
                allowed = TRT_OP_TYPES.get(node.op_type, TRT_TYPES)
                assert types[name] in allowed, f"{g.file}: {node.op_type} on {types[name]} ({name})"
            if node.op_type in ("Unsqueeze", "Squeeze", "Reshape") and len(node.input) > 1:
                assert node.input[1] in constants, f"{node.op_type} axes/shape must be build-time constants"
        for value in model.graph.input:  # static shapes: one TensorRT engine, no optimization profile needed
            dims = value.type.tensor_type.shape.dim
            assert all(d.HasField("dim_value") and d.dim_value > 0 for d in dims), value.name
        assert [i.name for i in model.graph.input] == [t.name for t in g.inputs]
    if structure.endswith("fp16"):  # the networks in fp16 through explicit casts, the interface fp32
        casts = {onnx.TensorProto.DataType.Name(a.i) for f in sidecar.graphs.values()
                 for n in onnx.load(str(directory / f.file)).graph.node if n.op_type == "Cast" for a in n.attribute}
        assert "FLOAT16" in casts and sidecar.verification["max_abs_diff"] < 1e-2


def test_the_support_check_is_not_vacuous() -> None:
    assert {"RandomNormal", "Gemm", "Gather"} <= TRT_SUPPORTED_OPS
    assert "Unique" not in TRT_SUPPORTED_OPS and "SequenceAt" not in TRT_SUPPORTED_OPS
    assert TRT_OP_TYPES["Gemm"] == _FLOAT and "DOUBLE" not in TRT_TYPES
