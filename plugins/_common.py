"""Small helpers shared by the built-in detectors (not part of the core)."""

from __future__ import annotations

from p2pwall import ConfigError


def switches(table: dict, defaults: dict[str, bool]) -> dict[str, bool]:
    """Validate a detector table made of on/off switches; unknown keys are errors."""
    for key, value in table.items():
        if key not in defaults:
            raise ConfigError(f"unknown key {key} (known: {', '.join(sorted(defaults))})")
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return {**defaults, **table}


# Ethereum's RLPx (EIP-8) opening, shared by the ethereum detector (which names it) and
# the BitTorrent detector's MSE rule (which must not count it): see p2pwall_plugins.ethereum
RLPX_SIZES = (115, 1200)


def is_rlpx_auth(data: bytes) -> bool:
    """An EIP-8 RLPx auth or auth-ack frame filling the payload exactly: a 2-byte
    big-endian size equal to the rest, then an uncompressed public key (0x04)."""
    n = len(data)
    return RLPX_SIZES[0] <= n <= RLPX_SIZES[1] and int.from_bytes(data[:2], "big") == n - 2 and data[2] == 0x04


TLS_TYPES = (0x14, 0x15, 0x16, 0x17)  # TLS record content types


def tls_record(data: bytes) -> bool:
    """A TLS record's header: a record type, then version 3.x (a random first byte of
    those values alone is no TLS)."""
    return len(data) >= 2 and data[0] in TLS_TYPES and data[1] == 3


def whatsapp_opening(data: bytes) -> bool:
    """WhatsApp's Noise connection header: ``WA`` and its protocol version (two bytes), or
    the edge-routing header ``ED 00 01`` before it; then 3-byte frame lengths.  Its keys
    are random: the rules that count random openings (MSE's, obfuscated eDonkey's) name
    it for what it is and count nothing."""
    return (len(data) >= 3 and data[:2] == b"WA" and data[2] < 16) or data[:4] == b"ED\x00\x01"
