"""p2pwall's nftables table (the kernel sets of learned peers, client-scoped blocks,
stations and UDP locks, and the chains that read them), and the nftables equivalent of
the iptables rules that ``p2pwall rules --format nft`` prints for reference.  The
iptables rules themselves are :mod:`p2pwall.rules`."""

from __future__ import annotations

import ipaddress

from .policy import ANSWERED_RATE, STATION_TABLE, QueuePolicy


def nft_table(policy: QueuePolicy) -> str:
    """p2pwall's nftables table: the learned peers (``peers``, ``nolock``) and the
    client-scoped blocks (``pairs``: LAN client . peer, with LAN interfaces only), all
    with timeouts, and one chain before conntrack that drops what the LAN sends to
    them, except the SYNs that must reach the engine and the datagrams a detector
    still sees (``udp_answered``, at most ``ANSWERED_RATE`` a second per LAN host): those go on with
    a mark that the iptables rules queue before anything else.  One hook and native set lookups:
    an early packet crosses one chain for all of it.  Empty without kernel sets."""
    if not policy.kernel_sets:
        return ""
    if policy.lan_interfaces:
        names = ", ".join(f'"{n}"' for n in policy.lan_interfaces)
        entries = [f"iifname {{ {names} }} jump lan"]
        if policy.stations:  # the per-host bound's key: a pair the gateway resolved (policy.fairness)
            mark = f"meta mark set meta mark | 0x{policy.station_mark:x}"
            entries[:0] = [f"iifname {{ {names} }} ip saddr . ether saddr @stations4 {mark}",
                           f"iifname {{ {names} }} ip6 saddr . ether saddr @stations6 {mark}"]
    else:
        entries = []
        for family, word in ((4, "ip"), (6, "ip6")):
            nets = [str(ipaddress.ip_network(n, strict=False)) for n in policy.lan_networks]
            nets = [n for n in nets if ipaddress.ip_network(n).version == family]
            if nets:
                entries.append(f"{word} saddr {{ {', '.join(nets)} }} jump lan")
    if not entries:
        return ""
    udplock = _udplock_chain(policy)
    # no size: the peer table bounds what the engine mirrors, and a reload that resizes
    # it leaves the sets alone
    sets = ["  set peers4 { type ipv4_addr; flags timeout; }",
            "  set peers6 { type ipv6_addr; flags timeout; }",
            "  set nolock4 { type ipv4_addr; flags timeout; }",
            "  set nolock6 { type ipv6_addr; flags timeout; }"]
    lan = []
    if policy.pair_sets:
        sets += ["  set pairs4 { type ipv4_addr . ipv4_addr; flags timeout; }",
                 "  set pairs6 { type ipv6_addr . ipv6_addr; flags timeout; }"]
        lan += ["    ip saddr . ip daddr @pairs4 jump blocked",
                "    ip6 saddr . ip6 daddr @pairs6 jump blocked"]
    if policy.stations:  # filled from the neighbour table by the daemon (KernelSets.sync_stations)
        sets += [f"  set stations4 {{ type ipv4_addr . ether_addr; size {STATION_TABLE}; }}",
                 f"  set stations6 {{ type ipv6_addr . ether_addr; size {STATION_TABLE}; }}"]
    if udplock:
        sets += ["  set udplocks4 { type ipv4_addr; flags timeout; }",
                 "  set udplocks6 { type ipv6_addr; flags timeout; }"]
    lan += ["    ip daddr @peers4 jump peer", "    ip6 daddr @peers6 jump peer",
            "    ip daddr @nolock4 counter drop", "    ip6 daddr @nolock6 counter drop"]
    answered_sets, answered = _answered(policy)
    sets += answered_sets
    requeue = [f"    tcp flags & (syn | ack) == syn meta mark set meta mark | 0x{policy.peer_syn_mark:x} accept",
               *answered]
    return "\n".join([
        f"table inet {policy.nft_table} {{", *sets,
        "  chain pre {",
        "    type filter hook prerouting priority -300; policy accept;",
        *(f"    {e}" for e in entries),
        "  }",
        "  chain lan {", *lan, "  }",
        "  chain blocked {",  # blocked for this client alone
        *requeue,
        "    counter drop",
        "  }",
        "  chain peer {",  # blocked LAN-wide
        *requeue,
        "    counter drop",
        "  }", *udplock, "}", ""])


