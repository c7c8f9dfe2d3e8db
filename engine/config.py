"""Typed run configuration: dataclasses loaded from YAML, with ``a.b=value`` overrides.

Every default is the authors' code value (spec ``damc.md`` §3, marked [code]); where the paper differs,
the paper's value is reachable through an option named in the field's doc. Validation happens before
anything runs: an unknown key, a wrong type or an out-of-range value raises :class:`ConfigError` with one
line naming the field, the value and what is allowed.

One mechanism (:mod:`engine.schema`) bounds every number: each ``int`` / ``float`` field carries a
lower *and* an upper bound (checked at import: a field without both is a programming error), every float
must also be finite (``inf``, ``nan``, ``1e400`` are refused), and every string must be UTF-8 text without
control characters. The bounds are sanity limits, documented in ``--show-config``; whether the sizes fit
the machine's memory is estimated separately before any work (:mod:`engine.run.budget`). YAML is read
strictly: a duplicate key and a YAML 1.1 surprise (``010`` read as octal 8, ``1:30`` read as 90) are
refused with one line instead of silently winning.

over 500 lines: every learner's section (``coopvae``, ``dualmcmc``, ``drl``) sits beside DAMC's, so one ``Config``
is validated, shown by ``--show-config`` and compared on resume in one place; a per-learner module of sections is
the next split when another learner arrives.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from engine.schema import (
    ConfigError,
    YamlProblem,
    allowed_range,
    build,
    check_text,
    describe_type,
    load_yaml,
    require_bounds,
    show,
)
from engine.schema import doc as _opt
from engine.schema import num as _num
from engine.schema import section as _section

__all__ = ["RESUMABLE_CHANGES", "SEED_MAX", "ChainConfig", "Config", "ConfigError", "CoopVAEConfig", "DRLConfig",
           "DataConfig", "DiffusionConfig", "DualMCMCConfig", "EvalConfig", "LangevinConfig", "LogConfig",
           "ModelConfig", "OptimConfig", "PerfConfig", "SystemConfig", "TrainConfig", "describe_fields", "dump_config",
           "from_dict", "load_config", "parse_override", "resume_differences", "to_dict", "validate"]

COOPVAE_ARCHS = ("cifar10", "digits")  # engine.models.coopvae.COOPVAE_ARCHS (a test keeps the two equal)
DRL_ARCHS = ("cifar10", "digits")  # engine.models.drl.DRL_NETS (a test keeps the two equal)
DUALMCMC_ARCHS = ("cifar10", "celeba64", "digits")  # engine.models.dualmcmc.DUALMCMC_ARCHS (tested equal)
SEED_MAX = 2**32 - 1  # seeds are offset (+1 for grids, +1,000,003 per rollback) and must stay within 64 bits


# ---------------------------------------------------------------------------------------------------------
# Sections


@dataclass
class ModelConfig:
    """Network sizes (spec §1). Layer stacks are fixed per ``arch``; widths are parameters."""

    arch: Literal["cifar10", "svhn", "celeba64", "celebahq256", "mnist", "digits"] = _opt(
        "cifar10", "network layout and image size (digits: 8x8 grey, mnist 28x28, cifar10/svhn 32, celeba64, "
        "celebahq256)")
    nz: int = _num(128, ge=1, le=16384, doc="latent dimension: cifar10 128, svhn 100, celeba64 100, celebahq 128, "
                   "mnist 8")
    ngf: int = _num(128, ge=1, le=4096, doc="generator base width (svhn 64)")
    ndf: int = _num(200, ge=1, le=65536, doc="energy MLP hidden width")
    nif: int = _num(64, ge=1, le=4096, doc="encoder base width ([code] MNIST uses 128; [paper] 64)")
    nemb: int = _num(1024, ge=1, le=65536, doc="image embedding (context) width")
    unet_nf: int = _num(4, ge=1, le=256, doc="U-Net width factor f (blocks 32*f and 64*f wide; Table S6)")
    ntemb: int = _num(128, ge=4, le=65536, doc="sinusoidal time-embedding width (even: sin and cos halves)")


@dataclass
class DataConfig:
    """Where the training images come from, in the datasets' distributed formats (spec §3, §4)."""

    source: Literal["digits", "folder", "mnist", "cifar10", "svhn"] = _opt(
        "folder", "cifar10: python batches under root; svhn: the .mat files; mnist: the four IDX files; folder: "
        "images under root/<train_subdir>, root/<test_subdir>; digits: scikit-learn's 8x8 set. cifar10/svhn/mnist "
        "read a root of train/ and test/ image folders as 'folder' (with a notice)")
    root: str = _opt("", "directory holding the dataset files")
    download: bool = _opt(True, "cifar10 / svhn / mnist: fetch the official files when absent (checksums verified)")
    loader: Literal["auto", "dali", "gpu", "torch"] = _opt(
        "auto", "batch loader; auto: GPU-resident when the decoded set fits 1/4 of the GPU, DALI for larger folders "
        "(if installed), else the CPU loader; all give the same sample order")
    train_subdir: str = _opt("train", "folder source: training split subfolder")
    test_subdir: str = _opt("test", "folder source: test split subfolder (reconstruction grids, MSE)")
    flip: bool = _opt(True, "RandomHorizontalFlip(0.5); off for MNIST / digits")
    limit: int = _num(0, ge=0, le=2**31 - 1, doc="0 = all images; >0 reads only the first N files (smoke runs)")
    heldout_digit: int = _num(1, ge=0, le=9, doc="mnist: the anomalous class (spec §4)")


