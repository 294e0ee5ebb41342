"""The one exception type for mistakes a user can fix (bad input, bad config, missing files).

The CLI prints these as one line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class FastFTError(Exception):
    """A problem with the user's input, config or files; the message says what to fix."""
