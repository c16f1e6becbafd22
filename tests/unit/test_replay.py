"""Replay in columns against the plain per-packet model it must equal, and the kernel
behaviour it models: connections (conntrack timeouts, a SYN after a FIN), the kernel
sets' timeouts, client-scoped pairs, and the header reader against parse()."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from p2pwall import SERVICE_PORTS, capindex, pcap, plugins
from p2pwall.config import from_dict
from p2pwall.engine import Engine
from p2pwall.kernelsets import parse_comment
from p2pwall.packet import ACK, FIN, FROM_LAN, PSH, SYN, TCP, TO_LAN, UDP, ip_text, parse
from p2pwall.kernelmodel import KERNEL_DROP, QUEUE, kernel_verdict, short_first
from p2pwall.policy import QueuePolicy
from p2pwall.kernelmodel import KernelModel
from p2pwall.replay import TCP_TIMEOUT, UDP_STREAM_TIMEOUT, UDP_TIMEOUT, Clock, Replay
from p2pwall.testing import tcp, udp

CAPTURES = Path(__file__).resolve().parents[1] / "captures"
LAN, LAN2, PEER, WEB = "192.168.1.5", "192.168.1.6", "203.0.113.9", "198.51.100.7"


class Reference:
    """The same model, one packet at a time: what replay did before it went columnar,
    plus connections.  Slow and obviously right; replay must report the same."""

    def __init__(self, settings, detectors):
        self.clock = Clock()
        self.policy = QueuePolicy.build(settings, detectors)
        # every pair is held here; which of them the rules read is decided below, per packet
        self.model = (KernelModel(self.clock, pairs=True, udp_lockers=self.policy.udp_lockers)
                      if self.policy.kernel_sets else None)
        self.engine = Engine(settings, detectors, clock=self.clock, mirrors=[self.model] if self.model else [])
        self.flows, self.conns, self.n = {}, {}, 0
        self.verdicts = {"accept": 0, "drop": 0}
        self.kernel = {"queued": 0, "kernel_drop": 0, "pass": 0}

    def feed(self, ts, raw):
        i = self.n
        self.n += 1
        if ts > self.clock.now:
            self.clock.now = ts
            if self.model is not None:
                self.model.at = i - 1
            self.engine.tick(ts)
        now = self.clock.now
        p = parse(raw) if raw is not None else None
        drop = False
        if p is not None and p.proto in (TCP, UDP):
            drop = self._judge(p, i, now, ts)
        self.verdicts["drop" if drop else "accept"] += 1

    def _judge(self, p, i, now, ts):
        lan = self.engine.lan
        key = (p.proto, *sorted([(p.src, p.sport), (p.dst, p.dport)]))
        flow = self.flows.get(key)
        if flow is None:
            client = (p.dst, p.dport) if p.dst in lan and p.src not in lan else (p.src, p.sport)
            flow = self.flows[key] = {"client": client, "packets": 0, "dropped": 0, "flag": None, "first": ts,
                                      "peer": (p.src, p.sport) if client == (p.dst, p.dport) else (p.dst, p.dport)}
        flow["packets"] += 1
        c = self.conns.get(key)
        gap = now - c["last"] if c else 0.0
        if c is not None:
            if p.proto == UDP:
                replied = c["sides"] == 2
                new = gap > UDP_STREAM_TIMEOUT or (gap > UDP_TIMEOUT and not replied)
            else:
                new = gap > TCP_TIMEOUT or (p.is_syn and c["finrst"])
        if c is None or new:
            client = (p.dst, p.dport) if p.dst in lan and p.src not in lan else (p.src, p.sport)
            c = self.conns[key] = {"client": client, "sent": 0, "recv": 0, "pay_out": False, "pay_in": False,
                                   "sides": 0, "seen": set(), "finrst": False, "solicited": client == (p.src, p.sport)}
        c["last"] = now
        side = (p.src, p.sport)
        c["seen"].add(side)
        c["sides"] = len(c["seen"])
        if p.proto == TCP and p.flags & (FIN | 0x04):
            c["finrst"] = True
        out = side == c["client"]
        c["sent" if out else "recv"] += 1
        second = False
        after_short = False
        if p.proto == TCP and p.end > p.off:
            k = "pay_out" if out else "pay_in"
            p.first, c[k] = not c[k], True
            after_short = c.get("short", False)  # rules.py: a short first payload came before
            marks = "tcp_payload" in self.policy.wants if out else (
                "tcp_payload_in" in self.policy.wants and c["solicited"])
            if p.first and marks and short_first(p.end, p.version == 6):
                c["short"] = True
            if out:  # the payload after a first one of a shape-read size (rules.py's "second")
                c["outs"] = c.get("outs", 0) + 1
                sizes = self.policy.first_sizes
                if c["outs"] == 1:
                    c["sized"] = bool(sizes) and sizes[0] <= p.end - p.off <= sizes[1] and p.dport not in SERVICE_PORTS
                second = c["outs"] == 2 and c.get("sized", False)
        p.second = second
        p.direction, p.ts = (FROM_LAN if out else TO_LAN), ts
        peer_set, note, lock_note = None, None, None
        udp_locked = False
        if out and self.model is not None:
            self.model.at = i
            src, dst = KernelModel.key(p.src), KernelModel.key(p.dst)
            for kind, mkey in (("peers", dst), ("nolock", dst), ("pair", (src, dst))):
                note = self.model.holds(kind, mkey, i, now)
                if note is not None:
                    peer_set = kind
                    break
            lock_note = self.model.holds("locks", src, i, now)
            udp_locked = self.model.holds("udplocks", src, i, now) is not None
        where = kernel_verdict(self.policy, p, out, c["sent"], c["recv"], peer_set, lock_note is not None,
                               solicited=c["solicited"], second=second, udp_locked=udp_locked,
                               after_short=after_short)
        if where == KERNEL_DROP:
            self.kernel["kernel_drop"] += 1
            flow["dropped"] += 1
            if flow["flag"] is None:
                if peer_set is not None and not (peer_set == "pair" and not self.policy.lan_interfaces):
                    flow["flag"] = (parse_comment(note)[0], "peer blocked")
                else:
                    flow["flag"] = (parse_comment(lock_note)[0], "client locked")
            return True
        if where != QUEUE:
            self.kernel["pass"] += 1
            return False
        self.kernel["queued"] += 1
        if self.model is not None:
            self.model.at = i
        v = self.engine.handle(p)
        self.engine.outbox.clear()
        if v.drop:
            flow["dropped"] += 1
        if v.detector and flow["flag"] is None:
            flow["flag"] = (v.detector, v.reason)
        return v.drop

    def report(self):
        flows = sorted(({"proto": {TCP: "tcp", UDP: "udp"}[k[0]], "client": ip_text(f["client"][0]),
                         "client_port": f["client"][1], "peer": ip_text(f["peer"][0]), "peer_port": f["peer"][1],
                         "packets": f["packets"], "dropped": f["dropped"],
                         "detector": f["flag"][0] if f["flag"] else None, "reason": f["flag"][1] if f["flag"] else ""}
                        for k, f in self.flows.items()), key=_flow_key)
        return {"packets": self.n, "verdicts": self.verdicts, "kernel": self.kernel, "flows": flows}


def _flow_key(f):
    return (f["proto"], f["client"], f["client_port"], f["peer"], f["peer_port"])


def _settings(**network):
    return from_dict({"network": {"lan_networks": ["192.168.0.0/16", "10.0.0.0/8", "172.16.0.0/12"], **network},
                      "lock": {"seconds": 30}})


def _compare(records, settings=None):
    settings = settings or _settings()
    detectors = plugins.load(None, settings)
    ref = Reference(settings, detectors)
    for ts, raw in records:
        ref.feed(ts, raw)
    rp = Replay(settings, plugins.load(None, settings))
    for ts, raw in records:
        rp.feed(ts, raw)
    got = rp.report()
    want = ref.report()
    flows = sorted(({k: f[k] for k in want["flows"][0]} for f in got["flows"]), key=_flow_key) if want["flows"] else []
    assert (got["packets"], got["verdicts"], got["kernel"]) == (want["packets"], want["verdicts"], want["kernel"])
    assert flows == want["flows"]
    return got


def _records(*names):
    return [r for name in names for r in pcap.read(str(CAPTURES / f"{name}.pcap"))]


@pytest.mark.parametrize("name", sorted(p.stem for p in CAPTURES.glob("*.pcap")))
def test_each_bundled_capture_replays_as_the_per_packet_model(name):
    _compare(_records(name))


def test_captures_repeated_hours_apart_and_interleaved_replay_as_the_per_packet_model():
    """Connections end and start again (UDP timeouts, SYNs after FINs), peers are blocked
    then learned again, kernel set elements run out: all as one packet at a time would."""
    base = _records("gnutella", "bittorrent", "edonkey", "bt_search", "dns", "quic")
    t0 = min(ts for ts, _ in base)
    records = []
    for copy in range(3):
        records += [(ts - t0 + copy * 90000.0, raw) for ts, raw in base]  # longer than a block
    rng = random.Random(5)
    shuffled = sorted(records, key=lambda r: r[0] + rng.random() * 40)  # times out of order too
    _compare(shuffled)
    _compare(records, _settings(lan_interfaces=["br0"]))  # client-scoped blocks in the kernel too


def test_a_udp_flow_silent_past_the_conntrack_timeout_is_a_new_connection():
    ping = udp(LAN, PEER, 4000, 5000, b"x" * 30)
    got = Replay(_settings(), plugins.load(None, _settings()))
    for i in range(12):  # unanswered, a minute apart: each one a new connection, each queued
        got.feed(1000.0 + 60 * i, ping)
    assert got.report()["kernel"]["queued"] == 12
    again = Replay(_settings(), plugins.load(None, _settings()))
    for i in range(12):  # answered, ten seconds apart: one connection, queued up to the bound
        again.feed(1000.0 + 10 * i, ping)
        again.feed(1000.5 + 10 * i, udp(PEER, LAN, 5000, 4000, b"y" * 30))
    k = again.report()["kernel"]
    assert k["queued"] < 24 and k["pass"] > 0


def test_a_syn_after_fin_on_the_same_ports_is_a_new_connection():
    rp = Replay(_settings(), plugins.load(None, _settings()))
    t = 1000.0
    for _ in range(2):
        rp.feed(t, tcp(LAN, WEB, 40000, 80, flags=SYN))
        for k in range(10):
            rp.feed(t + 0.1 + k / 100, tcp(LAN, WEB, 40000, 80, b"data" * 50, flags=ACK))  # not a short opening
        rp.feed(t + 0.5, tcp(LAN, WEB, 40000, 80, flags=FIN | ACK))
        t += 5
    report = rp.report()
    assert len(report["flows"]) == 1
    assert report["kernel"]["queued"] == 2  # each connection's SYN; nothing else of plain data
    assert _compare([(1000.0 + i, r) for i, r in enumerate(
        [tcp(LAN, WEB, 40000, 80, flags=SYN), tcp(LAN, WEB, 40000, 80, flags=FIN | ACK),
         tcp(LAN, WEB, 40000, 80, flags=SYN)])])["kernel"]["queued"] == 2


def test_the_kernel_drops_what_the_engine_never_sees_while_the_set_holds_it():
    """KaZaA pings from two clients block their peer LAN-wide (one client's, with LAN
    interfaces, for that client in the pair set); a bulk UDP flow to it, past the queue's
    packet bound, is dropped by the kernel set until the block runs out, then passes."""
    from p2pwall_plugins.fasttrack import make_ping

    for pingers, network, scope in (([LAN, LAN2], {}, "lan"), ([LAN], {"lan_interfaces": ["br0"]}, "client")):
        settings = from_dict({"network": {"lan_networks": ["192.168.0.0/16"], **network}, "lock": {"seconds": 30},
                              "peers": {"seconds": 100}})
        rp = Replay(settings, plugins.load(["fasttrack"], settings))
        bulk = udp(LAN, PEER, 6000, 7000, b"z" * 200)
        for i in range(20):  # an established flow: past the bound it is never queued
            rp.feed(1000.0 + i / 10, bulk)
            rp.feed(1000.05 + i / 10, udp(PEER, LAN, 7000, 6000, b"w" * 200))
        for client in pingers:
            rp.feed(1003.0, udp(client, PEER, 3000, 1214, make_ping()))
        for i in range(10):
            rp.feed(1004.0 + i, bulk)
        for i in range(10):
            rp.feed(1200.0 + i, bulk)  # the block ran out (100 s)
        report = rp.report()
        flow = next(f for f in report["flows"] if f["client_port"] == 6000)
        assert (flow["dropped"], flow["detector"], flow["reason"], flow["scope"]) == \
            (10, "fasttrack", "peer blocked", scope), (network, flow)


def test_the_header_reader_agrees_with_parse_on_every_bundled_capture(tmp_path):
    odd = [udp(LAN, PEER, 1, 2, b"v4"), udp("2001:db8:1::5", "2001:db8:3::9", 1, 2, b"v6"),
           _with_options(udp(LAN, PEER, 3, 4, b"options")), _fragment(udp(LAN, PEER, 5, 6, b"frag" * 10)),
           _hop_by_hop(udp("2001:db8:1::5", "2001:db8:3::9", 7, 8, b"ext")), b"\x45" + b"\x00" * 10,
           tcp(LAN, PEER, 9, 10, b"t" * 5)[:30]]
    sources = [[raw for _, raw in pcap.read(str(path))] for path in sorted(CAPTURES.glob("*.pcap"))] + [odd]
    for raws in sources:
        seg = capindex.from_records([(float(i), r) for i, r in enumerate(raws)])
        h = capindex.headers(seg)
        want = [(i, p) for i, p in ((i, parse(r) if r is not None else None) for i, r in enumerate(raws))
                if p is not None and p.proto in (TCP, UDP)]
        assert h.rows.tolist() == [i for i, _ in want]
        for k, (i, p) in enumerate(want):
            assert capindex.address(h.src_hi[k], h.src_lo[k], bool(h.v6[k])) == p.src
            assert capindex.address(h.dst_hi[k], h.dst_lo[k], bool(h.v6[k])) == p.dst
            assert (int(h.proto[k]), int(h.sport[k]), int(h.dport[k]), int(h.flags[k])) == \
                (p.proto, p.sport, p.dport, p.flags)
            start = int(h.payoff[k])
            assert bytes(seg.buf[start:start + int(h.paylen[k])]) == p.data


def test_a_file_and_the_same_packets_fed_one_by_one_give_one_report(tmp_path):
    path = CAPTURES / "bittorrent.pcap"
    a = Replay(_settings(), plugins.load(None, _settings()))
    a.feed_file(str(path))
    b = Replay(_settings(), plugins.load(None, _settings()))
    for ts, raw in pcap.read(str(path)):
        b.feed(ts, raw)
    ra, rb = a.report(), b.report()
    assert ra["flows"] == rb["flows"] and ra["kernel"] == rb["kernel"]


def _with_options(raw: bytes) -> bytes:
    head, rest = raw[:20], raw[20:]
    head = bytes([0x46]) + head[1:2] + struct.pack("!H", len(raw) + 4) + head[4:10] + b"\0\0" + head[12:]
    return head + b"\x01\x01\x01\x00" + rest  # checksum left zero: nobody here checks it


def _fragment(raw: bytes) -> bytes:
    return raw[:6] + b"\x20\x00" + raw[8:]  # more fragments, offset 0: the first fragment


def _hop_by_hop(raw: bytes) -> bytes:
    plen = struct.unpack("!H", raw[4:6])[0] + 8
    return raw[:4] + struct.pack("!H", plen) + b"\x00" + raw[7:40] + bytes([raw[6], 0]) + b"\x01\x04\0\0\0\0" + raw[40:]


def _write_pcap(path, payloads, cut=0):
    data = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 101)
    for i, p in enumerate(payloads):
        data += struct.pack("<IIII", 1_600_000_000 + i, i % 1000, len(p), len(p)) + p
    path.write_bytes(data[:len(data) - cut] if cut else data)
    return str(path)


def _same_columns(a, b) -> None:
    import dataclasses

    assert a.ts.tolist() == b.ts.tolist() and a.ip.tolist() == b.ip.tolist() and a.iplen.tolist() == b.iplen.tolist()
    assert a.warning == b.warning
    for f in dataclasses.fields(capindex.Headers):
        x, y = getattr(a.headers, f.name), getattr(b.headers, f.name)
        assert x.dtype == y.dtype and x.tolist() == y.tolist(), f.name


@pytest.mark.parametrize("cut,tail", [(0, 0), (7, 0), (20, 0), (0, 10)])
def test_the_record_walk_in_c_and_in_python_find_every_record_and_the_cut(tmp_path, monkeypatch, cut, tail):
    """Small blocks, so the walk crosses many block ends; a file cut inside the last
    record's data (7 or 20 bytes short), or ending in 10 bytes of a record header."""
    if capindex._capwalk is None:
        pytest.skip("p2pwall._capwalk was not built (no C compiler at install time)")
    rng = random.Random(cut)
    payloads = [udp(LAN, PEER, 1000 + i, 53, rng.randbytes(rng.randrange(0, 300))) for i in range(3000)]
    path = _write_pcap(tmp_path / "c.pcap", payloads, cut)
    with open(path, "ab") as f:
        f.write(b"\x01" * tail)
    monkeypatch.setattr(capindex, "_BLOCK_BYTES", 4096)
    in_c = capindex.read_file(path)
    monkeypatch.setattr(capindex, "_capwalk", None)
    in_python = capindex.read_file(path)
    _same_columns(in_c, in_python)
    assert (in_c.warning is None) == (cut == 0 and tail == 0)
    assert ("packet record" in (in_c.warning or "")) == (tail > 0)
    assert len(in_c) == 3000 - (1 if cut else 0)
    assert len(in_c.headers.rows) == len(in_c)  # every one of them read as UDP


