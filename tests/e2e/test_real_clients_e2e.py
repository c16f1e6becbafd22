"""P2P programs people run, with their default settings, through the real daemon with
every detector.

libtorrent-rasterbar (Debian's ``python3-libtorrent``: the engine of qBittorrent and
Deluge) on the leecher and on three seeders at three outside addresses, the private-
tracker way: the tracker only over HTTPS (stunnel in front), no DHT, no local discovery.
Its defaults: uTP first (its SYN announces a receive window of 0), then TCP; encryption
enabled, or required.  Without p2pwall the whole file arrives over uTP; with it no piece
verifies and at most 64 KiB of peer payload reaches the leecher, the other LAN host
browses throughout, and the offender is free one lock period after its client stops.

Transmission (``transmission-cli`` 3.00, libutp and its own MSE) leeches from the same
swarm with its defaults: uTP first to the peers the tracker names, encryption preferred.
Without p2pwall the file arrives over uTP; with it not one byte from a seeder does."""

from __future__ import annotations

import json
import sys
import time

import pytest

from .helpers import Browsing
from .swarm import LtSwarm, TrLeecher, have_libtorrent, have_transmission

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not have_libtorrent(), reason="python3-libtorrent is not installed")]
LOCK = 5


@pytest.fixture
def shaped(net):
    """The peers' uplink at 20 Mbit/s (a generous residential upload): on bare veth links
    a piece would cross in the time a kernel set update takes, which no real swarm does."""
    net.exec(net.out, "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", "20mbit", "burst", "32kbit",
             "latency", "50ms")
    yield
    net.exec(net.out, "tc", "qdisc", "del", "dev", "eth0", "root", check=False)


def _free_again(net, web) -> bool:
    deadline = time.monotonic() + 2 * LOCK + 5
    while time.monotonic() < deadline:
        done = net.exec(net.lans[0], sys.executable, "-m", "p2pwall_lab.testbed.traffic", "http", "--url",
                        f"http://{web}/f", "--timeout", "1", check=False)
        if json.loads(done.stdout or '{"ok": false}')["ok"]:
            return True
        time.sleep(0.5)
    return False


@pytest.mark.parametrize("crypto", ["enabled", "required"])
def test_libtorrent_private_swarm_is_stopped(net, ordinary, shaped, crypto):
    bare = LtSwarm(net, f"lt-{crypto}-bare", crypto=crypto)
    try:
        bare.start()
        got = bare.leech(stop_after=20)
        assert bare.pieces_received() == 8, got  # the control run: the whole file arrives
        assert any(p.endswith("/utp") or "/utp/" in p for p in got["peers"]), got  # over uTP, as shipped
    finally:
        bare.stop()

    swarm = LtSwarm(net, f"lt-{crypto}", crypto=crypto)
    daemon = net.p2pwall(net.base_config(lock_seconds=LOCK), name=f"lt-{crypto}")
    browsing = Browsing(net, f"http://{ordinary}/f")
    try:
        swarm.start()
        browsing.start()
        got = swarm.leech(stop_after=15)
        assert swarm.pieces_received() == 0 and got["pieces"] == 0, got
        assert got["payload"] <= 64 * 1024, got
        snap = daemon.status()
        entries = {e["address"]: e for e in snap["peers"]["entries"]}
        assert set(swarm.seeders) <= set(entries), entries  # every seeder it tried, blocked for it
        assert all(entries[ip]["scope"] == "client" for ip in swarm.seeders)
        assert swarm.tracker_ip not in entries  # the HTTPS tracker itself is ordinary TLS on 443
        assert snap["drops_by_detector"].get("bittorrent", 0) > 0
    finally:
        results = browsing.stop()
        swarm.stop()
    try:
        assert _free_again(net, ordinary)  # the client stopped: one lock period later the host is free
    finally:
        daemon.stop()
    assert results and all(results), results  # the other LAN host's web downloads worked throughout


