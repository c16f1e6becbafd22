import os
import socket

from p2pwall.sdnotify import Notifier


def test_notifications_go_to_the_socket_systemd_names(tmp_path):
    path = tmp_path / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "30000000"})
        assert n.watchdog == 15.0 and n.send("READY=1") and sock.recv(100) == b"READY=1"
        n.close()
    finally:
        sock.close()
    assert not Notifier({}).send("READY=1") and Notifier({}).watchdog is None
    other = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog is None  # the watchdog is another process's
