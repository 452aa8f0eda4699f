"""shelley's own error type.

Every failure a user can cause (bad path, bad config, bad corpus) is raised as a ``ShelleyError`` with a
one-line message that names the problem and the fix. The CLI prints it without a traceback and exits 2.
"""

from __future__ import annotations


class ShelleyError(Exception):
    """A user-facing error: one line, says what is wrong and what to do about it."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep it to one line whatever the caller passed: the CLI promises one-line errors.
        super().__init__(" ".join(message.split()))

    @property
    def message(self) -> str:
        return str(self)


class TrainingInterrupted(ShelleyError):
    """Ctrl-C or SIGTERM during training: a checkpoint was saved; the message says how to resume."""

    exit_code = 130
