"""The packet source of a live run: one NFQUEUE queue, polled in the daemon's loop."""

from __future__ import annotations

from .errors import DaemonError, QueueBusy


class NfqueueSource:
    """Binds an NFQUEUE queue; its fd is non-blocking and polled in the engine's loop.
    Binding is the first thing a run does: a second instance fails here, touching nothing."""

    def __init__(self, number: int, maxlen: int, callback, fail_open: bool = True):
        from netfilterqueue import NetfilterQueue

        from .queueflags import set_fail_open

        self.number = number
        try:
            self.nfq = NetfilterQueue()
        except OSError as exc:
            raise DaemonError(f"cannot open netfilter queue handle: {exc}") from None
        try:
            self.nfq.bind(number, callback, max_len=maxlen)
        except OSError:
            raise QueueBusy(f"queue {number} is already in use by another process "
                            f"(another p2pwall?); choose another with --queue") from None
        self.fd = self.nfq.get_fd()
        try:  # a full queue: accept unjudged (fail open) or drop, as [queue] overflow says
            set_fail_open(self.fd, number, fail_open)
        except OSError as exc:
            raise DaemonError(f"queue {number}: cannot set the overflow policy: {exc.strerror or exc}") from None

    def fileno(self) -> int:
        return self.fd

    def poll(self) -> None:
        self.nfq.run(block=False)

    def close(self) -> None:
        try:
            self.nfq.unbind()
        except Exception:  # closing must not hide the reason we stop
            pass
