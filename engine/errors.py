"""The one error path of every command: an expected failure is one line on stderr and a non-zero exit.

Expected failures are bad input (a config value, an argument, a data file, a checkpoint), the machine (no
GPU, not enough memory, a full or read-only disk) and the user (Ctrl-C during start-up). They surface as a
:class:`UserError` (or an ``OSError`` / ``KeyboardInterrupt`` / out-of-memory error raised by the library
underneath), and :func:`run_cli` turns each into ``error: <one line>`` and an exit status. Anything else is a
bug and keeps its traceback.

Exit statuses: 2 bad input (nothing was written), 1 the run stopped on purpose or the machine failed it
(divergence, disk full; the message names what is intact), 130 interrupted before training began.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

_STARTUP_INTERRUPT = "interrupted (Ctrl-C) during start-up; no checkpoint, metrics or results were written"

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "EXIT_STOPPED", "OneLineParser", "UserError", "describe_os_error",
           "entry_point", "one_line", "run_cli"]

EXIT_BAD_INPUT = 2
EXIT_STOPPED = 1
EXIT_INTERRUPTED = 130

_MAX_CHARS = 2000  # a message longer than this is cut (a pathological value repeated in it, say)


class UserError(Exception):
    """An expected failure whose message is one line naming what is wrong and what is allowed."""

    exit_code = EXIT_BAD_INPUT


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space, at most 2,000 chars."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= _MAX_CHARS else flat[: _MAX_CHARS - 3] + "..."


def describe_os_error(exc: OSError) -> str:
    """``'<file>: No space left on device (disk full)'``: the file, the cause, and a hint for the usual ones."""
    cause = exc.strerror or (os.strerror(exc.errno) if exc.errno else "") or type(exc).__name__
    hint = {errno.ENOSPC: " (disk full)", errno.EDQUOT: " (disk quota exceeded)"}.get(exc.errno or 0, "")
    where = exc.filename if exc.filename is not None else ""
    return f"{where}: {cause}{hint}" if where else f"{cause}{hint}"


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def run_cli(body: Callable[[], int], *, expected: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``body`` and return its exit status; every expected failure becomes one ``error:`` line.

    ``expected`` adds exception types (besides :class:`UserError`) whose message is already one clear line
    (exit status 2).
    """
    try:
        return body()
    except SystemExit as exc:  # argparse: --help (0) or a usage error already printed as one line (2)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    except UserError as exc:
        _error(str(exc))
        return exc.exit_code
    except expected as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # the training loop handles its own; this is start-up (loading, checking)
        _error(_STARTUP_INTERRUPT)
        return EXIT_INTERRUPTED
    except OSError as exc:
        _error(describe_os_error(exc))
        return EXIT_STOPPED
    except (MemoryError, RuntimeError) as exc:
        if not _is_out_of_memory(exc):
            raise
        _error(f"out of memory ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); lower the sizes "
               "that decide memory (train.batch_size, eval.n_samples, model widths) or use a larger machine")
        return EXIT_STOPPED


def _error(message: str) -> None:
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)


class OneLineParser(argparse.ArgumentParser):
    """``argparse`` whose usage errors are one ``error:`` line (argparse prints the usage block first)."""

    def error(self, message: str) -> NoReturn:
        _error(f"{message} (see {self.prog} --help)")
        raise SystemExit(EXIT_BAD_INPUT)


def entry_point(load_main: Callable[[], Callable[[], int]]) -> NoReturn:
    """A ``python -m`` entry: import the command (``load_main``, which imports torch), run it, exit with its status.

    A Ctrl-C while torch is being imported is one line too. Status 130 leaves through ``os._exit``: a Ctrl-C that
    landed inside an exec() (dataclass creation during a lazy torch import) sets CPython's "unhandled
    KeyboardInterrupt" flag even though it was handled, and the interpreter would then end by re-raising SIGINT at
    exit; the status and the one line already printed are what the user gets instead.

    The import may also swallow the KeyboardInterrupt: torch's C++ NumPy initialisation clears any error it meets
    (seen with torch 2.11.0+cu130: a Ctrl-C 0.3 s in left NumPy half-imported, and the run failed later with an
    AttributeError traceback). So a Ctrl-C during the import is remembered, whatever became of its exception.
    """
    interrupted = False

    def on_sigint(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        main = load_main()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
    if interrupted:
        _error(_STARTUP_INTERRUPT)
        os._exit(EXIT_INTERRUPTED)
    code = main()
    if code == EXIT_INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)
