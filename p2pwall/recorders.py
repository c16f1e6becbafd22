"""What the daemon keeps and tells besides its log: the history (``[history]``) and
the webhooks (``[notify]``), both fed from the observer thread (the engine's events) and
by the daemon itself (rules put back, the cluster down or up, start and stop).

Neither runs in monitor mode (a dry run writes and posts nothing); each worker of
``[queue] workers`` writes its own events to the same history file (SQLite serialises
the writers) and posts its own notifications.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter


def protocols(detectors) -> dict[str, str]:
    """Each detector's name -> the protocol it stops (its first), for the history's rows."""
    return {d.name: (d.info.protocols or [d.name])[0] for d in detectors.detectors}


def changed(old, new) -> bool:
    """Whether a reload changes [history] or [notify]."""
    return any(getattr(old, f.name) != getattr(new, f.name) for f in dataclasses.fields(new)
               if f.name.startswith(("history_", "notify_")))


class Recorders:
    def __init__(self, settings, protocols: dict[str, str], monitor: bool = False, worker: int = 0):
        self.history = self.notifier = None
        if monitor:
            return
        from .config import gateway_name

        gateway = gateway_name(settings, worker)
        if settings.history_file:
            from .history import History, HistoryError

            try:
                self.history = History(settings.history_file, settings.history_days, settings.history_max_events,
                                       gateway=gateway, protocols=protocols)
            except HistoryError as exc:  # another file where the history should be: the config's fault
                from .config import ConfigError

                raise ConfigError(f"[history] file: {exc}") from None
        if settings.notify_url:
            from .notify import Notifier

            self.notifier = Notifier(settings.notify_url, settings.notify_events, settings.notify_timeout,
                                     settings.notify_retries, gateway=gateway)

    def observers(self) -> list:
        """(name, function) pairs for the observer thread."""
        return [(name, r.observe) for name, r in (("history", self.history), ("notify", self.notifier)) if r]

    def tell(self, kind: str, **fields) -> None:
        """A daemon event (any thread): queued, never waited on."""
        now = time.time()
        for r in (self.history, self.notifier):
            if r is not None:
                r.add(kind, now, **fields)

    def counters(self) -> Counter:
        total = Counter()
        for r in (self.history, self.notifier):
            if r is not None:
                total.update(r.counters)
        return total

    def close_later(self) -> None:
        """``close`` on a thread of its own (a reload: the loop waits for no receiver)."""
        import threading

        threading.Thread(target=self.close, name="p2pwall-recorders-close", daemon=True).start()

    def close(self) -> None:
        for r in (self.history, self.notifier):
            if r is not None:
                r.close()
