"""Evidence before collateral, on the real kernel: what a browser, an ordinary protocol
or one hostile host can make p2pwall do costs the other hosts nothing.

The poisoning lab: host A makes browser-shaped requests for tracker, FastTrack and
Gnutella URLs on web server W (curl with a Mozilla agent and Sec-Fetch headers), posts
bodies that carry Kazaa headers and a BitTorrent handshake in a segment of their own,
and sends one crafted FastTrack ping to the DNS server D (the gateway's nameserver);
host B fetches from W and resolves through D all along.  Then the hostile cases: an
unsolicited inbound DHT answer, a web server that answers with a peer list, spoofed
probe answers and SYNs from the LAN and the WAN side.  And what must still work: a peer
that answers with P2P is blocked for the whole LAN at once."""

from __future__ import annotations

import json
import sys
import threading
import time

import pytest

from .conftest import network
from .helpers import start_server, tcp, udp, wait_until

pytestmark = pytest.mark.e2e
TOOL = ("-m", "p2pwall_lab.testbed.traffic")
UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
BROWSER = ["-A", UA, "-H", "Sec-Fetch-Dest: image", "-H", "Sec-Fetch-Mode: no-cors", "-H", "Sec-Fetch-Site: cross-site",
           "-H", "Accept: image/avif,image/webp,*/*"]

