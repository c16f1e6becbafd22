"""The one queue policy: rules, sets, `p2pwall rules` and replay's kernel model all come
from it, and a detector's `lock = false` holds in the kernel too."""

import subprocess
import sys

from p2pwall import Settings, nftables, plugins, rules
from p2pwall.config import from_dict
from p2pwall.engine import Engine
from p2pwall.packet import FROM_LAN, parse
from p2pwall.kernelmodel import KERNEL_DROP, PASS, QUEUE, kernel_verdict
from p2pwall.policy import QueuePolicy
from p2pwall.testing import Clock, tcp, udp

LAN, PEER = "192.168.1.5", "203.0.113.9"
GNUTELLA_PING = bytes(16) + b"\x00\x01\x00\x00\x00\x00\x00"  # a 23-byte descriptor, ping, ttl 1


class FakeKernel:
    """Records what the engine asks of the kernel sets."""

    def __init__(self):
        self.sets = {"peers": {}, "nolock": {}, "locks": {}}

    def add(self, kind, addr, seconds, note=""):
        self.sets[kind][addr] = seconds
        return True

    def add_pair(self, client, peer, seconds, note=""):
        self.sets.setdefault("pairs", {})[(client, peer)] = seconds
        return True

    def remove_pair(self, client, peer):
        self.sets.setdefault("pairs", {}).pop((client, peer), None)

    def remove(self, kind, addr):
        self.sets[kind].pop(addr, None)

    def flush(self):
        pass

    def counters(self):
        return {}


def policy_for(config: dict, names=("gnutella", "fasttrack")) -> tuple[QueuePolicy, object, Settings]:
    settings = from_dict(config)
    found = plugins.load(list(names), settings)
    return QueuePolicy.build(settings, found), found, settings


def test_lock_false_peers_go_in_a_set_whose_syns_lock_nobody():
    policy, found, settings = policy_for({"network": {"lan_interfaces": ["eth1"]},
                                          "detectors": {"gnutella": {"lock": False}}})
    ledger = Engine(settings, found).ledger  # the one place that says which set
    assert ledger.where("gnutella") == "nolock" and ledger.where("fasttrack") == "peers"
    text = rules.iptables_text(policy)
    assert "--add-set" not in text  # only the engine locks (the kernel mirrors it)
    # the nft table: SYNs to a locking peer (or one blocked for the sender) are marked and
    # go on, everything else to a peer is dropped, and all of it to a lock = false peer
    table = nftables.nft_table(policy)
    assert '    iifname { "eth1" } jump lan' in table
    assert "ip daddr @peers4 jump peer" in table and "ip daddr @nolock4 counter drop" in table
    peer_chain = table[table.index("chain peer {"):]
    assert "tcp flags & (syn | ack) == syn meta mark set meta mark | 0x800000 accept" in peer_chain
    assert peer_chain.index("accept") < peer_chain.index("counter drop")
    # the iptables rules queue the marked SYNs first, before the clean-connection test
    lan = [line for line in text.splitlines() if line.startswith("-A P2PWALL-L0")]
    assert lan[0] == "-A P2PWALL-L0 -p tcp -m mark --mark 0x800000/0x800000 -j NFQUEUE --queue-num 0 --queue-bypass"
    # and the marked datagrams a detector answers (FastTrack's pings), bounded in nft per
    # LAN host: a resolved station spends its own budget (by address, IPv6 by /64), the
    # unresolved senders share one
    assert lan[1] == "-A P2PWALL-L0 -p udp -m mark --mark 0x800000/0x800000 -j NFQUEUE --queue-num 0 --queue-bypass"
    ping = "meta l4proto udp udp length >= 12 @th,64,32 0x27000000"
    rate, mark = "limit rate 100/second burst 100 packets", "meta mark set meta mark | 0x800000 accept"
    station = f"meta mark & 0x{policy.station_mark:x}"
    for chain in (peer_chain, table[table.index("chain blocked {"):table.index("chain peer {")]):
        assert f"{station} != 0 meta nfproto ipv4 {ping} update @answered0_4 {{ ip saddr {rate} }} {mark}" in chain
        assert (f"{station} != 0 meta nfproto ipv6 {ping} update @answered0_6 "
                f"{{ ip6 saddr & ffff:ffff:ffff:ffff:: {rate} }} {mark}") in chain
        assert f"{station} == 0 {ping} {rate} {mark}" in chain
    assert "set answered0_4 { type ipv4_addr; size 65536; flags dynamic,timeout; timeout 10s; }" in table
    # without LAN interfaces there are no stations: one budget per prefix for all
    bare, _, _ = policy_for({"network": {"lan_networks": ["192.168.0.0/16"]}})
    assert f"    {ping} {rate} {mark}" in nftables.nft_table(bare) and "answered0_4" not in nftables.nft_table(bare)
    assert "connmark" in lan[2]
    assert "p2pwall-peers0" not in text and "p2pwall-nolock0" not in text and "*raw" not in text
    assert "# first: ipset create p2pwall-locks0 hash:ip family inet timeout 0 maxelem 65536" in text


