"""Multi-GPU scaling (issue 16), skipped without 2 GPUs: ``python -m bench.ddp`` under pytest-benchmark.

One round per configuration (each is a torchrun job that warms up and times its own iterations between
synchronized barriers); the rows (it/s, weak and strong scaling, efficiency, sync=none vs flat) land in the
benchmark's ``extra_info`` and are printed.
"""

from __future__ import annotations

import pytest
import torch

from bench import ddp


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs >= 2 GPUs")
def test_scaling(benchmark) -> None:  # type: ignore[no-untyped-def]
    gpus = [n for n in (1, 2, 4, 8) if n <= torch.cuda.device_count()]
    parser_args = ["--gpus", ",".join(map(str, gpus)), "--iterations", "20", "--warmup", "5"]
    rows: list[dict[str, object]] = []

    def once() -> None:
        rows.clear()
        ns = ddp.parse(parser_args)
        rows.extend(ddp.run(ns))

    benchmark.pedantic(once, rounds=1, iterations=1)
    benchmark.extra_info["rows"] = rows
    assert rows and all(r["it_per_s"] > 0 for r in rows)
