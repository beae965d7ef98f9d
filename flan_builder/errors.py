"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class FlanError(Exception):
    """Bad input from the user: the message names what is at fault and what to do."""

    exit_code = 2
