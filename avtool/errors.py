"""The exceptions a user sees, and the exit code each one maps to.

Anything raised from these classes is printed by the CLI as one `error: ...` line (plus `hint: ...`
where one helps) without a traceback; any other exception is an internal error (exit 1).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_WEIGHTS = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT; SIGTERM gives 143 and SIGHUP 129, as shells report them


class AvtoolError(Exception):
    """Base of every user-facing failure."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class BadInput(AvtoolError):
    """An input file, option or output location the command cannot use."""

    exit_code = EXIT_BAD_INPUT


class NotAvailable(BadInput):
    """A subcommand or mode that this build does not provide."""


class WeightsError(AvtoolError):
    """Model weights that are missing, incomplete, corrupted or in an unknown layout."""

    exit_code = EXIT_WEIGHTS

    def __init__(self, message: str, hint: str | None = None, model: str | None = None) -> None:
        if hint is None and model is not None:
            hint = f"run: avtool download-weights {model}"
        super().__init__(message, hint)


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM, SIGHUP) turned into an exception, so every `finally` and every atomic
    output's clean-up runs on the way out. Exit code 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def stop_on_signals() -> None:
    """Raise Interrupted in the main thread on SIGTERM and SIGHUP (cron, systemd, Slurm, `timeout`), as on SIGINT."""
    import signal

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)
