"""The one exception type for mistakes a user can fix (a bad folder, file or argument).

main.py prints its message as a single line and exits non-zero; anything else that
escapes is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input; the message names the file or parameter and the fix.

    param: the Python parameter at fault, if any. The message then names parameters as Python
    spells them (`n_global=-3: must be an integer >= 0`), and the command line rewrites those
    names to its flags (`--n-global -3: ...`)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param