def test_without_lan_interfaces_the_nft_table_selects_the_lan_by_source_and_has_no_pair_sets():
    policy, _, _ = policy_for({"network": {"lan_networks": ["192.168.0.0/16", "fd00::/8"]}})
    table = nftables.nft_table(policy)
    assert "ip saddr { 192.168.0.0/16 } jump lan" in table and "ip6 saddr { fd00::/8 } jump lan" in table
    assert "pairs" not in table and "iifname" not in table
    assert nftables.nft_table(policy) and not nftables.nft_table(QueuePolicy.build(
        from_dict({"network": {"lan_networks": ["192.168.0.0/16"]}, "queue": {"kernel_sets": False}}),
        plugins.load(["fasttrack"])))


def test_the_per_host_bound_is_the_stations_and_no_table_can_fill():
    """With LAN interfaces, a packet from a pair the gateway resolved (marked by the nft
    stations sets) spends its station's share; any other spends the unresolved senders'
    share at that address (IPv6: that /64), in a table sized to the LAN."""
    policy, _, _ = policy_for({"network": {"lan_interfaces": ["eth1"],
                                           "lan_networks": ["10.1.0.0/16", "fd00:1::/60"]}})
    table = nftables.nft_table(policy)
    mark = f"0x{policy.station_mark:x}"
    assert policy.station_mark == policy.first_mark << 4
    assert f'iifname {{ "eth1" }} ip saddr . ether saddr @stations4 meta mark set meta mark | {mark}' in table
    assert "set stations6 { type ipv6_addr . ether_addr; size 65536; }" in table
    pre = table[table.index("chain pre {"):table.index("chain lan {")]
    assert pre.index("@stations4") < pre.index("jump lan")  # marked before the peer sets decide
    text = rules.iptables_text(policy)
    counted = [line for line in text.splitlines() if line.startswith("-A P2PWALL-C0") and "hashlimit" in line]
    v4, v6 = counted[:2], counted[2:]
    assert f"-m mark --mark {mark}/{mark}" in v4[0] and "--hashlimit-htable-max 65536 " in v4[0]
    assert f"-m mark ! --mark {mark}/{mark}" in v4[1] and "--hashlimit-htable-max 65536 " in v4[1]  # a /16
    assert "srcmask" not in v4[0] + v4[1] + v6[0]
    assert "--hashlimit-srcmask 64 --hashlimit-htable-max 1024 " in v6[1]  # 16 /64s, at least 1,024
    assert len({line.split("--hashlimit-name ")[1] for line in counted}) == 4
    # no LAN interfaces: no stations; one table by address (IPv6 by /64), sized to the LAN
    policy, _, _ = policy_for({"network": {"lan_networks": ["10.0.0.0/8"]}})
    assert "stations" not in nftables.nft_table(policy) and not policy.stations
    counted = [line for line in rules.iptables_text(policy).splitlines() if "hashlimit" in line]
    assert counted and all("--mark" not in line and "--hashlimit-htable-max 262144 " in line for line in counted)
    # no bound, no rules
    policy, _, _ = policy_for({"network": {"lan_interfaces": ["eth1"]}, "queue": {"per_host_rate": 0}})
    assert "hashlimit" not in rules.iptables_text(policy) and "stations" not in nftables.nft_table(policy)


def test_the_engine_puts_each_peer_in_the_set_its_detector_asks_for():
    from p2pwall_plugins.fasttrack import make_ping

    policy, found, settings = policy_for({"network": {"lan_networks": ["192.168.0.0/16"]},
                                          "detectors": {"gnutella": {"lock": False}}})
    kernel = FakeKernel()
    clock = Clock()
    engine = Engine(settings, found, clock=clock, kernel=kernel)

    def feed(raw):
        p = parse(raw)
        p.direction = FROM_LAN
        return engine.handle(p)

    assert feed(udp(LAN, PEER, 6346, 6346, GNUTELLA_PING)).detector == "gnutella"
    lan, lan2 = bytes([192, 168, 1, 5]), bytes([192, 168, 1, 6])
    assert set(kernel.sets["pairs"]) == {(lan, bytes([203, 0, 113, 9]))} and not kernel.sets["nolock"]
    assert feed(udp("192.168.1.6", PEER, 6346, 6346, GNUTELLA_PING)).drop  # corroborated: LAN-wide
    assert set(kernel.sets["nolock"]) == {bytes([203, 0, 113, 9])} and not kernel.sets["peers"]
    assert (lan2, bytes([203, 0, 113, 9])) not in kernel.sets["pairs"]
    assert feed(tcp(LAN, PEER, 40000, 6346)).drop  # the SYN is dropped ...
    assert not engine.locks.live(bytes([192, 168, 1, 5]), clock.now) and not kernel.sets["locks"]  # ... nobody locked
    assert not feed(tcp(LAN, "198.51.100.80", 40001, 80)).drop
    other = "203.0.113.10"
    assert feed(udp(LAN, other, 1214, 1214, make_ping())).drop
    assert feed(udp("192.168.1.6", other, 1214, 1214, make_ping())).drop
    assert set(kernel.sets["peers"]) == {bytes([203, 0, 113, 10])}
    assert feed(tcp(LAN, other, 40002, 1214)).drop
    assert set(kernel.sets["locks"]) == {bytes([192, 168, 1, 5])}


