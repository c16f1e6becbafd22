"""A test-only detector, installed through a real entry point by the e2e fixtures.

It acts on UDP payload prefixes so a test can ask for each action by sending a datagram.
"""

from p2pwall import hookimpl
from p2pwall.actions import Block, Drop, Lock, Spoof


class TestDetector:
    @hookimpl
    def p2pwall_detector_info(self):
        return {"name": "testdet", "version": "0.0.1", "protocols": ["test"],
                "description": "acts on UDP payload prefixes (tests only)", "wants": ["udp"]}

    @hookimpl
    def p2pwall_inspect(self, packet, context):
        data = packet.data
        if data.startswith(b"DROP"):
            return Drop("asked to drop")
        if data.startswith(b"BLOCK"):
            return [Block(packet.dst, reason="asked to block"), Drop("asked to block")]
        if data.startswith(b"LOCK"):
            return Lock(packet.src, reason="asked to lock")
        if data.startswith(b"SPOOF"):
            return [Drop("asked to spoof"),
                    Spoof(packet.dst, packet.dport, packet.src, packet.sport, b"SPOOFED", reason="asked")]
        if data.startswith(b"SENDOUT"):
            return Spoof(packet.src, packet.sport, packet.dst, packet.dport, b"SPOOFED-OUT", reason="asked")
        if data.startswith(b"RAISE"):
            raise RuntimeError("this detector is broken on purpose")
        return None
