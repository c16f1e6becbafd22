"""The ``p2pwall report`` command (registered by ``p2pwall.cli``)."""

from __future__ import annotations

import sys

import click


class ReportFailure(click.ClickException):
    exit_code = 2  # a bad argument or a file that is not a history: nothing a retry fixes


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML config file: its [history] file is read (default: built-in defaults).")
@click.option("--history", "files", multiple=True, type=click.Path(dir_okay=False),
              help="A history file to read instead (repeat to merge several gateways' files).")
@click.option("--since", help="Start: 7d, 12h, 30m ago, or a date/time such as 2026-11-01 (UTC). Default: all.")
@click.option("--until", help="End, in the same forms. Default: now.")
@click.option("--host", metavar="ADDR", help="Only this LAN host.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv", "html"]), default="text",
              show_default=True, help="csv: one row per host and day; html: one page with charts.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write here instead of standard output.")
def report(config_path, files, since, until, host, fmt, output):
    """What p2pwall did: per LAN host (first and last seen, protocols, locks and for how
    long, peers blocked), per detector, per day, the busiest hours."""
    import ipaddress

    from . import config as config_mod
    from .history import HistoryError, read
    from .report import ReportError, build, parse_when, render_csv, render_json, render_text

    try:
        if not files:
            settings = config_mod.load(config_path)
            if not settings.history_file:
                raise ReportError("[history] file is \"\": this configuration keeps no history")
            files = (settings.history_file,)
        start = parse_when(since) if since else None
        end = parse_when(until) if until else None
        if start is not None and end is not None and end <= start:
            raise ReportError("--until is not after --since")
        if host is not None:
            try:
                host = str(ipaddress.ip_address(host))
            except ValueError:
                raise ReportError(f"--host: not an IP address: {host!r}") from None
        doc = build(read(list(files), start, end, host), start, end, host, files)
    except (ReportError, HistoryError, config_mod.ConfigError) as exc:
        raise ReportFailure(str(exc)) from None
    if fmt == "html":
        from .reporthtml import render_html

        text = render_html(doc)
    else:
        text = {"text": render_text, "json": render_json, "csv": render_csv}[fmt](doc)
    if output:
        try:
            with open(output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            raise ReportFailure(f"--output: {exc.strerror or exc}: {output}") from None
    else:
        sys.stdout.write(text)
