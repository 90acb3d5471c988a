"""The one error type the CLI turns into a one-line message and a non-zero exit."""


class AbpError(Exception):
    """A user-facing problem: the message names what is wrong and how to fix it, in one line."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run, carrying where it stopped and how to resume (the CLI prints it, exit 130)."""