def _answered(policy: QueuePolicy) -> tuple[list[str], list[str]]:
    """The sets and rules that still let a LAN host's datagrams of a ``udp_answered``
    prefix go on to the queue when they are sent to a peer blocked for it, bounded per
    host: a resolved station (the ``pre`` chain's station mark) spends a budget of its own,
    ``ANSWERED_RATE`` a second per prefix (by address; IPv6 by /64), so one busy or
    hostile host costs the other hosts none of theirs (as the sender's own per-host
    limit); every other sender shares one budget of that size.  Without stations (no LAN
    interfaces) all share one budget per prefix.  Beyond its budget a datagram is dropped
    with the rest."""
    mark = f"meta mark set meta mark | 0x{policy.peer_syn_mark:x} accept"
    rate = f"limit rate {ANSWERED_RATE}/second burst {ANSWERED_RATE} packets"
    sets, rules = [], []
    station = f"meta mark & 0x{policy.station_mark:x}"
    for i, prefix in enumerate(policy.udp_answered):
        match = f"meta l4proto udp udp length >= {8 + len(prefix)} @th,64,{8 * len(prefix)} 0x{prefix.hex()}"
        if not policy.stations:
            rules.append(f"    {match} {rate} {mark}")
            continue
        for family, kind, key in ((4, "ipv4_addr", "ip saddr"), (6, "ipv6_addr", "ip6 saddr & ffff:ffff:ffff:ffff::")):
            sets.append(f"  set answered{i}_{family} {{ type {kind}; size {STATION_TABLE}; "
                        f"flags dynamic,timeout; timeout 10s; }}")
            rules.append(f"    {station} != 0 meta nfproto ipv{family} {match} "
                         f"update @answered{i}_{family} {{ {key} {rate} }} {mark}")
        rules.append(f"    {station} == 0 {match} {rate} {mark}")
    return sets, rules


def _udplock_chain(policy: QueuePolicy) -> list[str]:
    """A forward chain for the clients locked by a detector that locks UDP (``udplocks``):
    their forwarded UDP to any port but the UDP service ports is dropped, established
    flows included, for the lock's time; traffic within the LAN is left alone."""
    if not policy.udp_lockers:
        return []
    from .plugins import UDP_SERVICE_PORTS

    ports = ", ".join(str(p) for p in UDP_SERVICE_PORTS)
    rules = []
    for family, word in ((4, "ip"), (6, "ip6")):
        if policy.lan_interfaces:
            names = ", ".join(f'"{n}"' for n in policy.lan_interfaces)
            where = f"iifname {{ {names} }} oifname != {{ {names} }} "
        else:
            nets = [str(ipaddress.ip_network(n, strict=False)) for n in policy.lan_networks]
            nets = [n for n in nets if ipaddress.ip_network(n).version == family]
            where = f"{word} daddr != {{ {', '.join(nets)} }} " if nets else ""
        rules.append(f"    {where}{word} saddr @udplocks{family} udp dport != {{ {ports} }} counter drop")
    return ["  chain udplock {", "    type filter hook forward priority -5; policy accept;", *rules, "  }"]


def nft_script(policy: QueuePolicy) -> str:
    """An nftables equivalent, printed for reference (this kernel has no nft queue).
    nft has no string match: payload rules queue the first packets of every TCP
    connection instead, and the detectors do the matching.  Kernel sets are left out."""
    q = f"queue num {policy.queue}" + ("" if policy.fail_closed else " bypass")
    if policy.workers > 1:
        q = f"queue num {policy.queue}-{policy.queue + policy.workers - 1}" + ("" if policy.fail_closed else " bypass")
    if policy.lan_interfaces:
        names = ", ".join(f'"{n}"' for n in policy.lan_interfaces)
        srcs, dsts = [f"iifname {{ {names} }}"], [f"oifname {{ {names} }}"]
    else:
        v4 = ", ".join(s.split()[1] for s in policy.lan_sources(4))
        v6 = ", ".join(s.split()[1] for s in policy.lan_sources(6))
        srcs = ([f"ip saddr {{ {v4} }}"] if v4 else []) + ([f"ip6 saddr {{ {v6} }}"] if v6 else [])
        dsts = ([f"ip daddr {{ {v4} }}"] if v4 else []) + ([f"ip6 daddr {{ {v6} }}"] if v6 else [])
    wants = policy.wants
    first = f"1-{policy.payload_window}"
    udp_first = f" ct original packets 1-{policy.udp_packets}" if policy.udp_packets and policy.kernel_sets else ""
    fwd, inp = [], []
    for src in srcs:
        if "udp" in wants:
            fwd.append(f"{src} meta l4proto udp{udp_first} {q}")
            inp.append(f"{src} meta l4proto udp {q}")
        fwd.append(f"{src} tcp flags & (syn|ack) == syn {q}")
        if "tcp_payload" in wants:
            fwd.append(f"{src} tcp flags & syn == 0 ct original packets {first} meta length > 60 {q}")
    for dst in dsts:
        if "udp_in" in wants:
            reply = f" ct reply packets 1-{policy.udp_packets}" if policy.udp_packets else ""
            fwd.append(f"{dst} meta l4proto udp{reply} {q}")
        if "tcp_payload_in" in wants:
            fwd.append(f"{dst} tcp flags & syn == 0 ct reply packets {first} meta length > 60 {q}")
    out = ["table inet p2pwall {",
           "  chain forward {", "    type filter hook forward priority -5; policy accept;"]
    out += [f"    {r}" for r in fwd]
    out += ["  }", "  chain input {", "    type filter hook input priority -5; policy accept;"]
    out += [f"    {r}" for r in inp]
    out += ["  }", "}", ""]
    return "\n".join(out)
