"""Per-actor NATS users from `nats/permissions.toml`: expanded to the exact subjects each actor's NATS and
JetStream calls use, rendered as a nats-server `authorization` block (`tolk up`) or JSON (the Helm chart).

Why one declaration: the edge faces clients, so a compromised edge must not be able to forge transcripts or
results; every actor gets only what its code calls, checked against a real server by
tests/test_nats_permissions.py.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

import msgspec

from actors.runtime.declarations import nats_file

DEFAULT_PATH = nats_file("permissions.toml")
USERS_FILE = "nats-users.json"  # in `tolk up`'s <data-dir>/run: each user's password of this run, mode 0600
ADMIN = "admin"
HEARTBEATS = "tolk_actors"
_USER = re.compile(r"^[A-Za-z0-9_-]+$")


class ActorPermissions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    publish: list[str] = []
    subscribe: list[str] = []
    consume: list[str] = []  # "STREAM/durable", `{p}` expanded per partition, `{pool}`: any durable of STREAM
    recreate: list[str] = []  # "STREAM/durable" it also deletes and re-creates (the segmenter, on start)
    restore: list[str] = []  # streams it re-creates with all their durables when gone (memory ones, the exporter)
    kv_read: list[str] = []
    kv_write: list[str] = []
    replay: list[str] = []  # streams read back with ephemeral consumers
    consumer_info: list[str] = []  # "STREAM/durable"
    admin: bool = False


class PermissionFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    actors: dict[str, ActorPermissions]


class Grant(msgspec.Struct, frozen=True):
    """What one user may publish and subscribe, as nats-server subjects."""

    publish: list[str]
    subscribe: list[str]


def load(path: Path | None = None) -> dict[str, ActorPermissions]:
    path = path or Path(os.environ.get("TOLK_PERMISSIONS", DEFAULT_PATH))
    with open(path, "rb") as fh:
        parsed = msgspec.convert(tomllib.load(fh), PermissionFile)
    for name in parsed.actors:
        if not _USER.match(name):
            raise ValueError(f"actor name {name!r} is not a valid NATS user / inbox token")
    return parsed.actors


def inbox_prefix(user: str) -> str | None:
    """A user's own reply inbox (`_INBOX.<user>`): replies and deliveries for one actor stay unreadable to the
    others. None where the user name is not a single subject token."""
    return f"_INBOX.{user}" if _USER.match(user) else None


def _kv(bucket: str, write: bool) -> list[str]:
    stream = f"KV_{bucket}"
    out = [f"$JS.API.STREAM.INFO.{stream}",  # binding the bucket
           f"$JS.API.STREAM.MSG.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>",
           # keys() and watch(): an ordered, ephemeral push consumer. The 5-token create subject makes only
           # ephemeral consumers (the server refuses a durable name there).
           f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.API.CONSUMER.INFO.{stream}.*",
           f"$JS.API.CONSUMER.DELETE.{stream}.*", f"$JS.FC.{stream}.>"]
    if write:
        out.append(f"$KV.{bucket}.>")
    return out


def _durable(ref: str, partitions: int) -> list[tuple[str, str]]:
    stream, _, name = ref.partition("/")
    if not stream or not name:
        raise ValueError(f"expected STREAM/consumer, not {ref!r}")
    if "{pool}" in name:
        # STT pools are chosen at deploy time and the Helm chart's grants are one static file: any durable of
        # the stream (a subject wildcard is a whole token). TOLK_SEGMENTS holds STT's durables only.
        return [(stream, "*")]
    if "{p}" not in name:
        return [(stream, name)]
    return [(stream, name.format(p=p)) for p in range(partitions)]


def expand(name: str, perms: ActorPermissions, partitions: int) -> Grant:
    """The exact subjects behind one actor's declaration."""
    if perms.admin:
        return Grant(publish=[">"], subscribe=[">"])
    pub: list[str] = list(perms.publish)
    sub: list[str] = list(perms.subscribe)
    for ref in perms.consume:
        for stream, durable in _durable(ref, partitions):
            pub += [f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}", f"$JS.ACK.{stream}.{durable}.>",
                    f"$JS.API.CONSUMER.INFO.{stream}.{durable}"]
    for ref in perms.recreate:
        for stream, durable in _durable(ref, partitions):
            # Named create (nats-py sends the filter subject as the trailing tokens): that durable only.
            pub += [f"$JS.API.CONSUMER.DELETE.{stream}.{durable}", f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.>"]
    for stream in perms.restore:
        pub += [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.CREATE.{stream}",
                f"$JS.API.CONSUMER.CREATE.{stream}.>"]
    for ref in perms.consumer_info:
        for stream, durable in _durable(ref, partitions):
            pub.append(f"$JS.API.CONSUMER.INFO.{stream}.{durable}")
    for stream in perms.replay:
        # Ephemeral pull consumers (5-token create: never a durable). Fetching needs MSG.NEXT on any consumer
        # of the stream, as the server names ephemerals; no ack permission, so nothing can be settled.
        pub += [f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*",
                f"$JS.API.CONSUMER.INFO.{stream}.*", f"$JS.API.CONSUMER.DELETE.{stream}.*", f"$JS.FC.{stream}.>"]
    for bucket in perms.kv_write:
        pub += _kv(bucket, write=True)
    for bucket in perms.kv_read:
        if bucket not in perms.kv_write:
            pub += _kv(bucket, write=False)
    # Its own heartbeat (keys "<actor>.<instance>"), and its own reply inbox.
    pub += [f"$JS.API.STREAM.INFO.KV_{HEARTBEATS}", f"$KV.{HEARTBEATS}.{name}.>"]
    sub.append(f"{inbox_prefix(name)}.>")
    return Grant(publish=_unique(pub), subscribe=_unique(sub))


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def grants(partitions: int, path: Path | None = None) -> dict[str, Grant]:
    return {name: expand(name, perms, partitions) for name, perms in load(path).items()}


def _block(password_values: Mapping[str, str], by_user: Mapping[str, Grant]) -> str:
    """A nats-server `authorization` block; each password value is already nats-server syntax (a quoted
    string, or a `$VARIABLE` it reads from its environment)."""
    users = []
    for user, password in password_values.items():
        g = by_user[user]
        perms = {"publish": {"allow": g.publish}, "subscribe": {"allow": g.subscribe}}
        users.append(f"    {{user: {json.dumps(user)}, password: {password}, permissions: {json.dumps(perms)}}}")
    return "authorization {\n  users = [\n" + "\n".join(users) + "\n  ]\n}\n"


def authorization(passwords: Mapping[str, str], by_user: Mapping[str, Grant]) -> str:
    """A nats-server `authorization` block: one user per entry of `passwords`, with its grant."""
    return _block({user: json.dumps(password) for user, password in passwords.items()}, by_user)


def password_env(user: str) -> str:
    """The environment variable holding `user`'s password where passwords come from the environment (compose's
    `.env`, the Helm chart's NATS pod): TOLK_NATS_PASSWORD_<USER>."""
    return "TOLK_NATS_PASSWORD_" + user.upper().replace("-", "_")


def env_authorization(by_user: Mapping[str, Grant]) -> str:
    """nats/compose-auth.conf: the `authorization` block with each password as `$TOLK_NATS_PASSWORD_<USER>`,
    which nats-server reads from its environment. Committed (checked against this by the tests), so the
    official nats image needs no Tolk code to start."""
    return ("# Generated by `python -m actors.runtime.permissions --env-conf` from nats/permissions.toml: "
            "do not edit.\n" + _block({user: f"${password_env(user)}" for user in by_user}, by_user))


def env_file(passwords: Mapping[str, str]) -> str:
    """`tolk nats passwords`: a compose `.env` with a fresh password per user."""
    return "".join(f"{password_env(user)}={password}\n" for user, password in passwords.items())


def new_passwords(users: Iterable[str]) -> dict[str, str]:
    """Letters and digits, starting with a letter: where a password reaches nats-server through its environment
    (compose, the Helm chart), it is parsed as config, and a leading digit or `-` could make a number of it."""
    return {user: "p" + secrets.token_hex(24) for user in users}


def write_private(path: Path, text: str) -> None:
    """Written readable by its owner only (0600), also when the file already existed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(text)


def write_users(run_dir: Path, passwords: Mapping[str, str]) -> Path:
    path = run_dir / USERS_FILE
    write_private(path, json.dumps(dict(passwords)))
    return path


def local_password(data_dir: Path, user: str = ADMIN) -> str | None:
    """The password `tolk up` gave `user` for its embedded server in `data_dir` (None: none, or no auth)."""
    try:
        value = json.loads((data_dir / "run" / USERS_FILE).read_text()).get(user)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def main() -> None:
    """`python -m actors.runtime.permissions`: the expanded grants as JSON (helm/tolk/files/nats-permissions.json);
    with `--env-conf`, compose's authorization block (nats/compose-auth.conf)."""
    from actors.runtime import topology

    by_user = grants(topology.load().partitions)
    if sys.argv[1:] == ["--env-conf"]:
        sys.stdout.write(env_authorization(by_user))
        return
    out = {name: msgspec.to_builtins(g) for name, g in by_user.items()}
    sys.stdout.write(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
