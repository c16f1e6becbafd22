"""``p2pwall run``: the queue, the rules and the loop that ties them to the engine.

Start order matters: the queue is bound first (a second instance fails there and touches
nothing), then the rules are installed; on SIGTERM/SIGINT, or after any error, the rules
are removed and the queue closed.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket

from . import rules
from .config import ConfigError, Settings
from .engine import DROP, Engine
from .plugins import DetectorSet
from .status import StatusServer

log = logging.getLogger("p2pwall.daemon")


class DaemonError(Exception):
    """A failure at run time (exit status 1)."""


class QueueBusy(DaemonError):
    pass


def lan_ifindexes(settings: Settings) -> set[int] | None:
    if not settings.lan_interfaces:
        return None
    found = set()
    for name in settings.lan_interfaces:
        try:
            found.add(socket.if_nametoindex(name))
        except OSError:
            raise ConfigError(f"[network] lan_interfaces: no interface named {name!r}") from None
    return found


class NfqueueSource:
    """Binds an NFQUEUE queue; its fd is non-blocking and polled in the engine's loop."""

    def __init__(self, number: int, maxlen: int, callback):
        from netfilterqueue import NetfilterQueue

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

    def fileno(self) -> int:
        return self.fd

    def poll(self) -> None:
        self.nfq.run(block=False)

    def close(self) -> None:
        try:
            self.nfq.unbind()
        except Exception:  # closing must not hide the reason we stop
            pass


class Daemon:
    def __init__(self, settings: Settings, detectors: DetectorSet, monitor: bool = False,
                 install_rules: bool = True):
        self.settings = settings
        self.detectors = detectors
        self.install_rules = install_rules
        self.lan_ifs = lan_ifindexes(settings)
        self.monitor = monitor
        if monitor:
            settings.kernel_sets = False  # monitor mode must never drop, not even in the kernel
        self.engine: Engine | None = None
        self._stop = False
        self._installed: list[int] = []
        self.kernel = None

    # the verdict path: parse, decide, verdict, nothing else
    def _callback(self, pkt) -> None:
        try:
            indev = pkt.indev
            from_lan = None if self.lan_ifs is None else indev in self.lan_ifs
            drop = self.engine.process_raw(pkt.get_payload(), pkt.hook, from_lan)[0]
        except Exception as exc:  # never leave a packet without a verdict
            self.engine.counters["engine_errors"] += 1
            log.error("event=engine_error error=%s: %s", type(exc).__name__, exc)
            drop = self.settings.fail_closed
        if drop is DROP:
            pkt.drop()
        else:
            pkt.accept()

    def _signal(self, signum, frame) -> None:
        self._stop = True

    def run(self) -> int:
        from .sender import RawSender

        source = status = sender = None
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno())
        old_handlers = {s: signal.signal(s, self._signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            sender = RawSender(self.settings.send_per_second, self.settings.send_per_client_per_second)
            self.engine = Engine(self.settings, self.detectors, sender=sender, monitor=self.monitor)
            source = NfqueueSource(self.settings.queue_number, self.settings.queue_maxlen, self._callback)
            if self.install_rules and self.settings.kernel_sets:
                self._create_sets()
            try:
                status = StatusServer(self.settings.status_socket, self.engine.snapshot)
            except OSError as exc:
                raise DaemonError(f"status socket: {exc}") from None
            if self.install_rules:
                self._install()
            log.info("event=started queue=%d detectors=%s monitor=%s pid=%d",
                     self.settings.queue_number, ",".join(self.detectors.names()),
                     str(self.monitor).lower(), os.getpid())
            self._loop(source, status, wake_r)
            log.info("event=stopping counters=%s", dict(self.engine.counters))
            return 0
        finally:
            self._uninstall()
            if self.kernel is not None:
                self.kernel.destroy()
            if source is not None:
                source.close()
            if status is not None:
                status.close()
            if sender is not None:
                sender.close()
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old_handlers.items():
                signal.signal(s, h)
            wake_r.close()
            wake_w.close()

    def _loop(self, source: NfqueueSource, status: StatusServer, wake) -> None:
        engine = self.engine
        watch = [source, status, wake]
        while not self._stop:
            wait = engine.next_timer()
            wait = 1.0 if wait is None else min(max(wait, 0.0), 1.0)
            try:
                ready, _, _ = select.select(watch, [], [], wait)
            except InterruptedError:
                continue
            if source in ready:
                try:
                    source.poll()
                except OSError as exc:
                    engine.counters["queue_errors"] += 1
                    log.warning("event=queue_error error=%s", exc)
                engine.flush()  # side effects after the verdicts
            if status in ready:
                status.serve_one()
            if wake in ready:
                try:
                    wake.recv(64)
                except BlockingIOError:
                    pass
            engine.tick()
            engine.flush()

    def _create_sets(self) -> None:
        from .kernelsets import KernelSetError, KernelSets

        if not KernelSets.available():
            raise DaemonError("ipset not found: install it, or set [queue] kernel_sets = false")
        kernel = KernelSets(self.settings.queue_number, self.settings.peer_max, self.settings.lock_max)
        self.kernel = kernel
        try:
            kernel.create()
        except KernelSetError as exc:
            raise DaemonError(str(exc)) from None
        self.engine.kernel = kernel

    def _install(self) -> None:
        d = self.detectors
        for family in (4, 6):
            rs = rules.build(self.settings, d.wants(), d.tcp_strings(), family, d.tcp_strings("tcp_payload_in"),
                             d.tcp_prefixes())
            if rs.empty:
                continue
            try:
                rules.install(rs)
            except rules.RulesError as exc:
                if family == 4:
                    raise DaemonError(str(exc)) from None
                log.warning("event=ipv6_rules_skipped error=%s", exc)
                continue
            self._installed.append(family)

    def _uninstall(self) -> None:
        while self._installed:
            rules.remove(self.settings.queue_number, self._installed.pop())
