"""Named sets of words (a run's actions, a certificate's states) that print as the plain word.

Python 3.11's `enum.StrEnum`, for 3.10: a member is a `str` equal to its value, so JSON output,
log lines and comparisons with the word stay exactly what they were when they were strings.
"""

import enum


class StrEnum(str, enum.Enum):
    """Members are their value in `str()`, f-strings, `%s` and `json.dumps`."""

    def __str__(self) -> str:
        return str.__str__(self)
