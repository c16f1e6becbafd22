"""Real aMule 2.3.3 at its defaults, as captured in the lab (``tests/captures/amule-kad.pcap``):
a leecher that knows four Kad nodes by ID looks its file up (obfuscated lookups of 51
bytes, answers of 35 + 25n), gets its source from Kad and opens an obfuscated TCP session
to it.  The sizes the obfuscation rules were built on are those of the real program."""

from __future__ import annotations

from pathlib import Path

from p2pwall.packet import FROM_LAN, TO_LAN, parse
from p2pwall.pcap import read
from p2pwall.testing import DetectorHarness
from p2pwall_plugins.edonkey import EDonkeyDetector
from p2pwall_plugins.edonkey.obfuscated import KAD_REQUEST

CAPTURE = Path(__file__).parents[2] / "captures" / "amule-kad.pcap"
LAN = "192.0.2.10"
NODES = {"203.0.113.1", "203.0.113.2", "198.51.100.3", "198.51.100.4"}
SEEDER = "203.0.113.1"


def replay(x) -> list:
    """The capture through the harness, the clock following it; each TCP payload marked
    first or second in its direction as the kernel marks them.  (time, packet, verdict)."""
    out, counts, start = [], {}, None
    for ts, raw in read(str(CAPTURE)):
        packet = parse(raw)
        if packet is None:
            continue
        start = ts if start is None else start
        x.clock.now = 1000.0 + (ts - start)
        outward = packet.src == bytes(map(int, LAN.split(".")))
        n = 0
        if packet.proto == 6 and packet.payload:
            key = (packet.src, packet.sport, packet.dst, packet.dport)
            n = counts[key] = counts.get(key, 0) + 1
        verdict = x.feed(raw, FROM_LAN if outward else TO_LAN, first=n <= 1, second=n == 2)
        out.append((ts - start, packet, verdict))
    return out


def test_real_kad_lookups_have_the_sizes_the_rule_reads():
    x = DetectorHarness(EDonkeyDetector(), lan=("192.0.2.0/24",))
    seen = replay(x)
    lookups = [p for _, p, _ in seen if p.proto == 17 and len(p.payload) == KAD_REQUEST]
    assert {".".join(map(str, p.dst)) for p in lookups} == NODES  # every node asked
    drops = [(t, v) for t, _, v in seen if v.drop]
    assert drops and drops[0][1].reason == "Kad obfuscated: lookups answered by several nodes"
    assert {v.reason for _, v in drops} <= {drops[0][1].reason, "peer blocked", "client locked"}
    assert x.locked(LAN) and all(x.blocked(n) for n in NODES)
    syn = min(t for t, p, _ in seen if p.proto == 6 and ".".join(map(str, p.dst)) == SEEDER)
    assert drops[0][0] < syn  # locked before the client reached for its source


def test_the_obfuscated_session_to_the_source_is_an_exchange_the_rule_reads():
    """The TCP session alone (Kad left out): opening, answer and hello of the sizes the
    exchange rule takes, one peer of the three it needs: nothing yet."""
    from p2pwall_plugins.edonkey.obfuscated import tcp_answer, tcp_opening

    x = DetectorHarness(EDonkeyDetector(), lan=("192.0.2.0/24",))
    seen = [(t, p, v) for t, p, v in replay(x) if p.proto == 6 and p.payload and p.sport != 4672]
    flow = [p for _, p, _ in seen if SEEDER in (".".join(map(str, p.src)), ".".join(map(str, p.dst)))]
    opening, answer = flow[0].payload, flow[1].payload
    assert tcp_opening(bytes(opening)) and tcp_answer(bytes(answer), len(opening)), (len(opening), len(answer))
