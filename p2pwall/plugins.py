"""Finding, loading and describing detectors (the pluggy plugin manager).

Every detector, built in or not, comes from the ``p2pwall.detectors`` entry-point group,
so the core has no way to favour its own.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points

import pluggy

from . import hookspecs
from .config import ConfigError, Settings

GROUP = "p2pwall.detectors"
KINDS = ("udp", "tcp_syn", "tcp_payload", "udp_in", "tcp_payload_in")
OWN_DISTRIBUTION = "p2pwall"


class PluginError(Exception):
    """A detector cannot be found or loaded (exit status 2)."""


@dataclass
class DetectorInfo:
    name: str
    version: str = "0"
    protocols: list[str] = field(default_factory=list)
    description: str = ""
    wants: list[str] = field(default_factory=list)
    tcp_strings: list[bytes] = field(default_factory=list)
    tcp_strings_in: list[bytes] = field(default_factory=list)
    tcp_prefixes: list[bytes] = field(default_factory=list)
    udp_screen: bytes | None = None
    locks: bool = True
    origin: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tcp_strings"] = [s.decode("latin-1") for s in self.tcp_strings]
        d["tcp_strings_in"] = [s.decode("latin-1") for s in self.tcp_strings_in]
        d["tcp_prefixes"] = [s.hex() for s in self.tcp_prefixes]
        d["udp_screen"] = self.udp_screen.decode("latin-1") if self.udp_screen else None
        return d


@dataclass
class Detector:
    name: str
    plugin: object
    info: DetectorInfo


def installed() -> dict:
    """Entry points of every installed detector, by name."""
    found = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep)
    return found


def _origin(ep) -> str:
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", None) if dist is not None else None
    if name is None or name == OWN_DISTRIBUTION:
        return "built in"
    version = getattr(dist, "version", "")
    return f"{name} {version}".strip()


def _coerce_info(name: str, raw) -> DetectorInfo:
    if isinstance(raw, DetectorInfo):
        info = raw
    elif isinstance(raw, dict):
        try:
            info = DetectorInfo(**raw)
        except TypeError as exc:
            raise PluginError(f"detector {name}: bad p2pwall_detector_info: {exc}") from None
    else:
        raise PluginError(f"detector {name}: p2pwall_detector_info must return DetectorInfo or dict")
    info.name = name  # the entry-point name is the one users type
    bad = [k for k in info.wants if k not in KINDS]
    if bad:
        raise PluginError(f"detector {name}: unknown packet kind(s) {bad}; known: {', '.join(KINDS)}")
    info.tcp_strings = [s.encode() if isinstance(s, str) else bytes(s) for s in info.tcp_strings]
    info.tcp_strings_in = [s.encode() if isinstance(s, str) else bytes(s) for s in info.tcp_strings_in]
    info.tcp_prefixes = [bytes(s) for s in info.tcp_prefixes]
    if any(not 1 <= len(s) <= 4 for s in info.tcp_prefixes):
        raise PluginError(f"detector {name}: tcp_prefixes must be 1 to 4 bytes long")
    if info.udp_screen is not None:
        info.udp_screen = info.udp_screen.encode("latin-1") if isinstance(info.udp_screen, str) else bytes(info.udp_screen)
        try:
            _screen([info.udp_screen])
        except re.error as exc:
            raise PluginError(f"detector {name}: bad udp_screen: {exc}") from None
    return info


class DetectorSet:
    """The detectors of one run, registered with a pluggy PluginManager."""

    def __init__(self, detectors: list[Detector], pm: pluggy.PluginManager):
        self.detectors = detectors
        self.pm = pm
        self.by_name = {d.name: d for d in detectors}

    def names(self) -> list[str]:
        return [d.name for d in self.detectors]

    def impls(self, hook: str, kind: str | None = None) -> list[tuple[str, object]]:
        """(detector name, function) for each detector implementing ``hook`` (and, with
        ``kind``, wanting that packet kind), in load order.  Each function takes the
        hook's arguments positionally, in the order of its specification, whatever
        subset of them the detector's implementation names."""
        caller = getattr(self.pm.hook, hook)
        spec_args = tuple(caller.spec.argnames)
        by_plugin = {impl.plugin_name: impl for impl in caller.get_hookimpls()}
        result = []
        for d in self.detectors:
            impl = by_plugin.get(d.name)
            if impl is None or (kind is not None and kind not in d.info.wants):
                continue
            result.append((d.name, _positional(impl.function, tuple(impl.argnames), spec_args)))
        return result

    def configure(self, settings: Settings) -> None:
        """Give each detector its own table; unknown detector tables are errors."""
        for table_name in settings.detectors:
            if table_name not in self.by_name and table_name not in installed():
                raise ConfigError(f"[detectors.{table_name}]: no such detector installed")
        for name, fn in self.impls("p2pwall_configure"):
            table = dict(settings.detectors.get(name, {}))
            try:
                fn(table, settings)
            except ConfigError as exc:
                raise ConfigError(f"[detectors.{name}] {exc}") from None
            except Exception as exc:  # a detector's bug is still a failed start
                raise ConfigError(f"[detectors.{name}]: detector failed to configure: {exc}") from None
        # what a detector wants may depend on its configuration: ask again
        for d in self.detectors:
            for impl in self.pm.hook.p2pwall_detector_info.get_hookimpls():
                if impl.plugin_name == d.name:
                    origin = d.info.origin
                    d.info = _coerce_info(d.name, impl.function())
                    d.info.origin = origin

    def wants(self) -> set[str]:
        return {k for d in self.detectors for k in d.info.wants}

    def tcp_strings(self, kind: str = "tcp_payload") -> list[bytes] | None:
        """Strings for the kernel match of ``kind`` (``tcp_payload`` or ``tcp_payload_in``),
        or None when some detector wants every payload of that kind."""
        strings: list[bytes] = []
        for d in self.detectors:
            if kind in d.info.wants:
                mine = d.info.tcp_strings if kind == "tcp_payload" else d.info.tcp_strings_in
                if not mine and not (kind == "tcp_payload" and d.info.tcp_prefixes):
                    return None
                strings.extend(s for s in mine if s not in strings)
        return strings

    def tcp_prefixes(self) -> list[bytes]:
        """Leading bytes that also select LAN payloads (matched with u32 on IPv4)."""
        found: list[bytes] = []
        for d in self.detectors:
            if "tcp_payload" in d.info.wants:
                found.extend(p for p in d.info.tcp_prefixes if p not in found)
        return found

    def udp_screens(self) -> dict:
        """Each detector's compiled ``udp_screen`` match, or None where it gave none."""
        return {d.name: _screen([d.info.udp_screen]) if d.info.udp_screen else None for d in self.detectors}

    def udp_screen(self):
        """One compiled regex ``match`` that any UDP payload some detector could want
        passes, or None when some UDP detector gave no screen (then all are called)."""
        screens = []
        for d in self.detectors:
            if "udp" in d.info.wants or "udp_in" in d.info.wants:
                if not d.info.udp_screen:
                    return None
                screens.append(d.info.udp_screen)
        return _screen(screens) if screens else None

    def locking(self) -> dict[str, bool]:
        """Per detector: do SYNs to the peers it learned lock their sender?"""
        return {d.name: d.info.locks for d in self.detectors}


