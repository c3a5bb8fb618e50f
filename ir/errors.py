"""Errors with exit codes. Nothing below cli.py prints or exits: it raises one of these."""


class CompressGraphError(Exception):
    """Base error; ``exit_code`` is what the CLI returns, the message is one line for the user."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class UsageError(CompressGraphError):
    """Bad option, unknown pass or target, malformed pipeline text (exit 2)."""

    exit_code = 2


class ModelError(CompressGraphError):
    """Invalid or unsupported model (exit 3)."""

    exit_code = 3


class VerificationError(CompressGraphError):
    """A verification or accuracy budget was exceeded (exit 4)."""

    exit_code = 4


class TargetError(CompressGraphError):
    """Target build or tuning failed (exit 5). ``details``: what the compiler printed (kept out of the one line;
    the CLI saves it beside the output)."""

    exit_code = 5

    def __init__(self, message: str, details: str | None = None):
        super().__init__(message)
        self.details = details


class TimeoutExceeded(CompressGraphError):
    """The run or a pass exceeded its --timeout / --pass-timeout (exit 6); nothing is written."""

    exit_code = 6
