"""Two gateways in front of one LAN, sharing a Redis on a management link.

    lan1 192.0.2.10 (via fw1) ─┐            ┌─ fw1 192.0.2.1 | 198.51.100.1  | mgmt 198.51.100.130 ─┐
    lan2 192.0.2.11 (via fw2) ─┴─ sw:brlan ─┤                                                   sw:brwan ── out 198.51.100.2
                                            └─ fw2 192.0.2.2 | 198.51.100.3  | mgmt 198.51.100.131 ─┘         203.0.113.1..N
    redis-server in sw on 198.51.100.129 (sw:brmgmt)

Both gateways sit on the same LAN segment, so ``failover(host)`` moves a LAN host's
default route (and the outside host's route back to it) from one gateway to the other,
as an HA pair does.  With ``split=True`` each gateway serves a LAN of its own, as one
gateway per building does: fw1 192.0.2.0/25 (lan1 192.0.2.10 on sw:brlan1), fw2
192.0.2.128/25 (lan2 192.0.2.140 on sw:brlan2).  Names carry a per-run prefix;
``close()`` removes everything.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import Daemon, Namespaces, TestbedError, _sh, outside_address

MGMT_REDIS = "198.51.100.129"


class ClusterNetwork(Namespaces):
    def __init__(self, outside_addresses: int = 40, prefix: str | None = None, split: bool = False):
        super().__init__(prefix)
        self.split = split
        self.sw, self.out = f"{self.prefix}-sw", f"{self.prefix}-out"
        self.fws = [f"{self.prefix}-fw1", f"{self.prefix}-fw2"]
        self.lans = [f"{self.prefix}-lan1", f"{self.prefix}-lan2"]
        self.lan_ips = ["192.0.2.10", "192.0.2.140" if split else "192.0.2.11"]
        self.fw_lan = ["192.0.2.1", "192.0.2.129" if split else "192.0.2.2"]
        self.lan_nets = ["192.0.2.0/25", "192.0.2.128/25"] if split else ["192.0.2.0/24"] * 2
        self.prefix_len = 25 if split else 24
        self.fw_wan = ["198.51.100.1", "198.51.100.3"]
        self.fw_mgmt = ["198.51.100.130", "198.51.100.131"]
        self.outside = [outside_address(i + 1) for i in range(outside_addresses)]
        self.redis: subprocess.Popen | None = None
        self.route = {ip: i for i, ip in enumerate(self.lan_ips)}  # LAN host -> gateway index
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _veth(self, ns: str, ifname: str, bridge: str, addr: str | None):
        peer = f"{ifname[:4]}{len(self._made)}{secrets.token_hex(2)}"[:15]
        _sh("ip", "-n", self.sw, "link", "add", peer, "type", "veth", "peer", "name", ifname, "netns", ns)
        _sh("ip", "-n", self.sw, "link", "set", peer, "master", bridge, "up")
        if addr:
            _sh("ip", "-n", ns, "addr", "add", addr, "dev", ifname)
        _sh("ip", "-n", ns, "link", "set", ifname, "up")

    def _build(self):
        for name in [self.sw, self.out, *self.fws, *self.lans]:
            self._ns(name)
        lans = ("brlan1", "brlan2") if self.split else ("brlan", "brlan")  # each gateway's LAN segment
        for br, addr in [(b, None) for b in dict.fromkeys(lans)] + [("brwan", None), ("brmgmt", f"{MGMT_REDIS}/25")]:
            _sh("ip", "-n", self.sw, "link", "add", br, "type", "bridge")
            if addr:
                _sh("ip", "-n", self.sw, "addr", "add", addr, "dev", br)
            _sh("ip", "-n", self.sw, "link", "set", br, "up")
        for i, fw in enumerate(self.fws):
            _sh("ip", "netns", "exec", fw, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            self._veth(fw, "lan0", lans[i], f"{self.fw_lan[i]}/{self.prefix_len}")
            self._veth(fw, "wan0", "brwan", f"{self.fw_wan[i]}/25")
            self._veth(fw, "mgmt0", "brmgmt", f"{self.fw_mgmt[i]}/25")
            _sh("ip", "-n", fw, "route", "add", "203.0.113.0/24", "via", "198.51.100.2")
        for i, (ns, ip) in enumerate(zip(self.lans, self.lan_ips)):
            self._veth(ns, "eth0", lans[i], f"{ip}/{self.prefix_len}")
            _sh("ip", "-n", ns, "route", "add", "default", "via", self.fw_lan[i])
        self._veth(self.out, "eth0", "brwan", "198.51.100.2/25")
        _sh("ip", "-n", self.out, "-batch", "-",
            input="".join(f"addr add {ip}/24 dev eth0\n" for ip in self.outside))
        for ip, gw in self.route.items():
            _sh("ip", "-n", self.out, "route", "add", f"{ip}/32", "via", self.fw_wan[gw])
        deadline = time.monotonic() + 10
        while any(_sh("ip", "netns", "exec", ns, "ping", "-c1", "-W1", "198.51.100.2", check=False).returncode
                  for ns in self.lans):
            if time.monotonic() > deadline:
                raise TestbedError("the cluster test network did not come up")
            time.sleep(0.2)

    # ------------------------------------------------------------------ running
    def start_redis(self) -> None:
        """A fresh, empty redis-server on the management link (no persistence)."""
        self.redis = self.start(self.sw, "redis-server", "--bind", MGMT_REDIS, "--port", "6379", "--save", "",
                                "--appendonly", "no", "--protected-mode", "no", "--dir", str(self.dir),
                                log=f"redis-{len(self._procs)}.log", ready="Ready to accept connections")

    def prepare(self, udp: str = "1214", tcp: str = "80") -> str:
        """The gateways' shared key (``key_file``, mode 0600) and the outside hosts'
        logging services (``out.jsonl``): the key file's path."""
        key = self.dir / "cluster.key"
        key.write_text("a shared secret for the test gateways\n")
        key.chmod(0o600)
        self.key_file = str(key)
        self.start(self.out, sys.executable, "-m", "p2pwall_lab.testbed.traffic", "serve", "--log",
                   str(self.dir / "out.jsonl"), "--udp", udp, "--tcp", tcp, log="out-serve.log")
        return self.key_file

    def start_sentinel_pair(self, service: str = "p2pw") -> str:
        """A primary (6379) and its replica (6380) on the management link, watched by one
        Sentinel (26379, quorum 1, a primary down after 1 s): the URL gateways use.
        ``kill_redis`` takes the primary away; the Sentinel promotes the replica."""
        self.start_redis()
        self.replica = self.start(self.sw, "redis-server", "--bind", MGMT_REDIS, "--port", "6380", "--save", "",
                                  "--appendonly", "no", "--protected-mode", "no", "--dir", str(self.dir),
                                  "--replicaof", MGMT_REDIS, "6379", log="redis-replica.log",
                                  ready="MASTER <-> REPLICA sync: Finished with success")
        conf = self.dir / "sentinel.conf"
        conf.write_text(f"port 26379\nbind {MGMT_REDIS}\nprotected-mode no\ndir {self.dir}\n"
                        f"sentinel monitor {service} {MGMT_REDIS} 6379 1\n"
                        f"sentinel down-after-milliseconds {service} 1000\n"
                        f"sentinel failover-timeout {service} 5000\n")
        binary = "redis-sentinel" if shutil.which("redis-sentinel") else "redis-server"
        args = [str(conf)] + ([] if binary == "redis-sentinel" else ["--sentinel"])
        self.sentinel = self.start(self.sw, binary, *args, log="sentinel.log", ready="+monitor master")
        return f"redis+sentinel://{MGMT_REDIS}:26379/{service}/0"

    def master(self, service: str = "p2pw") -> str:
        """The Sentinel's answer: the current primary's port."""
        out = self.exec(self.sw, "redis-cli", "-h", MGMT_REDIS, "-p", "26379", "SENTINEL",
                        "get-master-addr-by-name", service).stdout.split()
        return out[-1] if out else ""

    def kill_redis(self) -> None:
        if self.redis is not None and self.redis.poll() is None:
            self.redis.kill()
            self.redis.wait(5)
        self.redis = None

    def redis_cli(self, *args: str) -> str:
        return self.exec(self.sw, "redis-cli", "-h", MGMT_REDIS, *args).stdout

    def config(self, i: int, lock_seconds: float = 30, key_file: str = "", extra: str = "", url: str = "") -> str:
        return (f'[network]\nlan_interfaces = ["lan0"]\nlan_networks = ["{self.lan_nets[i]}"]\n'
                f'[lock]\nseconds = {lock_seconds}\n'
                f'[status]\nsocket = "{self.dir}/fw{i + 1}.sock"\n[state]\nfile = ""\n'
                f'[cluster]\nurl = "{url or f"redis://{MGMT_REDIS}:6379/0"}"\nname = "gw{i + 1}"\nkey_file = "{key_file}"\n'
                + ("" if key_file else "insecure = true\n") + extra)

    def p2pwall(self, i: int, config: str, *args: str, name: str | None = None) -> "GatewayDaemon":
        name = name or f"fw{i + 1}"
        path = self.dir / f"{name}.toml"
        if "[history]" not in config:  # the machine's /var/lib/p2pwall is not the test's to write
            config += '\n[history]\nfile = ""\n'
        path.write_text(config)
        proc = self.spawn(self.fws[i], sys.executable, "-m", "p2pwall", "run", "--config", str(path), *args,
                          log=f"{name}.log")
        daemon = GatewayDaemon(self, proc, self.dir / f"{name}.log", i)
        daemon.wait_ready(20)
        return daemon

    def failover(self, lan_ip: str, to: int) -> None:
        """Move a LAN host (and the way back to it) to gateway ``to`` (0 or 1)."""
        ns = self.lans[self.lan_ips.index(lan_ip)]
        _sh("ip", "-n", ns, "route", "replace", "default", "via", self.fw_lan[to])
        _sh("ip", "-n", self.out, "route", "replace", f"{lan_ip}/32", "via", self.fw_wan[to])
        self.route[lan_ip] = to


class GatewayDaemon(Daemon):
    def __init__(self, net: ClusterNetwork, proc, log: Path, index: int):
        super().__init__(net, proc, log)
        self.index = index

    def ask(self, *args: str) -> subprocess.CompletedProcess:
        return self.net.python(self.net.fws[self.index], "-m", "p2pwall", *args,
                               "--socket", str(self.net.dir / f"fw{self.index + 1}.sock"), check=False)

    def status(self) -> dict:
        import json

        done = self.ask("status", "--format", "json")
        if done.returncode != 0:
            raise TestbedError(done.stderr)
        return json.loads(done.stdout)
