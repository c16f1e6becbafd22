#!/usr/bin/env python3
"""A minimal receiver for p2pwall's [notify] webhooks: prints each notice as one line
(and appends its JSON to --log FILE), answers 204. A starting point for a mail, chat or
ticket bridge: replace ``handle``.

    python3 examples/webhook-receiver.py --listen 127.0.0.1:8099 --log /var/log/p2pwall-notices.jsonl

and in /etc/p2pwall.toml:

    [notify]
    url = "http://127.0.0.1:8099/p2pwall"

Standard library only. Each POST body is a JSON object: "event" (client_locked,
lock_expired, peer_blocked_lan, peer_blocked, peer_unblocked, rules_restored,
cluster_down, cluster_up), "time" (epoch seconds), "time_iso", "gateway", and the
event's fields: "host" (the LAN host), "peer", "detector", "reason", "until", "scope",
"evidence", "clients".
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 65536


def handle(notice: dict, log_path: str | None) -> None:
    who = notice.get("host") or notice.get("peer") or ""
    print(f"{notice.get('time_iso')} {notice.get('gateway') or '-'} {notice.get('event')} {who} "
          f"{notice.get('detector') or ''} {notice.get('reason') or ''}".rstrip(), flush=True)
    if log_path:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(notice, sort_keys=True) + "\n")


class Receiver(BaseHTTPRequestHandler):
    log_path = None

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY or self.headers.get("Content-Type") != "application/json":
            self.send_error(400, "expected a JSON body")
            return
        try:
            notice = json.loads(self.rfile.read(length))
        except ValueError:
            self.send_error(400, "not JSON")
            return
        if not isinstance(notice, dict) or "event" not in notice:
            self.send_error(400, "not a p2pwall notice")
            return
        handle(notice, self.log_path)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):  # one line per notice is printed by handle()
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:8099", help="address:port (default %(default)s)")
    ap.add_argument("--log", help="append each notice's JSON to this file")
    args = ap.parse_args()
    host, _, port = args.listen.rpartition(":")
    Receiver.log_path = args.log
    try:
        server = ThreadingHTTPServer((host.strip("[]"), int(port)), Receiver)
    except (OSError, ValueError) as exc:
        print(f"webhook-receiver: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        return 2
    print(f"listening on {args.listen}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
