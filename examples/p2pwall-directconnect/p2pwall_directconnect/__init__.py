"""Direct Connect (NMDC): the smallest complete third-party p2pwall detector.

Recognises the NMDC hub/client handshake commands over TCP (``$MyNick``, ``$Lock``,
``$Key``) and the UDP search replies and pings (``$SR ``/``$Ping `` ending in ``|``).
Requests: block the remote peer and drop the packet.

Can a browser, an ordinary protocol or one hostile LAN host make it fire?  The TCP
commands count only as the first payload of a connection (p2pwall's core refuses any
later one), which a browser always fills with its own HTTP request line or TLS hello.
The UDP forms need ``$SR ``/``$Ping `` at the start and ``|`` at the very end: a browser
cannot send such UDP, and random datagrams match about 1 in 10^12.  A hostile LAN host
can fire them against any address, for itself only: its own packets block the address
for it alone.  p2pwall's core applies all of that; this detector only says what it saw.
"""

from p2pwall import TCP, Block, ConfigError, Drop, hookimpl

__version__ = "0.1.0"
TCP_COMMANDS = (b"$MyNick ", b"$Lock ", b"$Key ")
UDP_COMMANDS = (b"$SR ", b"$Ping ")


class DirectConnectDetector:
    def __init__(self):
        self.udp = True

    @hookimpl
    def p2pwall_detector_info(self):
        return {"name": "directconnect", "version": __version__, "protocols": ["DirectConnect"],
                "description": "NMDC handshakes over TCP and search replies over UDP",
                "wants": ["udp", "tcp_payload"] if self.udp else ["tcp_payload"],
                "tcp_strings": list(TCP_COMMANDS), "udp_screen": rb"\$"}

    @hookimpl
    def p2pwall_configure(self, table, settings):
        for key, value in table.items():
            if key != "udp":
                raise ConfigError(f"unknown key {key}")
            if not isinstance(value, bool):
                raise ConfigError(f"udp: expected true or false, got {value!r}")
        self.udp = table.get("udp", True)

    @hookimpl
    def p2pwall_inspect(self, packet, context):
        data = packet.data
        if packet.proto == TCP:
            if data.startswith(TCP_COMMANDS) and b"|" in data:
                return [Block(packet.dst, reason="DirectConnect handshake"), Drop("DirectConnect")]
        elif self.udp and data.startswith(UDP_COMMANDS) and data.endswith(b"|"):
            return [Block(packet.dst, reason="DirectConnect UDP"), Drop("DirectConnect")]
        return None
