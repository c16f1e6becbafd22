"""``p2pwall run``: the composition root that ties the queue, the rules, the ledger's
mirrors and the loop to the engine.

Start order matters: the queue is bound first (a second instance fails there and touches
nothing: no rule, no set, no state file of the running one); then leftovers of a crashed
run on this queue are removed, the kernel sets created, saved state restored, and the
rules installed.  On SIGTERM/SIGINT, or after any error, state is saved, the rules and
sets removed and the queue closed.  SIGHUP re-reads the configuration and applies all of
it (rules and p2pwall's nft table re-rendered, the table refilled from the ledger) or,
for the keys only a restart can apply (:func:`p2pwall.config.restart_only`), refuses it
and keeps the running one.

Monitor mode is a dry run: every verdict is accept, the ledger's only mirror is
:class:`~p2pwall.mirrors.DryRun`, spoofs and probes are not sent, and the state file is
neither read nor written, so a later real run enforces nothing a monitor run learned.

The parts live in their own modules: the queue (:mod:`p2pwall.nfqsource`), the LAN
(:mod:`p2pwall.lan`), the control protocol (:mod:`p2pwall.control`), the background
watches (:mod:`p2pwall.watch`), the cluster link (:mod:`p2pwall.cluster`).

Why one module past 400 lines: the start order, the loop, reload and shutdown are one
sequence whose order matters; each part it composes lives in its own module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import select
import signal
import socket
import time

from . import nftables, rules
from . import state as state_mod
from .config import ConfigError, Settings, restart_only
from .control import Control
from .engine import Engine
from .errors import DaemonError, QueueBusy  # (the CLI imports them from here too)
from .events import emit
from .lan import interface_networks, lan_ifindexes, with_lan
from .mirrors import DryRun, KernelMirror
from .nfqsource import NfqueueSource
from .observers import ObserverThread
from .plugins import DetectorSet
from .policy import QueuePolicy
from .recorders import Recorders, changed as recorders_changed, protocols as detector_protocols
from .sdnotify import Notifier
from .status import StatusServer
from .watch import OverloadWatch, Watcher

log = logging.getLogger("p2pwall.daemon")
RULES_CHECK_SECONDS = 2.0  # how often the kernel is checked for what p2pwall installed


class Daemon:
    def __init__(self, settings: Settings, detectors: DetectorSet, monitor: bool = False,
                 install_rules: bool = True, reload=None, worker: int = 0):
        """``reload()`` returns fresh (settings, detectors) for SIGHUP, or raises.
        ``worker`` > 0 makes this a worker process: queue ``number + worker``, its own
        status socket and state file (suffix ``.worker``), no rules of its own."""
        self.worker = worker
        self._children: list = []
        if monitor:  # monitor mode must never drop, not even in the kernel
            settings = dataclasses.replace(settings, kernel_sets=False)
        from .preflight import check

        for warning in ([] if worker else check(settings)):  # check-config's checks, the same
            emit(log, logging.WARNING, "config_warning", warning=warning)
        self.lan_ifs = lan_ifindexes(settings)
        settings = with_lan(settings)
        self.settings = settings
        self.detectors = detectors
        self.policy = QueuePolicy.build(settings, detectors)
        self.install_rules = install_rules
        self.monitor = monitor
        self.reload = reload
        self.engine: Engine | None = None
        self.kernel = None
        self.cluster = None
        self.ready: int | None = None  # a worker's pipe to say it is bound and running
        self._stop = False
        self._hup = False
        self._installed: list[int] = []
        self._rules_text = ""
        self._saved_at = time.monotonic()
        self._missing: list[str] | None = None  # what the rules check found gone (watch thread)
        self._rule_changes = 0  # how many times the loop changed the rules (the check compares)
        self._changing_rules = 0  # > 0 while it does
        self.notifier = Notifier()  # systemd's Type=notify and watchdog (nothing without systemd)
        self._pinged = 0.0
        self.recorders = None  # the history and [notify], once the queue is held
        self._owns_state = False  # set once this run holds its queue and socket: only then is the file its own
        self.overload = OverloadWatch(settings, self._installed, worker)
        if settings.user:  # paths it must keep writing, checked before anything is touched
            from .privileges import PrivilegeError

            try:
                self._owned_paths()
            except PrivilegeError as exc:
                raise ConfigError(str(exc)) from None

    # the verdict path: parse, decide, verdict, nothing else
    def _callback(self, pkt) -> None:
        try:
            drop = self.engine.process_raw(pkt.get_payload(), pkt.hook, pkt.indev in self.lan_ifs, pkt).drop
        except Exception as exc:  # never leave a packet without a verdict
            self.engine.counters["engine_errors"] += 1
            emit(log, logging.ERROR, "engine_error", error=f"{type(exc).__name__}: {exc}")
            drop = self.settings.fail_closed
        if drop:
            pkt.drop()
        else:
            pkt.accept()

    def _signal(self, signum, frame) -> None:
        if signum == signal.SIGHUP:
            self._hup = True
        else:
            self._stop = True

    def run(self) -> int:
        from .sender import RawSender

        source = status = sender = metrics = observers = None
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno())
        old_handlers = {s: signal.signal(s, self._signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            if not self.worker and self.settings.workers > 1:
                from .workers import spawn

                self._children = spawn(self._worker, range(1, self.settings.workers),
                                       self.settings.status_socket)  # before binding anything
            if self.monitor:
                from .sender import DrySender

                sender = DrySender()
            else:
                sender = RawSender(self.settings.send_per_second, self.settings.send_per_client_per_second)
            observers = ObserverThread(self.detectors.impls("p2pwall_event"))
            self.engine = Engine(self.settings, self.detectors, sender=sender, monitor=self.monitor,
                                 mirrors=[DryRun()] if self.monitor else [], observer_thread=observers)
            self._set_onlink()
            source = NfqueueSource(self.settings.queue_number + self.worker, self.settings.queue_maxlen,
                                   self._callback, fail_open=self.settings.overflow == "accept")
            try:
                status = StatusServer(self._status_path(), self.settings.status_group)
            except OSError as exc:  # another instance's socket: a usage error, as a busy queue is
                raise (QueueBusy if "in use" in str(exc) else DaemonError)(f"status socket: {exc}") from None
            self._owns_state = not self.monitor
            self._take_recorders(Recorders(self.settings, detector_protocols(self.detectors), self.monitor,
                                           self.worker))
            if self.worker:
                return self._run_worker(source, status, wake_r)
            if self.settings.metrics_listen:
                from .metrics import MetricsServer

                try:
                    metrics = MetricsServer(self.settings.metrics_listen)
                except OSError as exc:
                    raise DaemonError(f"metrics on {self.settings.metrics_listen}: {exc.strerror or exc}") from None
            if self.install_rules:
                for family in (4, 6):  # leftovers of a crashed run on this queue
                    rules.remove(self.settings.queue_number, family)
                if self.settings.kernel_sets:
                    self._create_sets()
            self._restore_state()
            self._start_cluster()
            if self._children:
                from .workers import WorkerError, wait_ready

                try:
                    wait_ready(self._children)
                except WorkerError as exc:
                    raise DaemonError(str(exc)) from None
            if self.install_rules:
                self._install()
            if self.settings.user:
                from .privileges import drop_privileges

                drop_privileges(self.settings.user, keep_paths=self._owned_paths())
            emit(log, logging.INFO, "started", queue=self.settings.queue_number,
                 detectors=",".join(self.detectors.names()), monitor=self.monitor, pid=os.getpid())
            self.recorders.tell("started", reason=",".join(self.detectors.names()))
            self.notifier.send(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=filtering on queue {self.settings.queue_number}")
            self._loop(source, status, wake_r, metrics)
            emit(log, logging.INFO, "stopping", counters=_flat(self.engine.all_counters()))
            self.notifier.send("STOPPING=1")
            return 0
        finally:
            if self._children:
                from .workers import stop_all

                stop_all(self._children)
            if self.cluster is not None:
                self.cluster.stop()
            if observers is not None:
                observers.stop()
            if self.recorders is not None:
                if self._owns_state:
                    self.recorders.tell("stopped")
                self.recorders.close()
            self._save_state()
            self._uninstall()
            if self.kernel is not None:
                self.kernel.destroy()
            for closable in (source, status, sender, metrics):
                if closable is not None:
                    closable.close()
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old_handlers.items():
                signal.signal(s, h)
            wake_r.close()
            wake_w.close()

    def _worker(self, index: int) -> "Daemon":
        """The Daemon a forked worker process runs (see workers.py)."""
        return Daemon(self.settings, self.detectors, monitor=self.monitor, install_rules=False,
                      reload=self.reload, worker=index)

    def _run_worker(self, source, status, wake) -> int:
        """A worker: the shared kernel sets, its own queue, tables and state file."""
        if self.settings.kernel_sets and not self.monitor:
            from .kernelsets import KernelSets

            self.kernel = KernelSets(self.policy)
            self.kernel.attach()
            self.engine.ledger.mirrors.append(KernelMirror(self.kernel))
        self._restore_state()
        self._start_cluster()
        if self.settings.user:
            from .privileges import drop_privileges

            drop_privileges(self.settings.user, keep_paths=self._owned_paths())
        if self.ready is not None:
            os.write(self.ready, b"ok\n")
            os.close(self.ready)
            self.ready = None
        self._loop(source, status, wake, None)
        return 0

    def _status_path(self) -> str:
        return self.settings.status_socket + (f".{self.worker}" if self.worker else "")

    def _snapshot(self) -> dict:
        snap = self.engine.snapshot(wall=time.time())
        snap["queue"] = self.settings.queue_number + self.worker
        snap["pid"] = os.getpid()
        if not self.worker:
            snap["rules"] = self._rules_text
        snap["queue_health"] = dict(self.overload.figures)
        snap["lan"] = {"interfaces": list(self.settings.lan_interfaces), "networks": list(self.settings.lan_networks),
                       "allow": list(self.settings.allow), "protect": list(self.settings.protect)}
        if self.cluster is not None:
            snap["cluster"] = self.cluster.status()
        if self.recorders is not None:  # history_written/_dropped/_failed, notify_sent/_dropped/_failed
            snap["counters"].update(self.recorders.counters())
        if self._children:
            from .workers import merge

            snap = merge(snap, self._children)
        return snap

    def _loop(self, source: NfqueueSource, status: StatusServer, wake, metrics) -> None:
        watches = [(2.0, self.overload), (1.0, self._read_neighbours)]
        if self.install_rules and not self.worker:
            watches.append((RULES_CHECK_SECONDS, self._check_rules))
        watcher = Watcher(watches).start()
        try:
            self._serve(source, status, wake, metrics)
        finally:
            watcher.stop()

    def _read_neighbours(self) -> None:
        neighbours = self.engine.evidence.neighbours
        if neighbours is None:
            return
        neighbours.reload()
        if self.kernel is not None:  # the per-host bound's stations (the main process's own sets)
            self.kernel.sync_stations(neighbours.table())

    # ---------------------------------------------------------------- self-healing
    def _check_rules(self) -> None:
        """The watch thread: is everything p2pwall installed still in the kernel?  A
        firewall reload (``systemctl restart nftables`` flushes the ruleset) or an
        ``iptables -F`` takes it away; what is missing is put back by the loop."""
        changes = self._rule_changes
        if self._changing_rules:
            return  # the loop is installing or removing them right now
        gone = list(self.kernel.missing()) if self.kernel is not None else []
        for rs in rules.rule_sets(self.policy):
            if not rs.empty and rs.family in self._installed:
                gone += rules.missing(rs)
        if gone and changes == self._rule_changes:  # not a reload's own work seen half done
            self._missing = gone

    def _restore_rules(self) -> None:
        """Put back what a firewall reload took away (in the loop, between verdicts): the
        rules, the sets, and every live entry of the ledger in them."""
        missing, self._missing = self._missing, None
        with self._rules_changing():
            self._put_back(missing)

    def _put_back(self, missing: list[str]) -> None:
        self._uninstall()
        if self.kernel is not None:
            from .kernelsets import KernelSetError

            try:
                self.kernel.create(self.kernel.families or (4, 6))
            except KernelSetError as exc:
                emit(log, logging.ERROR, "rules_restore_failed", error=str(exc)[:300])
            self.engine.ledger.render(KernelMirror(self.kernel))
            self.engine.flush()
        try:
            self._install()
        except DaemonError as exc:
            emit(log, logging.ERROR, "rules_restore_failed", error=str(exc)[:300])
            return
        self.engine.counters["rules_restored"] += 1
        emit(log, logging.WARNING, "rules_restored", missing=", ".join(missing)[:500],
             entries=len(self.engine.peers) + len(self.engine.locks))
        self.recorders.tell("rules_restored", reason=", ".join(missing)[:500])

    def _serve(self, source: NfqueueSource, status: StatusServer, wake, metrics) -> None:
        engine = self.engine
        cluster = self.cluster
        watch = [source, status, wake] + [x for x in (metrics, cluster) if x is not None]
        while not self._stop:
            wait = engine.next_timer()
            wait = 1.0 if wait is None else min(max(wait, 0.0), 1.0)
            if cluster is not None and cluster.inbox:
                wait = min(wait, 0.05)  # more remote entries wait for their turn
            try:
                ready, _, _ = select.select(watch, [], [], wait)
            except InterruptedError:
                continue
            if source in ready:
                try:
                    source.poll()
                except OSError as exc:
                    engine.counters["queue_errors"] += 1
                    emit(log, logging.WARNING, "queue_error", error=str(exc))
                engine.flush()  # side effects after the verdicts
            if status in ready:
                status.serve_pending(self.control.answer)
            if metrics is not None and metrics in ready:
                metrics.serve_pending(self.control.answer)
            if cluster is not None and cluster.apply_pending(engine.ledger, publish=not self.monitor):
                engine.flush()
            if wake in ready:
                try:
                    wake.recv(64)
                except BlockingIOError:
                    pass
            if self._missing:
                self._restore_rules()
            if self._hup:
                self._hup = False
                for child in self._children:
                    child.signal(signal.SIGHUP)
                self._reload()
            engine.tick()
            engine.flush()
            if self.notifier.watchdog and time.monotonic() - self._pinged >= self.notifier.watchdog:
                self._pinged = time.monotonic()  # the loop is alive: the verdicts are being given
                self.notifier.send("WATCHDOG=1")
            if time.monotonic() - self._saved_at >= self.settings.state_save_seconds:
                self._save_state()

    def _set_onlink(self) -> None:
        from .addresses import AddressSet
        from .neighbours import Neighbours

        self.engine.onlink = AddressSet(interface_networks(self.settings.lan_interfaces))
        neighbours = self.engine.evidence.neighbours
        if neighbours is None:
            neighbours = Neighbours(self.settings.lan_interfaces)
        else:  # a reload: the stations keep their standing
            neighbours.interfaces = set(self.settings.lan_interfaces)
            neighbours.reload()
        self.engine.evidence.neighbours = neighbours
        self.engine.ledger.station = neighbours.station

    @property
    def control(self) -> Control:
        return Control(self.engine, self.settings, self._snapshot, self._save_state, self._children)

    # ---------------------------------------------------------------- cluster
    def _start_cluster(self) -> None:
        if not self.settings.cluster_url:
            return
        from .cluster import Cluster, ClusterError

        try:
            self.cluster = Cluster(self.settings, self.worker)
        except ClusterError as exc:
            raise DaemonError(str(exc)) from None
        self.cluster.tell = lambda kind, **fields: self.recorders.tell(kind, **fields)  # whichever are current
        if not self.monitor:  # a dry run tells the other gateways nothing
            self.engine.ledger.mirrors.append(self.cluster)
        self.cluster.start()

    # ---------------------------------------------------------------- reload
    def _reload(self) -> None:
        if self.reload is None:
            return
        try:
            settings, detectors = self.reload()
            fixed = restart_only()
            changed = [fixed[k] for k in fixed if getattr(settings, k) != getattr(self.settings, k)]
            if changed:
                raise ConfigError(f"{', '.join(changed)} cannot change without a restart")
            lan_ifs = lan_ifindexes(settings)
            settings = with_lan(settings)
            fresh = None
            if self.recorders is not None and recorders_changed(self.settings, settings):
                fresh = Recorders(settings, detector_protocols(detectors), self.monitor, self.worker)
        except Exception as exc:  # any problem: keep running as we are
            emit(log, logging.ERROR, "reload_rejected", error=str(exc))
            return
        if fresh is not None:  # [history] or [notify] changed: the new ones take over; the old ones
            self.recorders.close_later()  # finish what they hold off the loop
            self._take_recorders(fresh)
        if self.monitor:
            settings = dataclasses.replace(settings, kernel_sets=False)
        policy = QueuePolicy.build(settings, detectors)
        old_table = nftables.nft_table(self.policy)
        self.settings, self.detectors, self.lan_ifs = settings, detectors, lan_ifs
        self.overload.settings = settings
        self.engine.reconfigure(settings, detectors)  # purges what the new settings forbid
        self._set_onlink()
        with self._rules_changing():
            if self.kernel is not None:
                self.kernel.resize(policy, self.engine.ledger.live_entries())
                if nftables.nft_table(policy) != old_table and self.kernel.remake_table():
                    self.engine.ledger.render(KernelMirror(self.kernel))  # on the new interfaces and marks
                self.engine.flush()
            old_text, self.policy = self._rules_text, policy
            if self.install_rules and rules.iptables_text(policy) != old_text:
                self._uninstall()
                self._install()
        emit(log, logging.INFO, "reloaded", detectors=",".join(detectors.names()),
             peers=len(self.engine.peers), locks=len(self.engine.locks))

    def _take_recorders(self, recorders: Recorders) -> None:
        """The history and webhooks in use from now on, fed by the observer thread."""
        self.recorders = recorders
        if self.engine.observer_thread is not None:
            self.engine.observer_thread.builtin = recorders.observers()

    # ---------------------------------------------------------------- state
    def _restore_state(self) -> None:
        if not self.settings.state_file or not self._owns_state:
            return
        path = self._state_path()
        try:
            saved = state_mod.load(path)
        except state_mod.StateError as exc:
            try:
                aside = state_mod.set_aside(path)
            except OSError:
                aside = "(could not move it)"
            emit(log, logging.WARNING, "state_corrupt", error=str(exc), set_aside=aside)
            return
        if saved:
            count = self.engine.ledger.restore(saved)
            self.engine.flush()
            emit(log, logging.INFO, "state_restored", entries=count, file=path)

    def _state_path(self) -> str:
        return self.settings.state_file + (f".{self.worker}" if self.worker else "")

    def _save_state(self) -> None:
        self._saved_at = time.monotonic()
        if not self.settings.state_file or self.engine is None or not self._owns_state:
            return  # a dry run's, or a run that never got its queue: the file is not its own
        try:
            state_mod.save(self._state_path(), self.engine.ledger.records())
        except OSError as exc:
            emit(log, logging.WARNING, "state_save_failed", file=self.settings.state_file, error=str(exc))

    def _owned_paths(self) -> list[str]:
        """The files the daemon writes after dropping root, each checked to live in a
        directory of p2pwall's own (a clear error otherwise, before anything changes)."""
        from .privileges import own_directory

        paths = [self._status_path()]
        if self.settings.history_file and not self.monitor:
            own_directory(self.settings.history_file, "[history] file")
            paths += [self.settings.history_file + s for s in ("", "-wal", "-shm")]
        own_directory(paths[0], "[status] socket")
        if self.settings.state_file:
            own_directory(self.settings.state_file, "[state] file")
            paths.append(self._state_path())
        return paths

    # ---------------------------------------------------------------- rules
    def _create_sets(self) -> None:
        from .kernelsets import KernelSetError, KernelSets

        if not KernelSets.available():
            raise DaemonError("ipset or nft not found: install ipset and nftables, "
                              "or set [queue] kernel_sets = false")
        kernel = KernelSets(self.policy)
        self.kernel = kernel
        leftovers = kernel.leftovers()  # a crashed run's entries, before the sets are made anew
        try:
            kernel.create()
        except KernelSetError as exc:
            raise DaemonError(str(exc)) from None
        self.engine.ledger.mirrors.append(KernelMirror(kernel))
        taken = self.engine.restore_kernel(leftovers)
        if taken:
            self.engine.flush()
            emit(log, logging.INFO, "kernel_sets_recovered", entries=taken)

    def _install(self) -> None:
        """Install the policy's rules; what was installed is what ``status`` shows and
        what ``p2pwall rules`` prints for the same configuration."""
        with self._rules_changing():
            self._install_rule_sets()

    def _install_rule_sets(self) -> None:
        for rs in rules.rule_sets(self.policy):
            if rs.empty:
                continue
            try:
                rules.install(rs)
            except rules.RulesError as exc:
                if rs.family == 4:
                    raise DaemonError(str(exc)) from None
                emit(log, logging.WARNING, "ipv6_rules_skipped", error=str(exc))
                continue
            self._installed.append(rs.family)
        self._rules_text = rules.iptables_text(self.policy)

    def _uninstall(self) -> None:
        with self._rules_changing():
            while self._installed:
                rules.remove(self.settings.queue_number, self._installed.pop())

    @contextlib.contextmanager
    def _rules_changing(self):
        """The loop changes p2pwall's rules or sets: the watch thread's check neither runs
        meanwhile nor keeps what it saw across it (a reload's own work is no firewall's)."""
        self._changing_rules += 1
        self._rule_changes += 1
        try:
            yield
        finally:
            self._rule_changes += 1
            self._changing_rules -= 1


def _flat(counters) -> str:
    return ",".join(f"{k}:{v}" for k, v in sorted(counters.items()))
