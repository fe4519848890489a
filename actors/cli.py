"""`tolk`: up | actor NAME | nats apply. The CLI wires processes; it holds no actor logic."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from pathlib import Path

ACTORS = {
    "edge": "edge.app",
    "segmenter": "actors.segmenter.actor",
    "stt": "actors.stt.actor",
    "translator": "actors.translator.actor",
    "fanout": "actors.fanout.actor",
    "ingest": "actors.ingest.actor",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tolk", description="Real-time speech transcription over NATS JetStream")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run everything on this machine (embedded NATS unless --nats-url)")
    up.add_argument("--nats-url", default=os.environ.get("TOLK_NATS_URL"), help="use this NATS; start none")
    up.add_argument("--data-dir", default=os.environ.get("TOLK_DATA_DIR", "data"), help="JetStream store etc.")
    up.add_argument("--host", default=os.environ.get("TOLK_HOST", "127.0.0.1"))
    up.add_argument("--port", type=int, default=int(os.environ.get("TOLK_PORT", "8080")))
    up.add_argument("--nats-port", type=int, default=int(os.environ.get("TOLK_NATS_PORT", "-1")),
                    help="embedded server port (-1: any free port)")
    up.add_argument("--model", default=None, help="tiny.en (default) | base | /path/to/ctranslate2-whisper")

    actor = sub.add_parser("actor", help="run one actor (what a Kubernetes pod runs)")
    actor.add_argument("name", choices=sorted(ACTORS))

    nats = sub.add_parser("nats", help="NATS topology")
    nats_sub = nats.add_subparsers(dest="nats_command", required=True)
    apply = nats_sub.add_parser("apply", help="create/update streams, consumers, KV buckets (idempotent)")
    apply.add_argument("--nats-url", default=os.environ.get("TOLK_NATS_URL", "nats://127.0.0.1:4222"))
    apply.add_argument("--replicas", type=int, default=int(os.environ.get("TOLK_NATS_REPLICAS", "1")))
    return p


async def _apply(url: str, replicas: int) -> None:
    from actors.runtime import topology
    from actors.runtime.bus import Bus

    bus = await Bus.connect(url, name="tolk-nats-apply")
    try:
        for line in await topology.apply(bus.js, topology.load(), replicas=replicas):
            print(line)
    finally:
        await bus.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from actors.runtime.actor import configure_logging, serve

    configure_logging(os.environ.get("TOLK_LOG_LEVEL", "INFO"))
    if args.command == "actor":
        module = importlib.import_module(ACTORS[args.name])
        asyncio.run(serve(module.create))
        return 0
    if args.command == "nats":
        asyncio.run(_apply(args.nats_url, args.replicas))
        return 0
    from actors.supervisor import Supervisor, UpOptions

    extra = {"TOLK_MODEL": args.model} if args.model else {}
    opts = UpOptions(nats_url=args.nats_url, data_dir=Path(args.data_dir), host=args.host, port=args.port,
                     nats_port=args.nats_port, extra_env=extra)
    return asyncio.run(Supervisor(opts).run())


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())
