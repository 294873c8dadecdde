"""The `flowforged` command: run, check-config, secret, runs, reindex, status."""

from __future__ import annotations

import argparse
import asyncio
import collections
import getpass
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from flowforged import __version__, config, logs, secrets
from flowforged.errors import ConfigError, FlowForgeError

EXIT_CONFIG = 2


def _load(args: argparse.Namespace, lenient: bool = False) -> config.Config:
    context = secrets.SecretContext(lenient=lenient)
    return config.load(config.default_path(args.config), context)


def cmd_run(args: argparse.Namespace) -> int:
    from flowforged.app import serve

    cfg = _load(args)
    logs.setup(cfg.logging.level)
    asyncio.run(serve(cfg, reload=lambda: _load(args)))  # SIGHUP reads the same file again
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    path = config.default_path(args.config)
    cfg = config.load(path, secrets.SecretContext())
    for warning in cfg.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{path}: ok ({len(cfg.source_configs)} sources, {len(cfg.sink_configs)} sinks, {len(cfg.rules)} rules)")
    return 0


def cmd_secret(args: argparse.Namespace) -> int:
    backend = secrets.writable_keyring(args.name)  # before asking for a value that could not be kept
    if args.action == "set":
        if sys.stdin.isatty():
            value = getpass.getpass(f"value for {args.name} (not echoed): ")
        else:
            value = sys.stdin.read().rstrip("\r\n")
        if not value:
            print("error: empty value; nothing stored", file=sys.stderr)
            return 1
        secrets.set_secret(args.name, value, backend)
        print(
            f"stored secret {args.name!r} in keyring service {secrets.KEYRING_SERVICE!r} "
            f"({type(backend).__module__}.{type(backend).__name__}); read back to check"
        )
        return 0
    if secrets.delete_secret(args.name, backend):
        print(f"deleted secret {args.name!r}")
        return 0
    print(f"no secret {args.name!r} in keyring service {secrets.KEYRING_SERVICE!r}", file=sys.stderr)
    return 1


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _table(rows: list[dict[str, Any]]) -> str:
    columns = [
        ("ID", lambda r: r["id"]),
        ("SOURCE", lambda r: r["source"]),
        ("PIPELINE", lambda r: r["pipeline"]),
        ("BRANCH", lambda r: r["branch"] or "-"),
        ("RUN", lambda r: f"{r['run_id']}#{r['attempt']}"),
        ("STATUS", lambda r: r["status"]),
        ("TRANSITION", lambda r: r["transition"] or ""),
        ("FINISHED", lambda r: r["finished_at"] or "-"),
        ("DURATION", lambda r: _duration(r["duration_seconds"])),
    ]
    cells = [[str(get(row)) for _, get in columns] for row in rows]
    widths = [max([len(title)] + [len(c[i]) for c in cells]) for i, (title, _) in enumerate(columns)]
    lines = ["  ".join(title.ljust(w) for (title, _), w in zip(columns, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


RUNS_WAIT = 2.0  # seconds `runs` waits for the deliveries the daemon acknowledged to be applied


def cmd_runs(args: argparse.Namespace) -> int:
    import sqlite3

    from flowforged.store import connect, queries

    cfg = _load(args, lenient=True)
    if not cfg.storage.path.exists():
        print(f"no database at {cfg.storage.path} yet: start the daemon first", file=sys.stderr)
        return 1
    conn = connect(cfg.storage.path, readonly=True)
    conn.row_factory = sqlite3.Row
    if left := queries.wait_applied(conn, RUNS_WAIT):
        print(
            f"{left} acknowledged deliveries are not applied yet (the daemon applies them as it runs):"
            " their runs are not listed",
            file=sys.stderr,
        )
    rows = queries.runs(
        conn, source=args.source, pipeline=args.pipeline, branch=args.branch, status=args.status, limit=args.limit
    )
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print(_table(rows))
    else:
        print("no runs yet")
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    from flowforged.app import make_providers
    from flowforged.ingest import redecode
    from flowforged.model import utcnow
    from flowforged.store import connect, reindex
    from flowforged.store.schema import migrate

    cfg = _load(args, lenient=True)
    providers = make_providers(cfg)
    conn = connect(cfg.storage.path)
    migrate(conn)
    steps = reindex(conn, lambda *a: redecode(providers, *a), utcnow(), only_errors=args.errors_only)
    last = collections.deque(steps, maxlen=1)  # each step reports the totals so far
    done, events, errors = last[0] if last else (0, 0, 0)
    print(f"reindexed {done} deliveries: {events} new events, {errors} still unparseable")
    return 0


def _writer(args: argparse.Namespace) -> Any:
    """A write connection for commands that change the database beside a running daemon."""
    from flowforged.store import connect
    from flowforged.store.schema import migrate

    cfg = _load(args, lenient=True)
    conn = connect(cfg.storage.path)
    migrate(conn)
    return conn


def _reader(args: argparse.Namespace) -> Any:
    import sqlite3

    from flowforged.store import connect

    cfg = _load(args, lenient=True)
    if not cfg.storage.path.exists():
        raise FlowForgeError(f"no database at {cfg.storage.path} yet: start the daemon first")
    conn = connect(cfg.storage.path, readonly=True)
    conn.row_factory = sqlite3.Row
    return conn


def _when(value: float | None) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value)) if value else "-"


def _print_table(rows: list[dict[str, Any]], columns: list[tuple[str, Callable[[dict[str, Any]], Any]]]) -> None:
    cells = [[str(get(row)) for _, get in columns] for row in rows]
    widths = [max([len(title)] + [len(c[i]) for c in cells]) for i, (title, _) in enumerate(columns)]
    print("  ".join(title.ljust(w) for (title, _), w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def cmd_notifications(args: argparse.Namespace) -> int:
    import time

    from flowforged.store import outbox

    if args.action == "retry":
        if args.id is None:
            raise FlowForgeError("notifications retry needs the notification's ID")
        conn = _writer(args)
        if not outbox.retry(conn, args.id, time.time()):
            print(f"no dead, pending or suppressed notification {args.id}", file=sys.stderr)
            return 1
        print(f"notification {args.id} will be sent again now")
        return 0
    rows = outbox.notifications(_reader(args), state=args.state, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no notifications")
        return 0
    _print_table(
        rows,
        [
            ("ID", lambda r: r["id"]),
            ("STATE", lambda r: r["state"]),
            ("SINK", lambda r: r["sink"]),
            ("TRANSITION", lambda r: r["transition"]),
            ("PIPELINE", lambda r: r["pipeline"]),
            ("BRANCH", lambda r: r["branch"] or "-"),
            ("CREATED", lambda r: _when(r["created_at"])),
            ("TRIES", lambda r: r["attempts"]),
            ("LAST ERROR / ANSWER", lambda r: (r["last_error"] or r["answer"] or "")[:60]),
        ],
    )
    return 0


def cmd_silence(args: argparse.Namespace) -> int:
    import time

    from flowforged.store import outbox

    now = time.time()
    if args.action == "add":
        until = _until(args.until, now)
        conn = _writer(args)
        silence_id = outbox.add_silence(
            conn, args.source or ["*"], args.pipeline or ["*"], args.branch or ["*"], until, args.comment, now
        )
        print(f"silence {silence_id} added until {_when(until)}")
        return 0
    if args.action == "expire":
        if args.id is None:
            raise FlowForgeError("silence expire needs the silence's ID")
        if not outbox.expire_silence(_writer(args), args.id, now):
            print(f"no active silence {args.id}", file=sys.stderr)
            return 1
        print(f"silence {args.id} expired")
        return 0
    rows = outbox.silences(_reader(args), now, include_expired=args.all)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        _print_table(
            rows,
            [
                ("ID", lambda r: r["id"]),
                ("SOURCES", lambda r: ",".join(r["sources"])),
                ("PIPELINES", lambda r: ",".join(r["pipelines"])),
                ("BRANCHES", lambda r: ",".join(r["branches"])),
                ("UNTIL", lambda r: _when(r["until"])),
                ("ACTIVE", lambda r: "yes" if r["active"] else "no"),
                ("COMMENT", lambda r: r["comment"]),
            ],
        )
    else:
        print("no active silences")
    return 0


def _until(value: str, now: float) -> float:
    from datetime import datetime

    try:
        return now + config.parse_duration(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise FlowForgeError(f"--until {value!r}: expected a duration (2h, 3d) or an ISO 8601 time") from None


def cmd_notify_test(args: argparse.Namespace) -> int:
    from flowforged.app import make_sinks
    from flowforged.notify_test import send_sample

    # Only the sink's own secrets are needed: by hand, outside the service, the others are not there.
    cfg = _load(args, lenient=True)
    sinks = make_sinks(cfg)
    if args.sink not in sinks:
        raise FlowForgeError(f"no sink named {args.sink!r} (configured: {', '.join(sorted(sinks)) or 'none'})")
    for key, value in cfg.sink_configs[args.sink]:
        if isinstance(value, secrets.Secret) and value.origin == "missing":
            hint = f"${value.variable}" if value.variable else "the environment"
            raise FlowForgeError(f"sinks.{args.sink}.{key}: secret {value.name!r} not found (give it in {hint})")
    logs.setup(cfg.logging.level, stream=sys.stderr)
    ok, answer = asyncio.run(send_sample(sinks[args.sink]))
    print(f"{args.sink}: {'sent' if ok else 'FAILED'}: {answer}")
    return 0 if ok else 1


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1, refused with a clear message otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


STATUSES = ["pending", "running", "blocked", "success", "failed", "cancelled", "skipped"]
NOTIFICATION_STATES = ["pending", "sent", "dead", "suppressed", "superseded"]


def _common() -> argparse.ArgumentParser:
    """`-c` is taken before or after the subcommand: `flowforged -c F run` and `flowforged run -c F`."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand without -c leaves the value given before the subcommand alone.
    common.add_argument(
        "-c",
        "--config",
        default=argparse.SUPPRESS,
        help=f"config file (default: $FLOWFORGED_CONFIG, else {config.DEFAULT_PATH})",
    )
    return common


def _add_runs(sub: Any, common: argparse.ArgumentParser) -> None:
    runs = sub.add_parser("runs", parents=[common], help="list recent runs", description="List recent runs.")
    runs.add_argument("--source", help="only runs of this source (its name in the config)")
    runs.add_argument("--pipeline", help="only runs of this pipeline")
    runs.add_argument("--branch", help="only runs on this branch")
    runs.add_argument("--status", choices=STATUSES, help="only runs in this status")
    runs.add_argument("--limit", type=positive_int, default=50, help="at most this many runs (default: 50)")
    runs.add_argument("--json", action="store_true", help="JSON, with the API's field names")
    runs.set_defaults(func=cmd_runs)


def _add_notifications(sub: Any, common: argparse.ArgumentParser) -> None:
    notes = sub.add_parser(
        "notifications",
        parents=[common],
        help="list notifications by state, or retry one",
        description="List the outbox's notifications, or send a dead or pending one again now.",
    )
    notes.add_argument(
        "action", nargs="?", choices=["list", "retry"], default="list", help="list (the default) or retry"
    )
    notes.add_argument("id", nargs="?", type=int, help="the notification's ID (for retry)")
    notes.add_argument("--state", choices=NOTIFICATION_STATES, help="only notifications in this state")
    notes.add_argument("--limit", type=positive_int, default=50, help="at most this many (default: 50)")
    notes.add_argument("--json", action="store_true", help="JSON instead of a table")
    notes.set_defaults(func=cmd_notifications)


def _add_silence(sub: Any, common: argparse.ArgumentParser) -> None:
    silence = sub.add_parser(
        "silence",
        parents=[common],
        help="silence notifications for some pipelines for a while",
        description="Add, list or expire silences: a silenced notification is recorded as suppressed.",
    )
    silence.add_argument("action", choices=["add", "list", "expire"], help="what to do")
    silence.add_argument("id", nargs="?", type=int, help="the silence's ID (for expire)")
    silence.add_argument("--source", action="append", help="glob; repeat for several (default: all)")
    silence.add_argument("--pipeline", action="append", help="glob; repeat for several (default: all)")
    silence.add_argument("--branch", action="append", help="glob; repeat for several (default: all)")
    silence.add_argument("--until", default="2h", help="a duration (2h, 1d) or an ISO 8601 time (default: 2h)")
    silence.add_argument("--comment", default="", help="why, for whoever reads the list")
    silence.add_argument("--all", action="store_true", help="list expired silences too")
    silence.add_argument("--json", action="store_true", help="JSON instead of a table")
    silence.set_defaults(func=cmd_silence)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="flowforged", description="A CI/CD watcher daemon.")
    top.add_argument("-c", "--config", help=f"config file (default: $FLOWFORGED_CONFIG, else {config.DEFAULT_PATH})")
    top.add_argument("--version", action="version", version=f"flowforged {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do")
    common = _common()

    def command(name: str, func: Callable[[argparse.Namespace], int], text: str) -> argparse.ArgumentParser:
        child = sub.add_parser(name, parents=[common], help=text, description=text[0].upper() + text[1:] + ".")
        child.set_defaults(func=func)
        return child

    command("run", cmd_run, "run the daemon (SIGHUP reloads the config, SIGTERM drains and stops)")
    command("check-config", cmd_check_config, "validate the config; exit 2 listing every problem")
    secret = command("secret", cmd_secret, "store or delete a secret in the system keyring")
    secret.add_argument("action", choices=["set", "delete"], help="set (value from stdin or a prompt) or delete")
    secret.add_argument("name", help="the secret's name, as in {secret: NAME} in the config")
    _add_runs(sub, common)
    reindex = command("reindex", cmd_reindex, "re-normalize the raw deliveries (after a parser fix)")
    reindex.add_argument("--errors-only", action="store_true", help="only deliveries that failed to parse")
    _add_notifications(sub, common)
    _add_silence(sub, common)
    test = command("notify-test", cmd_notify_test, "send a sample notification through a configured sink")
    test.add_argument("sink", help="the sink's name in the config")
    from flowforged import status  # the web board's tiles, in the terminal

    status.register(sub, common, _load)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"{config.default_path(args.config)}: invalid configuration", file=sys.stderr)
        for path, message in exc.problems:
            print(f"  {path}: {message}", file=sys.stderr)
        return EXIT_CONFIG
    except FlowForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
