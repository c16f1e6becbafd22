"""One host is one station: an address the gateway has not resolved earns nothing, two
addresses at one MAC corroborate once, a new MAC has no standing yet; and a reply proves
only what was asked."""

from p2pwall import TO_LAN
from p2pwall.neighbours import Neighbours
from p2pwall.packet import ip_bytes
from p2pwall.testing import Clock, DetectorHarness, tcp, udp

LAN, LAN2, LAN3, PEER = "192.168.1.5", "192.168.1.6", "192.168.1.7", "203.0.113.9"
MAC_A, MAC_B = bytes.fromhex("02000000000a"), bytes.fromhex("02000000000b")


def neighbours(clock, table):
    n = Neighbours(["br0"], clock=clock, read=False)
    n._arp = lambda: {}  # no /proc in a unit test
    n._take({ip_bytes(k): v for k, v in table.items()})
    return n


def fasttrack(clock, n):
    from p2pwall_plugins.fasttrack import FastTrackDetector

    h = DetectorHarness(FastTrackDetector(), names=["fasttrack"])
    h.clock = clock
    h.engine.clock = clock
    h.engine.ledger.clock = clock
    h.engine.evidence.neighbours = n
    h.engine.ledger.station = n.station
    return h


def ping(h, src, mac, peer=PEER):
    from p2pwall.packet import FROM_LAN, parse
    from p2pwall_plugins.fasttrack import make_ping

    p = parse(udp(src, peer, 1214, 1214, make_ping()))
    p.direction, p.mac = FROM_LAN, mac
    h.engine.handle(p)
    h.engine.flush()


def test_an_unresolved_address_earns_nothing():
    clock = Clock()
    n = neighbours(clock, {LAN: MAC_A})
    h = fasttrack(clock, n)
    ping(h, LAN3, MAC_A)  # the same host, from an unused address of its segment
    assert not h.blocked(PEER) and h.counter("evidence_refused.spoofed_neighbour") == 1
    ping(h, LAN, MAC_A)
    assert h.blocked(PEER) and not h.peer(PEER).lanwide


def test_two_addresses_of_one_host_corroborate_once_and_a_new_station_waits_its_standing():
    clock = Clock()
    n = neighbours(clock, {LAN: MAC_A, LAN2: MAC_A})
    h = fasttrack(clock, n)
    ping(h, LAN, MAC_A)
    ping(h, LAN2, MAC_A)
    assert h.blocked(PEER) and not h.peer(PEER).lanwide  # one station
    n._take({ip_bytes(LAN): MAC_A, ip_bytes(LAN2): MAC_A, ip_bytes(LAN3): MAC_B})  # B arrives now
    ping(h, LAN3, MAC_B)
    assert not h.peer(PEER).lanwide  # B has no standing yet
    clock.advance(61)
    other = "203.0.113.10"
    ping(h, LAN, MAC_A, other)
    ping(h, LAN3, MAC_B, other)
    assert h.peer(other).lanwide  # two stations that have been on the LAN a while


def test_a_new_mac_for_a_known_address_loses_its_standing():
    clock = Clock()
    n = neighbours(clock, {LAN: MAC_A, LAN2: MAC_B})
    assert n.station(ip_bytes(LAN2)) == MAC_B
    n._take({ip_bytes(LAN): MAC_A, ip_bytes(LAN2): MAC_A})  # a forged ARP reply: LAN2 now at A's MAC
    assert n.changes == 1 and n.station(ip_bytes(LAN2)) is None
    assert n.station(ip_bytes("10.9.9.9")) == ip_bytes("10.9.9.9")  # behind another gateway: its own
    # for a standing period the moved address earns nothing, whoever sends as it
    assert not n.genuine(ip_bytes(LAN2), MAC_A) and not n.genuine(ip_bytes(LAN2), MAC_B)
    assert n.genuine(ip_bytes(LAN), MAC_A)  # the forger's own address is untouched
    clock.advance(61)
    assert n.genuine(ip_bytes(LAN2), MAC_A)  # a poisoning kept up that long speaks for the address


def test_a_forged_arp_reply_gains_nothing_for_a_standing_period():
    clock = Clock()
    n = neighbours(clock, {LAN: MAC_A, LAN2: MAC_B})
    clock.advance(100)
    h = fasttrack(clock, n)
    n._take({ip_bytes(LAN): MAC_A, ip_bytes(LAN2): MAC_A})  # A poisons the gateway: LAN2 is at A's MAC
    ping(h, LAN2, MAC_A)  # A's ping as its neighbour
    assert not h.blocked(PEER) and h.counter("evidence_refused.spoofed_neighbour") == 1
    ping(h, LAN2, MAC_B)  # the neighbour's own packet (its true MAC) earns nothing either
    assert not h.blocked(PEER)


def test_a_reply_counts_only_on_a_flow_whose_request_was_recognised():
    from p2pwall_plugins.bittorrent import BitTorrentDetector

    h = DetectorHarness(BitTorrentDetector(), names=["bittorrent"])
    handshake = b"\x13BitTorrent protocol" + bytes(8) + bytes(20) + b"-XX0001-" + bytes(12)
    get = b"GET /pixel.png HTTP/1.1\r\nHost: x\r\nUser-Agent: Mozilla/5.0\r\nSec-Fetch-Dest: image\r\n\r\n"
    h.feed(tcp(LAN, PEER, 40000, 80, get))
    h.feed(tcp(PEER, LAN, 80, 40000, handshake), direction=TO_LAN)  # a web server's hostile answer
    assert not h.blocked(PEER) and not h.locked(LAN)
    assert h.counter("evidence_refused.reply_unasked") == 1
    h.feed(tcp(LAN, PEER, 40001, 6881, handshake))  # the client asks in BitTorrent ...
    h.feed(tcp(PEER, LAN, 6881, 40001, handshake), direction=TO_LAN)  # ... and the peer answers in it
    assert h.peer(PEER).lanwide and h.peer(PEER).kind == "reply"
