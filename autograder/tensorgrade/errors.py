"""The one error every `tensorgrade` command may raise for bad input from its command line."""


class UsageError(Exception):
    """Printed as ``error: <message>``, exit status 2."""
