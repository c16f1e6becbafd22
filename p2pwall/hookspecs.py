"""Hook specifications: the plugin author's manual.

A detector is a pluggy plugin: a module, or a class that p2pwall instantiates with no
arguments, named by an entry point in the ``p2pwall.detectors`` group::

    [project.entry-points."p2pwall.detectors"]
    mydetector = "my_package:MyDetector"

It implements some of the hooks below with ``@p2pwall.hookimpl``.  Everything a
detector needs comes from the one contract module, ``p2pwall``::

    from p2pwall import (hookimpl, DetectorInfo, ConfigError, Block, Drop, Lock, Spoof,
                         Probe, FROM_LAN, TO_LAN, TO_FIREWALL, TCP, UDP)

A detector never touches a socket, the queue or iptables: it looks at packets and
*returns* the actions it wants; the engine validates them and carries them out (a
malformed action is refused and counted against the detector, never obeyed).  What a
detector needs to remember about a client or peer travels with the engine's entry
(``note``), so it keeps no unbounded tables of its own.

The engine calls each detector's hooks on its own (not as one pluggy multicall) so that
a detector that raises is logged, treated as having requested nothing, and cannot take
the others, or the packet's verdict, down with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from .actions import Block, Drop, Lock, Probe, Report, Spoof
    from .config import Settings
    from .contract import Context, DetectorInfo
    from .events import Event
    from .packet import Packet

    Action = Drop | Block | Lock | Report | Spoof | Probe

PROJECT = "p2pwall"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------
# Describing and starting a detector
# ---------------------------------------------------------------------------

@hookspec
def p2pwall_detector_info() -> DetectorInfo | dict:
    """Describe this detector: return a :class:`p2pwall.DetectorInfo` (or a dict with
    its field names; each field is documented there).

    Called once per detector object, right after ``p2pwall_configure`` (a SIGHUP reload
    builds fresh detector objects), so what it returns may depend on the detector's
    configuration.  ``wants`` lists the packet kinds it must see, any of:

    - ``"udp"``: UDP datagrams sent by LAN hosts (forwarded, and to the firewall itself);
    - ``"tcp_syn"``: TCP connection openings from LAN hosts;
    - ``"tcp_payload"``: the first data packets of each TCP connection from the LAN;
    - ``"udp_in"``: the first UDP datagrams of each flow coming towards the LAN;
    - ``"tcp_payload_in"``: the first data packets towards the LAN of each TCP connection.

    UDP and payloads are queued for the first packets of each flow only (``[queue]
    udp_packets``, ``payload_packets``): later packets never leave the kernel.
    ``tcp_strings``, ``tcp_strings_in``, ``tcp_prefixes``, ``tcp_first_sizes`` and
    ``udp_screen`` narrow what is queued and, for this detector, what it is called for
    (a detector sees a TCP payload only if one of its own strings, prefixes or sizes
    selects it: another detector's declarations never reach it); ``locks`` says whether SYNs to the peers it blocks lock
    their sender.  ``p2pwall rules`` and the running daemon build the same kernel rules
    from these declarations (:mod:`p2pwall.policy`), and the engine dispatches to a
    detector only the kinds it declared.
    """


@hookspec
def p2pwall_configure(table: dict, settings: Settings) -> None:
    """Validate and take this detector's own config table; called once per detector
    object, before ``p2pwall_detector_info``.

    ``table`` is the dict parsed from ``[detectors.<name>]`` (empty when absent);
    ``settings`` the whole validated :class:`p2pwall.Settings` (read only).
    Raise :class:`p2pwall.ConfigError` with a message naming the offending key;
    p2pwall prints it as a one-line error and exits with status 2 (at start), or
    rejects the reload and keeps running (SIGHUP).  Unknown keys should be errors.
    """


# ---------------------------------------------------------------------------
# Packets
# ---------------------------------------------------------------------------

@hookspec
def p2pwall_inspect(packet: Packet, context: Context) -> Action | Sequence[Action] | None:
    """Look at one queued packet and return the actions wanted, or None.

    Say what you saw; the core decides what it earns (:mod:`p2pwall.evidence`): a
    ``Block`` of the address a LAN client's own packet went to blocks it for that client
    only (LAN-wide once ``[peers] corroborate`` clients did the same); a ``Block`` of the
    address that sent a reply towards the LAN blocks it for everyone when this detector
    blocked the peer on the client's request on that same flow (the client asked in P2P,
    the peer answered in P2P), for that client alone when this detector only recognised
    the request (``Context.recognise``), and earns nothing otherwise; a ``Block`` of any
    other address (named in a reply or a request) blocks it for the client concerned, and
    from a reply only on a flow where this detector recognised the client's request.  For
    TCP only the first payload of a connection in each direction counts (``packet.first``),
    and the client's next payload after a recognised opening of a shape-read size
    (``packet.second``); a ``Lock`` needs
    the client's own packet or the answer to a probe p2pwall sent; the allowlist,
    ``[peers] protect`` and the gateway's nameservers are never blocked.  Anything a web
    page can make a browser send (plain HTTP) must not be evidence: when
    :func:`p2pwall.browser_shaped` says so, return ``Drop`` and ``Report`` instead.

    ``packet`` is a read-only :class:`p2pwall.Packet` of a kind this detector declared
    in ``wants``.  ``context`` (:class:`p2pwall.Context`) tells the time
    (``context.now``), answers ``is_blocked(addr)``, ``blocked_for(client, peer)`` (for that
    client or the whole LAN), ``is_locked(addr)``, ``in_lan(addr)`` and, for a reply, ``requested(packet)`` (did this detector act on the
    client's request on this same flow?); ``recognise(packet)`` marks a client's request
    as this detector's protocol without acting on it (only then, or after a ``Block`` of
    the request, does the peer's reply on that flow count); it keeps small bounded notes for it
    (``keep_note``/``note_for``).  Return an action, a list of actions, or None.  Any ``Drop`` from
    any detector (or the core tables) drops the packet.  Keep this fast: it runs for every
    packet of the declared kinds.
    """


@hookspec
def p2pwall_make_probe(client: bytes, note: bytes | None, context: Context) -> Probe | None:
    """Build a probe for ``client`` (packed address), a LAN host this detector locked.

    Called by the engine's scheduler at half of the client's remaining lock (and once
    more at three quarters when the first goes unanswered, ``[probes] per_lock``).
    ``note`` is what this detector attached to the lock (``Lock(note=...)``) or to the
    peer whose SYN caused it (``Block(note=...)``), or None: the engine keeps it with
    the entry, across SIGHUP and restarts, so a detector needs no table of its own.
    Return a :class:`p2pwall.Probe` the client's P2P program would answer, or None.
    The answer arrives as a packet with direction ``TO_FIREWALL``; a detector that
    recognises it returns ``Lock(client)`` to restart the lock.
    """


# ---------------------------------------------------------------------------
# Observing
# ---------------------------------------------------------------------------

@hookspec
def p2pwall_event(event: Event) -> None:
    """Observe an event (:class:`p2pwall.Event`), for reporting plugins.

    ``event.kind`` is one of :data:`p2pwall.events.KINDS`: ``peer_blocked``,
    ``peer_unblocked`` (taken out before its time: by a reload that
    forbids it, or by an operator; plain expiry and eviction are only counted), ``client_locked``,
    ``lock_restarted``, ``lock_expired``, ``probe_sent``, ``probe_answered``,
    ``send_refused``, ``reported`` (a detector's ``Report``: seen, not acted on),
    ``action_refused`` and ``detector_error`` (a detector raised or
    requested something malformed; its name is in ``event.detector``).  Return value
    ignored; an observer that raises is counted against it, never notified of its own
    error, and cannot cost a verdict.  Told after the verdicts; in the daemon on a
    thread of its own (so a slow observer delays no packet), in replay and the test
    harness in line.  A plugin that implements only this hook (no
    ``p2pwall_detector_info``) is an observer, not a detector.
    """
