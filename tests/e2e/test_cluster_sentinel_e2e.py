"""Sentinel for real: Debian's redis-sentinel watching a primary and its replica, two
gateways on a ``redis+sentinel://`` URL.  The primary is killed; the Sentinel promotes
the replica; the gateways follow it, and no change is lost: what was learned before the
failover, what was learned while it ran, and what is learned after all reach the other
gateway."""

from __future__ import annotations

import time

import pytest

from .conftest import _need_root
from .test_cluster_e2e import peers_of, udp, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sentinel():
    _need_root()
    from p2pwall_lab.testbed.cluster import ClusterNetwork

    net = ClusterNetwork(outside_addresses=12)
    daemons = []
    try:
        url = net.start_sentinel_pair()
        key = net.prepare()
        daemons += [net.p2pwall(i, net.config(i, key_file=key, url=url), "--plugin", "fasttrack",
                                "--log-format", "json") for i in (0, 1)]
        assert wait_for(lambda: all(d.status()["cluster"]["state"] == "up" for d in daemons), 10) is not None
        yield net, daemons
    finally:
        for d in daemons:
            d.stop()
        net.close()


def test_the_gateways_follow_a_sentinel_failover_and_lose_no_change(sentinel):
    from p2pwall_plugins.fasttrack import make_ping

    net, (gw1, gw2) = sentinel
    before, during, after = net.outside[0], net.outside[1], net.outside[2]
    udp(net, net.lans[0], before, 1214, make_ping(), sport=1214)  # learned by gateway 1 ...
    assert wait_for(lambda: before in peers_of(gw2), 2) is not None  # ... enforced by gateway 2
    assert net.master() == "6379"
    net.kill_redis()  # the primary is gone
    udp(net, net.lans[0], during, 1214, make_ping(), sport=1214)  # learned while the Sentinel fails over
    assert during in peers_of(gw1)
    assert wait_for(lambda: net.master() == "6380", 20) is not None, "the Sentinel did not promote the replica"
    started = time.monotonic()
    assert wait_for(lambda: during in peers_of(gw2), 20) is not None, (gw2.status()["cluster"], gw2.output()[-2500:])
    print(f"failover: the change learned meanwhile reached gateway 2 {time.monotonic() - started:.1f} s "
          "after the replica was promoted")
    assert before in peers_of(gw2)  # nothing learned before it was lost
    udp(net, net.lans[1], after, 1214, make_ping(), sport=1214)  # learned by gateway 2 on the new primary
    assert wait_for(lambda: after in peers_of(gw1), 2) is not None
    for d in (gw1, gw2):
        cluster = d.status()["cluster"]
        assert cluster["state"] == "up" and cluster.get("disconnects", 0) >= 1, cluster
    keys = net.exec(net.sw, "redis-cli", "-h", "198.51.100.129", "-p", "6380", "--scan", "--pattern",
                    "p2pwall:peers:*").stdout
    assert all(p in keys for p in (before, during, after)), keys  # and the new primary holds every one