def test_the_c_walk_is_built_where_a_compiler_is():
    """The install builds it when it can (setup.py); replay's speed depends on it."""
    import shutil

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here: replay walks captures in Python")
    assert capindex._capwalk is not None


def test_the_c_walk_refuses_a_buffer_that_holds_no_int64s():
    if capindex._capwalk is None:
        pytest.skip("p2pwall._capwalk was not built")
    with pytest.raises(ValueError):
        capindex._capwalk.walk(b"\0" * 64, 0, 64, False, bytearray(12))


def test_ipv6_traffic_replays_as_the_per_packet_model():
    """Pings from two IPv6 clients make a peer LAN-wide; a bulk flow to it is then
    dropped by the (modelled) -6 set, the engine never seeing it; TCP too."""
    from p2pwall_plugins.fasttrack import make_ping

    c1, c2, peer, web = "2001:db8:1::10", "2001:db8:1::11", "2001:db8:3::9", "2001:db8:3::50"
    records = []
    for i in range(20):
        records.append((1000.0 + i / 10, udp(c1, peer, 6000, 7000, b"z" * 100)))
        records.append((1000.05 + i / 10, udp(peer, c1, 7000, 6000, b"w" * 100)))
    records += [(1003.0, udp(c1, peer, 3000, 1214, make_ping())), (1003.1, udp(c2, peer, 3001, 1214, make_ping()))]
    records += [(1004.0 + i, udp(c1, peer, 6000, 7000, b"z" * 100)) for i in range(10)]
    records += [(1005.0, tcp(c2, peer, 40000, 1214, flags=SYN)), (1006.0, tcp(c2, web, 40001, 80, flags=SYN))]
    settings = from_dict({"network": {"lan_networks": ["2001:db8:1::/64"]}, "lock": {"seconds": 30}})
    got = _compare(records, settings)
    flow = next(f for f in got["flows"] if f["client_port"] == 6000)
    assert flow["dropped"] == 10 and flow["scope"] == "lan"
    assert got["kernel"]["kernel_drop"] >= 10


