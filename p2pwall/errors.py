"""The daemon's run-time failures (the CLI maps them to exit statuses)."""


class DaemonError(Exception):
    """A failure at run time (exit status 1)."""


class QueueBusy(DaemonError):
    """The queue (or the status socket) belongs to another running instance (exit 2)."""
