"""The base of every error a user can cause; the CLI turns it into one line and exit code 2."""


class UserError(ValueError):
    """Bad input or a request that cannot be met; the message names the file and the problem."""
