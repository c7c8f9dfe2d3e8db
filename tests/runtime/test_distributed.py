"""engine.runtime.distributed and the sharded sample order: torchrun's environment, per-rank seeds, the control
collectives on 2 gloo processes (spawned here, seconds each), and that the ranks' shards of one global batch
are exactly the single-process batch for every loader."""

from __future__ import annotations

import os
import pickle
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from engine.data import BatchStream, EpochPlan
from engine.data.loaders import DeviceStream, make_loader
from engine.runtime.distributed import Distributed, DistributedError, Launch, from_env, rank_seed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, body: Callable[[Distributed], Any], queue: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    d = Distributed.start(from_env(), "cpu", timeout_s=20)
    try:
        value: Any = body(d)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as a value
        value = f"{type(exc).__name__}: {exc}"
    finally:
        d.close()
    # Plain pickle bytes: tensors put on a torch.multiprocessing queue travel as shared memory that dies with
    # this process.
    queue.put((rank, pickle.dumps(value)))


def run_ranks(body: Callable[[Distributed], Any], world: int = 2, timeout: float = 60) -> dict[int, Any]:
    """Run ``body(dist)`` on ``world`` gloo processes; returns {rank: result} (exceptions as strings)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, body, queue)) for r in range(world)]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    while len(out) < world and time.monotonic() < deadline:
        try:
            rank, blob = queue.get(timeout=1)
            out[rank] = pickle.loads(blob)
        except Exception:  # noqa: BLE001 - queue.Empty: keep waiting for the others
            if all(not p.is_alive() for p in procs) and queue.empty():
                break
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    return out


# ---------------------------------------------------------------------------------------------------------
# Environment and seeds


def test_single_process_without_torchrun_variables() -> None:
    assert from_env({}) == Launch()
    assert from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Launch(1, 4, 1, launched=True)


@pytest.mark.parametrize("env", [
    {"RANK": "0"},
    {"RANK": "0", "WORLD_SIZE": "2"},
    {"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"},
    {"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"},
    {"RANK": "-1", "WORLD_SIZE": "2", "LOCAL_RANK": "0"},
    {"RANK": "0", "WORLD_SIZE": "0", "LOCAL_RANK": "0"},
    {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "-3"},
])
def test_broken_torchrun_environment_is_one_line(env: dict[str, str]) -> None:
    with pytest.raises(DistributedError) as ei:
        from_env(env)
    assert "\n" not in str(ei.value) and "RANK" in str(ei.value)
    assert ei.value.exit_code == 2  # bad input: nothing started, nothing written


def test_rank_seeds() -> None:
    assert rank_seed(123, 0) == 123  # a one-process torchrun is the plain run
    seeds = {rank_seed(123, r) for r in range(64)}
    assert len(seeds) == 64 and all(0 <= s < 2**63 for s in seeds)
    assert rank_seed(123, 1) != rank_seed(124, 1) and rank_seed(123, 1) not in (124, 122)
    assert rank_seed(2**64 - 1, 3) < 2**63  # any run seed


def test_single_process_collectives_are_identities() -> None:
    d = Distributed.single(torch.device("cpu"))
    assert not d.active and d.is_main and d.world_size == 1
    assert d.any(True) and not d.any(False)
    v = torch.tensor([1.0, 2.0])
    assert torch.equal(d.mean_(v), torch.tensor([1.0, 2.0]))
    assert d.gather({"a": 1}) == [{"a": 1}] and d.broadcast(5) == 5 and d.same_everywhere([1.0, 2.0])


# ---------------------------------------------------------------------------------------------------------
# Two gloo processes


def _collectives(d: Distributed) -> dict[str, Any]:
    flag_any = d.any(d.rank == 1)  # only rank 1 raises it
    none = d.any(False)
    mean = d.mean_(torch.tensor([float(d.rank), 10.0 * d.rank])).tolist()
    gathered = d.gather({"rank": d.rank, "rng": torch.arange(3) + d.rank})
    bcast = d.broadcast(f"from rank {d.rank}")
    same = d.same_everywhere([100.0, 0.5])
    differ = d.same_everywhere([float(d.rank)])
    return {"any": flag_any, "none": none, "mean": mean, "gathered": gathered, "bcast": bcast, "same": same,
            "differ": differ, "main": d.is_main}


def test_collectives_on_two_gloo_ranks() -> None:
    out = run_ranks(_collectives)
    assert set(out) == {0, 1}, out
    for rank in (0, 1):
        r = out[rank]
        assert isinstance(r, dict), r
        assert r["any"] is True and r["none"] is False
        assert r["mean"] == [0.5, 5.0]
        assert r["bcast"] == "from rank 0" and r["same"] is True and r["differ"] is False
        assert r["main"] is (rank == 0)
    g = out[0]["gathered"]
    assert [x["rank"] for x in g] == [0, 1] and torch.equal(g[1]["rng"], torch.tensor([1, 2, 3]))
    assert out[1]["gathered"] is None


def _one_rank_dies(d: Distributed) -> str:
    if d.rank == 1:
        os._exit(3)  # a crash: no clean shutdown, no collective
    t0 = time.monotonic()
    try:
        d.any(False)
    except DistributedError as exc:
        return f"raised after {time.monotonic() - t0:.1f}s: {exc}"
    return "no error"


def test_a_dead_rank_makes_the_others_raise_not_hang() -> None:
    out = run_ranks(_one_rank_dies, timeout=60)
    assert 0 in out, out
    assert out[0].startswith("raised after"), out[0]
    assert float(out[0].split()[2].rstrip("s:")) < 30  # within the 20 s timeout, not forever
    assert "another rank probably stopped or died" in out[0] and "\n" not in out[0]


# ---------------------------------------------------------------------------------------------------------
# The sharded sample order


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("flip", [False, True])
def test_shards_of_a_global_batch_are_the_single_process_batch(world: int, flip: bool) -> None:
    n, batch, seed = 203, 16, 7
    images = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8)
    single = BatchStream(images, batch, seed=seed, flip=flip, device="cpu")
    for kind in (BatchStream, DeviceStream):
        ranks = [kind(images, batch, seed=seed, flip=flip, device="cpu", rank=r, world_size=world)
                 for r in range(world)]
        ref = BatchStream(images, batch, seed=seed, flip=flip, device="cpu")
        for _ in range(3 * len(single)):  # three epochs, across the rollovers
            want = next(ref)
            parts = [next(s) for s in ranks]
            assert all(p.shape == (batch // world, 1, 4, 4) for p in parts)
            assert torch.equal(torch.cat(parts), want)
        # The state is global: identical on every rank, and it is the single-process stream's.
        states = [s.state_dict() for s in ranks]
        assert all(torch.equal(st["permutation"], ref.state_dict()["permutation"]) for st in states)
        assert all(st["position"] == ref.state_dict()["position"] for st in states)


def test_a_shard_resumes_from_the_global_state() -> None:
    images = torch.randint(0, 256, (50, 1, 2, 2), dtype=torch.uint8)
    a = BatchStream(images, 8, seed=1, flip=True, device="cpu", rank=1, world_size=2)
    for _ in range(9):
        next(a)
    b = BatchStream(images, 8, seed=1, flip=True, device="cpu", rank=1, world_size=2)
    b.load_state_dict(a.state_dict())
    for _ in range(10):
        assert torch.equal(next(a), next(b))


@pytest.mark.parametrize("batch,world", [(10, 3), (7, 2), (16, 32)])
def test_a_global_batch_the_ranks_cannot_split_is_refused(batch: int, world: int) -> None:
    with pytest.raises(ValueError, match="not divisible by the"):
        EpochPlan(100, batch, seed=0, flip=False, rank=0, world_size=world)


def test_make_loader_passes_the_shard() -> None:
    images = torch.randint(0, 256, (40, 1, 2, 2), dtype=torch.uint8)
    loader, kind = make_loader("torch", images, 8, seed=0, flip=False, device="cpu", rank=1, world_size=4)
    assert kind == "torch" and next(loader).shape == (2, 1, 2, 2)


# ---------------------------------------------------------------------------------------------------------
# Gradient averaging: 2 ranks × B/2 = 1 process × B for the three updates


TINY = ["model.ngf=8", "model.nif=8", "model.nemb=32", "model.nz=8", "diffusion.n_steps=8",
        "diffusion.updates_per_iter=3", "train.batch_size=8", "log.progress=false"]


def _update_inputs(b: int, nz: int) -> dict[str, torch.Tensor]:
    """Fixed global inputs of the three updates: images, z⁺, z⁻ (2B), the mask and every amortizer draw."""
    g = torch.Generator().manual_seed(11)
    return {"x": torch.rand(b, 1, 8, 8, generator=g) * 2 - 1, "z_pos": torch.randn(b, nz, generator=g),
            "z_neg": torch.randn(2, b, nz, generator=g), "keep": (torch.rand(b, generator=g) > 0.3).float(),
            "xi": torch.randn(3, 1, b, nz, generator=g), "u": torch.rand(3, 1, b, generator=g),
            "eps": torch.randn(3, 1, b, nz, generator=g)}


def _updated_parameters(d: Distributed | None) -> dict[str, torch.Tensor]:
    """Build the tiny learner from the run seed, run the Q, G and E updates of one iteration on this rank's shard
    of the fixed global inputs (the whole batch without ``d``), return every parameter."""
    from pathlib import Path

    from engine.config import load_config
    from engine.learners import build_learner
    from engine.learners.damc import energy_update, generator_update
    from engine.runtime import system
    from engine.runtime.updates import UpdateNoise, amortizer_updates_given, optimizer_step, q_loss_given

    quick = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    cfg = load_config(quick, TINY)
    system.seed_init(cfg.train.seed)
    learner = build_learner(cfg, torch.device("cpu"), system.make_generator(torch.device("cpu"), 0))
    world, rank = (1, 0) if d is None else (d.world_size, d.rank)
    grads: list[torch.Tensor] = []  # every update's gradient as the optimizer sees it (after the average)

    def sync(module: torch.nn.Module) -> None:
        if d is not None:
            d.average_grads_(module)
        grads.append(torch.cat([p.grad.reshape(-1) for p in module.parameters() if p.grad is not None]))

    learner.grad_sync = sync
    full = _update_inputs(cfg.train.batch_size, cfg.model.nz)
    b = cfg.train.batch_size // world
    rows = slice(rank * b, (rank + 1) * b)
    x, z_pos, keep = full["x"][rows], full["z_pos"][rows], full["keep"][rows]
    z_neg = full["z_neg"][:, rows].reshape(2 * b, -1)  # this rank's amortizer draws, then its N(0, I) chains
    noise = UpdateNoise(full["xi"][:, :, rows], full["u"][:, :, rows], full["eps"][:, :, rows])
    nets, dc = learner.nets, cfg.diffusion
    assert nets.amortizer is not None and learner.opt_q is not None
    amortizer_updates_given(lambda *a: q_loss_given(nets.amortizer, *a, dc), learner.opt_q, nets.amortizer,  # type: ignore[arg-type]
                            z_pos, x, keep, noise, cfg.optim.grad_clip,
                            step=lambda o, m, loss, c: optimizer_step(o, m, loss, c, learner.grad_sync))
    generator_update(learner, x, z_pos)
    energy_update(learner, z_pos, z_neg)
    params = {f"{name}.{k}": v.detach().clone() for name, net in (("g", nets.generator), ("e", nets.energy),
                                                                   ("q", nets.amortizer))
              for k, v in net.state_dict().items()}
    return {"params": params, "grads": grads}


def test_two_ranks_with_half_batches_update_like_one_process_with_the_whole_batch() -> None:
    """The deterministic configuration of issue 16 item 7: the Q, G and E updates of one iteration given the same
    latents, mask and amortizer draws (the chains themselves draw from per-rank streams by design, so a whole
    iteration differs). Gradients averaged before the clip make the two runs agree to float rounding."""
    single = _updated_parameters(None)
    ranks = run_ranks(_updated_parameters)
    assert set(ranks) == {0, 1} and all(isinstance(v, dict) for v in ranks.values()), ranks
    # The gradient of every update (3 of Q, then G, then E), averaged over the ranks' halves, is the whole batch's.
    assert len(single["grads"]) == len(ranks[0]["grads"]) == 5
    for i, want in enumerate(single["grads"]):
        assert torch.equal(ranks[0]["grads"][i], ranks[1]["grads"][i])  # identical on every rank
        scale = float(want.abs().max())
        torch.testing.assert_close(ranks[0]["grads"][i], want, rtol=1e-4, atol=1e-6 * scale, msg=f"update {i}")
    # Parameters: identical across ranks; equal to the single process up to Adam's normalisation of float noise
    # (a mathematically zero gradient, e.g. E's output bias or a bias before InstanceNorm, gives ±lr steps of
    # either sign), i.e. within a few learning rates.
    for name, want in single["params"].items():
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name]), name
        torch.testing.assert_close(ranks[0]["params"][name], want, rtol=0, atol=4 * 2e-4, msg=name)
    start = _initial_parameters()
    assert any(not torch.equal(start[k], v) for k, v in single["params"].items())  # the updates did something


def _initial_parameters() -> dict[str, torch.Tensor]:
    from pathlib import Path

    from engine.config import load_config
    from engine.learners import build_learner
    from engine.runtime import system

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml", TINY)
    system.seed_init(cfg.train.seed)
    lr = build_learner(cfg, torch.device("cpu"), system.make_generator(torch.device("cpu"), 0))
    return {f"{name}.{k}": v.clone() for name, net in (("g", lr.nets.generator), ("e", lr.nets.energy),
                                                         ("q", lr.nets.amortizer)) for k, v in net.state_dict().items()}


def test_dali_shards_are_the_single_process_batch() -> None:
    from engine.data.dali import DaliMemoryStream, dali_available

    if not dali_available():
        pytest.skip("DALI not installed")
    n, batch, seed = 40, 8, 3
    images = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8)
    ref = BatchStream(images, batch, seed=seed, flip=True, device="cpu")
    ranks = [DaliMemoryStream(images, batch, seed=seed, flip=True, device="cpu", rank=r, world_size=2, prefetch=1)
             for r in range(2)]
    for _ in range(7):  # across an epoch rollover
        parts = [next(s) for s in ranks]
        assert all(p.shape == (batch // 2, 1, 4, 4) for p in parts)
        assert torch.equal(torch.cat(parts), next(ref))
    assert all(s.state_dict()["position"] == ref.state_dict()["position"] for s in ranks)


# ---------------------------------------------------------------------------------------------------------
# Replicas


def _replica_check(d: Distributed) -> list[str]:
    from pathlib import Path

    from engine.config import load_config
    from engine.learners import build_learner
    from engine.run.ranks import ReplicaMismatch, check_replicas
    from engine.runtime import system

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml", TINY)
    system.seed_init(cfg.train.seed)
    learner = build_learner(cfg, torch.device("cpu"), system.make_generator(torch.device("cpu"), d.rank))
    seen = []
    for perturb in (False, True):
        if perturb and d.rank == 1:
            assert learner.amortizer_ema is not None
            with torch.no_grad():  # one EMA weight one ulp off on one rank
                p = next(learner.amortizer_ema.parameters())
                p.view(-1)[0] = torch.nextafter(p.view(-1)[0], torch.tensor(1.0))
        try:
            check_replicas(d, learner, "in the test")
            seen.append("same")
        except ReplicaMismatch as exc:
            seen.append(str(exc))
    return seen


def test_replicas_are_compared_bit_for_bit_on_every_rank() -> None:
    out = run_ranks(_replica_check)
    assert set(out) == {0, 1}, out
    for rank in (0, 1):
        assert out[rank][0] == "same"
        assert "copies of the networks or optimizers differ in the test" in out[rank][1], out[rank]