def test_a_client_locked_for_bittorrent_loses_its_udp_in_the_kernel_model():
    """A tracker announce locks the client: an established UDP flow of it past the queue's
    bound is dropped by the udplock chain (never seen by the engine) while the lock
    lasts, a DNS flow is not; after the lock the flow passes again.  The same as the
    per-packet model."""
    settings = from_dict({"network": {"lan_networks": ["192.168.0.0/16"]}, "lock": {"seconds": 30}})
    announce = b"GET /announce?info_hash=%12%34&peer_id=-qB4520-abc&port=6881 HTTP/1.1\r\nHost: t\r\n\r\n"
    records = []
    for i in range(20):  # established flows: past the bound they are never queued
        records += [(1000.0 + i / 10, udp(LAN, PEER, 6000, 51413, b"z" * 200)),
                    (1000.05 + i / 10, udp(PEER, LAN, 51413, 6000, b"w" * 200)),
                    (1000.06 + i / 10, udp(LAN, PEER, 6001, 53, b"d" * 40)),
                    (1000.07 + i / 10, udp(PEER, LAN, 53, 6001, b"e" * 40))]
    records += [(1003.0, tcp(LAN, WEB, 40000, 80, flags=SYN)), (1003.01, tcp(WEB, LAN, 80, 40000, flags=SYN | ACK)),
                (1003.02, tcp(LAN, WEB, 40000, 80, announce, flags=ACK))]
    records += [(1004.0 + i, udp(LAN, PEER, 6000, 51413, b"z" * 200)) for i in range(10)]
    records += [(1004.5 + i, udp(LAN, PEER, 6001, 53, b"d" * 40)) for i in range(10)]
    records += [(1100.0 + i, udp(LAN, PEER, 6000, 51413, b"z" * 200)) for i in range(5)]  # the lock is over
    got = Replay(settings, plugins.load(["bittorrent"], settings))
    for ts, raw in records:
        got.feed(ts, raw)
    flows = {f["peer_port"]: f for f in got.report()["flows"]}
    assert (flows[51413]["dropped"], flows[51413]["detector"], flows[51413]["reason"]) == \
        (10, "bittorrent", "client locked"), flows[51413]
    assert flows[53]["dropped"] == 0
    _compare(records, settings)