def test_rules_prints_exactly_the_policy_run_installs(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[network]\nlan_interfaces = ["br0"]\n[peers]\nmax = 5000\n[lock]\nmax = 3000\n'
                    '[detectors.gnutella]\nlock = false\n')
    done = subprocess.run([sys.executable, "-m", "p2pwall", "rules", "--config", str(conf)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    from p2pwall.config import load

    settings = load(conf)
    assert done.stdout == rules.iptables_text(QueuePolicy.build(settings, plugins.load(None, settings)))
    assert "maxelem 3000" in done.stdout  # the sizes the daemon creates, not others
    assert "set pairs4 { type ipv4_addr . ipv4_addr; flags timeout; }" in done.stdout  # the peer table bounds it


def test_kernel_model_follows_the_rules():
    policy, _, _ = policy_for({"network": {"lan_networks": ["192.168.0.0/16"]}})

    def verdict(raw, sent=1, received=0, peer_set=None, locked=False, outgoing=True):
        return kernel_verdict(policy, parse(raw), outgoing, sent, received, peer_set, locked)

    syn = tcp(LAN, PEER, 1, 80)
    assert verdict(syn) == QUEUE
    assert verdict(syn, peer_set="peers") == QUEUE  # locks in the kernel, then queued
    assert verdict(syn, peer_set="nolock") == KERNEL_DROP
    assert verdict(syn, locked=True) == KERNEL_DROP
    assert verdict(udp(LAN, PEER, 1, 2, b"x"), peer_set="peers") == KERNEL_DROP
    assert verdict(udp(LAN, PEER, 1, 2, b"x"), sent=8) == QUEUE
    assert verdict(udp(LAN, PEER, 1, 2, b"x"), sent=9) == PASS
    kazaa = tcp(LAN, PEER, 1, 80, b"GET /.hash=0123456789abcdef0123456789 HTTP/1.1\r\n")
    assert verdict(kazaa, sent=3) == QUEUE and verdict(kazaa, sent=8) == PASS
    plain = b"GET / HTTP/1.1\r\nHost: example.org\r\nAccept: text/html\r\nUser-Agent: curl/8.1\r\n" + b"X-A: b\r\n" * 8 + b"\r\n"
    assert verdict(tcp(LAN, PEER, 1, 80, plain), sent=3) == PASS
    # a short first payload is queued, and after it the connection's payloads in the window
    # (rules.py's short bit: the engine joins them, streams.py); without one they pass
    short = parse(tcp(LAN, PEER, 1, 80, b"\x13"))
    assert verdict(tcp(LAN, PEER, 1, 80, b"\x13"), sent=3) == QUEUE
    short.first = False
    assert kernel_verdict(policy, short, True, 4, 2, None, False) == PASS
    assert kernel_verdict(policy, short, True, 4, 2, None, False, after_short=True) == QUEUE
    assert kernel_verdict(policy, short, True, policy.payload_window + 1, 2, None, False, after_short=True) == PASS


def test_config_values_cannot_inject_rules():
    import pytest

    from p2pwall.config import ConfigError

    for bad in (["fe80::1%eth0\n-A FORWARD -j ACCEPT"], ["fe80::%eth0/64"], ["10.0.0.0/8 -j ACCEPT"]):
        with pytest.raises(ConfigError, match="not an address or network"):
            from_dict({"network": {"lan_networks": bad}})
        with pytest.raises(ConfigError, match="not an address or network"):
            from_dict({"network": {"allow": bad}})
    with pytest.raises(ConfigError, match="not an interface name"):
        from_dict({"network": {"lan_interfaces": ["eth0 -j ACCEPT"]}})
    assert from_dict({"network": {"lan_networks": ["10.1.2.3/8"]}}).lan_networks == ["10.0.0.0/8"]
