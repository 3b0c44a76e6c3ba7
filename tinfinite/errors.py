"""The one exception type for mistakes a user can fix (a bad folder, file or flag).

main.py prints its message as a single line and exits non-zero; anything else that
escapes is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input; the message names the file or flag and the fix."""
