"""The plugin contract: one module to import, every hook documented and checked, one
registration path for loading and the harness, and a core that names no protocol."""

import ast
import inspect
import re
from pathlib import Path

import pytest

import p2pwall
from p2pwall import events, hookimpl, hookspecs, plugins
from p2pwall.testing import DetectorHarness, udp

ROOT = Path(__file__).parents[2]
PROTOCOL_WORDS = re.compile(r"fasttrack|kazaa|gnutella|torrent|edonkey|emule|kademlia|directconnect", re.I)


def hook_names():
    return [n for n, f in vars(hookspecs).items() if n.startswith("p2pwall_") and callable(f)]


def test_every_hook_is_documented_in_hookspecs_and_contributing():
    contributing = (ROOT / "CONTRIBUTING.md").read_text()
    for name in hook_names():
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert doc and len(doc) > 80, f"{name} has no real docstring"
        assert name in contributing, f"{name} is missing from CONTRIBUTING.md"


def test_the_event_kinds_the_hookspec_lists_are_the_ones_emitted():
    doc = inspect.getdoc(hookspecs.p2pwall_event)
    listed = set(re.findall(r"``([a-z_]+)``", doc))
    assert set(events.KINDS) <= listed
    emitted = set()
    for path in (ROOT / "p2pwall").glob("*.py"):
        emitted |= set(re.findall(r"ev\.([A-Z_]+)\b", path.read_text()))
    names = {getattr(events, c) for c in emitted if isinstance(getattr(events, c, None), str)}
    assert names - {events.SPOOF_SENT} <= set(events.KINDS)


def test_every_detector_info_field_has_a_docstring():
    tree = ast.parse((ROOT / "p2pwall" / "contract.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DetectorInfo")
    body = cls.body
    for i, node in enumerate(body):
        if isinstance(node, ast.AnnAssign):
            nxt = body[i + 1] if i + 1 < len(body) else None
            assert isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant), node.target.id


def test_the_core_names_no_protocol():
    for path in sorted((ROOT / "p2pwall").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert not PROTOCOL_WORDS.search(line), f"{path.relative_to(ROOT)}:{n}: {line.strip()}"


def test_detectors_import_only_the_contract_module():
    for path in list((ROOT / "plugins").rglob("__init__.py")) + list((ROOT / "examples").rglob("__init__.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("p2pwall."):
                pytest.fail(f"{path.relative_to(ROOT)} imports {node.module}: use `from p2pwall import ...`")
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 1 and node.module in ("lab", "emulator"):
                pytest.fail(f"{path.relative_to(ROOT)} imports lab code ({node.module})")
    for name in ("hookimpl", "DetectorInfo", "ConfigError", "Block", "Drop", "Lock", "Spoof", "Probe",
                 "FROM_LAN", "TO_LAN", "TO_FIREWALL", "TCP", "UDP", "Packet", "Verdict"):
        assert hasattr(p2pwall, name), name


class Misspelt:
    @hookimpl
    def p2pwall_detector_info(self):
        return {"wants": ["udp"]}

    @hookimpl
    def p2pwall_inspekt(self, packet, context):
        return None


class Unmarked:
    @hookimpl
    def p2pwall_detector_info(self):
        return {"wants": ["udp"]}

    def p2pwall_inspct(self, packet, context):  # no marker, still a typo of ours
        return None


@pytest.mark.parametrize("plugin", [Misspelt(), Unmarked()])
def test_a_misspelt_hook_is_an_error_at_load(plugin):
    with pytest.raises(plugins.PluginError, match="p2pwall_insp"):
        plugins.register([("typo", plugin, "test")])


def test_info_is_asked_once_after_configure():
    calls = []

    class Counting:
        @hookimpl
        def p2pwall_configure(self, table, settings):
            calls.append("configure")

        @hookimpl
        def p2pwall_detector_info(self):
            calls.append("info")
            return {"wants": ["udp"]}

    DetectorHarness(Counting())
    assert calls == ["configure", "info"]


def test_the_harness_names_a_detector_as_its_entry_point_does():
    DirectConnectDetector = pytest.importorskip(
        "p2pwall_directconnect", reason="the example detector package is not installed").DirectConnectDetector

    h = DetectorHarness(DirectConnectDetector(), config={"detectors": {"directconnect": {"udp": True}}})
    verdict = h.feed(udp("192.168.1.5", "203.0.113.9", 411, 411, b"$Ping 1.2.3.4:411|"))
    assert isinstance(verdict, p2pwall.Verdict) and verdict.drop and verdict.detector == "directconnect"
    assert h.blocked("203.0.113.9") and not h.locked("192.168.1.5")


def test_load_configures_with_the_given_settings():
    s = p2pwall.Settings(detectors={"gnutella": {"lock": False}})
    found = plugins.load(["gnutella", "fasttrack"], s)
    assert found.locking() == {"gnutella": False, "fasttrack": True}
    with pytest.raises(plugins.PluginError, match="unknown detector"):
        plugins.load(["nope"])
    with pytest.raises(p2pwall.ConfigError, match=r"\[detectors.gnutella\]"):
        plugins.load(["gnutella"], p2pwall.Settings(detectors={"gnutella": {"bogus": 1}}))


def test_tests_and_benches_read_nothing_outside_the_repository():
    pattern = re.compile(r"""["']shared["']|\.\./shared|parents\[[3-9]\]|["']\.\.["'],\s*["']\.\.["']""")
    for path in list((ROOT / "tests").rglob("*.py")) + list((ROOT / "bench").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert not pattern.search(line), f"{path.relative_to(ROOT)}:{n} reaches outside the repository"
