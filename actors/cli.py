"""`tolk`: up | actor NAME | exporter | nats apply | tap SUBJECT | status | token | models pull/list. The CLI
wires processes and tools; it holds no actor logic."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actors.runtime.bus import NatsAuth

ACTORS = {
    "edge": "edge.app",
    "segmenter": "actors.segmenter.actor",
    "stt": "actors.stt.actor",
    "translator": "actors.translator.actor",
    "diarizer": "actors.diarizer.actor",
    "fanout": "actors.fanout.actor",
    "ingest": "actors.ingest.actor",
    "exporter": "actors.exporter.actor",
}


def _parser() -> argparse.ArgumentParser:
    from actors.runtime.metrics import version

    p = argparse.ArgumentParser(prog="tolk", description="Real-time speech transcription over NATS JetStream")
    p.add_argument("--version", action="version", version=f"tolk {version()}")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run everything on this machine (embedded NATS unless --nats-url)")
    up.add_argument("--nats-url", default=os.environ.get("TOLK_NATS_URL"), help="use this NATS; start none")
    up.add_argument("--data-dir", default=os.environ.get("TOLK_DATA_DIR", "data"), help="JetStream store etc.")
    up.add_argument("--host", default=os.environ.get("TOLK_HOST", "127.0.0.1"))
    # Defaults from the environment stay strings: argparse converts them with `type`, so a bad TOLK_* value is
    # one usage line ("argument --nats-port: invalid int value: 'abc'"), not a traceback.
    up.add_argument("--port", type=int, default=os.environ.get("TOLK_PORT", "8080"))
    up.add_argument("--nats-port", type=int, default=os.environ.get("TOLK_NATS_PORT", "-1"),
                    help="embedded server port (-1: any free port)")
    up.add_argument("--nats-replicas", type=int, default=os.environ.get("TOLK_NATS_REPLICAS", "1"),
                    help="with --nats-url: JetStream replicas of streams and buckets (3 on a 3-node cluster)")
    up.add_argument("--model", default=None, help="one STT pool on this model for every language (default: "
                    "TOLK_STT_POOLS, else English on tiny.en and the rest on base): tiny.en | base | a "
                    "faster-whisper name (small, large-v3, turbo…) | a Hugging Face repo id (org/name) | "
                    "/path/to/ctranslate2-whisper")
    up.add_argument("--ready-timeout", type=float, default=os.environ.get("TOLK_READY_TIMEOUT_S", "300"),
                    help="seconds the actors may take to become ready (a first model download counts)")
    up.add_argument("--nats-auth", action=argparse.BooleanOptionalAction,
                    default=os.environ.get("TOLK_NATS_AUTH", "true").lower() not in ("0", "false", "no"),
                    help="embedded NATS: one user per actor with its permissions (nats/permissions.toml)")
    up.add_argument("--nats-sync", default=os.environ.get("TOLK_NATS_SYNC", "always"),
                    help="embedded NATS: JetStream sync_interval, `always` (fsync before acknowledging) or a "
                         "duration such as 120s (docs/operations.md#durability)")

    actor = sub.add_parser("actor", help="run one actor (what a Kubernetes pod runs)")
    actor.add_argument("name", choices=sorted(ACTORS))
    actor.add_argument("--pool", default=None, help="stt: the STT pool to serve (= TOLK_STT_POOL; see TOLK_STT_POOLS)")

    sub.add_parser("exporter", help="JetStream consumer lag and actor health as Prometheus metrics "
                   "(= tolk actor exporter)")

    tap = sub.add_parser("tap", help="print a subject's messages as JSON lines, decoded from msgpack")
    tap.add_argument("subject", help="e.g. 'tolk.result.>', 'tolk.session.*.out', '$KV.tolk_listeners.>'")
    tap.add_argument("--nats-url", default=None, help="default: TOLK_NATS_URL, else the `tolk up` in --data-dir")
    tap.add_argument("--data-dir", default=os.environ.get("TOLK_DATA_DIR", "data"))
    when = tap.add_mutually_exclusive_group()
    when.add_argument("--since", help="replay from JetStream: 30s, 10m, 2h, 1d ago, or an ISO time")
    when.add_argument("--seq", type=int, help="replay from this stream sequence")
    when.add_argument("--last", action="store_true", help="replay the last message per subject")
    when.add_argument("--all", action="store_true", help="replay everything the stream holds")
    tap.add_argument("--count", type=int, default=0, help="exit after this many messages")
    tap.add_argument("--idle-exit", type=float, default=0.0, help="exit after this many seconds without one")
    tap.add_argument("--bytes", action="store_true", help="print audio and other bytes as base64, not sizes")

    token = sub.add_parser("token", help="mint a signed, expiring client token: a JWT, HS256 (needs TOLK_TOKEN_SECRET)")
    token.add_argument("--subject", required=True, help="who it is for: per-token session limits count per subject")
    token.add_argument("--ttl", type=float, default=3600, help="seconds it stays valid")

    status = sub.add_parser("status", help="streams, consumers (lag), KV buckets and actor health")
    status.add_argument("--nats-url", default=None, help="default: TOLK_NATS_URL, else the `tolk up` in --data-dir")
    status.add_argument("--data-dir", default=os.environ.get("TOLK_DATA_DIR", "data"))
    status.add_argument("--json", action="store_true")

    models = sub.add_parser("models", help="Whisper models: download ahead of time, list")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    pull = models_sub.add_parser("pull", help="download a model into the model cache; print its folder")
    pull.add_argument("name", help="a faster-whisper name (small, large-v3, turbo…) or a repo id (org/name)")
    listing = models_sub.add_parser("list", help="faster-whisper's model names, and where each is found")
    for cmd in (pull, listing):
        cmd.add_argument("--cache", default=None, help="model cache (default: TOLK_MODEL_CACHE, ~/.cache/tolk/models)")

    from tolk_client.cli import add_parsers

    add_parsers(sub)  # listen, devices: the client side, in tolk_client

    nats = sub.add_parser("nats", help="NATS topology")
    nats_sub = nats.add_subparsers(dest="nats_command", required=True)
    apply = nats_sub.add_parser("apply", help="create/update streams, consumers, KV buckets (idempotent)")
    apply.add_argument("--nats-url", default=os.environ.get("TOLK_NATS_URL", "nats://127.0.0.1:4222"))
    apply.add_argument("--replicas", type=int, default=os.environ.get("TOLK_NATS_REPLICAS", "1"))
    nats_sub.add_parser("passwords", help="a fresh password per actor's NATS user, as a compose .env file")
    return p


async def _apply(url: str, replicas: int) -> None:
    from actors.runtime import topology
    from actors.runtime.bus import Bus

    bus = await Bus.connect(url, name="tolk-nats-apply", first_attempt_s=10)
    try:
        for line in await topology.apply(bus.js, topology.load(), replicas=replicas):
            print(line)
    finally:
        await bus.close()


def quiet_connect() -> None:
    """Tools report an unreachable NATS in one line after their first attempt; the client's retry warnings
    before it would only bury that line."""
    logging.getLogger("tolk.bus").setLevel(logging.ERROR)


def nats_url(explicit: str | None, data_dir: str) -> str:
    """--nats-url, else TOLK_NATS_URL, else the embedded server of a `tolk up` using `data_dir`."""
    if explicit:
        return explicit
    if os.environ.get("TOLK_NATS_URL"):
        return os.environ["TOLK_NATS_URL"]
    for ports in sorted(Path(data_dir, "run").glob("*.ports")):
        try:
            return str(json.loads(ports.read_text())["nats"][0])
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return "nats://127.0.0.1:4222"


def local_auth(explicit: str | None, data_dir: str) -> NatsAuth | None:
    """The admin user of the `tolk up` in `data_dir`, where its embedded NATS is the one used and the
    environment names no NATS user of its own."""
    if explicit or os.environ.get("TOLK_NATS_URL") or os.environ.get("TOLK_NATS_USER") \
            or os.environ.get("TOLK_NATS_CREDS"):
        return None
    from actors.runtime import permissions
    from actors.runtime.bus import NatsAuth

    password = permissions.local_password(Path(data_dir), permissions.ADMIN)
    return NatsAuth(nats_user=permissions.ADMIN, nats_password=password) if password else None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from actors.runtime.actor import configure_logging, serve

    if args.command == "token":
        from edge.http.auth import mint

        secret = os.environ.get("TOLK_TOKEN_SECRET", "")
        if not secret:
            print("tolk token: set TOLK_TOKEN_SECRET (the edge's) first", file=sys.stderr)
            return 2
        print(mint(secret, args.subject, args.ttl))
        return 0
    if args.command in ("listen", "devices", "desktop"):
        import tolk_client.cli

        configure_logging("WARNING")
        run = {"listen": tolk_client.cli.listen, "devices": lambda _: tolk_client.cli.devices(),
               "desktop": tolk_client.cli.desktop}[args.command]
        return int(run(args))
    if args.command in ("tap", "status"):  # stdout is their output: only warnings go to stderr
        configure_logging("WARNING")
        quiet_connect()
        return _tool(args)
    configure_logging(os.environ.get("TOLK_LOG_LEVEL", "INFO"))
    if args.command == "models":
        return _models(args)
    if args.command in ("actor", "exporter"):
        if getattr(args, "pool", None):
            os.environ["TOLK_STT_POOL"] = args.pool
        module = importlib.import_module(ACTORS[getattr(args, "name", "exporter")])
        asyncio.run(serve(module.create))
        return 0
    if args.command == "nats" and args.nats_command == "passwords":
        from actors.runtime import permissions

        print(permissions.env_file(permissions.new_passwords(permissions.load())), end="")
        return 0
    if args.command == "nats":
        quiet_connect()
        try:
            asyncio.run(_apply(args.nats_url, args.replicas))
        except ConnectionError as exc:
            print(f"tolk nats apply: {exc}", file=sys.stderr)
            return 1
        return 0
    from actors.runtime.settings import SettingsError
    from actors.supervisor import Supervisor, UpOptions

    # --model: one STT pool on that model (it wins over a TOLK_STT_POOLS in the environment).
    extra = {"TOLK_MODEL": args.model, "TOLK_STT_POOLS": ""} if args.model else {}
    opts = UpOptions(nats_url=args.nats_url, data_dir=Path(args.data_dir), host=args.host, port=args.port,
                     nats_port=args.nats_port, nats_replicas=args.nats_replicas, extra_env=extra,
                     nats_auth=args.nats_auth, ready_timeout_s=args.ready_timeout, nats_sync=args.nats_sync)
    from actors.runtime.embedded import SYNC_RE

    if not SYNC_RE.fullmatch(args.nats_sync):
        print(f"tolk up: --nats-sync / TOLK_NATS_SYNC must be `always` or a duration like 120s, not "
              f"{args.nats_sync!r}", file=sys.stderr)
        return 2
    try:
        supervisor = Supervisor(opts)
    except SettingsError as exc:
        print(f"tolk up: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(supervisor.run())


def _models(args: argparse.Namespace) -> int:
    """`tolk models pull|list`: stdout is the folder (or the table); the log and any error go to stderr."""
    from actors.stt import hub, models
    from actors.stt.folder import ModelError

    cache = args.cache or _default_model_cache()
    try:
        if args.models_command == "pull":
            print(models.pull(args.name, cache))
            return 0
        for item in hub.listing(cache):
            print(f"{item.name:<20} {item.repo:<46} {item.where or '-'}")
        return 0
    except ModelError as exc:
        print(f"tolk models {args.models_command}: {exc}", file=sys.stderr)
        return 2


def _default_model_cache() -> str:
    """The cache `tolk up` and the STT actor use: TOLK_MODEL_CACHE, else SttSettings' default."""
    from actors.stt.actor import SttSettings

    return os.environ.get("TOLK_MODEL_CACHE") or SttSettings.model_cache


def _tool(args: argparse.Namespace) -> int:
    url = nats_url(args.nats_url, args.data_dir)
    auth = local_auth(args.nats_url, args.data_dir)
    try:
        if args.command == "tap":
            from actors.tools.tap import parse_since, tap

            if args.since:
                parse_since(args.since)  # a typo is reported before connecting
            asyncio.run(tap(url, args.subject, since=args.since, seq=args.seq, last=args.last, all_=args.all,
                            count=args.count, idle_exit_s=args.idle_exit, with_bytes=args.bytes, auth=auth))
            return 0
        from actors.tools.status import all_ready, collect, render

        result = asyncio.run(collect(url, auth=auth))
        print(json.dumps(result, indent=1) if args.json else render(result))
        return 0 if all_ready(result) else 3  # a health check: some actor or STT pool has no ready instance
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # unreachable server, unknown subject: one line, not a traceback
        print(f"tolk {args.command}: {exc.__class__.__name__}: {exc} (NATS {url})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())
