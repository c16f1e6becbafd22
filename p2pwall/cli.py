"""The ``p2pwall`` command line.

Exit codes: 0 success, 1 runtime failure, 2 usage or config error.  Every error is one
line on stderr; no traceback reaches the user.

Why one module past 400 lines: one click command per function, each short; splitting
them would scatter the one-line-error contract they share.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import click

from . import __version__
from . import config as config_mod
from . import plugins as plugins_mod

EXIT_RUNTIME = 1
EXIT_USAGE = 2


class Failure(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s p2pwall[%(process)d] %(levelname)s %(message)s"))
    root = logging.getLogger("p2pwall")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, built from the fields ``events.emit`` put on the record."""

    def format(self, record):
        doc = {"time": round(record.created, 3), "level": record.levelname.lower(),
               "logger": record.name}
        fields = getattr(record, "p2pwall_fields", None)
        if fields:
            doc.update({k: v for k, v in fields.items() if k not in doc and v is not None})
        else:
            doc["message"] = record.getMessage()
        return json.dumps(doc, default=str)


def _settings(path) -> config_mod.Settings:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as exc:
        raise Failure(f"config: {exc}", EXIT_USAGE) from None


def _detectors(names, settings=None) -> plugins_mod.DetectorSet:
    try:
        detectors = plugins_mod.load(list(names) or None, settings)
    except plugins_mod.PluginError as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
    except config_mod.ConfigError as exc:
        raise Failure(f"config: {exc}", EXIT_USAGE) from None
    return detectors


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise Failure(f"{what} needs root (CAP_NET_ADMIN and CAP_NET_RAW): run it as root", EXIT_USAGE)


plugin_option = click.option("--plugin", "plugins", multiple=True, metavar="NAME",
                             help="Run only this detector (repeatable; default: all installed).")
config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                             help="TOML config file (default: built-in defaults).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="p2pwall")
def cli():
    """p2pwall: stop LAN hosts from reaching peer-to-peer networks, let all else through."""


@cli.command()
@config_option
@plugin_option
@click.option("--queue", type=click.IntRange(0, 65535), help="NFQUEUE number (overrides [queue] number).")
@click.option("--monitor", is_flag=True, help="Decide and log everything, but accept every packet.")
@click.option("--no-install-rules", is_flag=True, help="Do not install iptables rules (you manage them).")
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Log line format (overrides [log] format).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              help="Log level (overrides [log] level).")
def run(config_path, plugins, queue, monitor, no_install_rules, log_format, log_level):
    """Run the filter: install the rules, judge queued packets until SIGTERM/SIGINT,
    then remove the rules. SIGHUP re-reads the config (a bad one is rejected)."""
    settings = _settings(config_path)
    if queue is not None:
        settings.queue_number = queue
    settings = config_mod.per_queue(settings)
    _setup_logging(log_level or settings.log_level, log_format or settings.log_format)
    detectors = _detectors(plugins, settings)
    _need_root("p2pwall run")
    from .daemon import Daemon, DaemonError

    from .privileges import PrivilegeError

    def reload():
        fresh = config_mod.load(config_path)
        if queue is not None:
            fresh.queue_number = queue
        fresh = config_mod.per_queue(fresh)
        return fresh, plugins_mod.load(list(plugins) or None, fresh)

    try:
        daemon = Daemon(settings, detectors, monitor=monitor, install_rules=not no_install_rules, reload=reload)
    except config_mod.ConfigError as exc:
        raise Failure(f"config: {exc}", EXIT_USAGE) from None
    try:
        daemon.run()
    except config_mod.ConfigError as exc:  # found only once run holds its queue ([history] file)
        raise Failure(f"config: {exc}", EXIT_USAGE) from None
    except DaemonError as exc:
        from .daemon import QueueBusy

        raise Failure(str(exc), EXIT_USAGE if isinstance(exc, QueueBusy) else EXIT_RUNTIME) from None
    except PrivilegeError as exc:
        raise Failure(str(exc), EXIT_RUNTIME) from None


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def detectors(fmt):
    """List the installed detectors: name, version, origin, protocols, packet kinds."""
    found = _detectors(())
    infos = [d.info.to_dict() for d in found.detectors]
    if fmt == "json":
        click.echo(json.dumps(infos, indent=2))
        return
    if not infos:
        click.echo("no detectors installed")
    for info in infos:
        click.echo(f"{info['name']} {info['version']} ({info['origin']})")
        click.echo(f"  protocols: {', '.join(info['protocols']) or '-'}")
        click.echo(f"  wants:     {', '.join(info['wants']) or '-'}")
        if info["description"]:
            click.echo(f"  {info['description']}")


