"""The benchmarked phases and the configurations that run them.

A *configuration* is a name mapped to one builder function::

    build(cfg, device, wanted) -> {phase name: zero-argument callable}

Each callable does one unit of the phase's work (one training-iteration phase, one sampling call) and
returns without synchronising; the harness (bench/conftest.py) adds the device sync, the warm-up and the
timing. A builder may set process-global switches (TF32, cudnn.benchmark, float32 matmul precision): the
harness snapshots and restores them around every measurement, so configurations cannot leak into each
other. Work a configuration needs before it can run (compilation, CUDA-graph capture, autotuning) goes
either in the builder (timed as ``build_s``) or in the first calls (timed as warm-up), never in the timed
rounds.

Both registered configurations share the phase bodies below. They mirror ``engine.learners.damc.train_step`` and
go through ``learner.chains`` exactly as it does, so they differ only in how the engine was set up:
  * ``reference``: ``build_learner`` as is (ReferenceChains, eager fp32, TF32 off);
  * ``fast``: the engine's ``perf.preset: fast`` (``engine.runtime.perf.resolve`` → ``system.apply_perf`` →
    ``engine.runtime.chains.build_chains``), i.e. what ``python -m engine.train perf.preset=fast`` runs. Where the
    device offers none of it (CPU) the plan is the reference and the report says "same as reference".
Another configuration is one ``register(name, build, describe=...)`` call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from engine.config import Config, load_config
from engine.learners import build_learner
from engine.learners.damc import (
    DamcLearner as Learner,
)
from engine.learners.damc import (
    amortizer_updates,
    damc_prior_images,
    ema_update,
    energy_update,
    generator_update,
    lebm_prior_latents,
    reconstruct,
    train_step,
)
from engine.models import IMAGE_SHAPES
from engine.runtime import perf, system
from engine.runtime.fast import build_chains
from engine.sampling.draws import amortizer_sample

from .flops import posterior_chain_flops

REPO = Path(__file__).resolve().parents[1]
SUITE = "damc-phases"  # extra_info tag: lets the report tell our benchmarks from others in bench/
ITERATIONS_PER_EPOCH = 390  # CIFAR-10: ⌊50,000 / 128⌋ with drop_last
PAPER_BATCH_TRAIN = 128
PAPER_BATCH_SAMPLE = 64
# The paper does not say how long the LEBM's posterior chain behind "LEBM takes 8.0 s" is (Sec. 4.1,
# App. G.1). Its own figures imply about 100 steps: DAMC posterior (draw ≈ 0.3 s + 10 steps) = 1.0 s puts a
# posterior step near 0.07 s at batch 64, and 8.0 s / 0.07 s ≈ 110. 100 also matches the T = 100 the paper
# uses for LEBM test-time prior sampling. Change it here; the report prints the value used.
LEBM_POSTERIOR_STEPS = 100

PhaseFn = Callable[[], object]
Builder = Callable[[Config, torch.device, Sequence[str]], dict[str, PhaseFn]]
# (implemented, note) of a configuration on a device: False = it runs the reference code there.
Describe = Callable[[Config, torch.device], tuple[bool, str]]
ChainsFactory = Callable[[Learner], object]


@dataclass(frozen=True)
class PhaseInfo:
    key: str
    label: str  # the report's row name
    group: Literal["train", "sampling"]
    paper_s: float | None  # the paper's figure in seconds (A6000, fp32), None where the paper gives none
    what: str  # what one call does, for the README and the JSON
    heavy: bool = False  # fewer timed rounds on a GPU


_MIN = 60.0
PHASES: tuple[PhaseInfo, ...] = (
    PhaseInfo("damc_draw", "conditional DAMC draw", "train", None,
              "EMA amortizer, conditional 100-step ancestral draw on the training batch B (no grad)"),
    PhaseInfo("posterior_chain", "posterior chain (30 LD)", "train", None,
              "30 Langevin steps on ‖x − G(z)‖²/2σ² + E(z) + ½‖z‖², B chains"),
    PhaseInfo("prior_chain", "prior chain (60 LD, 2B)", "train", None,
              "60 Langevin steps on E(z) + ½‖z‖², 2B chains (amortizer draws + N(0, I))"),
    PhaseInfo("amortizer_updates", "6 amortizer updates", "train", None,
              "6 × (ε-loss, backward, clip 100, AdamW step) on the B posterior samples"),
    PhaseInfo("g_update", "G update", "train", None, "G forward on B posterior samples, backward, clip, Adam"),
    PhaseInfo("e_update", "E update", "train", None, "E on B positive + 2B negative samples, backward, clip, Adam"),
    PhaseInfo("ema_update", "EMA update (every 10 it.)", "train", None,
              "EMA amortizer ← 0.995·EMA + 0.005·Q over all parameters (foreach); runs once per 10 iterations, so "
              "the DAMC iteration's s/epoch adds a tenth of it"),
    PhaseInfo("train_iteration", "DAMC iteration", "train", 15.2 * _MIN / ITERATIONS_PER_EPOCH,
              "engine.learners.damc.train_step: the whole DAMC iteration (steps 1-9)", heavy=True),
    PhaseInfo("train_iteration_lebm", "short-run LEBM iteration", "train", 14.8 * _MIN / ITERATIONS_PER_EPOCH,
              "train_step with method=lebm: both chains from N(0, I), no amortizer", heavy=True),
    PhaseInfo("sample_damc_prior", "DAMC prior sampling", "sampling", 0.3,
              "engine.learners.damc.damc_prior_images: online amortizer, unconditional 100-step draw + G, batch 64"),
    PhaseInfo("sample_lebm_prior", "LEBM prior sampling (100 LD)", "sampling", 0.2,
              "N(0, I) + 100 Langevin steps on E + ½‖z‖² + G, batch 64"),
    PhaseInfo("sample_damc_posterior", "DAMC posterior sampling", "sampling", 1.0,
              "engine.learners.damc.reconstruct: conditional draw + 10 noise-free posterior steps + G, batch 64"),
    PhaseInfo("sample_lebm_posterior", f"LEBM posterior sampling ({LEBM_POSTERIOR_STEPS} LD)", "sampling", 8.0,
              f"reconstruct on the LEBM: N(0, I) + {LEBM_POSTERIOR_STEPS} noise-free posterior steps + G, batch 64",
              heavy=True),
)
PHASE_INFO: dict[str, PhaseInfo] = {p.key: p for p in PHASES}
_DAMC_PHASES = {"damc_draw", "posterior_chain", "prior_chain", "amortizer_updates", "g_update", "e_update",
                "ema_update", "train_iteration", "sample_damc_prior", "sample_damc_posterior"}
_LEBM_PHASES = {"train_iteration_lebm", "sample_lebm_prior", "sample_lebm_posterior"}
assert set(PHASE_INFO) == _DAMC_PHASES | _LEBM_PHASES


# ---------------------------------------------------------------------------------------------------------
# Problem sizes

# CPU smoke sizes: the quickstart's tiny networks on 8×8 digits, small batches. Step counts stay the
# paper's (100 / 30 / 60 / 6 / 10) so the same code paths run, just on small tensors.
SMOKE_OVERRIDES = ["model.nz=16", "model.ngf=16", "model.nif=16", "model.nemb=128", "model.unet_nf=1",
                   "train.batch_size=16", "eval.n_samples=16"]
# GPU: the paper's CIFAR-10 networks and the paper's timing batches, whatever the config file says.
PAPER_OVERRIDES = ["data.root=unused", f"train.batch_size={PAPER_BATCH_TRAIN}",
                   f"eval.n_samples={PAPER_BATCH_SAMPLE}"]

Sizes = Literal["paper", "smoke"]


def bench_config(sizes: Sizes, extra: Sequence[str] = ()) -> Config:
    """The config every phase is built from: configs/cifar10.yaml (paper) or configs/quickstart.yaml (smoke), plus
    ``extra`` overrides (the variants)."""
    if sizes == "paper":
        return load_config(REPO / "configs" / "cifar10.yaml", [*PAPER_OVERRIDES, *extra])
    if sizes == "smoke":
        return load_config(REPO / "configs" / "quickstart.yaml", [*SMOKE_OVERRIDES, *extra])
    raise ValueError(f"sizes = {sizes!r}: expected 'paper' or 'smoke'")


def size_summary(cfg: Config, sizes: Sizes) -> dict[str, object]:
    return {
        "sizes": sizes,
        "arch": cfg.model.arch,
        "nz": cfg.model.nz,
        "ngf": cfg.model.ngf,
        "train_batch": cfg.train.batch_size,
        "sample_batch": cfg.eval.n_samples,
        "diffusion_steps": cfg.diffusion.n_steps,
        "posterior_steps": cfg.langevin.posterior.n_steps,
        "prior_steps": cfg.langevin.prior.n_steps,
        "amortizer_updates": cfg.diffusion.updates_per_iter,
        "ema_every": cfg.diffusion.ema_every,
        "lebm_prior_steps": cfg.eval.lebm_steps,
        "recon_steps": cfg.eval.recon_steps,
        "lebm_posterior_steps": LEBM_POSTERIOR_STEPS,
    }


def phase_flops(phase: str, cfg: Config) -> int | None:
    """FLOPs counted from the architecture for one call of ``phase`` (only the posterior chain for now)."""
    if phase == "posterior_chain":
        return posterior_chain_flops(cfg.model, cfg.train.batch_size, cfg.langevin.posterior.n_steps)
    return None


# ---------------------------------------------------------------------------------------------------------
# Phase bodies, shared by every configuration


def _learner(cfg: Config, device: torch.device, chains_for: ChainsFactory | None) -> Learner:
    system.seed_init(cfg.train.seed)  # same weights for every configuration
    learner = build_learner(cfg, device, system.make_generator(device, cfg.train.seed))
    if chains_for is not None:
        learner.chains = chains_for(learner)  # as engine.run.train does, after the learner is built
    return learner


def _images(cfg: Config, n: int, device: torch.device) -> torch.Tensor:
    # Timing does not depend on pixel values (no data-dependent control flow), so uniform noise in [−1, 1]
    # stands in for a CIFAR-10 batch and no dataset is needed.
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, *IMAGE_SHAPES[cfg.model.arch], generator=g) * 2 - 1).to(device)


def build_with_chains(cfg: Config, device: torch.device, wanted: Sequence[str],
                      chains_for: ChainsFactory | None = None) -> dict[str, PhaseFn]:
    """The phases in ``wanted`` on learners whose ``chains`` come from ``chains_for`` (None: the default)."""
    phases: dict[str, PhaseFn] = {}
    need = set(wanted)
    b, n, nz = cfg.train.batch_size, cfg.eval.n_samples, cfg.model.nz
    d, ev = cfg.diffusion, cfg.eval
    x = _images(cfg, b, device)
    x_eval = _images(cfg, n, device)
    eval_rng = system.make_generator(device, cfg.train.seed + 1)  # evaluation draws have their own stream

    if need & _DAMC_PHASES:
        learner = _learner(cfg, device, chains_for)
        nets, rng, chains = learner.nets, learner.rng, learner.chains
        amortizer, opt_q = nets.amortizer, learner.opt_q
        assert amortizer is not None and opt_q is not None
        init_net = learner.amortizer_ema if d.init_from == "ema" else amortizer
        assert init_net is not None
        # Realistic phase inputs, made once outside the timing (eager, so no capture happens here): the
        # chains start from an amortizer draw; the prior chain runs on it plus as many N(0, I) rows.
        z0 = amortizer_sample(init_net, learner.table, rng, x=x, nz=nz, with_noise=d.sampler_noise)
        z_pos = z0.clone()
        z_neg0 = torch.cat([z0, torch.randn(b, nz, generator=rng, device=device)])  # (2B, nz)
        keep = (torch.rand(b, generator=rng, device=device) >= d.p_uncond).to(x.dtype)

        # The same public step functions engine.learners.damc.train_step calls (steps 5-7).
        def amortizer_updates_phase() -> None:
            amortizer_updates(learner, x, z_pos, keep)

        def g_update() -> None:
            generator_update(learner, x, z_pos)

        def e_update() -> None:
            energy_update(learner, z_pos, z_neg0)

        def sample_damc_prior() -> torch.Tensor:
            return damc_prior_images(learner, n, eval_rng)  # the draw and G: one captured region on the fast path

        ema = learner.amortizer_ema
        assert ema is not None

        phases.update(
            damc_draw=lambda: chains.cond_draw(init_net, x),
            posterior_chain=lambda: chains.posterior(x, z0),
            prior_chain=lambda: chains.prior(z_neg0),
            amortizer_updates=amortizer_updates_phase,
            g_update=g_update,
            e_update=e_update,
            ema_update=lambda: ema_update(ema, amortizer, d.ema_decay),
            train_iteration=lambda: train_step(learner, x),
            sample_damc_prior=sample_damc_prior,
            sample_damc_posterior=lambda: reconstruct(learner, x_eval, ev.recon_steps, ev.recon_step_size,
                                                      eval_rng),
        )

    if need & _LEBM_PHASES:
        # G and E only, same architectures as the DAMC run (spec §8).
        lebm = _learner(dataclasses.replace(cfg, method="lebm"), device, chains_for)

        def sample_lebm_prior() -> torch.Tensor:
            z = lebm_prior_latents(lebm, n, ev.lebm_steps, ev.lebm_step_size, eval_rng)
            with torch.no_grad():
                return lebm.nets.generator(z)

        phases.update(
            train_iteration_lebm=lambda: train_step(lebm, x),
            sample_lebm_prior=sample_lebm_prior,
            # reconstruct() without an amortizer starts from N(0, I): the LEBM's posterior sampler.
            sample_lebm_posterior=lambda: reconstruct(lebm, x_eval, LEBM_POSTERIOR_STEPS, ev.recon_step_size,
                                                      eval_rng),
        )
    return {k: phases[k] for k in wanted if k in phases}


# ---------------------------------------------------------------------------------------------------------
# The two configurations


def build_reference(cfg: Config, device: torch.device, wanted: Sequence[str]) -> dict[str, PhaseFn]:
    """Eager fp32 with TF32 off (engine.runtime.system.setup): the authors' arithmetic without their host syncs."""
    system.setup(dataclasses.replace(cfg.system, device=device.type))
    return build_with_chains(cfg, device, wanted)


