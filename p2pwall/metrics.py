"""Prometheus text exposition on an optional local port (``[metrics] listen``)."""

from __future__ import annotations

import socket

from .status import ThreadedServer


def queue_stats(queue: int) -> dict[str, int]:
    """The kernel's counters for our queue (/proc/net/netfilter/nfnetlink_queue)."""
    try:
        with open("/proc/net/netfilter/nfnetlink_queue") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 7 and int(fields[0]) == queue:
                    return {"waiting": int(fields[2]), "queue_dropped": int(fields[5]),
                            "user_dropped": int(fields[6])}
    except (OSError, ValueError):
        pass
    return {}


def render(snap: dict, queue: int) -> str:
    c = snap["counters"]
    lines = [
        "# HELP p2pwall_packets_total Packets judged, by verdict.",
        "# TYPE p2pwall_packets_total counter",
        f'p2pwall_packets_total{{verdict="accept"}} {c.get("accepted", 0)}',
        f'p2pwall_packets_total{{verdict="drop"}} {c.get("dropped", 0)}',
        "# HELP p2pwall_unparsed_packets_total Packets that did not parse (accepted).",
        "# TYPE p2pwall_unparsed_packets_total counter",
        f"p2pwall_unparsed_packets_total {c.get('unparsed', 0)}",
        "# HELP p2pwall_detections_total Packets dropped, by the detector responsible.",
        "# TYPE p2pwall_detections_total counter",
    ]
    for name in snap["detectors"]:
        lines.append(f'p2pwall_detections_total{{detector="{name}"}} {snap["drops_by_detector"].get(name, 0)}')
    lines += ["# HELP p2pwall_detector_errors_total Exceptions raised by detectors.",
              "# TYPE p2pwall_detector_errors_total counter"]
    for name in snap["detectors"]:
        lines.append(f'p2pwall_detector_errors_total{{detector="{name}"}} {snap["errors_by_detector"].get(name, 0)}')
    lines += ["# HELP p2pwall_table_entries Entries in the peer and lock tables.",
              "# TYPE p2pwall_table_entries gauge",
              f'p2pwall_table_entries{{table="peers"}} {snap["peers"]["count"]}',
              f'p2pwall_table_entries{{table="locks"}} {snap["locks"]["count"]}',
              "# HELP p2pwall_events_total Events, by kind.", "# TYPE p2pwall_events_total counter"]
    for kind, n in sorted(snap["events"].items()):
        lines.append(f'p2pwall_events_total{{kind="{kind}"}} {n}')
    q = queue_stats(queue)
    lines += ["# HELP p2pwall_queue_dropped_total Packets the kernel dropped because the queue was full.",
              "# TYPE p2pwall_queue_dropped_total counter",
              f"p2pwall_queue_dropped_total {q.get('queue_dropped', 0)}",
              "# HELP p2pwall_queue_user_dropped_total Packets lost between kernel and p2pwall (socket full).",
              "# TYPE p2pwall_queue_user_dropped_total counter",
              f"p2pwall_queue_user_dropped_total {q.get('user_dropped', 0)}",
              "# HELP p2pwall_kernel_set_failures_total Set elements the kernel refused (each counted, the rest still written).",
              "# TYPE p2pwall_kernel_set_failures_total counter",
              f"p2pwall_kernel_set_failures_total {c.get('kernel_set_failures', 0)}",
              "# HELP p2pwall_actions_refused_total Malformed actions detectors requested (never carried out).",
              "# TYPE p2pwall_actions_refused_total counter",
              f"p2pwall_actions_refused_total {c.get('actions_refused', 0)}",
              "# HELP p2pwall_fairness_dropped_total Packets beyond [queue] per_host_rate, dropped before the queue.",
              "# TYPE p2pwall_fairness_dropped_total counter",
              f"p2pwall_fairness_dropped_total {snap.get('queue_health', {}).get('fairness_dropped', 0)}",
              "# HELP p2pwall_kernel_dropped_total Packets the kernel sets dropped by themselves, never queued.",
              "# TYPE p2pwall_kernel_dropped_total counter",
              *(f'p2pwall_kernel_dropped_total{{set="{k}"}} {v}'
                for k, v in sorted((snap.get("queue_health", {}).get("kernel_drops") or {}).items())),
              "# HELP p2pwall_history_rows_total History rows, by fate (written, dropped: queue full, failed: disk).",
              "# TYPE p2pwall_history_rows_total counter",
              *(f'p2pwall_history_rows_total{{fate="{k}"}} {c.get("history_" + k, 0)}'
                for k in ("written", "dropped", "failed")),
              "# HELP p2pwall_notifications_total Webhook notices, by fate (sent, dropped: queue full, failed).",
              "# TYPE p2pwall_notifications_total counter",
              *(f'p2pwall_notifications_total{{fate="{k}"}} {c.get("notify_" + k, 0)}'
                for k in ("sent", "dropped", "failed")),
              *_cluster_lines(snap.get("cluster")),
              "# HELP p2pwall_uptime_seconds Seconds since start.", "# TYPE p2pwall_uptime_seconds gauge",
              f"p2pwall_uptime_seconds {snap['uptime']}"]
    return "\n".join(lines) + "\n"


def _cluster_lines(cluster: dict | None) -> list[str]:
    if not cluster:
        return []
    lines = ["# HELP p2pwall_cluster_up Whether Redis is reachable (1) or not (0).",
             "# TYPE p2pwall_cluster_up gauge", f"p2pwall_cluster_up {int(cluster['state'] == 'up')}",
             "# HELP p2pwall_cluster_changes_total Changes shared with the other gateways, by outcome.",
             "# TYPE p2pwall_cluster_changes_total counter"]
    for outcome in ("published", "applied", "refused", "rejected"):
        lines.append(f'p2pwall_cluster_changes_total{{outcome="{outcome}"}} {cluster.get(outcome, 0)}')
    lines += ["# HELP p2pwall_cluster_rejected_total Changes refused (garbage, bad signature), by the gateway they claim.",
              "# TYPE p2pwall_cluster_rejected_total counter"]
    for gw, n in sorted((cluster.get("rejected_by_gateway") or {}).items()):
        lines.append(f'p2pwall_cluster_rejected_total{{gateway="{gw}"}} {n}')
    lines += ["# HELP p2pwall_cluster_lag_seconds Seconds between another gateway's change and its application here.",
              "# TYPE p2pwall_cluster_lag_seconds gauge", f"p2pwall_cluster_lag_seconds {cluster.get('lag_seconds') or 0}",
              "# HELP p2pwall_cluster_gateways Other gateways seen.", "# TYPE p2pwall_cluster_gateways gauge",
              f"p2pwall_cluster_gateways {len(cluster.get('gateways', {}))}"]
    return lines


class MetricsServer(ThreadedServer):
    """A tiny HTTP server: any GET gets the metrics.  Requests are read in a thread
    (an idle client costs the loop nothing); the loop renders the answer."""

    def __init__(self, listen: str):
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(64)
        super().__init__(sock)

    def read_request(self, conn: socket.socket) -> dict | None:
        data = b""
        while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < 8192:
            try:
                chunk = conn.recv(4096)
            except socket.timeout:
                return None
            if not chunk:
                return None
            data += chunk
        return {"cmd": "metrics"}


def http_answer(text: str) -> bytes:
    body = text.encode()
    return (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body)
