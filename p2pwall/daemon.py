"""``p2pwall run``: the queue, the rules and the loop that ties them to the engine.

Start order matters: the queue is bound first (a second instance fails there and touches
nothing); then leftovers of a crashed run on this queue are removed, the kernel sets
created, saved state restored, and the rules installed.  On SIGTERM/SIGINT, or after any
error, state is saved, the rules and sets removed and the queue closed.  SIGHUP re-reads
the configuration; a bad one is rejected and the running one kept.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import select
import signal
import socket
import time

from . import rules
from . import state as state_mod
from .config import ConfigError, Settings
from .engine import Engine
from .events import emit
from .plugins import DetectorSet
from .policy import QueuePolicy
from .status import StatusServer

log = logging.getLogger("p2pwall.daemon")


class DaemonError(Exception):
    """A failure at run time (exit status 1)."""


class QueueBusy(DaemonError):
    pass


def lan_ifindexes(settings: Settings) -> set[int]:
    if not settings.lan_interfaces:
        raise ConfigError("[network] lan_interfaces is required: name the interfaces that face the LAN "
                          "(only what arrives on them is filtered, and spoofs go only to their hosts)")
    found = set()
    for name in settings.lan_interfaces:
        try:
            found.add(socket.if_nametoindex(name))
        except OSError:
            raise ConfigError(f"[network] lan_interfaces: no interface named {name!r}") from None
    return found


def interface_networks(names) -> list[str]:
    """The networks of the addresses configured on these interfaces (IPv4 and IPv6,
    link-local included): the hosts that are on-link there."""
    import ipaddress
    import json
    import subprocess

    nets = []
    for name in names:
        done = subprocess.run(["ip", "-j", "addr", "show", "dev", name], capture_output=True, text=True)
        try:
            for link in json.loads(done.stdout or "[]"):
                for a in link.get("addr_info", []):
                    net = ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False)
                    if str(net) not in nets and net.prefixlen < net.max_prefixlen:
                        nets.append(str(net))
        except (ValueError, KeyError, TypeError):
            continue
    return nets


def with_lan(settings: Settings) -> Settings:
    """``[network] lan_networks`` given in the file, or else the LAN interfaces' own."""
    if "lan_networks" in settings.explicit or not settings.lan_interfaces:
        return settings
    derived = interface_networks(settings.lan_interfaces)
    if not derived:
        raise ConfigError("[network] lan_networks: the LAN interfaces have no addresses to take them from; "
                          "give lan_networks")
    return dataclasses.replace(settings, lan_networks=derived)


