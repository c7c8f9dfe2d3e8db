"""Kernels per compiled region as Inductor generates them for an H100/H200 (sm_90), on a machine without a GPU:
``python -m bench.codegen --out DIR``.

Issue 14's two missed targets (the amortizer updates, the 100-step sampler) are launch-bound, so the number of
kernels a compiled region launches is the first-order question, and it is decided by Inductor's code generation,
not by the GPU. This runs the engine eagerly on the CPU at the paper's sizes and, for each ``torch.compile``'d
function of the fast path, hands the graph Dynamo captured to Inductor with *fake* CUDA tensors and an H200's device
properties: Inductor writes the Triton + cuBLAS/cuDNN wrapper code it would write on the GPU, and that code's
launches are counted. Nothing is compiled by ptxas or run on a GPU; the counts are counts, not times.

What the counts are and are not:

* one ``triton_*.run`` (a generated or combo kernel), ``extern_kernels.*`` (cuBLAS GEMM, cuDNN convolution) or
  ``torch.ops.aten.*`` call (convolution_backward) each count as one launch; cuDNN may launch several kernels for
  one call, so GPU counts can be higher;
* AOTAutograd's forward/backward split is traced on the CPU (its autocast rules: the casts of linear and
  convolution inputs are the same on CUDA) and lowered by Inductor for CUDA;
* the eager parts of a region are not counted: for an amortizer update the gradient clip (``_foreach_norm`` and
  ``_foreach_mul_``) and the fused AdamW step, a few multi-tensor launches each; for a sampler step the epilogue
  kernel (one launch) and, per draw, the weight packing and the context GEMMs.

It needs a **CUDA build** of torch (the CPU wheel lacks the CUDA bindings Inductor's CUDA code generator imports)
but no GPU: ``python -m venv v && v/bin/pip install torch==2.11.0`` gives 2.11.0+cu130 with triton 3.6.0, the
lent GPU image's versions. It patches private torch internals for the duration of each compile (device queries,
pattern-matcher initialisation, Triton's driver); other torch versions may need the patches adjusted.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib
import json
import re
import subprocess
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.env import out_dir_problem

REGIONS = ("q_update", "sampler_step")
# Variants of perf.preset=fast whose launch counts decide issue 14 (overrides as perf.<name>="on").
VARIANTS: dict[str, tuple[str, ...]] = {
    "fast": (),
    "merge_unet": ("merge_unet",),
    "combo_kernels": ("combo_kernels",),
    "merge_unet+combo_kernels": ("merge_unet", "combo_kernels"),
}


@dataclasses.dataclass(frozen=True)
class Launches:
    triton: int  # Inductor-generated (or combo) Triton kernels
    extern: int  # extern_kernels.*: cuBLAS GEMMs, cuDNN convolutions
    aten: int  # torch.ops.aten.* fallbacks (convolution_backward)

    @property
    def total(self) -> int:
        return self.triton + self.extern + self.aten


_TRITON = re.compile(r"^(\w+ = )?\w+\.run\(")
_EXTERN = re.compile(r"^([\w, ]+ = )?extern_kernels\.\w+\(")
_ATEN = re.compile(r"^([\w, ]+ = )?torch\.ops\.aten\.\w+\.\w+\(")


def count_launches(code: str) -> Launches:
    """The launches in the ``call`` function of an Inductor output module (its wrapper code)."""
    start = code.find("def call(")
    if start < 0:
        raise ValueError("not an Inductor output module: no 'def call('")
    lines = [line.strip() for line in code[start:].splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    return Launches(triton=sum(bool(_TRITON.match(line)) for line in lines),
                    extern=sum(bool(_EXTERN.match(line)) for line in lines),
                    aten=sum(bool(_ATEN.match(line)) for line in lines))


def cuda_build_problem() -> str | None:
    """Why this torch cannot generate CUDA code (None: it can)."""
    if not hasattr(torch._C, "_cuda_getCurrentRawStream"):
        return (f"bench.codegen needs a CUDA build of torch (this is {torch.__version__}); no GPU is needed: "
                "python -m venv v && v/bin/pip install torch==2.11.0 (the lent GPU image's version)")
    return None


# ---------------------------------------------------------------------------------------------------------
# Inductor's CUDA code generator without a GPU

_H200 = types.SimpleNamespace(
    name="NVIDIA H200", major=9, minor=0, multi_processor_count=132, total_memory=141 * 2**30, warp_size=32,
    max_threads_per_multi_processor=2048, max_threads_per_block=1024, regs_per_multiprocessor=65536,
    shared_memory_per_block=49152, shared_memory_per_block_optin=232448, shared_memory_per_multiprocessor=233472,
    L2_cache_size=60 * 2**20, clock_rate=1980000, memory_clock_rate=3201000, memory_bus_width=6144,
    gcnArchName="", uuid="fake", is_integrated=False)


@contextlib.contextmanager
def _patched(target: object, **attrs: Any) -> Iterator[None]:
    old = {name: getattr(target, name) for name in attrs}
    for name, value in attrs.items():
        setattr(target, name, value)
    try:
        yield
    finally:
        for name, value in old.items():
            setattr(target, name, value)


@contextlib.contextmanager
def fake_cuda() -> Iterator[None]:
    """torch and Triton believe an H200 is device 0 for as long as this lasts (device queries only)."""
    import torch._dynamo.device_interface as di
    import torch._inductor.async_compile as ac
    import torch._subclasses.fake_tensor as ft
    import torch.utils._triton as ut
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend

    stream = types.SimpleNamespace(cuda_stream=0, device=torch.device("cuda", 0), device_index=0, stream_id=0,
                                   device_type=1)
    queries: dict[str, Any] = dict(
        is_available=lambda: True, device_count=lambda: 1, current_device=lambda: 0,
        get_device_properties=lambda *a, **k: _H200, get_device_capability=lambda *a, **k: (9, 0),
        get_device_name=lambda *a, **k: _H200.name, is_bf16_supported=lambda *a, **k: True,
        get_rng_state=lambda *a, **k: torch.zeros(16, dtype=torch.uint8), set_rng_state=lambda *a, **k: None,
        synchronize=lambda *a, **k: None, _exchange_device=lambda i: 0, _maybe_exchange_device=lambda i: 0,
        set_device=lambda *a, **k: None, memory_allocated=lambda *a, **k: 0, current_stream=lambda *a, **k: stream)
    iface = {name.lstrip("_"): staticmethod(fn) for name, fn in queries.items()
             if hasattr(di.CudaInterface, name.lstrip("_"))}
    iface |= {"get_raw_stream": staticmethod(lambda *a: 0), "get_compute_capability": staticmethod(lambda *a: 90)}
    # Inductor's pattern passes build their example tensors on the graph's device: on "cuda" that needs a driver,
    # and the patterns (device-independent graphs) are the same built on the CPU. The attention patterns are unused.
    passes = {}
    for name in ("joint_graph", "post_grad", "pre_grad", "freezing_patterns"):
        mod = importlib.import_module(f"torch._inductor.fx_passes.{name}")
        passes[mod] = mod.lazy_init
    fuse_attention = importlib.import_module("torch._inductor.fx_passes.fuse_attention")
    with contextlib.ExitStack() as stack:
        stack.enter_context(_patched(torch.cuda, **queries))
        stack.enter_context(_patched(di.CudaInterface, **iface))
        stack.enter_context(_patched(di.CudaInterface.Worker, get_device_properties=staticmethod(lambda *a: _H200),
                                     current_device=staticmethod(lambda: 0)))
        stack.enter_context(_patched(ft, init_gpu_context=lambda device: None))
        # Convolutions pick cuDNN, and cuDNN's output layout (channels_last when the input or the weight is), as
        # on the GPU; without a driver torch would pick its slow path and contiguous outputs.
        stack.enter_context(_patched(torch._C, _select_conv_backend=_cudnn_backend(torch._C._select_conv_backend),
                                     _conv_determine_backend_memory_format=_cudnn_layout(
                                         torch._C._conv_determine_backend_memory_format)))
        stack.enter_context(_patched(fuse_attention, _sfdp_init=lambda *a, **k: None))
        for mod, init in passes.items():
            stack.enter_context(_patched(mod, lazy_init=_on_cpu(init)))
        stack.enter_context(_patched(ut, triton_backend=lambda: CUDABackend(GPUTarget("cuda", 90, 32)),
                                     triton_hash_with_backend=lambda: "bench-codegen"))
        # The generated kernels' sources are kept, never compiled (that would need the driver).
        stack.enter_context(_patched(ac.AsyncCompile, triton=lambda self, name, src, *a, **k: _NotCompiled(name)))
        stack.callback(_clear_device_caches)  # nothing cached under the fake device outlives it
        _clear_device_caches()  # nor is anything cached before it (has_triton() on a CPU-only machine: False)
        yield


def _clear_device_caches() -> None:
    """Empty the memoised device queries (has_triton, DeviceProperties.create, ...)."""
    from torch._inductor.runtime.hints import DeviceProperties

    for mod in (importlib.import_module("torch.utils._triton"), importlib.import_module("torch._inductor.utils")):
        for value in vars(mod).values():
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()
    DeviceProperties.create.cache_clear()  # type: ignore[attr-defined]


def _cudnn_backend(select: Callable[..., Any]) -> Callable[..., Any]:
    conv = torch._C._ConvBackend

    def pick(*args: Any, **kwargs: Any) -> Any:
        inp = args[0] if args else kwargs["input"]
        transposed = kwargs["transposed"] if "transposed" in kwargs else args[6]
        if inp.device.type == "cuda":
            return conv.CudnnTranspose if transposed else conv.Cudnn
        return select(*args, **kwargs)

    return pick


def _cudnn_layout(determine: Callable[..., Any]) -> Callable[..., Any]:
    conv = torch._C._ConvBackend

    def layout(inp: torch.Tensor, weight: torch.Tensor, backend: Any) -> Any:
        if backend in (conv.Cudnn, conv.CudnnTranspose):  # cudnn_conv_suggest_memory_format (cuDNN >= 7.6.3)
            suggest = torch._prims_common.suggest_memory_format
            if torch.channels_last in (suggest(inp), suggest(weight)):
                return torch.channels_last
            return torch.contiguous_format
        return determine(inp, weight, backend)

    return layout


def _on_cpu(init: Callable[..., Any]) -> Callable[..., Any]:
    return lambda input_device=None: init(torch.device("cpu"))


@dataclasses.dataclass
class _NotCompiled:
    name: str


def _to_cuda(arg: Any) -> Any:
    if isinstance(arg, str) and arg == "cpu":
        return "cuda"
    if isinstance(arg, torch.device) and arg.type == "cpu":
        return torch.device("cuda", 0)
    if isinstance(arg, (list, tuple)):
        return type(arg)(_to_cuda(a) for a in arg)
    return arg


class Recorder:
    """A ``torch.compile`` backend: AOTAutograd on the CPU, and each forward/backward graph also lowered by Inductor
    for fake CUDA, its wrapper code kept in ``codes`` (the CPU run itself stays eager)."""

    def __init__(self) -> None:
        self.codes: list[str] = []
        self.options: dict[str, Any] = {}

    def backend(self) -> Callable[..., Any]:
        from torch._dynamo.backends.common import aot_autograd
        from torch._functorch.partitioners import min_cut_rematerialization_partition
        from torch._inductor.decomposition import select_decomp_table

        return aot_autograd(fw_compiler=self._lower(False), bw_compiler=self._lower(True),
                            inference_compiler=self._lower(False), decompositions=select_decomp_table(),
                            partition_fn=min_cut_rematerialization_partition)

    def _lower(self, is_backward: bool) -> Callable[..., Any]:
        from torch._functorch.aot_autograd import make_boxed_func
        from torch._inductor import compile_fx
        from torch._inductor.virtualized import V
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.passes.fake_tensor_prop import FakeTensorProp

        def lower(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Any:
            cuda_gm = copy.deepcopy(gm)
            for node in cuda_gm.graph.nodes:
                node.args = _to_cuda(node.args)
                node.kwargs = {k: _to_cuda(v) for k, v in node.kwargs.items()}
            cuda_gm.recompile()
            with fake_cuda():
                mode = FakeTensorMode(allow_non_fake_inputs=True)
                with mode:
                    fakes = [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cuda")
                             if isinstance(t, torch.Tensor) else t for t in example_inputs]
                FakeTensorProp(cuda_gm, mode).propagate_dont_convert_inputs(*fakes)
                with torch._inductor.config.patch({**self.options, "fx_graph_cache": False}), \
                        torch._guards.tracing(torch._guards.TracingContext(mode)), V.set_fake_mode(mode), \
                        _patched(torch._inductor.graph.GraphLowering, codegen=self._keeping(
                            torch._inductor.graph.GraphLowering.codegen)):
                    compile_fx.compile_fx_inner(cuda_gm, fakes, is_backward=is_backward)
            return make_boxed_func(gm.forward)

        return lower

    def _keeping(self, codegen: Callable[..., Any]) -> Callable[..., Any]:
        def keep(graph: Any, *args: Any, **kwargs: Any) -> Any:
            out = codegen(graph, *args, **kwargs)
            code = out[0]
            self.codes.append(getattr(code, "value", code))
            return out

        return keep

    @contextlib.contextmanager
    def compiling(self) -> Iterator[None]:
        """Every ``torch.compile(fn, mode=..., options=...)`` made meanwhile uses this backend; the mode's and
        the options' Inductor settings (``combo_kernels``) apply to the CUDA lowering."""
        real = torch.compile

        def compile_here(fn: Any, *args: Any, mode: str | None = None, options: dict[str, Any] | None = None,
                         backend: Any = None, **kwargs: Any) -> Any:
            self.options = {**(torch._inductor.list_mode_options(mode) if mode else {}), **(options or {})}
            self.options.pop("triton.cudagraphs", None)
            return real(fn, *args, backend=self.backend(), **kwargs)

        with _patched(torch, compile=compile_here):
            yield


