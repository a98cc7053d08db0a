"""The one rule for names a user gives that become a path or a MongoDB name: experiments
(directories, collection names), databases, splits (`splits.<name>` fields).

Letters, digits, '_' and '-', starting with a letter or digit, at most 63 characters: such
a name cannot leave its directory (`..`, `/`), cannot break a MongoDB database name (no
`/\\. "$`, under 64 bytes) or a field path (no `.`, no leading `$`), and reads the same in a
shell, a log and a collection listing. Checked where the name comes in, before anything is
written.
"""

from __future__ import annotations

import re

from connecto import ConnectoError

MAX_LENGTH = 63  # MongoDB database names are shorter than 64 bytes
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_-]{{0,{MAX_LENGTH - 1}}}")


class BadName(ConnectoError, ValueError):
    """A ConnectoError (one line from the CLI) that is also a ValueError, so a pydantic
    config reports it as the bad value of its key."""


def is_valid_name(value: str) -> bool:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def check_name(kind: str, value: str) -> str:
    """`value` if it follows the rule; else BadName naming `kind` (e.g. "experiment name")."""
    if not is_valid_name(value):
        raise BadName(
            f"{kind} {value!r}: expected letters, digits, '_' or '-', starting with a letter "
            f"or digit, at most {MAX_LENGTH} characters"
        )
    return value


def predictions_database_name(data_db: str) -> str:
    """Where the predictions on a data database go (synister's convention)."""
    return f"{data_db}_predictions"
