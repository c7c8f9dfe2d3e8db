"""``python -m engine.study``: the fidelity studies (every learner on the digits); see :mod:`engine.eval.study`."""

from engine.eval.study import main

if __name__ == "__main__":
    raise SystemExit(main())
