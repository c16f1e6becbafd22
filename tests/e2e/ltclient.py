"""A real BitTorrent client for the e2e tests: libtorrent-rasterbar (Debian's
``python3-libtorrent``, the engine of qBittorrent and Deluge) with its default settings
but for what a closed lab needs (no DHT, LSD, UPnP or NAT-PMP; a self-signed HTTPS tracker
accepted; several peers on one address allowed).  uTP and TCP, encryption "enabled" as
shipped, or required with ``--crypto required``.

Run by the system's ``python3`` (where the Debian package installs the binding), not the
test venv's:

    python3 ltclient.py seed|leech --listen IP --port N --torrent F --dir D
                        [--tracker URL] [--crypto enabled|required] [--seconds S]
    python3 ltclient.py tracker --listen IP --port N --peers IP:PORT,...

``tracker`` is the lab's tracker: every announce gets the same compact list of peers
(the seeders; opentracker would record them all as one address, since they announce
from the host that runs it).  stunnel puts TLS in front of it.

It prints one JSON line when ready and, at the end, one with what it got: pieces
verified, payload bytes received, and the peers it was connected to.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address

try:
    import libtorrent as lt
except ImportError:  # the tracker needs none
    lt = None

UTP_SOCKET = 1 << 17  # peer_info::utp_socket (libtorrent 2.0), not exported by the binding


def session(ip: str, port: int, crypto: str):
    settings = {
        "listen_interfaces": f"{ip}:{port}",
        "outgoing_interfaces": ip,
        "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
        "validate_https_trackers": False,  # the lab's tracker has a self-signed certificate
        "allow_multiple_connections_per_ip": True,
        "announce_to_all_trackers": True,
        "alert_mask": lt.alert.category_t.error_notification | lt.alert.category_t.status_notification,
    }
    if crypto == "required":
        settings.update({"out_enc_policy": int(lt.enc_policy.forced), "in_enc_policy": int(lt.enc_policy.forced),
                         "allowed_enc_level": int(lt.enc_level.rc4)})
    return lt.session(settings)


def tracker(ip: str, port: int, peers: str) -> int:
    compact = b"".join(ip_address(p.rsplit(":", 1)[0]).packed + int(p.rsplit(":", 1)[1]).to_bytes(2, "big")
                       for p in peers.split(","))
    body = b"d8:completei%de10:incompletei0e8:intervali30e5:peers%d:%se" % (len(peers.split(",")), len(compact), compact)

    class Announce(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path.startswith("/announce?") else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            print(json.dumps({"announce": self.path[:100]}), flush=True)

    server = ThreadingHTTPServer((ip, port), Announce)
    print(json.dumps({"ready": True, "role": "tracker"}), flush=True)
    server.serve_forever()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["seed", "leech", "tracker"])
    ap.add_argument("--listen", required=True)
    ap.add_argument("--port", type=int, default=6881)
    ap.add_argument("--torrent")
    ap.add_argument("--dir")
    ap.add_argument("--peers", help="tracker: the peers every announce gets")
    ap.add_argument("--tracker", help="announce here instead of the torrent's trackers")
    ap.add_argument("--crypto", choices=["enabled", "required"], default="enabled")
    ap.add_argument("--seconds", type=float, default=20.0)
    a = ap.parse_args(argv)
    if a.role == "tracker":
        return tracker(a.listen, a.port, a.peers)
    ses = session(a.listen, a.port, a.crypto)
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(a.torrent)
    params.save_path = a.dir
    handle = ses.add_torrent(params)
    if a.tracker:
        handle.replace_trackers([lt.announce_entry(a.tracker)])
    print(json.dumps({"ready": True, "role": a.role}), flush=True)
    deadline = time.monotonic() + a.seconds
    peers = set()
    status = handle.status()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        for alert in ses.pop_alerts():
            if a.role == "leech" and alert.category() & lt.alert.category_t.error_notification:
                print(json.dumps({"alert": alert.message()[:200]}), flush=True)
        status = handle.status()
        try:
            peers |= {f"{p.ip[0]}:{p.ip[1]}/{'utp' if int(p.flags) & UTP_SOCKET else 'tcp'}"
                      f"{'/rc4' if int(p.flags) & int(lt.peer_info.rc4_encrypted) else ''}"
                      for p in handle.get_peer_info()}
        except RuntimeError:
            pass
        if a.role == "leech" and status.is_seeding:
            break
    print(json.dumps({"done": True, "pieces": int(status.num_pieces), "payload": int(status.total_payload_download),
                      "peers": sorted(peers), "state": str(status.state)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
