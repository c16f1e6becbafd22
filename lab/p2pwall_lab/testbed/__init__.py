"""A throw-away namespace network for end-to-end tests, the lab and benchmarks.

    lan1 (192.0.2.10) ─┐
    lan2 (192.0.2.11) ─┴─ br0 [fw 192.0.2.1 | 198.51.100.1 wan0] ── out (198.51.100.2,
                                                                     203.0.113.1..N)

``Network(ipv6=True)`` is dual-stack, with the documentation prefix 2001:db8::/32 beside
the IPv4 ranges: LAN 2001:db8:1::/64 (firewall ::1, hosts ::10, ::11), the firewall's WAN
link 2001:db8:2::/64 (firewall ::1, outside host ::2) and the outside addresses
2001:db8:3::1..N, one for each IPv4 one.

Every namespace name starts with a prefix unique to the run; ``close()`` deletes them all
and is safe to call twice.  Only documentation address ranges are used, and only inside
namespaces this class created.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAN_NET = "192.0.2.0/24"
FW_LAN = "192.0.2.1"
FW_WAN = "198.51.100.1"
OUT_WAN = "198.51.100.2"
OUTSIDE_NET = "203.0.113.0/24"
LAN_NET6 = "2001:db8:1::/64"
FW_LAN6 = "2001:db8:1::1"
FW_WAN6 = "2001:db8:2::1"
OUT_WAN6 = "2001:db8:2::2"
OUTSIDE_NET6 = "2001:db8:3::/64"


class TestbedError(Exception):
    pass


def _sh(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(list(args), capture_output=True, text=True, input=input)
    if check and done.returncode != 0:
        raise TestbedError(f"{' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def wait_for_log(path: Path, proc: subprocess.Popen | None, markers, timeout: float = 10.0) -> str:
    """Poll the log ``path`` of ``proc`` until one of ``markers`` appears; returns the log.
    Raises TestbedError when the process dies first or the time runs out: the one way
    the test bed, the lab and the benches wait for a process to be ready."""
    markers = (markers,) if isinstance(markers, str) else tuple(markers)
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        if any(m in text for m in markers):
            return text
        if proc is not None and proc.poll() is not None:
            raise TestbedError(f"{proc.args[3:5] if len(proc.args) > 4 else proc.args} exited with "
                               f"{proc.returncode}: {text[-2000:]}")
        if time.monotonic() > deadline:
            raise TestbedError(f"not ready in {timeout:g} s: {text[-2000:]}")
        time.sleep(0.05)


def outside_address(i: int) -> str:
    if not 1 <= i <= 250:
        raise ValueError("outside hosts are 203.0.113.1 to 203.0.113.250")
    return f"203.0.113.{i}"


def outside_address6(i: int) -> str:
    if not 1 <= i <= 250:
        raise ValueError("outside hosts are 2001:db8:3::1 to 2001:db8:3::fa")
    return f"2001:db8:3::{i:x}"


class Namespaces:
    """Namespaces named with a per-run prefix, the processes started in them, and their
    removal (``close``, safe to call twice, also from ``with``)."""

    def __init__(self, prefix: str | None = None):
        self.prefix = prefix or f"p2pw{secrets.token_hex(3)}"
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self._procs: list[subprocess.Popen] = []
        self._made: list[str] = []

    def _ns(self, name: str) -> None:
        _sh("ip", "netns", "add", name)
        self._made.append(name)
        _sh("ip", "-n", name, "link", "set", "lo", "up")

    def exec(self, ns: str, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        done = subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True, text=True,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise TestbedError(f"[{ns}] {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
        return done

    def spawn(self, ns: str, *args: str, log: str | None = None, env: dict | None = None) -> subprocess.Popen:
        """Start a background process in ``ns``; its output goes to ``log`` in self.dir."""
        out = open(self.dir / (log or f"proc{len(self._procs)}.log"), "wb")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *args], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        out.close()
        self._procs.append(proc)
        return proc

    def start(self, ns: str, *args: str, log: str, ready="\"ready\"", timeout: float = 10.0,
              env: dict | None = None) -> subprocess.Popen:
        """``spawn``, then wait until its log shows ``ready``."""
        proc = self.spawn(ns, *args, log=log, env=env)
        wait_for_log(self.dir / log, proc, ready, timeout)
        return proc

    def python(self, ns: str, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.exec(ns, sys.executable, *args, **kw)

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(5)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait(5)
        self._procs.clear()
        for name in reversed(self._made):
            for pid in _sh("ip", "netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _sh("ip", "netns", "del", name, check=False)
        self._made.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Network(Namespaces):
    """LAN hosts, a firewall and an outside host with many addresses, in namespaces."""

    def __init__(self, lan_hosts: int = 2, outside_addresses: int = 20, prefix: str | None = None,
                 ipv6: bool = False):
        super().__init__(prefix)
        self.fw = f"{self.prefix}-fw"
        self.out = f"{self.prefix}-out"
        self.ipv6 = ipv6
        self.lans = [f"{self.prefix}-lan{i + 1}" for i in range(lan_hosts)]
        self.lan_ips = [f"192.0.2.{10 + i}" for i in range(lan_hosts)]
        self.outside = [outside_address(i + 1) for i in range(outside_addresses)]
        self.lan_ips6 = [f"2001:db8:1::{10 + i}" for i in range(lan_hosts)] if ipv6 else []
        self.outside6 = [outside_address6(i + 1) for i in range(outside_addresses)] if ipv6 else []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        for name in [self.fw, self.out, *self.lans]:
            self._ns(name)
        fw, out = self.fw, self.out
        _sh("ip", "netns", "exec", fw, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        _sh("ip", "-n", fw, "link", "add", "br0", "type", "bridge")
        _sh("ip", "-n", fw, "addr", "add", f"{FW_LAN}/24", "dev", "br0")
        _sh("ip", "-n", fw, "link", "set", "br0", "up")
        for i, (ns, ip) in enumerate(zip(self.lans, self.lan_ips)):
            port = f"l{i + 1}"
            _sh("ip", "-n", fw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _sh("ip", "-n", fw, "link", "set", port, "master", "br0", "up")
            _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            _sh("ip", "-n", ns, "link", "set", "eth0", "up")
            _sh("ip", "-n", ns, "route", "add", "default", "via", FW_LAN)
        _sh("ip", "-n", fw, "link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", out)
        _sh("ip", "-n", fw, "addr", "add", f"{FW_WAN}/24", "dev", "wan0")
        _sh("ip", "-n", fw, "link", "set", "wan0", "up")
        _sh("ip", "-n", out, "addr", "add", f"{OUT_WAN}/24", "dev", "eth0")
        _sh("ip", "-n", out, "-batch", "-",
            input="".join(f"addr add {ip}/24 dev eth0\n" for ip in self.outside))
        _sh("ip", "-n", out, "link", "set", "eth0", "up")
        _sh("ip", "-n", out, "route", "add", "default", "via", FW_WAN)
        _sh("ip", "-n", fw, "route", "add", OUTSIDE_NET, "via", OUT_WAN)
        if self.ipv6:
            self._build6()
        # addresses need a moment to leave "tentative"; wait until the LAN reaches out
        deadline = time.monotonic() + 10
        for target in [OUT_WAN] + ([self.outside6[0] if self.outside6 else OUT_WAN6] if self.ipv6 else []):
            while _sh("ip", "netns", "exec", self.lans[0], "ping", "-c1", "-W1", target, check=False).returncode:
                if time.monotonic() > deadline:
                    raise TestbedError(f"the test network did not come up (no answer from {target})")
                time.sleep(0.2)
        # every LAN host has spoken to the gateway, as a host on a real LAN has: the gateway
        # has resolved each one (p2pwall takes no evidence from an address it has not)
        for ns in self.lans[1:]:
            _sh("ip", "netns", "exec", ns, "ping", "-c1", "-W1", FW_LAN, check=False)
            if self.ipv6:
                _sh("ip", "netns", "exec", ns, "ping", "-c1", "-W1", FW_LAN6, check=False)

    def _build6(self) -> None:
        """The IPv6 half: the same links, documentation prefixes, no duplicate address
        detection (nothing else is on these links), static routes only."""
        fw, out = self.fw, self.out
        _sh("ip", "netns", "exec", fw, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        _sh("ip", "-n", fw, "addr", "add", f"{FW_LAN6}/64", "dev", "br0", "nodad")
        for ns, ip in zip(self.lans, self.lan_ips6):
            _sh("ip", "-n", ns, "addr", "add", f"{ip}/64", "dev", "eth0", "nodad")
            _sh("ip", "-n", ns, "-6", "route", "add", "default", "via", FW_LAN6)
        _sh("ip", "-n", fw, "addr", "add", f"{FW_WAN6}/64", "dev", "wan0", "nodad")
        _sh("ip", "-n", out, "-batch", "-",
            input=f"addr add {OUT_WAN6}/64 dev eth0 nodad\n" +
            "".join(f"addr add {ip}/128 dev eth0 nodad\n" for ip in self.outside6))
        _sh("ip", "-n", out, "-6", "route", "add", "default", "via", FW_WAN6)
        _sh("ip", "-n", fw, "-6", "route", "add", OUTSIDE_NET6, "via", OUT_WAN6)

    # ------------------------------------------------------------------ running
    def p2pwall(self, config: str, *args: str, env: dict | None = None, name: str = "p2pwall",
                wait: float = 20.0) -> "Daemon":
        """Start ``p2pwall run`` in the firewall namespace and wait until it is ready."""
        path = self.dir / f"{name}.toml"
        if "[history]" not in config:  # the machine's /var/lib/p2pwall is not the test's to write
            config += '\n[history]\nfile = ""\n'
        path.write_text(config)
        log = f"{name}.log"
        proc = self.spawn(self.fw, sys.executable, "-m", "p2pwall", "run", "--config", str(path), *args,
                          log=log, env=env)
        daemon = Daemon(self, proc, self.dir / log)
        daemon.wait_ready(wait)
        return daemon

    def base_config(self, lock_seconds: float = 120, extra: str = "", state_file: str = "") -> str:
        """A config for this network; no state file unless asked (tests stay independent)."""
        nets = ", ".join(f'"{n}"' for n in [LAN_NET] + ([LAN_NET6] if self.ipv6 else []))
        return (f'[network]\nlan_interfaces = ["br0"]\nlan_networks = [{nets}]\n'
                f'[lock]\nseconds = {lock_seconds}\n'
                f'[status]\nsocket = "{self.dir}/status.sock"\n'
                f'[state]\nfile = "{state_file}"\n{extra}')

    def iptables_save(self) -> str:
        return self.exec(self.fw, "iptables-save").stdout

    def kernel_set(self, name: str, queue: int = 0) -> set:
        """What p2pwall's nft set ``name`` (peers4, nolock6, pairs4, ...) holds now."""
        return nft_set(self, self.fw, name, queue)


def nft_set(net, ns: str, name: str, queue: int = 0) -> set:
    """The elements of p2pwall's nft set ``name`` in namespace ``ns``: addresses, or
    (client, peer) pairs; empty when the table or the set does not exist."""
    from p2pwall.kernelsets import nft_elements

    done = net.exec(ns, "nft", "-j", "list", "set", "inet", f"p2pwall{queue}", name, check=False)
    return {tuple(v) if isinstance(v, list) else v for v, _, _ in nft_elements(done.stdout)}


class Daemon:
    """A ``p2pwall run`` process in the firewall namespace."""

    def __init__(self, net: Network, proc: subprocess.Popen, log: Path):
        self.net, self.proc, self.log = net, proc, log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float) -> None:
        wait_for_log(self.log, self.proc, ("event=started", '"event": "started"'), timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise TestbedError("p2pwall did not stop on signal") from None
        return self.proc.returncode

    def status(self) -> dict:
        import json

        done = self.net.python(self.net.fw, "-m", "p2pwall", "status", "--format", "json",
                               "--socket", str(self.net.dir / "status.sock"))
        return json.loads(done.stdout)
