"""DAMC engine: latent-space EBM priors learned with Diffusion-Amortized MCMC."""

__version__ = "0.1.0"
