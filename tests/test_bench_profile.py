"""bench.profile on a CPU (the code path the GPU run takes, smoke sizes): the report, a failing phase, the timeline."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.autograd import DeviceType

from bench import profile


def test_profiles_a_phase_on_the_cpu(tmp_path: Path) -> None:
    rc = profile.main(["--out", str(tmp_path), "--device", "cpu", "--sizes", "smoke", "--phases", "prior_chain"])
    assert rc == 0
    text = (tmp_path / "profile_prior_chain.txt").read_text()
    assert text.startswith("# prior_chain:")
    rows = [line for line in text.splitlines() if not line.startswith("#")][1:]
    assert rows and all("%" in r for r in rows)  # ops with their share of the call


def test_a_failing_phase_is_reported_and_the_others_still_run(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real = profile.build_fast

    def build(cfg, device, wanted):  # type: ignore[no-untyped-def]
        if wanted == ["posterior_chain"]:
            raise AssertionError("expected size 1024==1024, stride 64==1 at dim=1\nmore")
        return real(cfg, device, wanted)

    monkeypatch.setattr(profile, "build_fast", build)
    rc = profile.main(["--out", str(tmp_path), "--device", "cpu", "--sizes", "smoke",
                       "--phases", "posterior_chain,prior_chain"])
    assert rc == 1
    assert (tmp_path / "profile_posterior_chain.txt").read_text() == \
        "# posterior_chain: FAILED: AssertionError: expected size 1024==1024, stride 64==1 at dim=1\n"
    assert (tmp_path / "profile_prior_chain.txt").read_text().startswith("# prior_chain:")


def test_bad_arguments_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert profile.main(["--out", str(tmp_path), "--device", "cpu", "--phases", "nope"]) == 2
    assert "unknown phase" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert profile.main(["--out", str(tmp_path)]) == 2
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert profile.main(["--out", str(blocker / "sub"), "--device", "cpu", "--phases", "prior_chain"]) == 2
    assert "cannot use --out" in capsys.readouterr().err


def test_timeline_counts_busy_time_and_span() -> None:
    def ev(kind: DeviceType, start: int, end: int) -> SimpleNamespace:
        return SimpleNamespace(device_type=kind, time_range=SimpleNamespace(start=start, end=end))

    # three kernels of 2, 3 and 5 µs over a 20 µs span; the CPU op and the empty record do not count
    events = [ev(DeviceType.CPU, 0, 100), ev(DeviceType.CUDA, 10, 12), ev(DeviceType.CUDA, 15, 18),
              ev(DeviceType.CUDA, 25, 30), ev(DeviceType.CUDA, 40, 40)]
    t = profile.timeline(events)
    assert t == {"kernels": 3.0, "busy_us": 10.0, "span_us": 20.0, "median_kernel_us": 3.0}
    assert profile.timeline([ev(DeviceType.CPU, 0, 5)]) is None
