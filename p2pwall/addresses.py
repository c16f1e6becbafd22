"""Sets of networks, asked for packed addresses on the hot path (and for numpy columns)."""

from __future__ import annotations

import ipaddress


class AddressSet:
    """Fast membership of packed addresses in a list of networks."""

    def __init__(self, networks):
        self.v4 = []
        self.v6 = []
        for net in networks:
            net = ipaddress.ip_network(net, strict=False) if isinstance(net, str) else net
            pair = (int(net.network_address), int(net.netmask))
            (self.v4 if net.version == 4 else self.v6).append(pair)
        self._cache: dict[bytes, bool] = {}

    def __contains__(self, addr: bytes) -> bool:
        hit = self._cache.get(addr)
        if hit is None:
            nets = self.v4 if len(addr) == 4 else self.v6
            value = int.from_bytes(addr, "big")
            hit = any((value & mask) == base for base, mask in nets)
            if len(self._cache) > 65536:
                self._cache.clear()
            self._cache[addr] = hit
        return hit

    def member_columns(self, hi, lo, v6):
        """The same test for many addresses at once (numpy columns: the high and low 64
        bits, IPv4 in the low half, and whether each is IPv6), for replay."""
        import numpy as np

        hit = np.zeros(len(lo), bool)
        for base, mask in self.v4:
            hit |= ~v6 & ((lo & np.uint64(mask)) == np.uint64(base))
        low = (1 << 64) - 1
        for base, mask in self.v6:
            hit |= v6 & ((hi & np.uint64(mask >> 64)) == np.uint64(base >> 64)) & \
                ((lo & np.uint64(mask & low)) == np.uint64(base & low))
        return hit
