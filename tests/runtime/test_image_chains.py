"""engine.runtime.image_chains: the fast path computes the reference's maths for fixed noise (bitwise with nothing
enabled, within bf16 tolerance with amp, within 1e-5 compiled or with the fused update); the energy's weights stay
out of autograd during a chain; randomness only from the caller's generator; CUDA-graph capture on a GPU."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest
import torch
from torch import nn

from engine.runtime.graphs import GeneratorProxy, frozen
from engine.runtime.image_chains import (
    FastImageChains,
    ImageChains,
    ReferenceImageChains,
    build_image_chains,
)
from engine.runtime.perf import PerfPlan
from engine.sampling.image_langevin import image_energy_grad, image_langevin_chain

N, C, H, W = 6, 3, 8, 8
STEPS, S = 5, 0.05
CPU = torch.device("cpu")


class ConvEnergy(nn.Module):
    """V(x) = −f(x), f a 2-layer conv score on 3×8×8 (CoopVAEBM's sign); V per row (N,)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(C, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, 1, H))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.net(x).flatten()


class RecoveryEnergy(nn.Module):
    """DRL's form: V(x, y) = −f(x) + ‖x − y‖²/(2σ²), with y a per-call tensor (``cond``)."""

    def __init__(self, sigma: float = 0.3) -> None:
        super().__init__()
        self.f, self.sigma = ConvEnergy(), sigma

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.f(x) + (x - y).flatten(1).pow(2).sum(dim=1) / (2 * self.sigma**2)


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(seed: int = 0, device: torch.device = CPU) -> ConvEnergy:
    torch.manual_seed(seed)
    return ConvEnergy().to(device)


def _inputs(device: torch.device = CPU, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"x0": (torch.rand(N, C, H, W, generator=g) * 2 - 1).to(device),
            "y": (torch.rand(N, C, H, W, generator=g) * 2 - 1).to(device),
            "noise": torch.randn(STEPS, N, C, H, W, generator=g).to(device)}


def _run(chains: ImageChains, energy: nn.Module, i: dict[str, torch.Tensor], ref_sigma: float | None,
         with_noise: bool = True, cond: bool = False, step_size: float = S) -> torch.Tensor:
    return chains.run(energy, i["x0"], n_steps=STEPS, step_size=step_size, ref_sigma=ref_sigma,
                      with_noise=with_noise, rng=None, freeze=(energy,), noise=i["noise"],
                      cond=(i["y"],) if cond else ())


# (ref_sigma, with_noise, cond, step_size); the last is CoopVAEBM's chain (δ = 0.002, σ_ref = 0.016, no noise)
CASES = [(0.5, True, False, S), (None, True, True, S), (1.0, False, False, S), (0.016, False, False, 0.002)]
CASE_IDS = ["sigma0.5", "drl-cond", "sigma1-noisefree", "coop-sigma0.016-noisefree"]


@pytest.mark.parametrize(("ref_sigma", "with_noise", "cond", "step"), CASES, ids=CASE_IDS)
def test_fast_with_nothing_enabled_is_the_reference_bitwise(ref_sigma: float | None, with_noise: bool,
                                                             cond: bool, step: float) -> None:
    energy: nn.Module = RecoveryEnergy() if cond else _model()
    i = _inputs()
    ref = _run(ReferenceImageChains(), energy, i, ref_sigma, with_noise, cond, step)
    fast = _run(FastImageChains(PerfPlan(), CPU), energy, i, ref_sigma, with_noise, cond, step)
    assert torch.equal(fast, ref)
    assert not torch.equal(ref, i["x0"])  # the chain moved
    # and the reference is the pure chain
    v = (lambda x: energy(x, i["y"])) if cond else energy
    pure = image_langevin_chain(i["x0"], lambda x: image_energy_grad(v, x), STEPS, step, ref_sigma=ref_sigma,
                                noise=i["noise"], with_noise=with_noise)
    assert torch.equal(ref, pure)


def test_amp_matches_reference_within_bf16_tolerance() -> None:
    """bf16 has an 8-bit mantissa (eps 2^-8 ≈ 0.004): ∇V from the bf16 network is off by ~0.4% of |∇V| (measured,
    one step), x/σ_ref² and the update stay fp32, so the state is off by a fraction of the network's own drift
    ½s²·Σ_t ∇V_t (measured: 0.36% of it). 2% bounds that with margin and still catches a formula error in the
    network's term (a factor on ∇V moves x by O(that drift))."""
    energy = _model()
    i = _inputs()
    ref_v = _run(ReferenceImageChains(), energy, i, None, with_noise=False)
    v_drift = float((ref_v - i["x0"]).abs().max())  # the network's share of the motion (no reference term)
    assert v_drift > 1e-4
    for ref_sigma in (None, 0.5):
        ref = _run(ReferenceImageChains(), energy, i, ref_sigma, with_noise=False)
        fast = _run(FastImageChains(PerfPlan(amp=True), CPU), energy, i, ref_sigma, with_noise=False)
        assert fast.dtype == torch.float32
        err = float((fast - ref).abs().max())
        assert 0 < err < 0.02 * v_drift, (err, v_drift)  # > 0: bf16 did run


@pytest.mark.parametrize(("ref_sigma", "with_noise", "cond", "step"), CASES, ids=CASE_IDS)
def test_fused_update_matches_unfused(ref_sigma: float | None, with_noise: bool, cond: bool, step: float) -> None:
    """``kernels``: the fused op (its reference on a CPU, backend "auto") with the folded gradient; bitwise at
    σ_ref = 1, else within fp32 rounding of the fold (the kernel itself runs in tests/kernels)."""
    energy: nn.Module = RecoveryEnergy() if cond else _model()
    i = _inputs()
    eager = _run(FastImageChains(PerfPlan(), CPU), energy, i, ref_sigma, with_noise, cond, step)
    fused = _run(FastImageChains(PerfPlan(kernels=True), CPU), energy, i, ref_sigma, with_noise, cond, step)
    if ref_sigma == 1.0:
        assert torch.equal(fused, eager)
    torch.testing.assert_close(fused, eager, rtol=0, atol=1e-5)


@pytest.mark.slow  # Inductor's cold CPU compile of the energy's forward and backward: 20-40 s on 2 shared cores
def test_compiled_matches_eager(fresh_dynamo: None) -> None:
    """DRL's energy (the conv network, a quadratic in x − y, ``cond``): compiled forward + AOTAutograd backward against
    eager, fp32 both (Inductor reorders reductions: 1e-5); a second call with new x0, y reuses the compiled code.
    (The default run checks the compiled ConvEnergy chain in the frozen-parameters test.)"""
    drl = RecoveryEnergy()
    eager, compiled = FastImageChains(PerfPlan(), CPU), FastImageChains(PerfPlan(compile=True), CPU)
    for seed in (1, 2):
        i = _inputs(seed=seed)
        with torch._dynamo.config.patch(error_on_recompile=seed > 1):
            got = _run(compiled, drl, i, 0.5, cond=True)
        torch.testing.assert_close(got, _run(eager, drl, i, 0.5, cond=True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("plan", [None, PerfPlan(), PerfPlan(amp=True, kernels=True), PerfPlan(compile=True)],
                         ids=["reference", "fast-eager", "fast-amp-kernels", "fast-compiled"])
def test_parameters_frozen_during_the_chain_and_restored_after(plan: PerfPlan | None, fresh_dynamo: None) -> None:
    energy = _model()
    next(energy.parameters()).requires_grad_(False)  # a flag already off stays off afterwards
    flags = [p.requires_grad for p in energy.parameters()]
    seen: list[bool] = []
    hook = energy.register_forward_pre_hook(lambda mod, _: seen.extend(p.requires_grad for p in mod.parameters()))
    chains: ImageChains = ReferenceImageChains() if plan is None else FastImageChains(plan, CPU)
    i = _inputs()
    out = _run(chains, energy, i, 0.5)
    hook.remove()
    assert seen and not any(seen)  # (compiled: the hook runs while Dynamo traces)
    assert [p.requires_grad for p in energy.parameters()] == flags
    assert all(p.grad is None for p in energy.parameters())
    if plan is not None and plan.compile:  # and the compiled chain computes the eager one (fp32: 1e-5)
        torch.testing.assert_close(out, _run(ReferenceImageChains(), energy, i, 0.5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [ReferenceImageChains, lambda: FastImageChains(PerfPlan(kernels=True), CPU)],
                         ids=["reference", "fast"])
def test_draws_only_from_the_callers_generator(make: Callable[[], ImageChains]) -> None:
    energy, i = _model(), _inputs()
    chains = make()
    torch.manual_seed(123)
    global_state = torch.get_rng_state()

    def draw(seed: int) -> tuple[torch.Tensor, torch.Generator]:
        rng = torch.Generator().manual_seed(seed)
        return chains.run(energy, i["x0"], n_steps=STEPS, step_size=S, ref_sigma=0.5, with_noise=True,
                          rng=rng, freeze=(energy,)), rng

    (a, ga), (b, gb), (c, _) = draw(7), draw(7), draw(8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(ga.get_state(), gb.get_state())
    assert not torch.equal(ga.get_state(), torch.Generator().manual_seed(7).get_state())  # it advanced
    assert torch.equal(torch.get_rng_state(), global_state)


def test_build_and_argument_checks() -> None:
    assert isinstance(build_image_chains(PerfPlan(), CPU), ReferenceImageChains)
    fast = build_image_chains(PerfPlan(amp=True), CPU)
    assert isinstance(fast, FastImageChains) and fast.plan.amp
    with pytest.raises(ValueError, match="CUDA"):
        FastImageChains(PerfPlan(graphs=True), CPU)
    energy, i = _model(), _inputs()
    for chains in (ReferenceImageChains(), FastImageChains(PerfPlan(), CPU)):
        with pytest.raises(ValueError, match="noise has shape"):
            chains.run(energy, i["x0"], n_steps=STEPS + 1, step_size=S, ref_sigma=None, with_noise=True, rng=None,
                       noise=i["noise"])
        with pytest.raises(ValueError, match="global RNG"):
            chains.run(energy, i["x0"], n_steps=STEPS, step_size=S, ref_sigma=None, with_noise=True, rng=None)
        out = chains.run(energy, i["x0"], n_steps=0, step_size=S, ref_sigma=None, with_noise=True, rng=None)
        assert torch.equal(out, i["x0"])


class FakeGraph:
    """CapturedGraph's contract run on the host (as tests/runtime/test_capture_logic.py does): the warm-ups and the
    capture run the body, generators are put back, each replay runs the body again, all with ``freeze`` frozen."""

    captures = 0

    def __init__(self, body: Callable[[], None], device: torch.device, freeze: tuple[nn.Module, ...],
                 warmup: int = 2, generators: Sequence[torch.Generator] = ()) -> None:
        states = [g.get_state() for g in generators]
        with frozen(*freeze):
            for _ in range(warmup + 1):
                body()
        for g, st in zip(generators, states, strict=True):
            g.set_state(st)
        self._body, self._freeze = body, freeze
        FakeGraph.captures += 1

    def replay(self) -> None:
        with frozen(*self._freeze):
            self._body()


def test_graph_bookkeeping_with_a_stand_in_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """Static buffers refilled per call, one capture per key, outputs cloned, ε drawn through the proxy from the
    caller's generator: with a stand-in graph on a CPU the captured path gives the uncaptured path's numbers bitwise."""
    monkeypatch.setattr("engine.runtime.image_chains.CapturedGraph", FakeGraph)
    FakeGraph.captures = 0
    graphed = FastImageChains(PerfPlan(), CPU)
    graphed._proxy = GeneratorProxy(CPU)  # the graph path (perf.graphs needs CUDA; the stand-in does not)
    eager = FastImageChains(PerfPlan(), CPU)
    drl = RecoveryEnergy()
    i, j = _inputs(), _inputs(seed=2)
    first = _run(graphed, drl, i, None, cond=True)
    assert torch.equal(first, _run(eager, drl, i, None, cond=True))
    assert torch.equal(_run(graphed, drl, j, None, cond=True), _run(eager, drl, j, None, cond=True))  # refilled
    first.add_(1.0)  # a returned tensor is the caller's, not the static buffer
    assert torch.equal(_run(graphed, drl, i, None, cond=True), _run(eager, drl, i, None, cond=True))
    assert FakeGraph.captures == 1

    def drawn(chains: FastImageChains, seed: int) -> tuple[torch.Tensor, torch.Generator]:
        rng = torch.Generator().manual_seed(seed)
        out = chains.run(drl, i["x0"], n_steps=STEPS, step_size=S, ref_sigma=0.5, with_noise=True, rng=rng,
                         freeze=(drl,), cond=(i["y"],))
        return out, rng

    (a, ga), (b, gb) = drawn(graphed, 3), drawn(eager, 3)
    assert torch.equal(a, b) and torch.equal(ga.get_state(), gb.get_state())  # the caller's stream, advanced alike
    assert not torch.equal(drawn(graphed, 4)[0], a)
    assert FakeGraph.captures == 2  # drawn ε: another key
    _run(graphed, _model(), i, 0.5)  # another energy (key None: its identity), another graph
    assert FakeGraph.captures == 3
    graphed.clear()
    _run(graphed, drl, i, None, cond=True)
    assert FakeGraph.captures == 4


# --- GPU (marker `gpu`; skipped without CUDA) --------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("plan", [PerfPlan(graphs=True), PerfPlan(graphs=True, kernels=True, amp=True)],
                         ids=["graphs", "graphs-kernels-amp"])
def test_graph_capture(plan: PerfPlan) -> None:
    """One graph per key: equal to eager for fixed noise; replays draw fresh noise, reproducible from the seed;
    weights updated in place and new ``cond`` values are seen by the next replay."""
    dev = torch.device("cuda")
    drl = RecoveryEnergy().to(dev)
    i = _inputs(dev)
    eager_plan = PerfPlan(kernels=plan.kernels, amp=plan.amp)
    eager, graphed = FastImageChains(eager_plan, dev), FastImageChains(plan, dev)

    def close(got: torch.Tensor, want: torch.Tensor) -> None:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    first = _run(graphed, drl, i, None, cond=True)
    close(first, _run(eager, drl, i, None, cond=True))
    j = _inputs(dev, seed=2)  # new x0, y and noise through the same graph
    close(_run(graphed, drl, j, None, cond=True), _run(eager, drl, j, None, cond=True))
    with torch.no_grad():
        for p in drl.f.parameters():
            p.mul_(1.5)
    again = _run(graphed, drl, i, None, cond=True)
    close(again, _run(eager, drl, i, None, cond=True))
    assert not torch.allclose(again, first)  # the replay read the updated weights
    assert len(graphed._graphs) == 1

    rng = torch.Generator(device=dev).manual_seed(0)
    start = rng.get_state()

    def drawn() -> torch.Tensor:
        return graphed.run(drl, i["x0"], n_steps=STEPS, step_size=S, ref_sigma=None, with_noise=True, rng=rng,
                           freeze=(drl,), cond=(i["y"],))

    a, b = drawn(), drawn()
    assert not torch.equal(a, b)  # fresh noise on every replay
    rng.set_state(start)
    assert torch.equal(drawn(), a)  # the draws come from the caller's generator: its state reproduces them
    assert all(p.requires_grad for p in drl.parameters())
