"""The example Grafana dashboard names only metrics the daemon serves."""

import json
import re
from pathlib import Path

from p2pwall import plugins
from p2pwall.config import from_dict
from p2pwall.engine import Engine
from p2pwall.metrics import render

DASHBOARD = Path(__file__).parents[2] / "examples" / "grafana" / "p2pwall-dashboard.json"


def test_every_metric_in_the_dashboard_is_served():
    settings = from_dict({"network": {"lan_networks": ["192.168.0.0/16"]}})
    snap = Engine(settings, plugins.load(None, settings)).snapshot()
    snap["queue_health"] = {"fairness_dropped": 0, "kernel_drops": {"peers": 0, "nolock": 0, "pairs": 0, "locks": 0}}
    snap["cluster"] = {"state": "up", "gateways": {"gw2": 1.0}, "lag_seconds": 0.01}
    served = set(re.findall(r"^# TYPE (p2pwall_[a-z_]+) ", render(snap, 0), re.M))  # the families served
    doc = json.loads(DASHBOARD.read_text())
    named = {name for p in doc["panels"] for t in p["targets"] for name in re.findall(r"p2pwall_[a-z_]+", t["expr"])}
    named |= set(re.findall(r"p2pwall_[a-z_]+", json.dumps(doc["templating"])))
    assert named and named <= served, named - served
    assert {"p2pwall_packets_total", "p2pwall_detections_total", "p2pwall_table_entries",
            "p2pwall_queue_dropped_total", "p2pwall_cluster_lag_seconds"} <= named
