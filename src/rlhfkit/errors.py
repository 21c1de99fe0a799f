"""User-facing errors.

Anything the user can fix (a bad option, a malformed data row, a missing folder) raises a
subclass of `RlhfkitError`. The command line prints its message on one line and exits with
code 2; a traceback is shown only with `--debug`.
"""

from __future__ import annotations


class RlhfkitError(Exception):
    """An error the user can fix; its message is one self-contained line."""


class ConfigError(RlhfkitError):
    """An invalid option: the message names the option and the allowed values."""


class DataError(RlhfkitError):
    """A malformed data file or row: the message names the file, the line and the field."""

    def __init__(self, path, line: int | None, field: str | None, problem: str):
        self.path, self.line, self.field, self.problem = str(path), line, field, problem
        where = self.path
        if line is not None:
            where += f":{line}"
        if field is not None:
            where += f": field '{field}'"
        super().__init__(f"{where}: {problem}")
