"""Replay of the bundled captures against nDPI's own per-flow labels (``*.ndpi.out``).

Every flow nDPI labels BitTorrent, Gnutella or eDonkey must be flagged by the matching
detector; no flow of the ordinary captures may be flagged at all, and no flow nDPI
labels as another known protocol may be recognised as P2P (the time lock on a host
running P2P may still stop its other connections: that is the lock doing its job).
"""

import re
from pathlib import Path

import pytest

from p2pwall import plugins
from p2pwall.config import Settings
from p2pwall.replay import Replay

PCAPS = Path(__file__).parents[1] / "captures"
P2P = {"BitTorrent": "bittorrent", "Gnutella": "gnutella", "eDonkey": "edonkey"}
ORDINARY = ["dns", "quic", "http-manipulated", "ssh", "443-chrome", "stun"]
LINE = re.compile(r"\s+\d+\s+(TCP|UDP) (\S+):(\d+) <?->? (\S+):(\d+) \[proto: [\d.]+/([^\]]+)\]")


def ndpi_labels(name: str) -> dict:
    labels = {}
    for line in (PCAPS / f"{name}.pcap.ndpi.out").read_text().splitlines():
        m = LINE.match(line)
        if m:
            proto, a, ap, b, bp, label = m.groups()
            labels[(proto.lower(), frozenset([(a.strip("[]"), int(ap)), (b.strip("[]"), int(bp))]))] = label
    return labels


def replay(name: str) -> dict:
    rp = Replay(Settings(), plugins.load())
    rp.feed_file(str(PCAPS / f"{name}.pcap"))
    out = {}
    for f in rp.report()["flows"]:
        out[(f["proto"], frozenset([(f["client"], f["client_port"]), (f["peer"], f["peer_port"])]))] = f
    return out


def expected_detector(label: str) -> str | None:
    for key, detector in P2P.items():
        if key in label:
            return detector
    return None


@pytest.mark.parametrize("name", ["bittorrent", "bt_search", "gnutella", "edonkey"])
def test_every_p2p_flow_is_flagged_by_its_detector(name):
    labels, flows = ndpi_labels(name), replay(name)
    p2p = {k: v for k, v in labels.items() if expected_detector(v)}
    assert p2p, "the capture has P2P flows"
    missed = [(sorted(k[1]), v) for k, v in p2p.items() if flows[k]["detector"] != expected_detector(v)]
    assert not missed, f"{len(missed)} of {len(p2p)} missed, e.g. {missed[:3]}"


@pytest.mark.parametrize("name", ["gnutella", "bittorrent"])
def test_other_known_protocols_in_p2p_captures_are_not_recognised(name):
    labels, flows = ndpi_labels(name), replay(name)
    others = {k: v for k, v in labels.items() if not expected_detector(v) and "Unknown" not in v}
    wrong = [(sorted(k[1]), v, flows[k]["reason"]) for k, v in others.items()
             if flows[k]["detector"] and flows[k]["reason"] not in ("client locked", "peer blocked")]
    assert not wrong


@pytest.mark.parametrize("name", ORDINARY)
def test_nothing_in_ordinary_captures_is_flagged(name):
    flows = replay(name)
    assert flows
    flagged = [f for f in flows.values() if f["detector"] or f["dropped"]]
    assert not flagged
