"""Dropping root after start-up, keeping only CAP_NET_ADMIN and CAP_NET_RAW.

The capabilities are also raised as *ambient*, so the iptables and ipset commands the
daemon runs (kernel set updates, rule removal at stop) keep them too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pwd

CAP_NET_ADMIN, CAP_NET_RAW = 12, 13
PR_SET_KEEPCAPS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 8, 47, 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class PrivilegeError(Exception):
    pass


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def own_directory(path: str, what: str) -> str:
    """The directory of ``path``, which must be absolute and p2pwall's own (its name says
    p2pwall): with ``[daemon] user`` that directory is handed to the daemon's user, so it
    may never be a shared one like /run, /var/lib or /."""
    if not os.path.isabs(path):
        raise PrivilegeError(f"{what}: with [daemon] user the path must be absolute, got {path!r}")
    directory = os.path.dirname(os.path.normpath(path))
    if "p2pwall" not in os.path.basename(directory):
        raise PrivilegeError(f"{what}: with [daemon] user put it in a directory of p2pwall's own "
                             f"(such as /run/p2pwall/), not {directory or '/'}")
    return directory


def drop_privileges(user: str, keep_paths: list[str] = ()) -> None:
    """Become ``user``, keeping CAP_NET_ADMIN and CAP_NET_RAW; ``keep_paths`` (the status
    socket, the state file) stay writable: their own directories (see ``own_directory``)
    and the files themselves change owner, nothing else."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"[daemon] user: no such user {user!r}") from None
    libc = _libc()
    try:
        for path in keep_paths:
            directory = os.path.dirname(path)
            os.makedirs(directory, mode=0o700, exist_ok=True)
            # the owner changes, the group stays ([status] group's, for the socket)
            os.chown(directory, entry.pw_uid, -1, follow_symlinks=False)
            if os.path.lexists(path):
                os.chown(path, entry.pw_uid, -1, follow_symlinks=False)
    except OSError as exc:
        raise PrivilegeError(f"[daemon] user: cannot hand {exc.filename or 'a path'} to {user}: "
                             f"{exc.strerror or exc}") from None
    if libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
        raise PrivilegeError(f"prctl(KEEPCAPS) failed: {os.strerror(ctypes.get_errno())}")
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    mask = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW)
    header, data = _Header(_LINUX_CAPABILITY_VERSION_3, 0), (_Data * 2)()
    data[0].effective = data[0].permitted = data[0].inheritable = mask
    if libc.capset(ctypes.byref(header), ctypes.byref(data)) != 0:
        raise PrivilegeError(f"capset failed: {os.strerror(ctypes.get_errno())}")
    for cap in (CAP_NET_ADMIN, CAP_NET_RAW):
        if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0:
            raise PrivilegeError(f"ambient capability {cap} refused: {os.strerror(ctypes.get_errno())}")