def fast_config(cfg: Config) -> Config:
    return dataclasses.replace(cfg, perf=dataclasses.replace(cfg.perf, preset="fast"))


def build_fast(cfg: Config, device: torch.device, wanted: Sequence[str]) -> dict[str, PhaseFn]:
    """The engine's ``perf.preset: fast`` on this device, set up the way engine.run.train sets it up."""
    cfg = fast_config(cfg)
    plan, _ = perf.resolve(cfg.perf, device)
    system.setup(dataclasses.replace(cfg.system, device=device.type))
    system.apply_perf(plan, device)
    return build_with_chains(cfg, device, wanted, lambda learner: build_chains(learner, plan))


def describe_fast(cfg: Config, device: torch.device) -> tuple[bool, str]:
    plan, note = perf.resolve(fast_config(cfg).perf, device)
    if plan.is_reference:
        why = "no GPU" if device.type != "cuda" else "nothing available"
        return False, f"perf.preset=fast enables nothing on this device ({why}): same as reference"
    return True, f"perf.preset=fast → {plan.describe().removeprefix('fast: ')}" + (
        f" ({note.removeprefix('perf: ')})" if note else "")


# ---------------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class Configuration:
    name: str
    build: Builder
    implemented: bool = True  # False: a placeholder that runs another configuration's code
    note: str = ""
    describe: Describe | None = None  # device-dependent (implemented, note); overrides the two fields above

    def status(self, cfg: Config, device: torch.device) -> tuple[bool, str]:
        return self.describe(cfg, device) if self.describe is not None else (self.implemented, self.note)


