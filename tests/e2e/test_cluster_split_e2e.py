"""One network across gateways: two gateways, each serving a LAN of its own
(192.0.2.0/25 and 192.0.2.128/25, one client each), sharing a real redis-server with a
key.  Each gateway publishes the networks it serves; a client behind the other gateway
is kept as that gateway's client, so the two clients' evidence corroborates: the peer
becomes LAN-wide on both within a second, and after a Redis outage (each gateway
learning from its own client meanwhile) within five seconds of Redis coming back."""

from __future__ import annotations

import sys

import pytest

from .conftest import _need_root
from .test_cluster_e2e import peers_of, udp, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def split():
    _need_root()
    from p2pwall_lab.testbed.cluster import ClusterNetwork

    net = ClusterNetwork(outside_addresses=12, split=True)
    daemons = []
    try:
        net.start_redis()
        key = net.prepare()
        daemons += [net.p2pwall(i, net.config(i, key_file=key), "--plugin", "fasttrack",
                                "--log-format", "json") for i in (0, 1)]
        assert wait_for(lambda: all(len(d.status()["cluster"].get("served", {})) == 1 for d in daemons), 10), \
            [d.status()["cluster"] for d in daemons]
        yield net, daemons
    finally:
        for d in daemons:
            d.stop()
        net.close()


def scope(d, addr):
    for e in d.status()["peers"]["entries"]:
        if e["address"] == addr:
            return e["scope"]
    return None


def test_clients_behind_two_gateways_make_a_peer_lan_wide_on_both(split):
    from p2pwall_plugins.fasttrack import make_ping

    net, (gw1, gw2) = split
    assert gw1.status()["cluster"]["served"] == {"gw2": ["192.0.2.128/25"]}
    peer = net.outside[0]
    udp(net, net.lans[0], peer, 1214, make_ping(), sport=1214)  # the client behind gateway 1
    assert wait_for(lambda: scope(gw1, peer) == "client" and peer in peers_of(gw2), 5) is not None
    assert scope(gw2, peer) == "client"  # one client's evidence: for that client alone
    udp(net, net.lans[1], peer, 1214, make_ping(), sport=1214)  # and the one behind gateway 2
    took = wait_for(lambda: scope(gw1, peer) == "lan" and scope(gw2, peer) == "lan", 5)
    assert took is not None and took < 1.0, (took, gw1.status()["peers"], gw2.status()["peers"])
    print(f"cross-LAN corroboration: LAN-wide on both gateways {took:.2f} s after the second client's ping")
    # status --address says which gateway saw the other client
    text = net.exec(net.fws[0], sys.executable, "-m", "p2pwall", "status", "--address", peer,
                    "--socket", str(net.dir / "fw1.sock")).stdout
    assert f"{net.lan_ips[1]} is behind gateway gw2" in text, text


def test_after_a_redis_outage_the_evidence_is_merged_within_five_seconds(split):
    from p2pwall_plugins.fasttrack import make_ping

    net, (gw1, gw2) = split
    peer = net.outside[1]
    net.kill_redis()
    assert wait_for(lambda: gw1.status()["cluster"]["state"] == "down" and gw2.status()["cluster"]["state"] == "down",
                    10) is not None
    udp(net, net.lans[0], peer, 1214, make_ping(), sport=1214)
    udp(net, net.lans[1], peer, 1214, make_ping(), sport=1214)
    # each still learns from its own client, for that client
    assert scope(gw1, peer) == "client" and scope(gw2, peer) == "client"
    net.start_redis()  # back, and empty
    took = wait_for(lambda: scope(gw1, peer) == "lan" and scope(gw2, peer) == "lan", 10)
    assert took is not None and took < 5.0, (took, gw1.status()["cluster"], gw2.status()["cluster"])
    print(f"after the outage: merged and LAN-wide on both {took:.2f} s after Redis came back")
