"""Finding, loading and describing detectors (the pluggy plugin manager).

Every detector, built in or not, comes from the ``p2pwall.detectors`` entry-point group,
so the core has no way to favour its own.  Loading (``load``) and the test harness
(:mod:`p2pwall.testing`) register detectors through the same function, ``register``.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from importlib.metadata import entry_points

import pluggy

from . import hookspecs
from .config import ConfigError, Settings
from .contract import DetectorInfo

GROUP = "p2pwall.detectors"
# ports of ordinary services that first-payload size rules never queue (iptables multiport: 15 at most)
SERVICE_PORTS = (22, 25, 53, 80, 110, 143, 443, 465, 587, 853, 993, 995, 1194, 3389, 8443)
# UDP a client locked by a detector that locks UDP (``DetectorInfo.locks_udp``) keeps: DNS,
# DHCP, NTP, QUIC and DNS over QUIC, IPsec, STUN/TURN, OpenVPN, WireGuard
UDP_SERVICE_PORTS = (53, 67, 68, 123, 443, 500, 853, 1194, 3478, 4500, 51820)
KINDS = ("udp", "tcp_syn", "tcp_payload", "udp_in", "tcp_payload_in")
OWN_DISTRIBUTION = "p2pwall"


class PluginError(Exception):
    """A detector cannot be found or loaded (exit status 2)."""


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


def _as_bytes(name: str, field_name: str, value) -> bytes:
    if isinstance(value, str):
        return value.encode("latin-1")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise PluginError(f"detector {name}: {field_name} must hold bytes or str, got {value!r}")


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
    if not isinstance(info.wants, (list, tuple)) or any(k not in KINDS for k in info.wants):
        raise PluginError(f"detector {name}: unknown packet kind(s) in {info.wants!r}; known: {', '.join(KINDS)}")
    info.wants = list(info.wants)
    for attr in ("tcp_strings", "tcp_strings_in", "tcp_prefixes", "udp_answered"):
        values = [_as_bytes(name, attr, s) for s in getattr(info, attr)]
        if any(not s or len(s) > 128 or b"\n" in s for s in values):
            raise PluginError(f"detector {name}: {attr} entries must be 1-128 bytes without newlines")
        setattr(info, attr, values)
    if any(not 1 <= len(s) <= 4 for s in info.tcp_prefixes + info.udp_answered):
        raise PluginError(f"detector {name}: tcp_prefixes and udp_answered entries must be 1 to 4 bytes long")
    for attr in ("tcp_first_sizes", "tcp_first_sizes_in"):
        value = getattr(info, attr)
        if value is not None:
            if (not isinstance(value, (list, tuple)) or len(value) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
                    or not 1 <= value[0] <= value[1] <= 1400):
                raise PluginError(f"detector {name}: {attr} must be (low, high) with 1 <= low <= high <= 1400")
            setattr(info, attr, (value[0], value[1]))
    if not isinstance(info.locks, bool):
        raise PluginError(f"detector {name}: locks must be true or false, got {info.locks!r}")
    if info.udp_screen is not None:
        info.udp_screen = _as_bytes(name, "udp_screen", info.udp_screen)
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
        """Give each detector its own table (unknown detector tables are errors), then ask
        each what it wants in that configuration: ``p2pwall_detector_info`` is called
        here, once per detector object."""
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
        describe = dict(self.impls("p2pwall_detector_info"))
        for d in self.detectors:
            if d.info.observer:
                continue
            try:
                info = _coerce_info(d.name, describe[d.name]())
            except PluginError as exc:
                raise ConfigError(str(exc)) from None
            except Exception as exc:
                raise ConfigError(f"detector {d.name}: p2pwall_detector_info failed: {exc}") from None
            info.origin = d.info.origin
            d.info = info

    def wants(self) -> set[str]:
        return {k for d in self.detectors for k in d.info.wants}

    def tcp_strings(self, kind: str = "tcp_payload") -> list[bytes] | None:
        """Strings for the kernel match of ``kind`` (``tcp_payload`` or ``tcp_payload_in``),
        or None when some detector wants every payload of that kind."""
        strings: list[bytes] = []
        for d in self.detectors:
            if kind in d.info.wants:
                mine = d.info.tcp_strings if kind == "tcp_payload" else d.info.tcp_strings_in
                sizes = d.info.tcp_first_sizes if kind == "tcp_payload" else d.info.tcp_first_sizes_in
                if not mine and not sizes and not (kind == "tcp_payload" and d.info.tcp_prefixes):
                    return None  # it wants every first payload of that kind
                strings.extend(s for s in mine if s not in strings)
        return strings

    def tcp_first_sizes(self, kind: str = "tcp_payload") -> tuple[int, int] | None:
        """The union of the detectors' first-payload size ranges for ``kind``."""
        ranges = [d.info.tcp_first_sizes if kind == "tcp_payload" else d.info.tcp_first_sizes_in
                  for d in self.detectors if kind in d.info.wants]
        ranges = [r for r in ranges if r]
        return (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None

    def _declared(self, kind: str, attr: str) -> list[bytes]:
        """The union, in order, of ``attr`` over the detectors that want ``kind``."""
        found: list[bytes] = []
        for d in self.detectors:
            if kind in d.info.wants:
                found.extend(p for p in getattr(d.info, attr) if p not in found)
        return found

    def tcp_prefixes(self) -> list[bytes]:
        """Leading bytes that also select LAN payloads (matched with u32 on IPv4)."""
        return self._declared("tcp_payload", "tcp_prefixes")

    def udp_answered(self) -> list[bytes]:
        """UDP prefixes whose datagrams to blocked peers are still queued (``udp_answered``)."""
        return self._declared("udp", "udp_answered")

    def tcp_screens(self, kind: str = "tcp_payload") -> dict:
        """Each detector's own narrowing of ``kind`` (``tcp_payload`` or ``tcp_payload_in``):
        a test ``screen(payload bytes, first)`` that passes what its declarations select
        (one of its strings, one of its prefixes, a first payload of its sizes), or None
        where it declared none of them (it sees every payload of that kind)."""
        out = {}
        for d in self.detectors:
            i = d.info
            strings = tuple(i.tcp_strings if kind == "tcp_payload" else i.tcp_strings_in)
            prefixes = tuple(i.tcp_prefixes) if kind == "tcp_payload" else ()
            sizes = i.tcp_first_sizes if kind == "tcp_payload" else i.tcp_first_sizes_in
            out[d.name] = _tcp_screen(strings, prefixes, sizes) if strings or prefixes or sizes else None
        return out

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

    def udp_locking(self) -> frozenset:
        """The detectors whose locks take the client's UDP too (``locks_udp``)."""
        return frozenset(d.name for d in self.detectors if d.info.locks and d.info.locks_udp)


def _tcp_screen(strings: tuple, prefixes: tuple, sizes):
    low, high = sizes if sizes else (1, 0)

    shapes = bool(sizes)

    def screen(data: bytes, first: bool, second: bool = False) -> bool:
        return (any(x in data for x in strings) or (bool(prefixes) and data.startswith(prefixes))
                or (first and low <= len(data) <= high) or (second and shapes))
    return screen


def _screen(patterns: list[bytes]):
    """The anchored ``match`` of the patterns joined as alternatives (DOTALL)."""
    return re.compile(b"|".join(b"(?:" + p + b")" for p in patterns), re.DOTALL).match


def _positional(fn, names: tuple, spec_args: tuple):
    if names == spec_args:
        return fn
    pick = [spec_args.index(n) for n in names]
    return lambda *args: fn(*[args[i] for i in pick])


def manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def register(entries) -> DetectorSet:
    """Register ``(name, plugin object, origin)`` triples: the one way a detector joins a
    run, for ``load`` and the test harness alike.  Hook names are checked (a misspelt
    ``p2pwall_*`` hook is an error here, not silently ignored); ``configure`` follows."""
    pm = manager()
    detectors = []
    for name, plugin, origin in entries:
        if pm.has_plugin(name):
            raise PluginError(f"detector {name}: registered twice")
        try:
            pm.register(plugin, name=name)
        except Exception as exc:
            raise PluginError(f"detector {name}: not a valid plugin: {exc}") from None
        _honoured(pm, name)
        if not any(i.plugin_name == name for i in pm.hook.p2pwall_detector_info.get_hookimpls()):
            if not any(i.plugin_name == name for i in pm.hook.p2pwall_event.get_hookimpls()):
                raise PluginError(f"detector {name}: does not implement p2pwall_detector_info")
            # an observer: implements p2pwall_event and nothing about packets
            detectors.append(Detector(name, plugin, DetectorInfo(name=name, origin=origin, observer=True,
                                                                  description="observes events")))
            continue
        detectors.append(Detector(name, plugin, DetectorInfo(name=name, origin=origin)))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"detector {getattr(exc, 'plugin', '?')!s}: {exc}") from None
    for plugin_name, plugin in pm.list_name_plugin():
        unknown = [a for a in dir(plugin) if a.startswith("p2pwall_") and callable(getattr(plugin, a, None))
                   and not hasattr(pm.hook, a)]
        if unknown:
            raise PluginError(f"detector {plugin_name}: unknown hook {unknown[0]} (see p2pwall.hookspecs)")
    return DetectorSet(detectors, pm)