CONFIGURATIONS: dict[str, Configuration] = {}
MODES: tuple[str, ...] = ("reference", "fast")  # measured side by side, in this order, for every phase


def register(name: str, build: Builder, *, implemented: bool = True, note: str = "",
             describe: Describe | None = None) -> Configuration:
    conf = Configuration(name, build, implemented, note, describe)
    CONFIGURATIONS[name] = conf
    return conf


def build_phases(cfg: Config, device: torch.device, mode: str,
                 only: Collection[str] | None = None) -> dict[str, PhaseFn]:
    """Runnable phases of configuration ``mode`` (all, or the names in ``only``), in the order of PHASES."""
    if mode not in CONFIGURATIONS:
        raise KeyError(f"unknown configuration {mode!r}; registered: {', '.join(CONFIGURATIONS)}")
    wanted = [p.key for p in PHASES] if only is None else list(only)
    unknown = [w for w in wanted if w not in PHASE_INFO]
    if unknown:
        raise KeyError(f"unknown phase(s) {unknown}; known: {', '.join(PHASE_INFO)}")
    phases = CONFIGURATIONS[mode].build(cfg, device, wanted)
    missing = [w for w in wanted if w not in phases]
    if missing:
        raise KeyError(f"configuration {mode!r} did not build phase(s) {missing}")
    return {w: phases[w] for w in wanted}