def test_pings_to_a_learned_peer_still_reach_the_engine_in_the_kernel_model():
    """A FastTrack client that goes on pinging a peer it learned: past the queue's packet
    bound, in a connection the kernel would call clean, every ping is still queued (the
    nft chains mark them: udp_answered) and dropped by the engine, which answers it;
    other datagrams to the peer die in the kernel.  The same as the per-packet model."""
    from p2pwall_plugins.fasttrack import make_ping

    settings = from_dict({"network": {"lan_networks": ["192.168.0.0/16"], "lan_interfaces": ["br0"]},
                          "lock": {"seconds": 30}})
    records = [(1000.0 + i, udp(LAN, PEER, 3000, 1214, make_ping())) for i in range(20)]
    records += [(1000.5 + i, udp(LAN, PEER, 3000, 1214, b"\x29\x00\x00\x00\x29\x01\x02")) for i in range(20)]
    records.sort(key=lambda r: r[0])
    got = Replay(settings, plugins.load(["fasttrack"], settings))
    for ts, raw in records:
        got.feed(ts, raw)
    report = got.report()
    assert report["kernel"]["queued"] >= 20 and report["kernel"]["kernel_drop"] >= 12, report["kernel"]
    assert report["verdicts"]["drop"] == 40
    _compare(records, settings)