# pluggy options the engine does not honour: it calls each detector's hook itself, in load
# order, never as one pluggy call, so ordering and wrapping would silently not happen
_UNHONOURED = ("tryfirst", "trylast", "wrapper", "hookwrapper")


def _honoured(pm: pluggy.PluginManager, name: str) -> None:
    for hook in ("p2pwall_detector_info", "p2pwall_configure", "p2pwall_inspect", "p2pwall_make_probe",
                 "p2pwall_event"):
        for impl in getattr(pm.hook, hook).get_hookimpls():
            if impl.plugin_name != name:
                continue
            used = [opt for opt in _UNHONOURED if getattr(impl, opt, False)]
            if used:
                raise PluginError(f"detector {name}: {hook}: hookimpl option {used[0]}=True is not supported "
                                  f"(p2pwall calls each detector's hooks on its own, in load order)")


def load(names: list[str] | tuple[str, ...] | None = None, settings: Settings | None = None) -> DetectorSet:
    """Load the named detectors (default: every installed one) and configure them with
    ``settings`` (default: the built-in defaults).  Raises PluginError or ConfigError."""
    available = installed()
    if names:
        missing = [n for n in names if n not in available]
        if missing:
            have = ", ".join(sorted(available)) or "none"
            raise PluginError(f"unknown detector {missing[0]!r} (installed: {have})")
        chosen = list(dict.fromkeys(names))
    else:
        chosen = sorted(available)
    entries = []
    for name in chosen:
        ep = available[name]
        try:
            obj = ep.load()
            plugin = obj() if inspect.isclass(obj) else obj
        except Exception as exc:
            raise PluginError(f"detector {name}: cannot load {ep.value}: {exc}") from None
        entries.append((name, plugin, _origin(ep)))
    found = register(entries)
    found.configure(settings if settings is not None else Settings())
    return found


def entry_point_name(plugin) -> str | None:
    """The installed entry-point name that names ``plugin``'s class, if any."""
    cls = plugin if inspect.isclass(plugin) else type(plugin)
    target = f"{cls.__module__}:{cls.__qualname__}"
    for name, ep in installed().items():
        if ep.value.replace(" ", "") == target:
            return name
    return None
