"""``python -m engine.train``: the training command; see :mod:`engine.run.train`."""

import os
import sys

try:
    from engine.run.train import main
except KeyboardInterrupt:  # Ctrl-C while torch is being imported: one line, like any other start-up interrupt
    print("error: interrupted (Ctrl-C) during start-up; no checkpoint, metrics or results were written",
          file=sys.stderr, flush=True)
    os._exit(130)  # see below: SystemExit could still end in a re-raised SIGINT

if __name__ == "__main__":
    code = main()
    if code == 130:
        # A Ctrl-C that landed inside an exec() (dataclass creation during a lazy torch import) sets CPython's
        # "unhandled KeyboardInterrupt" flag even though it was handled, and the interpreter would then end by
        # re-raising SIGINT at exit; leave with the status and the one line already printed instead.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)