HOSTILE = """
import socket, sys, threading
addr, port, reply = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((addr, port)); s.listen(16)
print('{"ready": true}', flush=True)
def serve(c):
    with c:
        c.settimeout(2 if port != 6881 else 0.3)  # 6881 speaks first when the client says nothing
        try:
            try:
                c.recv(4096)
            except socket.timeout:
                if port != 6881:
                    raise
            c.settimeout(2)
            c.sendall(reply)
            c.recv(4096)
        except OSError:
            pass
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


@pytest.fixture(scope="module")
def cnet():
    yield from network(60)


@pytest.fixture(scope="module")
def lab(cnet):
    net = cnet
    web, dns, hostile, talker = net.outside[50], net.outside[51], net.outside[52], net.outside[53]
    net.start(net.out, sys.executable, "-m", "http.server", "80", "--bind", web, "--directory", str(net.dir),
              log="web.log", ready="Serving HTTP")
    start_server(net, net.out, "dns.jsonl", udp_ports="53,6881", tcp_ports="8081")
    compact = bytes([203, 0, 113, 40, 0x1A, 0xE1]) * 3
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n\r\nd8:intervali1800e5:peers18:" + compact + b"e"
    net.start(net.out, sys.executable, "-c", HOSTILE, hostile, "8080", answer.hex(), log="hostile.log")
    handshake = b"\x13BitTorrent protocol" + bytes(8) + bytes(range(20)) + b"-XX0001-" + bytes(12)
    net.start(net.out, sys.executable, "-c", HOSTILE, talker, "6881", handshake.hex(), log="talker.log")
    net.start(net.out, sys.executable, "-c", HOSTILE, hostile, "8082", handshake.hex(), log="hostile-bt.log")
    resolv = net.dir / "resolv.conf"
    resolv.write_text(f"nameserver {dns}\n")
    config = (f'[network]\nlan_interfaces = ["br0"]\nlan_networks = ["192.0.2.0/24"]\nresolv_conf = "{resolv}"\n'
              f'[lock]\nseconds = 10\n[status]\nsocket = "{net.dir}/status.sock"\n[state]\nfile = ""\n')
    d = net.p2pwall(config, "--log-format", "json", name="collateral")
    try:
        yield {"web": web, "dns": dns, "hostile": hostile, "talker": talker, "daemon": d}
    finally:
        d.stop()


def curl(net, ns, *args, timeout=3):
    return net.exec(ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(timeout), *args,
                    check=False, timeout=timeout + 10)


def blocked(d) -> dict:
    return {e["address"]: e for e in d.status()["peers"]["entries"]}


def test_a_web_page_and_one_crafted_packet_cost_the_other_hosts_nothing(cnet, lab):
    net, d = cnet, lab["daemon"]
    a, b = net.lans
    web, dns = lab["web"], lab["dns"]
    failures, rounds = [], []
    stop = threading.Event()

    def host_b():  # browses W and resolves through D every half second
        while not stop.is_set():
            ok_web = curl(net, b, f"http://{web}/").stdout == "200"
            ok_dns = udp(net, b, dns, 53, b"\x12\x34\x01\x00\x00\x01" + bytes(6), wait=1)[0]["reply"] is not None
            rounds.append(1)
            if not (ok_web and ok_dns):
                failures.append((time.time(), ok_web, ok_dns))
            stop.wait(0.5)

    t = threading.Thread(target=host_b)
    t.start()
    try:
        time.sleep(1)
        for path in ("/announce?info_hash=%01%02%03%04%05%06%07%08%09%0a%0b%0c%0d%0e%0f%10%11%12%13%14&peer_id=x",
                     "/.files", "/.hash=0123456789abcdef0123456789abcdef01234567",
                     "/uri-res/N2R?urn:sha1:PLSTHIPQGSSZTS5FJUPAKUZWUGYQYPFB"):
            curl(net, a, *BROWSER, f"http://{web}{path}")
        body = net.dir / "body.bin"  # what a no-preflight fetch POST can carry
        body.write_bytes(b"\x13BitTorrent protocol" + bytes(48) + b"\r\nX-Kazaa-SupernodeIP: " + dns.encode()
                         + b":53\r\n" + b"GNUTELLA CONNECT/0.6\r\n" * 4 + b"x" * 1500)
        # "Expect: 100-continue" makes curl send the body in segments of its own, as a page's
        # large POST does: a later segment that starts with a P2P handshake
        curl(net, a, *BROWSER, "-H", "Content-Type: text/plain", "-H", "Expect: 100-continue",
             "--data-binary", f"@{body}", f"http://{web}/upload")
        from p2pwall_plugins.fasttrack import make_ping

        udp(net, a, dns, 53, make_ping(), wait=0.5)  # one crafted FastTrack ping to the resolver
        time.sleep(4)
    finally:
        stop.set()
        t.join(30)
    snap = d.status()
    assert len(rounds) >= 8 and not failures, failures
    assert snap["locks"]["count"] == 0, snap["locks"]
    assert web not in blocked(d) and dns not in blocked(d), blocked(d)
    assert snap["events"].get("reported", 0) >= 4  # the browser-shaped requests were seen, and only reported
    assert curl(net, a, f"http://{web}/").stdout == "200"  # A was not locked either


def test_replies_nobody_asked_for_teach_nothing(cnet, lab):
    net, d = cnet, lab["daemon"]
    before = set(blocked(d))
    # a DHT answer out of the blue, naming nodes, to a LAN host
    nodes = b"d1:rd2:id20:" + bytes(20) + b"5:nodes26:" + bytes(20) + bytes([203, 0, 113, 41, 0x1A, 0xE1]) + \
        b"e1:t2:aa1:y1:re"
    net.exec(net.out, sys.executable, *TOOL, "udp", "--to", net.lan_ips[1], "--port", "6881", "--hex", nodes.hex(),
             "--wait", "0.3")
    # an ordinary request answered with a peer list by a hostile web server
    got = net.exec(net.lans[1], sys.executable, *TOOL, "tcp", "--to", lab["hostile"], "--port", "8080",
                   "--data", "GET /cat.png HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    assert json.loads(got.stdout)["connected"]
    time.sleep(0.5)
    assert set(blocked(d)) == before, set(blocked(d)) - before
    assert d.status()["locks"]["count"] == 0


def test_a_web_server_that_answers_a_browser_with_a_handshake_locks_no_visitor(cnet, lab):
    net, d = cnet, lab["daemon"]
    a, b = net.lans
    hostile = lab["hostile"]
    for _ in range(3):  # two <img> tags and a timer's reload
        curl(net, a, *BROWSER, f"http://{hostile}:8082/pixel.png")
    time.sleep(0.3)
    assert hostile not in blocked(d), blocked(d).get(hostile)
    assert d.status()["locks"]["count"] == 0
    assert d.status()["counters"].get("evidence_refused.reply_unasked", 0) >= 1  # seen, and refused
    for ns in (a, b):  # the visitor and everybody else still reach it
        assert tcp(net, ns, hostile, 8082, "GET / HTTP/1.0\\r\\n\\r\\n", timeout=1)["connected"]


def test_a_peer_that_answers_with_p2p_is_blocked_for_the_whole_lan_at_once(cnet, lab):
    net, d = cnet, lab["daemon"]
    a, b = net.lans
    talker = lab["talker"]
    refused = d.status()["counters"].get("evidence_refused.reply_unasked", 0)
    got = tcp(net, b, talker, 6881, timeout=1)  # B connects and says nothing; the peer speaks BitTorrent
    assert got["connected"]
    assert wait_until(lambda: d.status()["counters"].get("evidence_refused.reply_unasked", 0) > refused, 3)
    assert talker not in blocked(d)  # an answer to no request proves nothing (an SMTP client waits like this)
    assert d.status()["locks"]["count"] == 0
    mine = b"\x13BitTorrent protocol" + bytes(8) + bytes(range(20, 40)) + b"-qB4520-" + bytes(12)
    got = json.loads(net.exec(a, sys.executable, *TOOL, "tcp", "--to", talker, "--port", "6881",
                              "--hex", mine.hex(), "--timeout", "1").stdout)
    assert got["connected"]  # A asks in BitTorrent, the peer answers in BitTorrent
    entry = blocked(d).get(talker)
    assert entry is not None and entry["scope"] == "lan" and entry["evidence"] == "reply", entry
    assert not tcp(net, b, talker, 6881, timeout=1)["connected"]  # B never spoke to it: blocked all the same


def test_spoofed_probe_answers_and_syns_lock_nobody(cnet, lab):
    net, d = cnet, lab["daemon"]
    a, b = net.lans
    victim = net.lan_ips[1]
    pong = bytes.fromhex("2900000029")
    send = ("from scapy.all import IP, UDP, TCP, Raw, send, conf\nimport sys\nconf.verb = 0\n"
            "src, dst, kind, data = sys.argv[1], sys.argv[2], sys.argv[3], bytes.fromhex(sys.argv[4])\n"
            "p = IP(src=src, dst=dst) / (UDP(sport=1214, dport=1214) if kind == 'udp' else "
            "TCP(sport=40001, dport=80, flags='PA' if data else 'S', seq=1000, ack=1))\n"
            "send(p / Raw(data) if data else p, count=3)\n")
    assert blocked(d)[lab["talker"]]["scope"] == "lan"  # (the test before made it so)
    for ip in net.lan_ips:  # and locked B for its real SYN to the talker: start from no lock
        net.python(net.fw, "-m", "p2pwall", "unlock", ip, "--socket", f"{net.dir}/status.sock", check=False)
    assert d.status()["locks"]["count"] == 0
    # from the LAN: a pong to the gateway with B's address, a mid-stream Kazaa request, a SYN to a blocked peer
    net.exec(a, sys.executable, "-c", send, victim, "192.0.2.1", "udp", pong.hex())
    net.exec(a, sys.executable, "-c", send, victim, net.outside[5], "tcp",
             b"GET /.status HTTP/1.1\r\nUser-Agent: KazaaClient\r\n\r\n".hex())
    net.exec(a, sys.executable, "-c", send.replace("dport=80", "dport=6881"), victim, lab["talker"], "tcp", "")
    # from the WAN side: the same pong with B's address, sent to the gateway's outside address
    net.exec(net.out, sys.executable, "-c", send, victim, "198.51.100.1", "udp", pong.hex())
    time.sleep(0.5)
    snap = d.status()
    assert victim not in {e["address"] for e in snap["locks"]["entries"]}, snap["locks"]
    assert snap["counters"].get("evidence_refused.spoofed_neighbour", 0) >= 1  # A's MAC is not B's
    assert net.outside[5] not in blocked(d)
    assert curl(net, b, f"http://{lab['web']}/").stdout == "200"


SPOOF_FRAME = """
import sys
from scapy.all import Ether, IP, UDP, Raw, sendp, getmacbyip, conf
conf.verb = 0
src, dst, payload = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
gw = getmacbyip("192.0.2.1")
sendp(Ether(dst=gw) / IP(src=src, dst=dst) / UDP(sport=1214, dport=1214) / Raw(payload), iface="eth0", count=3)
"""


def test_one_host_cannot_pose_as_two_clients(cnet, lab):
    """A second "client" from an unused address of the segment (a raw frame), or from a
    second address of the same host (resolved, but at the same MAC): one station, so the
    peer stays blocked for that host alone and the other hosts reach it."""
    from p2pwall_plugins.fasttrack import make_ping

    net, d = cnet, lab["daemon"]
    a, b = net.lans
    for target, how in ((net.outside[44], "unused"), (net.outside[45], "second address")):
        assert udp(net, b, target, 6881, b"hello", wait=0.5)[0]["reply"] is not None  # the control
        udp(net, a, target, 1214, make_ping(), sport=1214, wait=0.3)  # A's own ping: blocked for A
        if how == "unused":
            net.exec(a, sys.executable, "-c", SPOOF_FRAME, "192.0.2.77", target, make_ping().hex())
        else:
            net.exec(a, "ip", "addr", "add", "192.0.2.78/24", "dev", "eth0")
            try:
                send = ("from scapy.all import IP, UDP, Raw, send, conf\nimport sys\nconf.verb = 0\n"
                        "send(IP(src='192.0.2.78', dst=sys.argv[1]) / UDP(sport=1214, dport=1214) / "
                        "Raw(bytes.fromhex(sys.argv[2])))\n")
                for _ in range(4):  # the gateway answers the first (a pong), resolves .78, then hears it again
                    net.exec(a, sys.executable, "-c", send, target, make_ping().hex())
                    time.sleep(0.4)
            finally:
                net.exec(a, "ip", "addr", "del", "192.0.2.78/24", "dev", "eth0", check=False)
        time.sleep(0.5)
        entry = blocked(d).get(target)
        assert entry is not None and entry["scope"] == "client", (how, entry)
        assert net.lan_ips[1] not in entry["clients"], (how, entry)
        assert udp(net, b, target, 6881, b"hello", wait=0.5)[0]["reply"] is not None, how  # B still reaches it
    assert d.status()["counters"].get("evidence_refused.spoofed_neighbour", 0) >= 1  # the unused address
    assert net.lan_ips[1] not in {e["address"] for e in d.status()["locks"]["entries"]}


FORGE = """
import sys, time
from scapy.all import ARP, Ether, IP, UDP, Raw, sendp, getmacbyip, get_if_hwaddr, conf
conf.verb = 0
victim, peer, payload, pings = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3]), int(sys.argv[4])
gw, me = getmacbyip("192.0.2.1"), get_if_hwaddr("eth0")
# "the victim's address is at my MAC", told to the gateway
sendp(Ether(dst=gw, src=me) / ARP(op=2, psrc=victim, hwsrc=me, pdst="192.0.2.1", hwdst=gw), iface="eth0", count=3)
time.sleep(2.5)  # the gateway takes it (its entry's lock time) and p2pwall reads its table
frame = Ether(dst=gw, src=me) / IP(src=victim, dst=peer) / UDP(sport=1214, dport=1214) / Raw(payload)
for _ in range(pings):
    sendp(frame, iface="eth0")
    time.sleep(0.3)
