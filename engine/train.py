"""``python -m engine.train``: the training command; see :mod:`engine.run.train`."""

from collections.abc import Callable

from engine.errors import entry_point


def _load() -> Callable[[], int]:
    from engine.run.train import main  # imports torch: inside entry_point's Ctrl-C guard

    return main


if __name__ == "__main__":
    entry_point(_load)