# ---------------------------------------------------------------------------------------------------------
# The regions, at the paper's sizes


def count_region(region: str, switches: Sequence[str]) -> list[str]:
    """The wrapper code of each Inductor graph one call of ``region`` compiles (q_update: forward, backward)."""
    from bench.phases import bench_config
    from engine.learners import build_learner
    from engine.runtime import perf, system
    from engine.runtime.fast import FastChains
    from engine.runtime.sampler import draw_context, pack_unet
    from engine.runtime.updates import losses_per_update

    cfg = bench_config("paper")
    cfg = dataclasses.replace(cfg, perf=dataclasses.replace(cfg.perf, preset="fast",
                                                            **{name: "on" for name in switches}))
    with fake_cuda():
        plan, _ = perf.resolve(cfg.perf, torch.device("cuda"))
    # Eager CPU execution around the compiled functions: no graphs, no Triton ops (they would need the GPU).
    plan = dataclasses.replace(plan, graphs=False, iteration_graph=False, side_streams=False, kernels=False,
                               sampler_kernel=False)
    cpu = torch.device("cpu")
    system.seed_init(cfg.train.seed)
    learner = build_learner(cfg, cpu, system.make_generator(cpu, cfg.train.seed))
    recorder = Recorder()
    torch._dynamo.reset()
    with recorder.compiling():
        chains = FastChains(learner, plan)
    g = torch.Generator().manual_seed(0)
    b, nz, n = cfg.train.batch_size, cfg.model.nz, cfg.eval.n_samples
    net = learner.nets.amortizer
    assert net is not None
    if region == "q_update":
        n_loss = losses_per_update(cfg.diffusion)
        x = torch.rand(b, 3, 32, 32, generator=g) * 2 - 1
        z, keep = torch.randn(b, nz, generator=g), (torch.rand(b, generator=g) >= cfg.diffusion.p_uncond).float()
        xi, u = torch.randn(n_loss, b, nz, generator=g), torch.rand(n_loss, b, generator=g)
        chains._q_loss(z, x, keep, xi, u, torch.randn(n_loss, b, nz, generator=g)).backward()
    elif region == "sampler_step":
        table = learner.table
        dtype = torch.bfloat16 if plan.unet_bf16 else torch.float32
        with torch.no_grad():
            packed = pack_unet(net.unet, dtype)
            ctx = draw_context(net.unet, table.logsnr, net.null_embedding(torch.randn(n, nz, generator=g)), dtype)
            _, ks = chains._sampler_step.tables(table)
            chains._trunk(torch.randn(n, nz, generator=g), ks[1], packed.fourier_b, packed.w_ls, packed.b_ls,
                          [c[0] for c in ctx[:6]], [c[1] for c in ctx[:6]])
    else:
        raise ValueError(f"region {region!r}: expected one of {', '.join(REGIONS)}")
    torch._dynamo.reset()
    return recorder.codes


