"""The two ways a command ends early, shared by every front end (the command line, the
service, the library's sessions): `Usage` (exit 2, with the verb's usage text) and `Failed`
(exit 1, or its `code`). Kept apart from the command line so that the layers below it can
raise them without importing it."""
from __future__ import annotations


class Usage(Exception):
    """Bad usage: `message` (may be empty) then the verb's usage text, exit 2."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class Failed(Exception):
    """The command failed; the message was already printed or is carried here. Exit 1."""

    def __init__(self, message: str = "", code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
