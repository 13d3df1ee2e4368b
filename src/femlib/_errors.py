"""The workflow's error for input the user can fix (no imports: the command line needs it
before anything heavy is loaded, so that Ctrl-C at start-up is handled as at any time)."""


class UsageError(ValueError):
    """Bad input to the workflow that the user can fix: one line, exit status 2 in the CLI."""
