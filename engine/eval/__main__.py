"""``python -m engine.eval``: see :mod:`engine.eval.cli`."""

from engine.eval.cli import main

raise SystemExit(main())
