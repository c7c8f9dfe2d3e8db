"""``python -m engine.export``: see :mod:`engine.export.cli`."""

from engine.export.cli import main

raise SystemExit(main())