@pytest.mark.skipif(not have_transmission(), reason="transmission-cli is not installed")
def test_transmission_private_swarm_is_stopped(net, ordinary, shaped):
    bare = LtSwarm(net, "tr-bare")
    try:
        bare.start()
        got = TrLeecher(bare).run(seconds=60)
        # the control run: the whole file, over uTP as shipped (the seeders unchoke it
        # at their choker's next round, up to 15 s after the handshakes)
        assert got["pieces"] == 8 and got["udp"] > len(bare.payload), got
    finally:
        bare.stop()

    swarm = LtSwarm(net, "tr")
    daemon = net.p2pwall(net.base_config(lock_seconds=LOCK), name="tr")
    browsing = Browsing(net, f"http://{ordinary}/f")
    try:
        swarm.start()
        browsing.start()
        got = TrLeecher(swarm).run(seconds=max(25, 1.5 * got["seconds"]))  # longer than the control needed
        snap = daemon.status()
    finally:
        results = browsing.stop()
        swarm.stop()
    try:
        free = _free_again(net, ordinary)  # the client stopped: one lock period later the host is free
    finally:
        daemon.stop()
    assert got["pieces"] == 0 and got["udp"] + got["tcp"] <= 16 * 1024, got  # no piece, hardly a handshake
    entries = {e["address"]: e for e in snap["peers"]["entries"]}
    assert set(swarm.seeders) <= set(entries), entries  # every seeder it tried, blocked for it
    assert all(entries[ip]["scope"] == "client" for ip in swarm.seeders)
    assert swarm.tracker_ip not in entries and snap["drops_by_detector"].get("bittorrent", 0) > 0
    # Transmission 3.00 sends one uTP SYN to each peer the tracker names and, that dropped,
    # tries it no more (150 s watched): each seeder blocked at its SYN, nothing to lock on
    assert net.lan_ips[1] not in {e["address"] for e in snap["locks"]["entries"]} and free
    assert results and all(results), results  # the other LAN host's web downloads worked throughout


def test_a_utp_syn_to_a_peer_blocked_for_the_client_locks_it_in_the_kernel_path(net):
    """uTP's SYN locks as TCP's does: the first to a peer blocks the peer for the client;
    the next one to it (a client retrying, or going back to a peer it knew) still reaches
    the engine through the nft chains (udp_answered) and locks the client, whose UDP then
    dies in the kernel but for the service ports; the other LAN host is not locked."""
    import struct

    from .helpers import udp, wait_until

    syn = bytes([0x41, 0]) + struct.pack("!HIIIHH", 4321, 1, 0, 0, 7, 0)  # libtorrent's form: window 0
    peer = net.outside[8]
    daemon = net.p2pwall(net.base_config(lock_seconds=LOCK), "--plugin", "bittorrent", name="utpsyn")
    try:
        udp(net, net.lans[0], peer, 6881, syn, sport=42001, wait=0.3)
        assert wait_until(lambda: (net.lan_ips[0], peer) in net.kernel_set("pairs4"), timeout=3)  # for it alone
        assert daemon.status()["locks"]["count"] == 0  # a first SYN blocks the peer, locks nobody
        udp(net, net.lans[0], peer, 6881, syn, sport=42002, wait=0.3)
        locks = {e["address"]: e for e in daemon.status()["locks"]["entries"]}
        assert locks.get(net.lan_ips[0], {}).get("reason") == "uTP SYN to blocked peer", locks
        assert net.lan_ips[0] in net.kernel_set("udplocks4") and net.lan_ips[1] not in locks
    finally:
        daemon.stop()


def test_a_client_locked_for_bittorrent_loses_its_udp_in_the_kernel(net):
    """A tracker announce locks the client; for the lock's time its UDP to any port but the
    service ones is dropped in the kernel (the nft udplock chain), a flow it had going
    before included; its DNS/NTP/QUIC ports go on, the other LAN host is untouched, and
    after the lock its UDP flows again."""
    from .helpers import arrivals, start_server, tcp, udp

    log = start_server(net, net.out, "udplock.jsonl", udp_ports="123,853,51413,9999", tcp_ports="6969")
    peer, tracker = net.outside[6], net.outside[7]
    daemon = net.p2pwall(net.base_config(lock_seconds=LOCK), "--plugin", "bittorrent", name="udplock")
    try:
        before = udp(net, net.lans[0], peer, 9999, b"going", sport=40001, wait=0.5)
        assert before[0]["reply"] is not None  # a UDP flow up before the lock
        announce = "GET /announce?info_hash=%12%34&peer_id=-qB4520-abcdefghijkl&port=6881 HTTP/1.1\r\nHost: t\r\n\r\n"
        tcp(net, net.lans[0], tracker, 6969, announce, timeout=1)
        assert daemon.status()["locks"]["count"] == 1
        assert net.lan_ips[0] in net.kernel_set("udplocks4")
        for port, sport in ((9999, 40001), (51413, 40002), (9999, 0)):  # the old flow, new ones
            assert udp(net, net.lans[0], peer, port, b"locked", sport=sport, wait=0.5)[0]["reply"] is None, port
        for port in (123, 853):  # (the ordinary services and the seeders above hold others here)
            assert udp(net, net.lans[0], peer, port, b"service", wait=0.5)[0]["reply"] is not None, port
        assert udp(net, net.lans[1], peer, 51413, b"other host", wait=0.5)[0]["reply"] is not None
        assert not arrivals(log, src=net.lan_ips[0], data=b"locked".hex())
        deadline = time.monotonic() + LOCK + 5
        while time.monotonic() < deadline and net.lan_ips[0] in net.kernel_set("udplocks4"):
            time.sleep(0.25)
        assert udp(net, net.lans[0], peer, 51413, b"free again", wait=0.5)[0]["reply"] is not None
    finally:
        daemon.stop()
