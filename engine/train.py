"""``python -m engine.train``: the training command; see :mod:`engine.run.train`."""

from engine.run.train import main

if __name__ == "__main__":
    raise SystemExit(main())
