"""Hook specifications: the plugin author's manual.

A detector is a pluggy plugin: a module, or a class that p2pwall instantiates with no
arguments, named by an entry point in the ``p2pwall.detectors`` group::

    [project.entry-points."p2pwall.detectors"]
    mydetector = "my_package:MyDetector"

It implements some of the hooks below with ``@p2pwall.hookimpl``.  A detector never
touches a socket, the queue or iptables: it looks at packets and *returns* the actions
(:mod:`p2pwall.actions`) it wants; the engine carries them out.

The engine calls each detector's hooks on its own (not as one pluggy multicall) so that
a detector that raises is logged, treated as having requested nothing, and cannot take
the others, or the packet's verdict, down with it.
"""

from __future__ import annotations

import pluggy

PROJECT = "p2pwall"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------
# Describing and starting a detector
# ---------------------------------------------------------------------------

@hookspec
def p2pwall_detector_info():
    """Describe this detector; called once when detectors are loaded.

    Return a :class:`p2pwall.plugins.DetectorInfo` (or a dict with the same keys):
    ``name``, ``version``, ``protocols`` (list of protocol names), ``description``
    (one line) and ``wants``, the packet kinds it must see, any of:

    - ``"udp"``: UDP datagrams sent by LAN hosts (forwarded, and to the firewall itself);
    - ``"tcp_syn"``: TCP connection openings from LAN hosts;
    - ``"tcp_payload"``: the first data packets of each TCP connection from the LAN;
    - ``"udp_in"``: the first UDP datagrams of each flow coming towards the LAN;
    - ``"tcp_payload_in"``: the first data packets towards the LAN of each TCP connection.

    UDP and payloads are queued for the first packets of each flow only (``[queue]
    udp_packets``, ``payload_packets``): later packets never leave the kernel.
    ``tcp_strings`` / ``tcp_strings_in`` (optional) narrow ``tcp_payload`` /
    ``tcp_payload_in`` to packets containing one of these byte strings, so the kernel
    (iptables ``string`` match) queues only those.  ``tcp_prefixes`` (1-4 bytes each)
    select LAN payloads that *start* with them (iptables ``u32`` on IPv4; on IPv6 all
    first payloads are queued when a detector gives prefixes).  ``udp_screen``
    (optional, a bytes regular expression): only UDP payloads it *matches* (at their
    start, DOTALL) are passed to this detector's ``p2pwall_inspect``; the engine joins
    every detector's screen into one regex in front of them all, so ordinary datagrams
    cost one C-level match instead of a Python call per detector.  ``locks`` (default true): whether a
    LAN host's TCP SYN to a peer this detector blocked time-locks that host.
    ``p2pwall rules`` builds the iptables rules from these declarations and the engine
    dispatches to a detector only the kinds it declared.
    """


@hookspec
def p2pwall_configure(table, settings):
    """Validate and take this detector's own config table; called once at start.

    ``table`` is the dict parsed from ``[detectors.<name>]`` (empty when absent);
    ``settings`` the whole validated :class:`p2pwall.config.Settings` (read only).
    Raise :class:`p2pwall.config.ConfigError` with a message naming the offending key;
    p2pwall prints it as a one-line error and exits with status 2.  Unknown keys should
    be errors.
    """


# ---------------------------------------------------------------------------
# Packets
# ---------------------------------------------------------------------------

@hookspec
def p2pwall_inspect(packet, context):
    """Look at one queued packet and return the actions wanted, or None.

    ``packet`` is a read-only :class:`p2pwall.packet.Packet` of a kind this detector
    declared in ``wants``.  ``context`` (:class:`p2pwall.engine.Context`) tells the time
    (``context.now``) and answers ``is_blocked(addr)``, ``is_locked(addr)`` and
    ``in_lan(addr)``.  Return an action, a list of actions, or None.  Any ``Drop`` from
    any detector (or the core tables) drops the packet.  Keep this fast: it runs for every
    packet of the declared kinds.
    """


@hookspec
def p2pwall_make_probe(client, context):
    """Build a probe for ``client`` (packed address), a LAN host this detector locked.

    Called by the engine's scheduler at half of the client's remaining lock (and once
    more at three quarters when the first goes unanswered).  Return a
    :class:`p2pwall.actions.Probe` the client's P2P program would answer, or None when
    this detector has nothing to ask it.  The answer arrives as a packet with direction
    ``to_firewall``; a detector that recognises it returns ``Lock(client)`` to restart
    the lock.
    """


# ---------------------------------------------------------------------------
# Demonstrating
# ---------------------------------------------------------------------------

@hookspec
def p2pwall_lab_scenario():
    """Offer a demo for ``p2pwall lab``: return a callable, or None.

    The callable is called as ``scenario(net, seconds=..., lock_seconds=..., echo=...)``
    with a :class:`p2pwall.testbed.Network` already built (LAN hosts, firewall, outside
    host with many addresses); it starts whatever clients and peers it needs, runs
    ``p2pwall run`` through ``net.p2pwall(...)``, prints a timeline with ``echo`` and
    returns True when p2pwall held (nothing got through, ordinary traffic flowed).
    """


# ---------------------------------------------------------------------------
# Observing
# ---------------------------------------------------------------------------

@hookspec
def p2pwall_event(event):
    """Observe an event (:class:`p2pwall.events.Event`): peer learned, client locked,
    lock expired, probe sent, probe answered, detector error.  Return value ignored;
    exceptions are logged and ignored.  For reporting plugins.
    """