@cli.command()
@config_option
@plugin_option
@click.option("--queue", type=click.IntRange(0, 65535), help="NFQUEUE number (overrides [queue] number).")
@click.option("--monitor", is_flag=True, help="The rules of `run --monitor` (no kernel sets).")
@click.option("--format", "fmt", type=click.Choice(["iptables", "nft"]), default="iptables", show_default=True)
def rules(config_path, plugins, queue, monitor, fmt):
    """Print exactly what `run` would install: its nft table (the peer sets), the ipset
    sets (the locks) and the iptables-restore input of each address family (or, for
    reference, an nft script)."""
    import dataclasses

    from . import nftables
    from . import rules as rules_mod
    from .policy import QueuePolicy

    settings = _settings(config_path)
    if queue is not None:
        settings.queue_number = queue
    if monitor:
        settings = dataclasses.replace(settings, kernel_sets=False)
    policy = QueuePolicy.build(settings, _detectors(plugins, settings))
    if not settings.lan_interfaces:
        click.echo("p2pwall: note: no [network] lan_interfaces: `run` refuses to start so; these rules "
                   "select the LAN by [network] lan_networks", err=True)
    click.echo(nftables.nft_script(policy) if fmt == "nft" else rules_mod.iptables_text(policy), nl=False)


@cli.command()
@click.argument("pcaps", nargs=-1, required=True, type=click.Path(dir_okay=False))
@config_option
@plugin_option
@click.option("--lan", "lans", multiple=True, metavar="CIDR",
              help="LAN network (repeatable; default: [network] lan_networks, else the private ranges).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def replay(pcaps, config_path, plugins, lans, fmt):
    """Run captures through the engine, behind a model of the kernel's rules and sets, and
    report, per flow, what the daemon would have done."""
    from . import pcap
    from .replay import Replay

    settings = _settings(config_path)
    if lans:
        try:
            settings.lan_networks = config_mod.from_dict({"network": {"lan_networks": list(lans)}}).lan_networks
        except config_mod.ConfigError as exc:
            raise Failure(f"--lan: {exc}", EXIT_USAGE) from None
    found = _detectors(plugins, settings)
    rp = Replay(settings, found)
    show_progress = fmt == "text" and sys.stderr.isatty()
    started = time.perf_counter()
    unreadable = []
    for path in pcaps:
        try:
            if show_progress and os.path.isfile(path):
                with click.progressbar(length=os.path.getsize(path), label=os.path.basename(path),
                                       file=sys.stderr) as bar:
                    rp.feed_file(path, lambda pos, bar=bar: bar.update(pos - bar.pos))
            else:
                rp.feed_file(path)
        except pcap.PcapError as exc:
            if len(pcaps) == 1:
                raise Failure(str(exc), EXIT_USAGE) from None
            unreadable.append(str(exc))  # a day of captures: one bad file does not cost the others
            click.echo(f"p2pwall: warning: skipped: {exc}", err=True)
    if unreadable and len(unreadable) == len(pcaps):
        raise Failure(f"no capture could be read ({unreadable[0]})", EXIT_USAGE)
    report = rp.report()
    for warning in report["warnings"]:
        click.echo(f"p2pwall: warning: {warning}", err=True)
    if fmt == "json":
        report["unreadable"] = unreadable
        click.echo(json.dumps(report))
    else:
        _echo_replay(report, time.perf_counter() - started)
    if unreadable:
        raise Failure(f"{len(unreadable)} of {len(pcaps)} captures could not be read and were skipped",
                      EXIT_RUNTIME)


def _echo_replay(report: dict, elapsed: float) -> None:
    """The text report: totals, then per LAN host and per protocol, then every flagged flow."""
    from collections import Counter, defaultdict

    v = report["verdicts"]
    click.echo(f"{report['packets']} packets in {elapsed:.2f} s: {v['accept']} accepted, {v['drop']} dropped; "
               f"{len(report['flows'])} flows")
    flagged = [f for f in report["flows"] if f["detector"]]
    by_host: dict[str, Counter] = defaultdict(Counter)
    for f in flagged:
        by_host[f["client"]][f["detector"]] += 1
    if by_host:
        click.echo("by host:")
        for host, detectors in sorted(by_host.items(), key=lambda kv: -sum(kv[1].values())):
            click.echo(f"  {host}: {sum(detectors.values())} flows flagged "
                       f"({', '.join(f'{d} {n}' for d, n in detectors.most_common())})")
        protocols = Counter(f["detector"] for f in flagged)
        click.echo("by detector: " + ", ".join(f"{d} {n} flows, {len(set(x['client'] for x in flagged if x['detector'] == d))} hosts"
                                           for d, n in protocols.most_common()))
    click.echo(f"{len(flagged)} flows flagged")
    for f in flagged:
        scope = {"lan": "; peer blocked for the whole LAN", "client": "; peer blocked for this client only"}
        click.echo(f"  {f['proto']} {_endpoint(f['client'], f['client_port'])} -> "
                   f"{_endpoint(f['peer'], f['peer_port'])} "
                   f"{f['detector']}: {f['reason']} ({f['dropped']}/{f['packets']} dropped"
                   f"{scope.get(f.get('scope'), '')})")


def _endpoint(addr: str, port: int) -> str:
    """``addr:port``, with IPv6 addresses in brackets so the port cannot be misread."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


socket_option = click.option("--socket", "socket_path", help="Status socket (overrides [status] socket).")


def _ask(config_path, socket_path, request: dict) -> dict:
    from .status import StatusError, query

    settings = config_mod.per_queue(_settings(config_path))
    try:
        return query(socket_path or settings.status_socket, request)
    except StatusError as exc:
        raise Failure(str(exc), EXIT_USAGE if exc.usage else EXIT_RUNTIME) from None


@cli.command()
@config_option
@socket_option
@click.option("--address", metavar="ADDR", help="Show one address in full: why it is blocked or locked, since when.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def status(config_path, socket_path, address, fmt):
    """Ask the running daemon for its tables, locked clients and counters."""
    if address is not None:
        _address(address)
    snap = _ask(config_path, socket_path, {"cmd": "status", **({"address": address} if address else {})})
    if snap.get("ok") is False:
        raise Failure(snap.get("error", "the daemon refused"), EXIT_RUNTIME)
    if fmt == "json":
        click.echo(json.dumps(snap, indent=2))
        return
    if address is not None:
        _echo_address(snap)
        return
    click.echo(f"up {snap['uptime']:.0f} s, detectors: {', '.join(snap['detectors'])}"
               f"{' (monitor mode)' if snap.get('monitor') else ''}")
    c = snap["counters"]
    lan = snap.get("lan")
    if lan:
        click.echo(f"LAN: {', '.join(lan['interfaces'])} ({', '.join(lan['networks'])})"
                   + (f"; allowlist {', '.join(lan['allow'])}" if lan["allow"] else "")
                   + (f"; protected {', '.join(lan['protect'])}" if lan["protect"] else ""))
    verdicts = f"packets {c.get('packets', 0)}, accepted {c.get('accepted', 0)}, dropped {c.get('dropped', 0)}"
    if snap.get("monitor"):
        verdicts += f", would have dropped {c.get('would_drop', 0)} (a dry run: nothing was)"
    click.echo(verdicts)
    for det, n in sorted(snap.get("drops_by_detector", {}).items()):
        click.echo(f"  {det}: {n} drops")
    for det, n in sorted(snap.get("errors_by_detector", {}).items()):
        click.echo(f"  {det}: {n} errors or refused actions")
    if c.get("kernel_set_failures") or c.get("kernel_set_refused"):
        click.echo(f"kernel sets: {c.get('kernel_set_failures', 0)} elements refused by the kernel, "
                   f"{c.get('kernel_set_refused', 0)} refused before it")
    health = snap.get("queue_health") or {}
    if health:
        click.echo(f"queue: overflow {health['overflow']}"
                   f"{' (fail open: what passes unjudged is not counted by the kernel)' if health['overflow'] == 'accept' else ''}; "
                   f"{health['queue_dropped']} dropped full, {health['user_dropped']} lost to the socket, "
                   f"{health['fairness_dropped']} over the per-host bound ({health['per_host_rate']}/s)")
        drops = health.get("kernel_drops") or {}
        if drops:
            click.echo(f"kernel drops (never queued): {drops.get('peers', 0) + drops.get('nolock', 0)} to LAN-wide "
                       f"peers, {drops.get('pairs', 0)} to client-scoped ones, {drops.get('locks', 0)} SYNs of "
                       f"locked clients")
    cluster = snap.get("cluster")
    if cluster:
        others = ", ".join(f"{gw} ({age:.0f} s ago)" for gw, age in cluster["gateways"].items()) or "none yet"
        lag = "-" if cluster.get("lag_seconds") is None else f"{cluster['lag_seconds'] * 1000:.0f} ms"
        click.echo(f"cluster: {cluster['state']} as {cluster['name']}; other gateways: {others}; lag {lag}; "
                   f"{cluster.get('published', 0)} published, {cluster.get('applied', 0)} applied, "
                   f"{cluster.get('rejected', 0)} rejected")
        if cluster.get("rejected_by_gateway"):  # by the gateway each refused change claimed to come from
            click.echo("  rejected, by claimed gateway: " + ", ".join(
                f"{gw} {n}" for gw, n in cluster["rejected_by_gateway"].items()))
    for title, key in (("blocked peers", "peers"), ("locked clients", "locks")):
        table = snap[key]
        click.echo(f"{title}: {table['count']}")
        for e in table["entries"][:50]:
            scope = ""
            if "scope" in e:
                scope = ("  for the whole LAN" if e["scope"] == "lan" else
                         f"  for {', '.join(e['clients'])} only") + f" ({e['evidence']} evidence)"
            click.echo(f"  {e['address']}  {e['remaining']:.0f} s left  {e['detector']}: {e['reason']}{scope}")


def _echo_address(r: dict) -> None:
    click.echo(f"{r['address']}: {'inside the LAN' if r['in_lan'] else 'outside the LAN'}"
               f"{', allowlisted (never blocked or locked)' if r['allowlisted'] else ''}")
    for title, key in (("blocked as a peer", "peer"), ("locked as a client", "lock")):
        e = r.get(key)
        if e is None:
            click.echo(f"  not {title.split(' as ')[0]}")
            continue
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["until"]))
        click.echo(f"  {title} by {e['detector']}: {e['reason'] or '-'}; until {until} ({e['remaining']:.0f} s left)")
        if "scope" in e:
            who = "every LAN host" if e["scope"] == "lan" else ", ".join(e["clients"])
            click.echo(f"    blocked for: {who}; evidence: {e['evidence']} "
                       f"(own packets from: {', '.join(e['own_clients']) or 'none'}); "
                       f"first seen {e['first_seen_ago']:.0f} s ago, last {e['last_seen_ago']:.0f} s ago")
            for client, gateway in sorted(e.get("gateways", {}).items()):
                click.echo(f"    {client} is behind gateway {gateway} (its evidence came through the cluster)")


def _address(text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise Failure(f"not an IP address: {text!r}", EXIT_USAGE) from None


def _change(config_path, socket_path, request: dict) -> None:
    _need_root(f"p2pwall {request['cmd']}")
    answer = _ask(config_path, socket_path, request)
    if not answer.get("ok"):
        raise Failure(answer.get("error") or "the daemon refused", EXIT_USAGE if answer.get("usage") else EXIT_RUNTIME)
    click.echo(f"{request['address']}: {request['cmd']}ed" if request["cmd"] != "block" else
               f"{request['address']}: blocked for every LAN host")


@cli.command()
@click.argument("address")
@click.option("--seconds", type=click.FloatRange(1, 366 * 86400), help="How long (default: [peers] seconds).")
@config_option
@socket_option
def block(address, seconds, config_path, socket_path):
    """Block ADDR for every LAN host now, in the kernel too; kept across restarts."""
    _change(config_path, socket_path, {"cmd": "block", "address": _address(address), "seconds": seconds})


@cli.command()
@click.argument("address")
@config_option
@socket_option
def unblock(address, config_path, socket_path):
    """Take ADDR out of the blocked peers now, in the kernel too."""
    _change(config_path, socket_path, {"cmd": "unblock", "address": _address(address)})


@cli.command()
@click.argument("address")
@config_option
@socket_option
def unlock(address, config_path, socket_path):
    """Lift the time lock on LAN host ADDR now, in the kernel too."""
    _change(config_path, socket_path, {"cmd": "unlock", "address": _address(address)})


@cli.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False))
def check_config(file):
    """Validate a config file, including each detector's own table, with every check
    `run` makes before it needs root: the LAN interfaces exist and carry an address,
    [daemon] user exists, optional libraries are there, the state directory is."""
    from .preflight import check

    settings = config_mod.per_queue(_settings(file))
    _detectors((), settings)
    try:
        warnings = check(settings)  # exactly what run checks before it needs root
    except config_mod.ConfigError as exc:
        raise Failure(f"config: {file}: {exc}", EXIT_USAGE) from None
    for warning in warnings:
        click.echo(f"p2pwall: warning: {warning}", err=True)
    click.echo(f"{file}: ok")


@cli.command()
@click.option("--seconds", type=click.FloatRange(5, 600), default=60, show_default=True,
              help="How long the emulated P2P client runs.")
@click.option("--lock", "lock_seconds", type=click.FloatRange(1, 600), default=8, show_default=True,
              help="The time lock used in the lab (the production default is 120 s).")
def lab(seconds, lock_seconds):
    """Demo: build a throw-away namespace network, run p2pwall against an emulated
    P2P client and ordinary traffic, print what happened, remove everything."""
    _need_root("p2pwall lab")
    try:
        from p2pwall_lab.run import LabError, run_lab
    except ImportError:
        raise Failure("lab: the lab is its own package, not installed: pip install ./lab "
                      "(p2pwall-lab, from the repository; ./scripts/lab does it)", EXIT_USAGE) from None

    try:
        code = run_lab(seconds=seconds, lock_seconds=lock_seconds, echo=click.echo)
    except LabError as exc:
        raise Failure(f"lab: {exc}", EXIT_RUNTIME) from None
    if code:
        raise Failure("lab: p2pwall did not hold", EXIT_RUNTIME)


from .reportcli import report as _report  # noqa: E402  (a command of its own module)

cli.add_command(_report)


def main(argv=None) -> int:
    try:
        cli.main(args=argv, prog_name="p2pwall", standalone_mode=False)
        return 0
    except Failure as exc:
        click.echo(f"p2pwall: error: {exc}", err=True)
        return exc.code
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare "p2pwall": help, not an error
            click.echo(exc.ctx.get_help() if exc.ctx else "", err=False)
            return 0
        where = "p2pwall" if not exc.ctx or exc.ctx.info_name == "p2pwall" else f"p2pwall {exc.ctx.info_name}"
        click.echo(f"{where}: error: {exc.format_message()}", err=True)
        return EXIT_USAGE
    except click.Abort:
        click.echo("p2pwall: aborted", err=True)
        return EXIT_RUNTIME
    except click.ClickException as exc:
        click.echo(f"p2pwall: error: {exc.format_message()}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0