@dataclass
class DiffusionConfig:
    """The latent diffusion amortizer Q (spec §2) and how it is trained (spec §3 step 5, §2 EMA)."""

    n_steps: int = _num(100, ge=2, le=10_000, doc="ancestral sampling steps (n_interval); the paper ablates 10 / 50")
    logsnr_min: float = _num(-5.1, ge=-30.0, le=30.0, doc="log-SNR at t = 1 (the network clamps to +-20)")
    logsnr_max: float = _num(9.8, ge=-30.0, le=30.0, doc="log-SNR at t = 0; must exceed logsnr_min")
    p_uncond: float = _num(0.2, ge=0.0, le=1.0, doc="probability that a training row uses the random null token")
    uncond_loss: Literal["mask", "both"] = _opt(
        "mask", "mask: each row conditional or not with p_uncond (image runs); both: conditional + unconditional "
        "loss per update (MNIST anomaly script)")
    updates_per_iter: int = _num(6, ge=0, le=1000, doc="M amortizer updates per iteration")
    sampler_noise: bool = _opt(True, "noise in the ancestral sampler (Q_with_noise)")
    ema_decay: float = _num(0.995, ge=0.0, le=1.0, doc="EMA decay of the amortizer copy that starts the chains")
    ema_every: int = _num(10, ge=1, le=10**9, doc="iterations between EMA updates")
    init_from: Literal["ema", "online"] = _opt(
        "ema", "[code] the EMA copy initialises both training chains; [paper] Listing 2 uses the online Q")


@dataclass
class ChainConfig:
    """One Langevin chain: z <- z - s^2/2 grad U(z) + s eps (paper eq. 3 / 16)."""

    n_steps: int = _num(30, ge=0, le=10_000, doc="Langevin steps")
    step_size: float = _num(0.1, ge=1e-6, le=10.0, doc="step size s")
    noise: bool = _opt(True, "add s*eps (false: noise-free gradient steps)")


@dataclass
class LangevinConfig:
    """Training-time chains (spec §3 steps 3-4)."""

    posterior: ChainConfig = _section(lambda: ChainConfig(n_steps=30, step_size=0.1),
                                      "posterior chain (30 steps, s 0.1)")
    prior: ChainConfig = _section(lambda: ChainConfig(n_steps=60, step_size=0.4),
                                  "prior chain (60 steps; [code] s 0.4, [paper] 0.1)")
    likelihood_sigma: float = _num(0.1, ge=1e-4, le=100.0, doc="sigma of N(G(z), sigma^2 I): 0.1 image runs, 1.0 MNIST")
    prior_init: Literal["posterior_and_noise", "posterior"] = _opt(
        "posterior_and_noise", "DAMC prior-chain start: the amortizer's draws plus as many N(0, I) chains (2B, image "
        "runs) or the draws alone (MNIST anomaly script)")