def _screen(patterns: list[bytes]):
    """The anchored ``match`` of the patterns joined as alternatives (DOTALL)."""
    return re.compile(b"|".join(b"(?:" + p + b")" for p in patterns), re.DOTALL).match


def _positional(fn, names: tuple, spec_args: tuple):
    if names == spec_args:
        return fn
    pick = [spec_args.index(n) for n in names]
    return lambda *args: fn(*[args[i] for i in pick])


def load(names: list[str] | tuple[str, ...] | None = None) -> DetectorSet:
    """Load the named detectors (default: every installed one)."""
    available = installed()
    if names:
        missing = [n for n in names if n not in available]
        if missing:
            have = ", ".join(sorted(available)) or "none"
            raise PluginError(f"unknown detector {missing[0]!r} (installed: {have})")
        chosen = list(dict.fromkeys(names))
    else:
        chosen = sorted(available)
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    detectors = []
    for name in chosen:
        ep = available[name]
        try:
            obj = ep.load()
            plugin = obj() if inspect.isclass(obj) else obj
        except Exception as exc:
            raise PluginError(f"detector {name}: cannot load {ep.value}: {exc}") from None
        try:
            pm.register(plugin, name=name)
        except Exception as exc:
            raise PluginError(f"detector {name}: not a valid plugin: {exc}") from None
        impl = [i for i in pm.hook.p2pwall_detector_info.get_hookimpls() if i.plugin_name == name]
        if not impl:
            raise PluginError(f"detector {name}: does not implement p2pwall_detector_info")
        describe = impl[0].function
        try:
            info = _coerce_info(name, describe())
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"detector {name}: p2pwall_detector_info failed: {exc}") from None
        info.origin = _origin(ep)
        detectors.append(Detector(name, plugin, info))
    return DetectorSet(detectors, pm)