"""


def test_a_forged_arp_reply_gains_nothing_for_a_standing_period(cnet, lab):
    """Host A tells the gateway "B's address is at my MAC", then sends FastTrack pings as B.
    What it gains (p2pwall.neighbours): nothing while the change is fresh: the moved
    address earns nothing, so no peer is blocked for B and B is not locked; the change is
    logged.  B's own packets put the entry right again."""
    from p2pwall_plugins.fasttrack import make_ping

    net, d = cnet, lab["daemon"]
    a, b = net.lans
    target = net.outside[46]
    udp(net, b, target, 6881, b"hello", wait=0.5)  # B talks: the gateway has its entry
    refused = d.status()["counters"].get("evidence_refused.spoofed_neighbour", 0)
    net.exec(a, sys.executable, "-c", FORGE, net.lan_ips[1], target, make_ping().hex(), "4", timeout=60)
    try:
        mac_a = net.exec(a, "cat", "/sys/class/net/eth0/address").stdout.strip()
        neigh = net.exec(net.fw, "ip", "neigh", "show", net.lan_ips[1]).stdout
        assert mac_a in neigh, neigh  # the control: the gateway did take the forgery
        assert wait_until(lambda: '"event": "neighbour_changed"' in d.output(), timeout=5)
        assert target not in blocked(d)  # nothing was learned from the forged pings
        assert net.lan_ips[1] not in {e["address"] for e in d.status()["locks"]["entries"]}
        assert d.status()["counters"].get("evidence_refused.spoofed_neighbour", 0) >= refused + 1
    finally:  # the gateway's entry for B is put right (and only that one: the others stay resolved)
        mac_b = net.exec(b, "cat", "/sys/class/net/eth0/address").stdout.strip()
        net.exec(net.fw, "ip", "neigh", "replace", net.lan_ips[1], "lladdr", mac_b, "dev", "br0", "nud",
                 "reachable", check=False)
    assert udp(net, b, target, 6881, b"hello", wait=0.5)[0]["reply"] is not None  # B reaches it


