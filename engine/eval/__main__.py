"""``python -m engine.eval``: see :mod:`engine.eval.cli`."""

from collections.abc import Callable

from engine.errors import entry_point


def _load() -> Callable[[], int]:
    from engine.eval.cli import main  # imports torch: inside entry_point's Ctrl-C guard

    return main


entry_point(_load)