def test_utp_syns_to_a_learned_peer_lock_the_client_in_the_kernel_model():
    """A uTP client that retries its SYN to a peer whose first SYN was dropped (as
    Transmission does): the kernel still queues those SYNs (udp_answered), the engine
    locks the client, and from then on its UDP but the service ports dies in the kernel
    (udplocks) while its DNS goes on.  The same as the per-packet model."""
    syn = bytes([0x41, 0]) + struct.pack("!HIIIHH", 1234, 1, 0, 1 << 20, 1, 0)
    settings = from_dict({"network": {"lan_networks": ["192.168.0.0/16"], "lan_interfaces": ["br0"]},
                          "lock": {"seconds": 30}})
    records = [(1000.0 + i, udp(LAN, PEER, 51413, 6881, syn)) for i in range(6)]
    records += [(1010.0 + i, udp(LAN, WEB, 51413, 7000 + i, b"\x01" + bytes(40))) for i in range(3)]
    records += [(1013.0, udp(LAN, WEB, 40000, 53, bytes(30)))]
    got = Replay(settings, plugins.load(["bittorrent"], settings))
    for ts, raw in records:
        got.feed(ts, raw)
    report = got.report()
    flows = {f["peer_port"]: f for f in report["flows"]}
    assert flows[6881]["dropped"] == 6 and flows[6881]["detector"] == "bittorrent", flows[6881]
    assert report["kernel"] == {"queued": 7, "kernel_drop": 3, "pass": 0}, report["kernel"]
    assert all(flows[7000 + i]["dropped"] == 1 for i in range(3)) and flows[53]["dropped"] == 0, flows
    assert any(e["kind"] == "client_locked" and e["reason"] == "uTP SYN to blocked peer"
               for e in report["events"]), report["events"]
    _compare(records, settings)


