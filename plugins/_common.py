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
