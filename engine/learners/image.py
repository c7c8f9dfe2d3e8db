"""What the image-space learners (CoopVAEBM, Dual-MCMC, DRL) share: the image-space chains of the run's perf plan,
the bf16 autocast of their networks' forward passes and the check of a requested sample kind.

A mixin of behaviour only: each learner's dataclass declares the ``chains`` and ``plan`` fields (starting at
:class:`~engine.runtime.image_chains.ReferenceImageChains` and :data:`~engine.runtime.perf.REFERENCE`) and its
``device``; :meth:`set_plan` is the one place the perf plan turns into chains (``perf`` switches: graphs, fused
update, compile, bf16; :func:`~engine.runtime.image_chains.build_image_chains`).
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import torch

from engine.learners.base import SampleKind
from engine.runtime.image_chains import ImageChains, build_image_chains
from engine.runtime.perf import PerfPlan

__all__ = ["ImageChainsMixin"]


class ImageChainsMixin:
    """``set_plan`` (the Learner protocol's), ``autocast`` and ``_check_kind`` for a learner whose MCMC runs in image
    space."""

    method: ClassVar[str]
    plan: PerfPlan
    chains: ImageChains

    @property
    def device(self) -> torch.device:
        raise NotImplementedError  # each learner's: where its networks live

    def sample_kinds(self) -> tuple[SampleKind, ...]:
        raise NotImplementedError  # each learner's (the Learner protocol's)

    def _check_kind(self, kind: str) -> None:
        """ValueError unless ``kind`` is one of the learner's sample kinds (the callers' CLIs check first)."""
        kinds = [k.name for k in self.sample_kinds()]
        if kind not in kinds:
            raise ValueError(f"sample kind {kind!r}: a {self.method} run draws {', '.join(kinds)}")

    def set_plan(self, plan: PerfPlan) -> None:
        self.plan = plan
        self.chains = build_image_chains(plan, self.device)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast for the networks' forward passes under ``perf.amp`` (losses and chain states stay fp32:
        each learner casts them back)."""
        if not self.plan.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)