@dataclass
class OptimConfig:
    """Optimizers (spec §3 table) and the step-wise learning-rate decay."""

    g_lr: float = _num(2e-4, gt=0.0, le=1.0, doc="generator Adam learning rate")
    e_lr: float = _num(1e-4, gt=0.0, le=1.0, doc="energy Adam learning rate")
    q_lr: float = _num(2e-4, gt=0.0, le=1.0, doc="amortizer AdamW learning rate")
    beta1: float = _num(0.5, ge=0.0, lt=1.0, doc="Adam beta1 (all networks)")
    beta2: float = _num(0.999, ge=0.0, lt=1.0, doc="Adam beta2 (all networks)")
    q_weight_decay: float = _num(1e-4, ge=0.0, le=10.0, doc="AdamW weight decay for Q; 0 in the MNIST script")
    grad_clip: float = _num(100.0, gt=0.0, le=1e9, doc="total-norm gradient clip for every network")
    lr_decay: float = _num(0.99, gt=0.0, le=1.0, doc="learning-rate factor every lr_decay_every iterations")
    lr_decay_every: int = _num(1000, ge=1, le=10**9, doc="iterations between learning-rate decays")
    lr_min: float = _num(1e-5, ge=0.0, le=1.0, doc="learning-rate floor")
    lr_scale_batch: int = _num(0, ge=0, le=65536, doc="0: the LRs above as given (default, also with several GPUs: "
                               "train.batch_size is the global batch); B > 0: every LR times train.batch_size / B "
                               "(the linear scaling rule, for a batch grown with the GPU count from the B the LRs "
                               "were tuned for)")


@dataclass
class TrainConfig:
    batch_size: int = _num(128, ge=1, le=65536, doc="images per iteration, over all processes (torchrun: each of the "
                           "W ranks trains on batch_size / W; must divide evenly)")
    iterations: int = _num(200_000, ge=1, le=10**9, doc='total iterations (the paper: "converges within 200K")')
    seed: int = _num(0, ge=0, le=SEED_MAX, doc="seed of the run (initialisation, chains, data order)")
    on_divergence: Literal["stop", "rollback"] = _opt(
        "stop", "non-finite losses, energies, latents or weights: stop keeping the last good checkpoint, or "
        "rollback to it with a new seed (at most max_rollbacks times)")
    max_rollbacks: int = _num(3, ge=0, le=100, doc="rollbacks allowed before the run stops")


@dataclass
class EvalConfig:
    """Sample grids written during training (spec §4 protocols, small counts)."""

    n_samples: int = _num(64, ge=1, le=4096, doc="images per grid")
    lebm_steps: int = _num(100, ge=0, le=100_000, doc="Langevin prior steps from N(0, I) for the LEBM grid")
    lebm_step_size: float = _num(0.4, ge=1e-6, le=10.0, doc="step size of the LEBM grid's chain")
    recon_steps: int = _num(10, ge=0, le=100_000, doc="noise-free posterior steps after the conditional draw")
    recon_step_size: float = _num(0.1, ge=1e-6, le=10.0, doc="step size of the reconstruction steps")


@dataclass
class LogConfig:
    run_dir: str = _opt("runs/default", "run directory (config, metrics, grids, checkpoints); an existing one resumes")
    log_every: int = _num(50, ge=1, le=10**9, doc="iterations between metrics lines and divergence checks")
    sample_every: int = _num(1000, ge=1, le=10**9, doc="iterations between PNG grids")
    checkpoint_every: int = _num(5000, ge=1, le=10**9, doc="iterations between checkpoints (plus one at the end and "
                                 "on SIGINT/SIGTERM)")
    keep_checkpoints: int = _num(3, ge=1, le=10_000, doc="the newest K checkpoints are kept")
    final_grids: bool = _opt(True, "draw grids at the last iteration even when it is not a multiple of sample_every "
                             "(false for smoke runs: CIFAR-size grids take ~100 s on a CPU)")
    progress: bool = _opt(True, "tqdm progress bar; false (or --quiet) for batch jobs")
    tensorboard: bool = _opt(False, "event files beside metrics.jsonl (needs the tensorboard package)")


@dataclass
class SystemConfig:
    device: Literal["auto", "cpu", "cuda"] = _opt("auto", "auto: CUDA when present, else CPU")
    threads: int = _num(1, ge=0, le=512, doc="CPU intra-op threads (0 = torch's default, one per core); 1 is robust "
                        "on shared or busy CPUs, see README")
    dist_timeout_s: float = _num(600.0, ge=1.0, le=86400.0, doc="torchrun: seconds a collective waits for the other "
                                 "ranks before the job stops with an error (a rank that died or hangs)")