class NfqueueSource:
    """Binds an NFQUEUE queue; its fd is non-blocking and polled in the engine's loop."""

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
        self._overload_seen = {"queue_dropped": 0, "user_dropped": 0, "fairness_dropped": 0}
        self.overload: dict = {}
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

        source = status = sender = metrics = None
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
            sender = RawSender(self.settings.send_per_second, self.settings.send_per_client_per_second)
            self.engine = Engine(self.settings, self.detectors, sender=sender, monitor=self.monitor)
            self._set_onlink()
            source = NfqueueSource(self.settings.queue_number + self.worker, self.settings.queue_maxlen,
                                   self._callback, fail_open=self.settings.overflow == "accept")
            try:
                status = StatusServer(self._status_path())
            except OSError as exc:
                raise DaemonError(f"status socket: {exc}") from None
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
            self._loop(source, status, wake_r, metrics)
            emit(log, logging.INFO, "stopping", counters=_flat(self.engine.all_counters()))
            return 0
        finally:
            if self._children:
                from .workers import stop_all

                stop_all(self._children)
            if self.cluster is not None:
                self.cluster.stop()
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
            self.engine.kernel = self.kernel
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
        snap["queue_health"] = dict(self.overload)
        if self.cluster is not None:
            snap["cluster"] = self.cluster.status()
        if self._children:
            from .workers import merge

            snap = merge(snap, self._children)
        return snap

    def _loop(self, source: NfqueueSource, status: StatusServer, wake, metrics) -> None:
        import threading

        stop_watch = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(stop_watch,), name="overload-watch", daemon=True)
        watcher.start()
        try:
            self._serve(source, status, wake, metrics)
        finally:
            stop_watch.set()
            watcher.join(5)

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
                status.serve_pending(self._answer)
            if metrics is not None and metrics in ready:
                metrics.serve_pending(self._answer)
            if cluster is not None:
                self._apply_cluster()
            if wake in ready:
                try:
                    wake.recv(64)
                except BlockingIOError:
                    pass
            if self._hup:
                self._hup = False
                for child in self._children:
                    child.signal(signal.SIGHUP)
                self._reload()
            engine.tick()
            engine.flush()
            if time.monotonic() - self._saved_at >= self.settings.state_save_seconds:
                self._save_state()

    def _set_onlink(self) -> None:
        from .engine import AddressSet
        from .neighbours import Neighbours

        self.engine.onlink = AddressSet(interface_networks(self.settings.lan_interfaces))
        self.engine.evidence.neighbours = Neighbours(self.settings.lan_interfaces)

    # ---------------------------------------------------------------- overload
    def _fairness_dropped(self) -> int:
        """Packets the per-host bound dropped (the kernel's counters of its rules)."""
        import subprocess

        if not self.install_rules or not self.settings.per_host_rate:
            return 0
        total = 0
        names = rules.chain_names(self.settings.queue_number)
        for family in list(self._installed):
            tool = "iptables" if family == 4 else "ip6tables"
            for chain in (names["counted"], names["input"]):  # where the bound rules are
                out = subprocess.run([tool, "-w", "-L", chain, "-v", "-x", "-n"], capture_output=True,
                                     text=True).stdout
                total += sum(int(line.split()[0]) for line in out.splitlines()
                             if "limit: above" in line and "DROP" in line)
        return total

    def _watch(self, stop) -> None:
        """The overload watch's thread: every 2 s, off the packet path (it reads /proc and
        runs iptables), until ``stop`` is set."""
        while not stop.wait(2.0):
            try:
                self._watch_overload()
            except Exception as exc:  # a failed reading must not end the watch
                emit(log, logging.WARNING, "queue_watch_failed", error=str(exc))

    def _watch_overload(self) -> None:
        """The queue's and the fairness bound's drops; ``event=queue_overflow`` (at most one
        line per 2 s) when they grew."""
        from .metrics import queue_stats

        figures = dict(queue_stats(self.settings.queue_number + self.worker))
        figures["fairness_dropped"] = self._fairness_dropped() if not self.worker else 0
        grew = {k: figures.get(k, 0) - v for k, v in self._overload_seen.items() if figures.get(k, 0) > v}
        self._overload_seen = {k: max(v, figures.get(k, 0)) for k, v in self._overload_seen.items()}
        self.overload = {"overflow": self.settings.overflow, "per_host_rate": self.settings.per_host_rate,
                         **{k: figures.get(k, 0) for k in ("waiting", "queue_dropped", "user_dropped",
                                                           "fairness_dropped")}}
        if grew:
            emit(log, logging.WARNING, "queue_overflow", **{f"new_{k}": v for k, v in grew.items()},
                 overflow=self.settings.overflow)

    # ---------------------------------------------------------------- requests
    def _answer(self, request) -> bytes:
        """Answer one status-socket or metrics request (in the loop, between verdicts)."""
        import json

        from .status import CHANGES

        doc = request.doc
        cmd = doc.get("cmd")
        if cmd == "metrics":
            from .metrics import http_answer, render

            return http_answer(render(self._snapshot(), self.settings.queue_number))
        if cmd == "status":
            answer = self._address_report(doc["address"]) if doc.get("address") else self._snapshot()
        elif cmd in CHANGES:
            if request.uid not in (0, None):
                answer = {"ok": False, "error": "only root may change p2pwall's tables"}
            else:
                answer = self._change(cmd, doc)
        else:
            answer = {"ok": False, "error": f"unknown request {cmd!r}"}
        return json.dumps(answer).encode() + b"\n"

    def _address_report(self, text) -> dict:
        from .packet import ip_bytes

        try:
            key = ip_bytes(str(text))
        except ValueError:
            return {"ok": False, "error": f"not an IP address: {text!r}"}
        engine, now = self.engine, self.engine.clock()
        wall = time.time()

        def entry(table):
            from .tables import describe

            e = table.get(key, now)
            if e is None:
                return None
            d = describe(key, e.until - now, e, now, table.evidence)
            d.update(until=round(wall + e.until - now, 3), note=e.note is not None)
            return d

        return {"ok": True, "address": str(text), "peer": entry(engine.peers), "lock": entry(engine.locks),
                "in_lan": key in engine.lan, "allowlisted": key in engine.allow,
                "protected": key in engine.protected}

    def _change(self, cmd: str, doc: dict) -> dict:
        from .packet import ip_bytes
        from .status import StatusError, query

        text = doc.get("address")
        try:
            key = ip_bytes(str(text))
        except ValueError:
            return {"ok": False, "error": f"not an IP address: {text!r}", "usage": True}
        engine = self.engine
        if cmd == "block":
            seconds = doc.get("seconds") or self.settings.peer_seconds
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= 366 * 86400:
                return {"ok": False, "error": f"seconds must be between 0 and a year, got {seconds!r}", "usage": True}
            ok = engine.operator_block(key, float(seconds))
            error = None if ok else f"{text} cannot be blocked (inside the LAN, allowlisted or not unicast)"
        elif cmd == "unblock":
            ok = engine.unblock(key, why="unblocked by an operator")
            error = None if ok else f"{text} is not blocked"
        else:
            ok = engine.unlock(key, why="unlocked by an operator")
            error = None if ok else f"{text} is not locked"
        engine.flush()
        for child in self._children:  # workers hold tables of their own
            try:
                query(child.status, dict(doc, forwarded=True), timeout=2.0)
            except StatusError:
                pass
        if ok:
            self._save_state()  # an operator's word survives a crash too
        return {"ok": ok, "error": error} if error and not doc.get("forwarded") else {"ok": True}

    # ---------------------------------------------------------------- cluster
    def _start_cluster(self) -> None:
        if not self.settings.cluster_url:
            return
        from .cluster import Cluster, ClusterError

        try:
            self.cluster = Cluster(self.settings, suffix=f"/worker{self.worker}" if self.worker else "")
        except ClusterError as exc:
            raise DaemonError(str(exc)) from None
        self.engine.replicate = None if self.monitor else self.cluster.publish
        self.cluster.start()

    def _apply_cluster(self) -> None:
        """Apply what the other gateways learned (off the packet path, rate bounded)."""
        from .packet import ip_bytes, ip_text

        cluster, engine = self.cluster, self.engine
        changes = cluster.drain()
        wall = time.time()
        for ch in changes:
            try:
                key = ip_bytes(ch.addr)
                note = bytes.fromhex(ch.note) if ch.note else None
                client = ip_bytes(ch.client) if ch.client else None
            except ValueError:
                cluster.applied(ch, False)
                continue
            ok = engine.apply_remote(ch.op, key, ch.until - wall, ch.detector, ch.reason, note,
                                     why=f"by gateway {ch.gw}", kind=ch.kind, client=client, lanwide=ch.lanwide)
            cluster.applied(ch, ok)
        if cluster.want_full_publish and not self.monitor:
            cluster.want_full_publish = False
            now = engine.clock()
            for key, left, e in engine.peers.full_entries(now):
                for i, client in enumerate(e.clients or (None,)):
                    own = bool(e.own >> i & 1)
                    cluster.publish("block", ip_text(key), left, e.detector, e.reason, e.note,
                                    kind=e.kind if own or e.kind != "own" else "named",
                                    client=ip_text(client) if client else None,
                                    lanwide=e.lanwide and i == len(e.clients or (None,)) - 1)
            for key, left, detector, reason in engine.locks.entries(now):
                cluster.publish("lock", ip_text(key), left, detector, reason, engine.locks.note(key))
        if changes:
            engine.flush()

    # ---------------------------------------------------------------- reload
    def _reload(self) -> None:
        if self.reload is None:
            return
        try:
            settings, detectors = self.reload()
            fixed = ("queue_number", "status_socket", "metrics_listen", "kernel_sets", "user", "workers",
                     "cluster_url", "cluster_name", "cluster_prefix", "cluster_password_file", "cluster_key_file")
            changed = [k for k in fixed if getattr(settings, k) != getattr(self.settings, k)]
            if changed:
                raise ConfigError(f"{', '.join(changed)} cannot change without a restart")
            lan_ifs = lan_ifindexes(settings)
            settings = with_lan(settings)
        except Exception as exc:  # any problem: keep running as we are
            emit(log, logging.ERROR, "reload_rejected", error=str(exc))
            return
        if self.monitor:
            settings = dataclasses.replace(settings, kernel_sets=False)
        policy = QueuePolicy.build(settings, detectors)
        self.settings, self.detectors, self.lan_ifs = settings, detectors, lan_ifs
        self.engine.reconfigure(settings, detectors)  # purges what the new settings forbid
        self._set_onlink()
        if self.kernel is not None:
            self.kernel.resize(policy, self.engine.live_entries())
            self.engine.flush()
        old_text, self.policy = self._rules_text, policy
        if self.install_rules and policy.iptables_text() != old_text:
            self._uninstall()
            self._install()
        emit(log, logging.INFO, "reloaded", detectors=",".join(detectors.names()),
             peers=len(self.engine.peers), locks=len(self.engine.locks))

    # ---------------------------------------------------------------- state
    def _restore_state(self) -> None:
        if not self.settings.state_file:
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
            count = self.engine.restore(saved)
            self.engine.flush()
            emit(log, logging.INFO, "state_restored", entries=count, file=path)

    def _state_path(self) -> str:
        return self.settings.state_file + (f".{self.worker}" if self.worker else "")

    def _save_state(self) -> None:
        self._saved_at = time.monotonic()
        if not self.settings.state_file or self.engine is None:
            return
        try:
            state_mod.save(self._state_path(), {"peers": self.engine.peers, "locks": self.engine.locks},
                           self.engine.clock())
        except OSError as exc:
            emit(log, logging.WARNING, "state_save_failed", file=self.settings.state_file, error=str(exc))

    def _owned_paths(self) -> list[str]:
        """The files the daemon writes after dropping root, each checked to live in a
        directory of p2pwall's own (a clear error otherwise, before anything changes)."""
        from .privileges import own_directory

        paths = [self._status_path()]
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
        self.engine.kernel = kernel
        taken = self.engine.restore_kernel(leftovers)
        if taken:
            self.engine.flush()
            emit(log, logging.INFO, "kernel_sets_recovered", entries=taken)

    def _install(self) -> None:
        """Install the policy's rules; what was installed is what ``status`` shows and
        what ``p2pwall rules`` prints for the same configuration."""
        for rs in self.policy.rule_sets():
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
        self._rules_text = self.policy.iptables_text()

    def _uninstall(self) -> None:
        while self._installed:
            rules.remove(self.settings.queue_number, self._installed.pop())


def _flat(counters) -> str:
    return ",".join(f"{k}:{v}" for k, v in sorted(counters.items()))