def test_split_handshakes_replay_as_the_per_packet_model():
    """A handshake whose first byte goes alone, one in three segments, either way, and an
    ordinary connection with a short opening: the kernel model queues what the short rule
    queues, the engine joins it, and replay agrees with the per-packet reference."""
    hs = b"\x13BitTorrent protocol" + bytes(8) + b"h" * 20 + b"-qB4520-" + b"p" * 12
    records, t = [], 1000.0
    for port, cuts, peer_cuts in ((41000, [1], None), (41001, [1, 8], None), (41002, None, [1, 5]),
                                  (41003, "ssh", None)):
        peer = f"203.0.113.{port - 40990}"
        records.append((t, tcp(LAN, peer, port, 6881)))
        records.append((t + 0.01, tcp(peer, LAN, 6881, port, flags=SYN | ACK, seq=5000, ack=1001)))
        if cuts == "ssh":
            data, cuts = b"SSH-2.0-OpenSSH_9.2p1\r\n" + bytes(300), [23]
        else:
            data = hs if cuts else b"GET /x HTTP/1.0\r\n\r\n"  # a short request the peer answers split
        at, seq = 0, 1001
        for k, cut in enumerate((cuts or []) + [len(data)]):
            records.append((t + 0.02 + k / 100, tcp(LAN, peer, port, 6881, data[at:cut], flags=PSH | ACK, seq=seq)))
            seq += cut - at
            at = cut
        if peer_cuts:
            at, seq = 0, 5001
            for k, cut in enumerate(peer_cuts + [len(hs)]):
                records.append((t + 0.1 + k / 100, tcp(peer, LAN, 6881, port, hs[at:cut], flags=PSH | ACK, seq=seq)))
                seq += cut - at
                at = cut
        t += 1
    got = _compare(records)
    flagged = {f["peer"]: f["detector"] for f in got["flows"]}
    assert flagged["203.0.113.10"] == flagged["203.0.113.11"] == flagged["203.0.113.12"] == "bittorrent", flagged
    assert flagged["203.0.113.13"] is None  # SSH's banner, then its key exchange: nothing