@dataclass
class CoopVAEConfig:
    """CoopVAEBM (``method: coopvae``; Xie, Zheng, Li, AAAI 2021): a VAE amortizes the EBM's image-space chains.
    Defaults are the authors' released code (jianwen-xie/CoopVAEBM, main.py / model/model.py; every number with its
    source in docs/methods/coopvae.md)."""

    n_chains: int = _num(900, ge=1, le=65536, doc="synthesized images per iteration (nTileRow x nTileCol = 30 x 30); "
                         "the data batch is train.batch_size (250)")
    langevin: ChainConfig = _section(lambda: ChainConfig(n_steps=15, step_size=0.002, noise=False),
                                     "the EBM's Langevin revision x^ -> x~ (15 steps, delta 0.002, [code] noise off)")
    ref_sigma: float = _num(0.016, ge=1e-6, le=100.0, doc="sigma of the EBM's Gaussian reference distribution "
                            "(des_refsig): U(x) = -f(x) + |x|^2/(2 sigma^2)")
    ebm_lr: float = _num(0.009, gt=0.0, le=1.0, doc="EBM (descriptor) Adam learning rate (d_lr)")
    vae_lr: float = _num(2e-4, gt=0.0, le=1.0, doc="VAE (encoder + generator) Adam learning rate (vae_lr)")
    beta1: float = _num(0.5, ge=0.0, lt=1.0, doc="Adam beta1 of both optimizers (beta1_des, beta1_vae)")
    beta2: float = _num(0.999, ge=0.0, lt=1.0, doc="Adam beta2 (TensorFlow's default)")
    latent_weight: float = _num(2.0, ge=0.0, le=1e6, doc="weight of the KL term in the VAE loss (weight_latent_loss)")
    lr_decay: float = _num(0.98, gt=0.0, le=1.0, doc="learning-rate factor per lr_decay_epochs epochs, applied "
                           "continuously (tf.train.exponential_decay(lr, epoch, 20, 0.98), not staircase)")
    lr_decay_epochs: int = _num(20, ge=1, le=10**9, doc="epochs per lr_decay factor")
    epoch_iterations: int = _num(200, ge=1, le=10**9, doc="iterations per epoch for the schedule (CIFAR-10: "
                                 "50,000 / 250)")


@dataclass
class DRLConfig:
    """Diffusion recovery likelihood (``method: drl``; Gao, Song, Poole, Wu, Kingma, ICLR 2021): T conditional EBMs
    p(x_t | x_{t+1}) along a diffusion, each learnt from short conditional Langevin chains. Defaults are the authors'
    released code (ruiqigao/recovery_likelihood @ c77cc05; every number with its source in docs/methods/drl.md)."""

    levels: int = _num(6, ge=2, le=501, doc="T, the number of EBM levels (the T6 setting, README.md:52); the code's "
                       "schedule cuts T levels from a 1000-step linear-beta grid and degenerates above 501")
    beta_start: float = _num(1e-4, gt=0.0, lt=1.0, doc="first beta of the 1000-step DDPM grid (model.py:51)")
    beta_end: float = _num(0.02, gt=0.0, lt=1.0, doc="last beta of that grid (model.py:51); must exceed beta_start")
    langevin_steps: int = _num(30, ge=1, le=10_000, doc="K Langevin updates per level, training and sampling "
                               "(mcmc_num_steps, config.py:58)")
    b_square: float = _num(2e-4, gt=0.0, le=10.0, doc="b^2 of the step size s_t^2 = (sigma_cum_t / sigma_cum_0) * "
                           "b^2 * sigma_{t+1}^2 (mcmc_step_size_b_square, config.py:59; model.py:173-174)")
    noise_scale: float = _num(1.0, gt=0.0, le=10.0, doc="factor n on the chain's noise s_t * xi in training "
                              "(noise_scale, config.py:55); > 0: the engine's chain runs in units of n * s_t")
    eval_noise_scale: float = _num(0.99, gt=0.0, le=10.0, doc="the same factor for samples, grids, FID, chains and "
                                   "exports (README.md:43's evaluation: --noise_scale=0.99)")
    lr: float = _num(1e-4, gt=0.0, le=1.0, doc="Adam learning rate after warm-up, constant (lr, config.py:24)")
    warmup: int = _num(1000, ge=0, le=10**9, doc="linear warm-up: update k (from 0) uses lr * min(1, k / warmup) "
                       "(config.py:28, train_utils.py:25-33); 0 = none")
    beta1: float = _num(0.9, ge=0.0, lt=1.0, doc="Adam beta1 (beta_1, config.py:25)")
    beta2: float = _num(0.999, ge=0.0, lt=1.0, doc="Adam beta2 (Keras default)")
    eps: float = _num(1e-7, gt=0.0, le=1.0, doc="Adam epsilon (Keras default 1e-7; PyTorch's is 1e-8)")
    ema_decay: float = _num(0.999, ge=0.0, lt=1.0, doc="EMA of every weight and spectral-norm vector after each "
                            "update; the EMA net draws samples (ma_decay, config.py:54)")
    recon_level: int = _num(1, ge=1, le=501, doc="[ours] reconstruction (test MSE, recon grid): diffuse the image to "
                            "this level, then run the sampler's chains from it down to level 0; <= levels")


