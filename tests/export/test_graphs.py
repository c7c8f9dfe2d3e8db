"""The exportable sampler graphs compute the engine's reference prior draw, and the noise stream is what the
sample command promises (image i depends on (seed, i) only)."""

from __future__ import annotations

import pytest
import torch

from engine.export.build import ExportSpec, build_graphs, non_aten_ops
from engine.export.graphs import (
    GeneratorGraph,
    NullEmbeddingGraph,
    StepGraph,
    WholeGraph,
    coefficient_rows,
    decode,
    prior_latents,
)
from engine.export.runner import drive_per_step
from engine.learners.damc import DamcLearner as Learner
from engine.sampling.draws import amortizer_sample
from engine.sampling.noise import NoiseStream, PriorNoise, langevin_noise, prior_noise

CPU = torch.device("cpu")


def _noise(learner: Learner, seed: int, b: int) -> PriorNoise:
    return prior_noise(NoiseStream(seed, learner.cfg.model.nz, learner.table.n_steps + 1), b)


def test_prior_latents_is_the_engines_amortizer_sample_on_the_same_draws(learner: Learner) -> None:
    """Replaying amortizer_sample's own draws (ξ, z_T, then one ε per step, spec §3 RNG order) as inputs gives
    the same latents bit for bit: the exported computation is the engine's reference, not a re-implementation."""
    amortizer, table, nz, b = learner.nets.amortizer, learner.table, learner.cfg.model.nz, 5
    assert amortizer is not None
    want = amortizer_sample(amortizer, table, torch.Generator().manual_seed(7), n=b, nz=nz)
    g = torch.Generator().manual_seed(7)
    xi, z = torch.randn(b, nz, generator=g), torch.randn(b, nz, generator=g)
    eps = torch.stack([torch.randn(b, nz, generator=g) for _ in range(table.n_steps - 1)])
    with torch.no_grad():
        got = prior_latents(amortizer, table, PriorNoise(xi, z, eps))
    assert torch.equal(got, want)


def test_per_step_and_whole_graphs_equal_the_reference_exactly(learner: Learner) -> None:
    amortizer, gen, table = learner.nets.amortizer, learner.nets.generator, learner.table
    assert amortizer is not None
    noise = _noise(learner, 3, 6)
    with torch.no_grad():
        want = decode(gen, prior_latents(amortizer, table, noise))
        whole = WholeGraph(amortizer, gen, table)(noise.xi, noise.z, noise.eps)
        ks = torch.arange(table.n_steps).view(-1, 1)
        per_step = drive_per_step(NullEmbeddingGraph(amortizer), StepGraph(amortizer, table), GeneratorGraph(gen),
                                  noise, ks)
    assert want.shape == (6, 1, 8, 8)
    assert torch.equal(whole, want)
    assert torch.equal(per_step, want)


def test_the_step_graph_ignores_noise_only_at_the_final_x_prediction(learner: Learner) -> None:
    amortizer, table = learner.nets.amortizer, learner.table
    assert amortizer is not None
    step = StepGraph(amortizer, table)
    z, xemb = torch.randn(4, 8), torch.randn(4, 32)
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    last, first = torch.tensor([table.n_steps - 1]), torch.tensor([0])
    with torch.no_grad():
        assert torch.equal(step(last, z, xemb, a), step(last, z, xemb, b))  # std = 0 on the last row
        assert not torch.equal(step(first, z, xemb, a), step(first, z, xemb, b))
    assert torch.equal(coefficient_rows(table, with_noise=False)[:, 5], torch.zeros(table.n_steps))


def test_sampler_noise_off_ignores_eps_everywhere(learner: Learner) -> None:
    amortizer, gen, table = learner.nets.amortizer, learner.nets.generator, learner.table
    assert amortizer is not None
    n1, n2 = _noise(learner, 1, 3), _noise(learner, 2, 3)
    mixed = PriorNoise(n1.xi, n1.z, n2.eps)  # same ξ and z_T, other ε
    whole = WholeGraph(amortizer, gen, table, with_noise=False)
    with torch.no_grad():
        assert torch.equal(whole(n1.xi, n1.z, n1.eps), whole(mixed.xi, mixed.z, mixed.eps))
        assert not torch.equal(WholeGraph(amortizer, gen, table)(n1.xi, n1.z, n1.eps),
                               WholeGraph(amortizer, gen, table)(mixed.xi, mixed.z, mixed.eps))