register("reference", build_reference,
         note="eager fp32, TF32 off: the authors' work without their per-step host-sync logging")
register("fast", build_fast, describe=describe_fast)


# ---------------------------------------------------------------------------------------------------------
# Variants of the fast configuration: the choices issue 14 leaves to a GPU measurement. Each is perf.preset=fast
# plus its overrides, timed on the phases it can change; the report sets each beside the fast row of that phase.

VARIANT_SUITE = "damc-variants"


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...]  # on top of perf.preset=fast
    phases: tuple[str, ...]
    question: str  # what the comparison with `fast` decides


# Undecided first: the GPU run's variants stage has what time the budget leaves and runs them in this order.
VARIANTS: tuple[Variant, ...] = (
    Variant("merge_unet", ('perf.merge_unet="on"',), ("amortizer_updates", "train_iteration"),
            "the training U-Net's GEMMs that share an input merged (7 ctx_proj as one; gate + hyper_bias; layer + "
            "skip): 38 -> 18 GEMMs per forward, fewer in backward (latency-bound updates); launches per update "
            "339 -> 216 (bench.codegen, counted offline)"),
    Variant("sampler_kernel", ('perf.sampler_kernel="on"',), ("sample_damc_prior", "damc_draw"),
            "each U-Net block of a sampler step as one Triton kernel (GEMM + epilogue; the first computes its Fourier "
            "features, the last takes the step): "
            "16 launches a step -> 7"),
    Variant("combo_kernels", ('perf.combo_kernels="on"',), ("amortizer_updates", "train_iteration"),
            "Inductor's horizontal fusion (combo kernels): the Q update's weight casts to bf16 and gradient casts "
            "back, ~130 standalone tiny kernels, in fewer launches; launches per update 339 -> 208 (bench.codegen)"),
    Variant("merge_unet_combo_kernels", ('perf.merge_unet="on"', 'perf.combo_kernels="on"'), ("amortizer_updates",),
            "both launch cuts on the Q updates together: launches per update 339 -> 138 (bench.codegen, counted "
            "offline; they compound)"),
    Variant("unet_fp32", ('perf.amp_unet="off"',), ("amortizer_updates", "damc_draw", "sample_damc_prior"),
            "U-Net in fp32/TF32 instead of bf16 (latency-bound: casts may cost more than bf16 saves)"),
    Variant("no_hoist", ('perf.hoist_sampler="off"',), ("damc_draw", "sample_damc_prior"),
            "the module's forward per step instead of the hoisted context + merged GEMMs + fused epilogue"),
    Variant("per_loop_graphs", ('perf.iteration_graph="off"',), ("train_iteration",),
            "one CUDA graph per loop instead of one for the whole iteration"),
    Variant("side_streams", ('perf.side_streams="on"',), ("train_iteration",),
            "prior chain beside the posterior chain, Q updates beside G and E, inside the iteration graph"),
    Variant("g_gemm_first", ('perf.g_gemm_first="on"',), ("posterior_chain", "g_update"),
            "G's first ConvTranspose2d (1×1 input) as one GEMM"),
    Variant("gemm_first_streams", ('perf.g_gemm_first="on"', 'perf.side_streams="on"'),
            ("train_iteration", "train_iteration_lebm"),
            "both measured wins together on the whole iteration: G's first layer as a GEMM and the side streams"),
    Variant("g_last_convt_pad", ("perf.g_last=convt_pad",), ("posterior_chain",),
            "G's 3-channel last layer with its output channels padded to 8"),
    Variant("g_last_conv_pad", ("perf.g_last=conv_pad",), ("posterior_chain",),
            "G's last layer as the equivalent Conv2d, output channels padded to 8"),
    Variant("nchw", ('perf.channels_last="off"',), ("posterior_chain",), "NCHW instead of NHWC for G"),
    Variant("cudnn_limit_all", ("perf.cudnn_benchmark_limit=0",), ("posterior_chain", "sample_damc_prior"),
            "cudnn autotuning over every algorithm (default: 10)"),
    Variant("max_autotune", ("perf.compile_mode=max-autotune-no-cudagraphs",), ("posterior_chain",),
            "Inductor max-autotune for the compiled step functions (minutes of autotuning)"),
)
VARIANT_INFO: dict[str, Variant] = {v.name: v for v in VARIANTS}
assert all(p in PHASE_INFO for v in VARIANTS for p in v.phases)

