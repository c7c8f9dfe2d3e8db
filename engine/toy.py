"""``python -m engine.toy``: the toy posterior experiment; see :mod:`engine.eval.toy`."""

from engine.eval.toy_study import main

if __name__ == "__main__":
    raise SystemExit(main())