@dataclass
class DualMCMCConfig:
    """Dual-MCMC Teaching (``method: dualmcmc``; Cui & Han, NeurIPS 2023): EBM E(x), generator g(z), inference q(z|x).
    Defaults are the authors' code (jcui1224/dual-MCMC aac3c4c, CIFAR-10; sources in docs/methods/dualmcmc.md).
    Both chains are x - s^2/2 grad U + n*eps with the noise scale n apart from the step s, as the code has them."""

    ebm_chain: ChainConfig = _section(lambda: ChainConfig(n_steps=30, step_size=0.5, noise=True),
                                      "the EBM's x-chain from g(z): e_l_steps 30, e_l_step_size 0.5, use_noise")
    ebm_noise: float = _num(1e-3, gt=0.0, le=10.0, doc="noise scale n of the x-chain (e_n_step_size); T = (n/s)^2")
    posterior: ChainConfig = _section(lambda: ChainConfig(n_steps=10, step_size=0.1, noise=True),
                                      "the z-chain from q(z|x) on |x - g(z)|^2/sigma^2 + |z|^2/(2 prior_sigma^2)")
    posterior_noise: float = _num(0.1, gt=0.0, le=10.0, doc="noise scale of the z-chain (n_step_size)")
    sigma: float = _num(0.3, ge=1e-4, le=100.0, doc="sig of the z-chain's |x - g(z)|^2/sig^2 (no 1/2 in the code)")
    prior_sigma: float = _num(1.0, ge=1e-4, le=100.0, doc="prior_sig: p(z) = N(0, prior_sigma^2 I)")
    eval_steps: int = _num(70, ge=0, le=100_000, doc="x-chain steps of the 'ebm' sample kind (task_fid.py: 70)")
    eval_step_size: float = _num(0.4, ge=1e-6, le=10.0, doc="x-chain step of the 'ebm' kind (task_fid.py: 0.4)")
    fine_tune: bool = _opt(True, "[code] the EBM's negatives: a second x-chain from the updated g(z); false: g(z)")
    use_temp: bool = _opt(True, "the EBM loss divided by T = (ebm_noise / ebm_chain.step_size)^2 (use_temp)")
    gen_weight: float = _num(1.0, ge=0.0, le=1e6, doc="Gfactor: the data terms of the G and I losses")
    sample_weight: float = _num(50.0, ge=0.0, le=1e6, doc="Sfactor: |g(z) - x~|^2 in the G loss (CelebA-64: 70)")
    inf_weight: float = _num(0.1, ge=0.0, le=1e6, doc="Ifactor: -log q(z | x~) in the I loss")
    ebm_lr: float = _num(1e-4, gt=0.0, le=1.0, doc="EBM Adam learning rate (lrE)")
    gen_lr: float = _num(3e-4, gt=0.0, le=1.0, doc="generator Adam learning rate (lrG)")
    inf_lr: float = _num(1e-4, gt=0.0, le=1.0, doc="inference-model Adam learning rate (lrI)")
    beta1: float = _num(0.0, ge=0.0, lt=1.0, doc="Adam beta1 of the three optimizers (beta1E/G/I)")
    beta2: float = _num(0.9, ge=0.0, lt=1.0, doc="Adam beta2 (train.py: betas=(beta1, 0.9))")
    ebm_decay: float = _num(0.0, ge=0.0, le=10.0, doc="EBM Adam (coupled L2) weight decay (e_decay)")
    gen_decay: float = _num(5e-4, ge=0.0, le=10.0, doc="generator Adam weight decay (g_decay)")
    inf_decay: float = _num(5e-4, ge=0.0, le=10.0, doc="inference Adam weight decay (i_decay)")
    lr_gamma: float = _num(0.998, gt=0.0, le=1.0, doc="every LR times gamma^epoch (ExponentialLR, e/g/i_gamma)")
    epoch_iterations: int = _num(500, ge=1, le=10**9, doc="iterations per epoch (CIFAR-10: 50,000 / 100)")
    explode: float = _num(1e4, gt=0.0, le=1e20, doc="stop (the divergence guard) once |mean E(x) - mean E(x~)| > it")
    ngf: int = _num(0, ge=0, le=4096, doc="generator width; 0: the arch's (cifar10 512, celeba64 1024, digits 64)")
    ndf: int = _num(0, ge=0, le=4096, doc="EBM width; 0: the arch's (cifar10 512, celeba64 1024, digits 64)")
    nif: int = _num(0, ge=0, le=4096, doc="inference width; 0: the arch's (128; digits 16)")
    batch_stats: bool = _opt(True, "[code] draws with G's BatchNorm on batch statistics and E's spectral-norm power "
                             "iteration (train mode, as task_fid.py); false: eval mode")


