"""``python -m engine.sample``: images from a trained run's prior or an exported sampler; see
:mod:`engine.export.sample`."""

from engine.export.sample import main

if __name__ == "__main__":
    raise SystemExit(main())