def report(rows: Sequence[dict[str, Any]], versions: str) -> str:
    lines = [f"### Kernels per compiled region, generated for an H200 (sm_90) without a GPU ({versions})", "",
             "Counted in Inductor's wrapper code by `python -m bench.codegen` (launches, not times; what is and is "
             "not counted: its docstring).", "",
             "| region | variant | graph | Triton | cuBLAS/cuDNN | aten | launches |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        for i, c in enumerate(row["graphs"]):
            name = ("forward", "backward")[i] if row["region"] == "q_update" and len(row["graphs"]) == 2 else str(i)
            lines.append(f"| {row['region']} | {row['variant']} | {name} | {c['triton']} | {c['extern']} | "
                         f"{c['aten']} | {c['total']} |")
        lines.append(f"| {row['region']} | {row['variant']} | **all** | | | | **{row['total']}** |")
    return "\n".join(lines) + "\n"


def _commit() -> str:
    """The tree counted: ``git describe``-style short hash, ``+dirty`` with uncommitted changes."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.codegen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for codegen.json and codegen.md")
    parser.add_argument("--regions", default=",".join(REGIONS), help=f"comma-separated, of {', '.join(REGIONS)}")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--keep-code", action="store_true",
                        help="also write each graph's wrapper code to DIR/codegen_<region>_<variant>_<i>.py")
    args = parser.parse_args(argv)
    regions = [r for r in args.regions.split(",") if r]
    variants = [v for v in args.variants.split(",") if v]
    bad = [r for r in regions if r not in REGIONS] + [v for v in variants if v not in VARIANTS]
    if bad or not regions or not variants:
        print(f"bench.codegen: unknown or missing region/variant {bad}; regions: {', '.join(REGIONS)}; "
              f"variants: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    problem = cuda_build_problem()
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    problem = out_dir_problem("bench.codegen", args.out)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    import triton

    versions = f"torch {torch.__version__}, triton {triton.__version__}, commit {_commit()}"
    rows, failed = [], []
    for region in regions:
        for variant in variants:
            if region == "sampler_step" and variant != "fast":
                continue  # the training U-Net's switches do not touch the sampler's trunk
            try:
                codes = count_region(region, VARIANTS[variant])
                graphs = [count_launches(code) for code in codes]
            except Exception as exc:  # noqa: BLE001 -- private torch internals moved: one line, the others still run
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                print(f"bench.codegen: {region} {variant} failed: {type(exc).__name__}: {first}", file=sys.stderr)
                failed.append(f"{region} {variant}")
                continue
            if args.keep_code:
                problem = _save({args.out / f"codegen_{region}_{variant.replace('+', '_')}_{i}.py": code
                                 for i, code in enumerate(codes)})
                if problem is not None:
                    print(problem, file=sys.stderr)
                    return 2
            rows.append({"region": region, "variant": variant, "total": sum(c.total for c in graphs),
                         "graphs": [dataclasses.asdict(c) | {"total": c.total} for c in graphs]})
            print(f"{region} {variant}: {rows[-1]['total']} launches {[c.total for c in graphs]}", flush=True)
    if rows:
        text = report(rows, versions)
        problem = _save({args.out / "codegen.json": json.dumps({"versions": versions, "rows": rows,
                                                                 "failed": failed}, indent=1) + "\n",
                         args.out / "codegen.md": text})
        if problem is not None:
            print(problem, file=sys.stderr)
            return 2
        print(text)
    return 1 if failed else 0


def _save(texts: dict[Path, str]) -> str | None:
    """Write each file whole or not at all (engine.files.atomic_write: a full disk leaves the previous file); the
    one line to print when a write fails (None: all written)."""
    from engine.errors import describe_os_error
    from engine.files import atomic_write

    for path, text in texts.items():
        try:
            atomic_write(path, lambda f, text=text: f.write(text.encode()))
        except OSError as exc:
            return f"bench.codegen: {describe_os_error(exc)}"
    return None