Switch = Literal["auto", "on", "off"]


@dataclass
class PerfConfig:
    """Speed switches (``engine/runtime/perf.py`` decides what they mean on the device at hand).

    ``reference`` is the faithful eager fp32 path; ``fast`` turns on every switch left at ``auto`` that the
    device supports (CUDA graphs, bf16 autocast, torch.compile, Triton kernels, channels_last, TF32, cudnn
    autotuning). A switch set to ``on`` or ``off`` overrides the preset. A missing capability falls back
    with one log line.
    """

    preset: Literal["reference", "fast"] = _opt("reference", "reference: eager fp32 (the authors' arithmetic); fast: "
                                               "every speed-up the device supports")
    graphs: Switch = _opt("auto", "the 30/60-step chains and the 100-step sampler as CUDA graphs")
    compile: Switch = _opt("auto", "torch.compile of the per-step functions")
    amp: Switch = _opt("auto", "bf16 autocast for G, encoder and U-Net (z, updates, energies stay fp32)")
    kernels: Switch = _opt("auto", "fused Triton Langevin / ancestral-step kernels")
    channels_last: Switch = _opt("auto", "channels_last memory format for the convolutions")
    tf32: Switch = _opt("auto", "TF32 for the remaining fp32 matmuls / convolutions")
    cudnn_benchmark: Switch = _opt("auto", "cudnn autotuning")
    # Issue 14 (engine/runtime/{updates,sampler,convt}.py; the GPU benchmark decides the defaults):
    iteration_graph: Switch = _opt("auto", "the whole iteration as one CUDA graph (needs graphs and fused_optim)")
    fused_optim: Switch = _opt("auto", "fused, capturable Adam/AdamW with the LR as a device tensor")
    hoist_sampler: Switch = _opt("auto", "the U-Net's z-independent context for all 100 steps at once, merged GEMMs")
    amp_unet: Switch = _opt("auto", "with amp: the U-Net in bf16 too (off: fp32, TF32 if on); the encoder follows "
                            "amp")
    side_streams: Switch = _opt("auto", "in the iteration graph: prior chain beside the posterior, Q beside G and E "
                                "(on under fast: with g_gemm_first, 86.5 -> 55.5 ms per iteration on an H200)")
    g_gemm_first: Switch = _opt("auto", "G's first ConvTranspose2d (1x1 input) as one GEMM (on under fast: the "
                                "posterior chain 65.8 -> 37.7 ms on an H200)")
    sampler_kernel: Switch = _opt("auto", "with hoist_sampler: each U-Net block of a sampler step as one Triton "
                                  "kernel (GEMM + epilogue; the last with the ancestral step); auto = off until a GPU "
                                  "measurement (bench variant sampler_kernel) shows it pays")
    combo_kernels: Switch = _opt("auto", "with compile: Inductor's horizontal fusion of independent kernels (e.g. the "
                                 "bf16 weight casts of the amortizer updates); auto = off until a GPU measurement "
                                 "(bench variant combo_kernels) shows it pays")
    merge_unet: Switch = _opt("auto", "the training U-Net's GEMMs that share an input as one (all ctx_proj; gate + "
                              "hyper_bias; layer + skip): auto is off under every preset until a GPU measurement "
                              "(bench variant merge_unet) shows it pays")
    g_last: Literal["convt", "convt_pad", "conv_pad"] = _opt(
        "convt", "G's 3-channel last layer: as written, or its channels padded to 8")
    compile_mode: Literal["default", "max-autotune-no-cudagraphs"] = _opt("default", "torch.compile mode")
    cudnn_benchmark_limit: int = _num(10, ge=0, le=1000, doc="algorithms cudnn autotuning tries per conv (0: all)")