def test_operators_block_unblock_and_unlock_within_a_second_and_across_a_restart(cnet, lab, tmp_path):
    net = cnet
    lab["daemon"].stop()  # this test runs a daemon of its own, with a state file
    a, b = net.lans
    target = net.outside[20]
    config = (f'[network]\nlan_interfaces = ["br0"]\nlan_networks = ["192.0.2.0/24"]\n'
              f'[lock]\nseconds = 600\n[status]\nsocket = "{net.dir}/ops.sock"\n[state]\nfile = "{tmp_path}/state.json"\n')

    def ask(*args):
        return net.python(net.fw, "-m", "p2pwall", *args, "--socket", f"{net.dir}/ops.sock", check=False)

    d = net.p2pwall(config, "--plugin", "fasttrack", name="ops-1")
    try:
        assert tcp(net, b, target, 8081, timeout=1)["connected"]
        t0 = time.monotonic()
        assert ask("block", target, "--seconds", "3600").returncode == 0
        assert not tcp(net, b, target, 8081, timeout=0.5)["connected"]
        assert time.monotonic() - t0 < 3  # the command, then the kernel at once (the connect itself waits 0.5 s)
        shown = json.loads(ask("status", "--address", target, "--format", "json").stdout)
        assert shown["peer"]["scope"] == "lan" and shown["peer"]["evidence"] == "operator"
        # a client locked the ordinary way: FastTrack ping, then a SYN to that peer
        from p2pwall_plugins.fasttrack import make_ping

        locked_peer = net.outside[21]
        udp(net, a, locked_peer, 1214, make_ping(), sport=1214, wait=0.3)
        assert not tcp(net, a, locked_peer, 8081, timeout=0.5)["connected"]
        assert not tcp(net, a, net.outside[22], 8081, timeout=0.5)["connected"]  # locked: every SYN
    finally:
        assert d.stop() == 0
    d = net.p2pwall(config, "--plugin", "fasttrack", name="ops-2")  # a restart keeps both
    try:
        assert not tcp(net, b, target, 8081, timeout=0.5)["connected"]
        assert not tcp(net, a, net.outside[22], 8081, timeout=0.5)["connected"]
        assert ask("unlock", net.lan_ips[0]).returncode == 0
        assert tcp(net, a, net.outside[22], 8081, timeout=1)["connected"]  # free at once
        assert ask("unblock", target).returncode == 0
        assert tcp(net, b, target, 8081, timeout=1)["connected"]
        done = ask("unblock", "not-an-address")
        assert done.returncode == 2 and "not an IP address" in done.stderr and "Traceback" not in done.stderr
    finally:
        assert d.stop() == 0
    d = net.p2pwall(config, "--plugin", "fasttrack", name="ops-3")  # and the undoing survives too
    try:
        assert tcp(net, b, target, 8081, timeout=1)["connected"]
        assert tcp(net, a, net.outside[22], 8081, timeout=1)["connected"]
    finally:
        d.stop()

