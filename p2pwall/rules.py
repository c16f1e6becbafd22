"""The iptables rules a run needs, rendered from the queue policy (:mod:`p2pwall.policy`).

They live in chains of p2pwall's own (``P2PWALL-F<queue>`` for FORWARD, ``P2PWALL-I<queue>``
for INPUT), entered by one jump at the top of FORWARD and INPUT, so that installing and
removing them never disturbs the administrator's rules.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass, field

from .nftables import nft_table
from .policy import SHORT_PAYLOAD, QueuePolicy


class RulesError(Exception):
    """iptables refused the rules (exit status 1)."""


@dataclass
class RuleSet:
    queue: int
    family: int  # 4 or 6
    chains: dict[str, list[str]]  # chain -> rule bodies (after "-A CHAIN"), in order
    jumps: list[tuple[str, str]]  # (built-in chain, our chain) entered at its top
    mangle: list[str] = field(default_factory=list)  # mangle PREROUTING: the reverse-path check

    @property
    def empty(self) -> bool:
        return not any(self.chains.values())


def chain_names(queue: int) -> dict[str, str]:
    """forward/input: entered from FORWARD/INPUT; lan: forwarded packets sent by the LAN,
    counted: those of connections with packet counters (all but the ones conntrack knew
    before p2pwall started); payload: the first data packets of LAN connections, matched
    against strings; reply, counted_reply, reply_payload: the same for the answers."""
    return {"forward": f"P2PWALL-F{queue}", "input": f"P2PWALL-I{queue}",
            "lan": f"P2PWALL-L{queue}", "counted": f"P2PWALL-C{queue}", "payload": f"P2PWALL-P{queue}",
            "reply": f"P2PWALL-R{queue}", "counted_reply": f"P2PWALL-D{queue}",
            "reply_payload": f"P2PWALL-Q{queue}",
            "early": f"P2PWALL-E{queue}",  # raw table: no longer installed, removed if left
            "mangle": f"P2PWALL-M{queue}"}  # the one chain in the mangle table


def _first(count: int, direction: str) -> str:
    return f"-m connbytes --connbytes 0:{count} --connbytes-dir {direction} --connbytes-mode packets"


def _u32_prefix(prefix: bytes) -> str:
    """u32 test: the TCP payload of an IPv4 packet starts with ``prefix`` (1-4 bytes).
    Walks the IP header length, then the TCP data offset, then reads 4 bytes."""
    shift = 32 - 8 * len(prefix)
    value = int.from_bytes(prefix, "big")
    read = "0>>22&0x3C@12>>26&0x3C@0" + (f">>{shift}" if shift else "")
    return f'"{read}=0x{value:x}"'


def _first_after(count: int) -> str:
    return f"-m connbytes --connbytes {count}: --connbytes-dir original --connbytes-mode packets"


def _payload_rules(strings, family: int, target: str) -> list[str]:
    if strings is None:
        return [f"-m length ! --length 0:{52 if family == 4 else 72} {target}"]
    return [f"-m string --algo bm {_quote(s)} {target}" for s in strings]


def _sizes(sizes: tuple[int, int], family: int) -> str:
    """Packet lengths whose TCP payload can lie in ``sizes`` (IP and TCP headers with or
    without options); the engine checks the exact payload size."""
    ip = 20 if family == 4 else 40
    return f"-m length --length {sizes[0] + ip + 20}:{sizes[1] + ip + 60}"


def _short(family: int) -> str:
    """Packet lengths whose TCP payload can be shorter than ``SHORT_PAYLOAD`` (any TCP
    header: the engine checks the exact size), for packets already marked as a first
    payload (so from one byte behind a bare header on)."""
    ip = 20 if family == 4 else 40
    return f"-m length --length {21 + ip}:{ip + 60 + SHORT_PAYLOAD - 1}"


def _short_rules(chain: list, payload_chain: list, first: int, short: int, family: int, payloads, target: str) -> None:
    """One direction's rules for a short first payload (``first`` marked, a length
    ``_short`` takes): mark its connection ``short`` and queue it; and queue every payload
    of such a connection that reaches ``payload_chain`` (the window's), for the engine to
    join (streams.py)."""
    chain.append(f"-p tcp -m mark --mark 0x{first:x}/0x{first:x} {_short(family)} -j CONNMARK --or-mark 0x{short:x}")
    chain.append(f"-p tcp -m mark --mark 0x{first:x}/0x{first:x} {_short(family)} {target}")
    payload_chain.extend(f"-m connmark --mark 0x{short:x}/0x{short:x} {p} {target}" for p in payloads)


def _services() -> str:
    from .plugins import SERVICE_PORTS

    return ",".join(str(p) for p in SERVICE_PORTS)


def _quote(s: bytes) -> str:
    text = s.decode("latin-1")
    if any(c in text for c in '"\\\n\'') or not text.isprintable():
        return '--hex-string "|' + s.hex() + '|"'
    return f'--string "{text}"'


def build(policy: QueuePolicy, family: int = 4) -> RuleSet:
    """The rules of one address family, rendered from the queue policy.

    TCP SYNs from the LAN are always queued: the core's peer table and time lock act on
    them whatever the detectors want.
    """
    names = chain_names(policy.queue)
    if policy.workers > 1:
        last = policy.queue + policy.workers - 1
        target = f"-j NFQUEUE --queue-balance {policy.queue}:{last}"
    else:
        target = f"-j NFQUEUE --queue-num {policy.queue}"
    if not policy.fail_closed:
        target += " --queue-bypass"  # if p2pwall is gone, traffic flows
    sources = policy.lan_sources(family)
    chains = {name: [] for key, name in names.items() if key not in ("early", "mangle")}
    if not sources:
        return RuleSet(policy.queue, family, chains, [])
    wants = policy.wants
    mangle: list[str] = []
    first = policy.first_mark  # packet mark: the first payload of its connection, this direction
    spoofed = first << 1  # packet mark: failed the reverse-path check
    seen_out, seen_in = first, first << 1  # conntrack mark: a first payload went out / came in
    # conntrack marks: the first payload out had a size some detector reads by shape (sized),
    # the next one went to the queue (second); packet mark second: that next payload
    sized, second = first << 2, first << 3
    short = first << 4  # conntrack mark: a first payload was short (what follows it is joined)
    clean = f"0x{policy.clean_mark:x}/0x{policy.clean_mark:x}"
    if policy.lan_interfaces:
        # nothing that fails the reverse-path check is ever queued or locked: a LAN host
        # cannot speak for another network, nor a WAN host for the LAN (mangle, after
        # conntrack, so that clean connections skip the route lookup)
        mangle.append(f"-m connmark --mark {clean} -j RETURN")
        for src in sources:
            mangle.append(f"{src} -m rpfilter --invert -j MARK --or-mark 0x{spoofed:x}")
    lan, payload = chains[names["lan"]], chains[names["payload"]]
    reply, reply_payload = chains[names["reply"]], chains[names["reply_payload"]]
    # A connection past its first packets, sent to no blocked peer, is marked clean in
    # conntrack once; from then on each of its packets costs one connmark test here.
    if policy.kernel_sets:
        # learned peers are enforced by p2pwall's nft table before conntrack (see
        # nft_table): everything the LAN sends to a peer is dropped there
        # but the SYNs to a peer blocked for their sender, which it marks: those are
        # queued here first, clean connection or lock or not, and the engine (re)locks the
        # sender (after checking that the sender is who it says it is)
        sets = policy.set_names(family)
        mark = f"0x{policy.peer_syn_mark:x}"
        lan.append(f"-p tcp -m mark --mark {mark}/{mark} {target}")
        if policy.udp_answered:  # and the datagrams to such a peer that a detector answers
            lan.append(f"-p udp -m mark --mark {mark}/{mark} {target}")
    not_spoofed = f"-m mark --mark 0x{spoofed:x}/0x{spoofed:x} -j RETURN"
    chains[names["forward"]].append(not_spoofed)
    chains[names["input"]].append(not_spoofed)
    lan.append(f"-m connmark --mark {clean} -j RETURN")
    reply.append(f"-m connmark --mark {clean} -j RETURN")
    # A connection conntrack tracked before these rules were loaded has no packet counters
    # (accounting starts with the first connbytes rule), so no connbytes test ever matches
    # it: it would never be marked clean, and every one of its packets would meet the
    # per-host bound below, which cuts a busy VPN or download when p2pwall starts on a
    # running gateway. Such connections are marked clean at once; the rest go on.
    for chain, direction, counted in ((lan, "original", "counted"), (reply, "reply", "counted_reply")):
        # (-g: when the counted chain is done, so is this one: only the others go on below)
        chain.append(f"-m connbytes --connbytes 0: --connbytes-dir {direction} --connbytes-mode packets "
                     f"-g {names[counted]}")
        chain.append(f"-j CONNMARK --or-mark 0x{policy.clean_mark:x}")
    lan, reply = chains[names["counted"]], chains[names["counted_reply"]]
    if policy.kernel_sets:
        lan.append(f"-p tcp --syn -m set --match-set {sets['locks']} src -j DROP")
    # before anything is queued: one flooding host cannot fill the queue for the others
    lan.extend(policy.fairness(family, "f"))
    for src in sources:
        chains[names["forward"]].append(f"{src} -j {names['lan']}")
        if "udp" in wants:
            for fair_in in policy.fairness(family, "i"):
                if not any(r == f"{src} -p udp {fair_in}" for r in chains[names["input"]]):
                    chains[names["input"]].append(f"{src} -p udp {fair_in}")
            chains[names["input"]].append(f"{src} -p udp {target}")
    if "udp_in" in wants or "tcp_payload_in" in wants:
        # only answers on flows a LAN host opened: unsolicited inbound traffic is never read
        for dst in policy.lan_sources(family, towards=True):
            chains[names["forward"]].append(f"{dst} -m conntrack --ctstate ESTABLISHED --ctdir REPLY "
                                            f"-j {names['reply']}")
    lan.append(f"-p tcp {_first_after(policy.tcp_clean_after)} -j CONNMARK --or-mark 0x{policy.clean_mark:x}")
    # without kernel sets, every UDP packet must be queued so learned peers stay blocked
    limit_udp = policy.udp_packets and policy.kernel_sets
    if limit_udp:
        lan.append(f"-p udp {_first_after(policy.udp_clean_after)} -j CONNMARK --or-mark 0x{policy.clean_mark:x}")
    udp_limit = f" {_first(policy.udp_packets, 'original')}" if limit_udp else ""
    if "udp" in wants:
        lan.append(f"-p udp{udp_limit} {target}")
    lan.append(f"-p tcp --syn {target}")
    # payloads: only the first packets of a connection, so established flows never visit
    # user space and the kernel's string search never runs over bulk data
    has_payload = f"-m length --length {53 if family == 4 else 73}:65535"
    # below that, a payload of 1-12 bytes behind a TCP header without options (a stack
    # without timestamps sending a handshake's first byte alone): the header's size read
    tiny = ('-m length --length 41:52 -m u32 --u32 "0>>22&0x3C@12>>26&0x3C=0x14"' if family == 4 else
            '-m length --length 61:72 -m u32 --u32 "52>>26&0x3C=0x14"')
    if "tcp_payload" in wants:
        tcp_strings = policy.tcp_strings
        # a segment picked up mid-stream (no handshake seen: a spoofed one) is never a first payload
        for sized_payload in (has_payload, tiny):
            lan.append(f"-p tcp --tcp-flags SYN,RST NONE -m conntrack --ctstatus SEEN_REPLY "
                       f"-m connmark ! --mark 0x{seen_out:x}/0x{seen_out:x} {sized_payload} -j MARK --or-mark 0x{first:x}")
        lan.append(f"-p tcp -m mark --mark 0x{first:x}/0x{first:x} -j CONNMARK --or-mark 0x{seen_out:x}")
        if policy.first_sizes:
            # a first payload of a size some detector reads by shape marks its connection; that
            # connection's next payload is queued too (what an opening exchange sends next)
            lan.append(f"-p tcp -m mark --mark 0x{first:x}/0x{first:x} {_sizes(policy.first_sizes, family)} "
                       f"-m multiport ! --dports {_services()} -j CONNMARK --or-mark 0x{sized:x}")
            lan.append(f"-p tcp -m mark ! --mark 0x{first:x}/0x{first:x} -m connmark --mark 0x{sized:x}/0x{sized:x} "
                       f"-m connmark ! --mark 0x{second:x}/0x{second:x} {has_payload} -j MARK --or-mark 0x{second:x}")
            lan.append(f"-p tcp -m mark --mark 0x{second:x}/0x{second:x} -j CONNMARK --or-mark 0x{second:x}")
            lan.append(f"-p tcp -m mark --mark 0x{second:x}/0x{second:x} {target}")
        # a short first payload (a handshake sent a byte at a time?) is queued, after the size
        # rules marked it, and so are the connection's next payloads in the window: the
        # engine joins them (streams.py)
        _short_rules(lan, payload, first, short, family, (has_payload, tiny), target)
        lan.append(f"-p tcp ! --syn {_first(policy.payload_window, 'original')} -j {names['payload']}")
        if policy.tcp_prefixes and family == 6:
            tcp_strings = None  # u32 reads IPv4 headers only: queue every first payload
        payload.extend(_payload_rules(tcp_strings, family, target))
        if tcp_strings is not None:
            payload.extend(f"-m u32 --u32 {_u32_prefix(p)} {target}" for p in policy.tcp_prefixes)
        if policy.first_sizes:
            lan.append(f"-p tcp -m mark --mark 0x{first:x}/0x{first:x} {_sizes(policy.first_sizes, family)} "
                       f"-m multiport ! --dports {_services()} {target}")
    if "udp_in" in wants:
        reply_limit = f" {_first(policy.udp_packets, 'reply')}" if policy.udp_packets else ""
        reply.append(f"-p udp{reply_limit} {target}")
    if "tcp_payload_in" in wants:
        for sized_payload in (has_payload, tiny):
            reply.append(f"-p tcp --tcp-flags SYN,RST NONE -m connmark ! --mark 0x{seen_in:x}/0x{seen_in:x} "
                         f"{sized_payload} -j MARK --or-mark 0x{first:x}")
        reply.append(f"-p tcp -m mark --mark 0x{first:x}/0x{first:x} -j CONNMARK --or-mark 0x{seen_in:x}")
        _short_rules(reply, reply_payload, first, short, family, (has_payload, tiny), target)
        reply.append(f"-p tcp ! --syn {_first(policy.payload_window, 'reply')} -j {names['reply_payload']}")
        reply_payload.extend(_payload_rules(policy.tcp_strings_in, family, target))
        if policy.first_sizes_in:
            reply.append(f"-p tcp -m mark --mark 0x{first:x}/0x{first:x} {_sizes(policy.first_sizes_in, family)} "
                         f"-m multiport ! --sports {_services()} {target}")
    jumps = [("FORWARD", names["forward"])]
    if len(chains[names["input"]]) > 1:  # more than the reverse-path test
        jumps.append(("INPUT", names["input"]))
    return RuleSet(policy.queue, family, chains, jumps, mangle)


def rule_sets(policy: QueuePolicy) -> list[RuleSet]:
    return [build(policy, family) for family in (4, 6)]


def iptables_text(policy: QueuePolicy) -> str:
    """Everything ``run`` installs, as ``p2pwall rules`` prints it: the nft table, the
    ipset sets, then the iptables-restore input of each family that has rules."""
    out = []
    table = nft_table(policy)
    if table:
        out.append("# first: nft -f - (learned peers and client-scoped blocks)\n")
        out += [f"#   {line}\n" for line in table.splitlines()]
    for rs in rule_sets(policy):
        if rs.empty:
            continue
        for spec in policy.sets(rs.family):
            out.append(f"# first: ipset {' '.join(spec.create_args())}\n")
        out.append(f"# {'iptables' if rs.family == 4 else 'ip6tables'}-restore --noflush\n")
        out.append(restore_script(rs))
    return "".join(out)


def restore_script(rules: RuleSet) -> str:
    """The rules for ``iptables-restore --noflush``."""
    lines = ["*filter"]
    lines += [f":{chain} - [0:0]" for chain in rules.chains]
    for chain, bodies in rules.chains.items():
        lines += [f"-A {chain} {body}" for body in bodies]
    lines += [f"-I {parent} 1 -j {chain}" for parent, chain in rules.jumps]
    lines += ["COMMIT"]
    if rules.mangle:
        mangle = chain_names(rules.queue)["mangle"]
        lines += ["*mangle", f":{mangle} - [0:0]"] + [f"-A {mangle} {r}" for r in rules.mangle]
        lines += [f"-I PREROUTING 1 -j {mangle}", "COMMIT"]
    lines.append("")
    return "\n".join(lines)


def _tool(family: int, name: str) -> str | None:
    return shutil.which(name if family == 4 else name.replace("iptables", "ip6tables"))


def _run(cmd: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, input=stdin, text=True, capture_output=True)


def remove(queue: int, family: int = 4) -> None:
    """Remove p2pwall's jumps and chains for ``queue``; quiet when absent."""
    tool = _tool(family, "iptables")
    if tool is None:
        return
    names = chain_names(queue)
    for table, parent, chain in (("filter", "FORWARD", names["forward"]), ("filter", "INPUT", names["input"]),
                                 ("raw", "PREROUTING", names["early"]),
                                 ("mangle", "PREROUTING", names["mangle"])):
        for _ in range(64):  # every jump, even if a crash left several
            if _run([tool, "-w", "-t", table, "-D", parent, "-j", chain]).returncode != 0:
                break
    filter_chains = [n for k, n in names.items() if k not in ("early", "mangle")]
    for chain in filter_chains:
        _run([tool, "-w", "-F", chain])
    for chain in filter_chains:
        _run([tool, "-w", "-X", chain])
    for table, chain in (("raw", names["early"]), ("mangle", names["mangle"])):
        _run([tool, "-w", "-t", table, "-F", chain])
        _run([tool, "-w", "-t", table, "-X", chain])


def missing(rules: RuleSet) -> list[str]:
    """What of ``rules`` the kernel no longer has (a firewall reload, ``iptables -F``):
    each jump into p2pwall's chains and the chains' first rule, named; [] when all is
    there."""
    tool = _tool(rules.family, "iptables")
    if tool is None:
        return []
    gone = []
    checks = [("filter", parent, ["-j", chain]) for parent, chain in rules.jumps]
    checks += [("filter", chain, shlex.split(bodies[0])) for chain, bodies in rules.chains.items() if bodies]
    if rules.mangle:
        mangle = chain_names(rules.queue)["mangle"]
        checks += [("mangle", "PREROUTING", ["-j", mangle]), ("mangle", mangle, shlex.split(rules.mangle[0]))]
    for table, chain, body in checks:
        if _run([tool, "-w", "-t", table, "-C", chain, *body]).returncode != 0:
            gone.append(f"{'ip6tables' if rules.family == 6 else 'iptables'} {table} {chain}")
    return gone


def install(rules: RuleSet) -> None:
    """Install atomically; any leftovers of an earlier run on this queue go first."""
    remove(rules.queue, rules.family)
    restore = _tool(rules.family, "iptables-restore")
    if restore is None:
        raise RulesError(f"{'iptables' if rules.family == 4 else 'ip6tables'}-restore not found")
    done = _run([restore, "-w", "--noflush"], restore_script(rules))
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise RulesError(f"iptables-restore refused the rules: {message[0] if message else done.returncode}")