@dataclass
class Config:
    method: Literal["damc", "lebm", "coopvae", "dualmcmc", "drl"] = _opt(
        "damc", "the learner (engine/learners/): damc; lebm: short-run chains from N(0, I) (spec §8); coopvae: "
        "CoopVAEBM, an image-space EBM taught by a VAE (docs/methods/coopvae.md); dualmcmc: Dual-MCMC Teaching "
        "(docs/methods/dualmcmc.md); drl: diffusion recovery likelihood, T conditional EBMs along a diffusion "
        "(docs/methods/drl.md)")
    model: ModelConfig = _section(ModelConfig, "network sizes (spec §1)")
    data: DataConfig = _section(DataConfig, "training data")
    diffusion: DiffusionConfig = _section(DiffusionConfig, "the latent diffusion amortizer (spec §2)")
    langevin: LangevinConfig = _section(LangevinConfig, "training-time Langevin chains")
    optim: OptimConfig = _section(OptimConfig, "optimizers and learning-rate decay")
    train: TrainConfig = _section(TrainConfig, "iterations, batch, seed, divergence policy")
    eval: EvalConfig = _section(EvalConfig, "grids written during training")
    log: LogConfig = _section(LogConfig, "run directory, metrics, grids, checkpoints")
    system: SystemConfig = _section(SystemConfig, "device and CPU threads")
    perf: PerfConfig = _section(PerfConfig, "speed switches")
    coopvae: CoopVAEConfig = _section(CoopVAEConfig, "CoopVAEBM (method coopvae)")
    drl: DRLConfig = _section(DRLConfig, "diffusion recovery likelihood (method drl)")
    dualmcmc: DualMCMCConfig = _section(DualMCMCConfig, "Dual-MCMC Teaching (method dualmcmc)")


# ---------------------------------------------------------------------------------------------------------
# Building and validating

require_bounds(Config)  # every int / float field has both bounds (engine/schema.py); a new one without is a bug


def validate(cfg: Config) -> Config:
    """Re-check a config built in code and the cross-field rules. Returns ``cfg``."""
    cfg = from_dict(to_dict(cfg))
    if cfg.diffusion.logsnr_min >= cfg.diffusion.logsnr_max:
        raise ConfigError(
            f"diffusion.logsnr_min = {cfg.diffusion.logsnr_min!r}: must be < diffusion.logsnr_max "
            f"({cfg.diffusion.logsnr_max!r})"
        )
    if cfg.optim.lr_scale_batch > 0:
        scale = cfg.train.batch_size / cfg.optim.lr_scale_batch
        for name in ("g_lr", "e_lr", "q_lr"):
            lr = getattr(cfg.optim, name)
            if lr * scale > 1.0:
                raise ConfigError(f"optim.{name} = {lr!r} scaled by train.batch_size / optim.lr_scale_batch = "
                                  f"{scale:g} is {lr * scale:g}: must stay <= 1")
    if cfg.model.ntemb % 2:
        raise ConfigError(f"model.ntemb = {cfg.model.ntemb!r}: must be even (sin and cos halves)")
    if cfg.data.source != "digits" and not cfg.data.root.strip():
        raise ConfigError(f"data.root = {cfg.data.root!r}: the {cfg.data.source} source needs the directory that "
                          "holds the data")
    for name in ("train_subdir", "test_subdir"):
        if not getattr(cfg.data, name).strip():
            raise ConfigError(f"data.{name} = '': needs a folder name (e.g. {name.split('_')[0]})")
    if not cfg.log.run_dir.strip():
        raise ConfigError("log.run_dir = '': needs a directory (e.g. runs/my_run)")
    if cfg.data.source == "mnist" and cfg.data.flip:
        raise ConfigError("data.flip = True: MNIST is never flipped (spec §3, anomaly script); set data.flip=false")
    if cfg.data.source == "digits" and cfg.model.arch != "digits":
        raise ConfigError(f"model.arch = {cfg.model.arch!r}: data.source 'digits' (8x8) needs model.arch 'digits'")
    if cfg.method == "coopvae" and cfg.model.arch not in COOPVAE_ARCHS:
        raise ConfigError(f"model.arch = {cfg.model.arch!r}: method coopvae has the networks of "
                          f"{', '.join(repr(a) for a in COOPVAE_ARCHS)} (engine/models/coopvae.py)")
    if cfg.method == "drl":
        d = cfg.drl
        if cfg.model.arch not in DRL_ARCHS:
            raise ConfigError(f"model.arch = {cfg.model.arch!r}: method drl has the networks of "
                              f"{', '.join(repr(a) for a in DRL_ARCHS)} (engine/models/drl.py)")
        if d.beta_start >= d.beta_end:
            raise ConfigError(f"drl.beta_start = {d.beta_start!r}: must be < drl.beta_end ({d.beta_end!r})")
        if d.recon_level > d.levels:
            raise ConfigError(f"drl.recon_level = {d.recon_level!r}: must be <= drl.levels ({d.levels!r})")
    if cfg.method == "dualmcmc" and cfg.model.arch not in DUALMCMC_ARCHS:
        raise ConfigError(f"model.arch = {cfg.model.arch!r}: method dualmcmc has the networks of "
                          f"{', '.join(repr(a) for a in DUALMCMC_ARCHS)} (engine/models/dualmcmc.py)")
    return cfg


