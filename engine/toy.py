"""``python -m engine.toy``: the toy posterior experiment; see :mod:`engine.eval.toy.experiment`."""

from engine.eval.toy.study import main

if __name__ == "__main__":
    raise SystemExit(main())