@pytest.mark.parametrize("structure", ["per-step", "whole"])
def test_exported_graphs_hold_only_aten_ops_and_no_custom_step_op(learner: Learner, structure: str) -> None:
    graphs = build_graphs(learner, ExportSpec("pt2", structure, 4, "fp32", CPU))
    for name, g in graphs.items():
        ep = torch.export.export(g.module, g.example, strict=False)
        assert non_aten_ops(ep) == [], name
        ops = {str(n.target) for n in ep.run_decompositions().graph.nodes if n.op == "call_function"}
        assert not any("damc" in op or "rand" in op for op in ops), (name, ops)


def test_the_op_check_catches_a_custom_op() -> None:
    """non_aten_ops is not vacuous: the engine's own fused step op (damc::ddpm_step) is reported."""
    from engine.sampling.diffusion import sampler_table
    from kernels.ddpm_step import ddpm_step as fused
    from kernels.ddpm_step import pack_sampler_table

    coeffs = pack_sampler_table(sampler_table(3))

    class Fused(torch.nn.Module):
        def forward(self, z: torch.Tensor, eps_hat: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            return fused(z, eps_hat, coeffs, k, None)

    ep = torch.export.export(Fused(), (torch.randn(2, 4), torch.randn(2, 4), torch.tensor(0)), strict=False)
    assert any(op.startswith("damc") for op in non_aten_ops(ep))


def test_bf16_graphs_keep_the_sampler_in_fp32_and_stay_close(learner: Learner) -> None:
    amortizer, gen, table = learner.nets.amortizer, learner.nets.generator, learner.table
    assert amortizer is not None
    noise = _noise(learner, 4, 4)
    with torch.no_grad():
        fp32 = WholeGraph(amortizer, gen, table)(noise.xi, noise.z, noise.eps)
        bf16_module = WholeGraph(amortizer, gen, table, precision="bf16")
        bf16 = bf16_module(noise.xi, noise.z, noise.eps)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    assert (bf16 - fp32).abs().max() < 0.1  # bf16 networks over 3 steps: a few 1e-2 at most on [-1, 1] images
    ep = torch.export.export(bf16_module, (noise.xi, noise.z, noise.eps), strict=False)
    assert torch.equal(ep.module()(noise.xi, noise.z, noise.eps), bf16)
    dtypes = {str(n.kwargs.get("dtype")) for n in ep.run_decompositions().graph.nodes if "_to_copy" in str(n.target)}
    assert "torch.bfloat16" in dtypes  # explicit casts: what TensorRT's explicit typing keeps


def test_noise_stream_is_per_sample_whatever_the_batching() -> None:
    nz, width = 8, 4
    whole = NoiseStream(5, nz, width).take(7)
    s = NoiseStream(5, nz, width)
    split = torch.cat([s.take(3), s.take(1), s.take(3)])
    assert torch.equal(whole, split) and s.drawn == 7
    assert not torch.equal(whole, NoiseStream(6, nz, width).take(7))
    n = prior_noise(NoiseStream(5, nz, width), 7)
    assert n.xi.shape == (7, nz) and n.z.shape == (7, nz) and n.eps.shape == (width - 2, 7, nz)
    assert torch.equal(n.xi[2], whole[2, 0]) and torch.equal(n.z[2], whole[2, 1]) and torch.equal(n.eps[1, 2],
                                                                                                   whole[2, 3])
    z0, eps = langevin_noise(NoiseStream(5, nz, width), 7)
    assert z0.shape == (7, nz) and eps.shape == (width - 1, 7, nz) and torch.equal(eps[0, 6], whole[6, 1])
    padded = n.padded(10)
    assert padded.rows == 10 and torch.equal(padded.eps[:, :7], n.eps) and not padded.eps[:, 7:].any()
    with pytest.raises(ValueError, match="do not fit"):
        n.padded(3)
    with pytest.raises(ValueError, match="seed"):
        NoiseStream(-1, nz, width)