def from_dict(data: dict[str, Any]) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(data).__name__}")
    return build(Config, data)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------------------------------------------------
# Files and overrides


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for i, k in enumerate(keys[:-1]):
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(keys[: i + 1])}: is a value, not a section; cannot set {dotted}")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=value"`` → ``("a.b", value)``; the value is read as YAML (``1e-4``, ``true``, ``[1, 2]``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part.strip() for part in key.split(".")):
        raise ConfigError(f"{show(text)}: an override must look like section.key=value (got an empty key)"
                          if sep else f"{show(text)}: an override must look like section.key=value")
    check_text(f"override {show(key)}", key)
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except YamlProblem as exc:
        raise ConfigError(f"{key} = {exc}") from None
    except (yaml.YAMLError, ValueError, RecursionError):
        value = raw
    return ".".join(part.strip() for part in key.split(".")), value


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read ``path`` (YAML; ``None`` = all defaults), apply ``a.b=value`` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        name = repr(str(p))
        if p.is_dir():
            raise ConfigError(f"config file {name}: is a directory; give a YAML file (e.g. configs/quickstart.yaml)")
        if not p.exists():
            raise ConfigError(f"config file {name}: not found")
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise ConfigError(f"config file {name}: cannot read it ({exc.strerror})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {name}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                              f"{exc.start}); save it as UTF-8") from None
        try:
            loaded = load_yaml(text)
        except YamlProblem as exc:
            raise ConfigError(f"config file {name}: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {name}: not valid YAML ({str(exc).splitlines()[0]})") from None
        except RecursionError:
            raise ConfigError(f"config file {name}: nested too deeply") from None
        data = loaded if loaded is not None else {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {name}: expected a mapping of sections at the top level, got "
                              f"{type(data).__name__}")
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    return validate(from_dict(data))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def describe_fields(section: Any = None, prefix: str = "") -> list[str]:
    """One line per config field: ``section.key = default  [allowed]  doc`` (what ``--show-config`` prints).

    ``section``: a config (or section) whose values are shown as the defaults; all defaults when None.
    """
    section = Config() if section is None else section
    lines: list[str] = []
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        path = f"{prefix}.{f.name}" if prefix else f.name
        tp, doc = hints[f.name], f.metadata.get("doc", "")
        value = getattr(section, f.name)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            lines.append(f"{path}:  {doc}" if doc else f"{path}:")
            lines += describe_fields(value, path)
            continue
        allowed = allowed_range(f.metadata) if tp in (int, float) else describe_type(tp)
        lines.append(f"  {path} = {value!r}  [{allowed}]  {doc}".rstrip())
    return lines


# Fields that may change when a run is resumed: they do not alter what the next iteration computes.
RESUMABLE_CHANGES = ("train.iterations", "train.on_divergence", "train.max_rollbacks", "log.", "eval.",
                     "system.", "perf.", "data.root", "data.download", "data.loader")


def resume_differences(saved: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts, except the ones a resume may change."""
    out = []
    for key in sorted(set(saved) | set(new)):
        path = f"{prefix}{key}"
        a, b = saved.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += resume_differences(a, b, path + ".")
        elif a != b and not any(path == r or (r.endswith(".") and path.startswith(r)) for r in RESUMABLE_CHANGES):
            out.append(f"{path} ({a!r} in the run, {b!r} now)")
    return out
