"""Check ``--setup authors`` against the authors' own toy code (run by hand; not a test: it needs their repository).

    git clone https://github.com/yuPeiyu98/Diffusion-Amortized-MCMC /tmp/damc
    python -m engine.eval.toy.authors_parity /tmp/damc/workspace/toy_example \
        --seed 3 --nf 1 --steps 5 --iterations 2

It builds Q, Q_dummy and G exactly as their ``toy_example.py`` ``main`` does (``torch.manual_seed(seed)``, their
``_netQ_U_toy`` and ``G``), runs their training-loop body (``toy_example.py:183-232``) on the CPU without the figure,
print and checkpoint code, and prints, beside the engine's ``--setup authors``:

* whether G, Q's initial weights and the global RNG state after G are bit-for-bit equal (they are);
* the posterior samples of every iteration and the parameters after training (equal to float rounding: the
  sampler's coefficients are float32 per step in theirs, a float64 table in the engine; Adam's first steps and
  the sampler amplify that rounding over iterations, so compare the first ~10 iterations, before the first EMA).

The golden numbers of ``tests/eval/test_toy_authors.py`` were printed by this script (seed 1 nf 4 for the init;
seed 3, nf 1, 5 steps, 2 iterations for the training).
"""

from __future__ import annotations

import argparse
import importlib
import sys

import numpy as np
import torch
from torch import nn


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("toy_dir", help="their workspace/toy_example directory")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--nf", type=int, default=4)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--iterations", type=int, default=2)
    a = p.parse_args()
    sys.path.insert(0, a.toy_dir)
    _netQ_U_toy = importlib.import_module("src.diffusion_net")._netQ_U_toy  # their code, from toy_dir

    import engine.eval.toy.experiment as engine_toy
    from engine.eval.toy.authors import authors_config, authors_init

    class G(nn.Module):  # toy_example.py:22-47
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                                     nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 2))

            def init_weights(m: nn.Module) -> None:
                if isinstance(m, nn.Linear):
                    m.weight.data.copy_(torch.randn_like(m.weight.data) * 0.2)
                    m.bias.data.copy_(torch.randn_like(m.bias.data) * 0.1)

            self.net.apply(init_weights)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.net(z)

    def sample_z(batch_size: int, seed: int) -> np.ndarray:  # toy_example.py:134-155
        rng = np.random.RandomState(seed)
        num_classes, num_per_class = 2, batch_size // 2
        rads = np.linspace(0, 2 * np.pi, num_classes, endpoint=False)
        features = rng.randn(num_classes * num_per_class, 2) * np.array([0.3, 0.1])
        features[:, 0] += 1.0
        labels = np.repeat(np.arange(num_classes), num_per_class)
        angles = rads[labels] + 0.25 * np.exp(features[:, 0])
        rotations = np.stack([np.cos(angles), -np.sin(angles), np.sin(angles), np.cos(angles)])
        rotations = np.reshape(rotations.T, (-1, 2, 2))
        return 2 * rng.permutation(np.einsum("ti,tij->tj", features, rotations))

    torch.manual_seed(a.seed)
    kw = dict(nz=2, nxemb=128, ntemb=128, diffusion_residual=True, n_interval=a.steps, logsnr_min=-5.1,
              logsnr_max=9.8, var_type="large", with_noise=True, cond_w=0.0, nf=a.nf)
    q, q_dummy = _netQ_U_toy(**kw), _netQ_U_toy(**kw)
    for param, target in zip(q.parameters(), q_dummy.parameters(), strict=True):
        target.data.copy_(param.data)
    opt = torch.optim.AdamW(q.parameters(), weight_decay=1e-2, lr=2e-4, betas=(0.5, 0.999))
    net_g = G()
    state = torch.get_rng_state()
    cfg = authors_config(seed=a.seed, unet_nf=a.nf, n_steps=a.steps, iterations=a.iterations, log_every=10**6)
    init = authors_init(cfg)
    same_g = all(torch.equal(x, y) for x, y in zip(net_g.parameters(), init.g.parameters(), strict=True))
    print("G bit-for-bit:", same_g)
    print("RNG state after G equal:", torch.equal(state, init.rng_state))
    total0 = sum(p_.detach().double().sum() for n_, p_ in q.named_parameters() if n_ != "xemb")
    ours0 = sum(p_.detach().double().sum() for p_ in init.model.parameters())
    print(f"Q init Σθ: theirs {float(total0):.14f}, engine {float(ours0):.14f}")

    def langevin(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # toy_example.py:110-131
        for _ in range(50):
            total = 1.0 / (2.0 * 0.25**2) * torch.sum((net_g(z) - x) ** 2) + 0.5 * torch.sum(z**2)
            grad = torch.autograd.grad(total, z)[0]
            z.data = z.data - 0.5 * 0.1 * 0.1 * grad
            z.data += 0.1 * torch.randn_like(z)
        return z.detach()

    theirs: list[torch.Tensor] = []
    for iteration in range(a.iterations):  # toy_example.py:183-232
        z = torch.tensor(sample_z(500, a.seed)).float()
        x = net_g(z).detach() + torch.randn_like(z) * 0.25
        mask = torch.ones(len(x))
        mask[torch.rand((len(x),)) < 0.1] = 0.0
        with torch.no_grad():
            z0 = q_dummy(x)
        zk = z0.detach().clone().requires_grad_(True)
        zk = langevin(zk, x)
        theirs.append(zk.clone())
        for _ in range(6):
            opt.zero_grad()
            loss = q.calculate_loss(x=x, z=zk, mask=mask.unsqueeze(-1)).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(q.parameters(), max_norm=100)
            opt.step()
        if (iteration + 1) % 10 == 0:
            for param, target in zip(q.parameters(), q_dummy.parameters(), strict=True):
                target.data.copy_(0.75 * param.data + 0.25 * target.data)

    ours: list[torch.Tensor] = []
    chain = engine_toy.posterior_langevin

    def recorded(*args: object, **kwargs: object) -> torch.Tensor:
        out = chain(*args, **kwargs)  # type: ignore[arg-type]
        ours.append(out.clone())
        return out

    engine_toy.posterior_langevin = recorded  # train() calls it through the module global
    st = engine_toy.train(cfg)
    for i, (t, o) in enumerate(zip(theirs, ours, strict=True)):
        print(f"iteration {i}: posterior samples max |diff| {float((t - o).abs().max()):.2e}")
    total = sum(p_.detach().double().sum() for n_, p_ in q.named_parameters() if n_ != "xemb")
    print(f"Q after training Σθ: theirs {float(total):.10f}, engine "
          f"{float(sum(p_.detach().double().sum() for p_ in st.model.parameters())):.10f}")


if __name__ == "__main__":
    main()
