"""Every Tolk process authenticates to NATS from TOLK_NATS_USER/PASSWORD or TOLK_NATS_CREDS (what the Helm
chart's secrets set), against a real nats-server that requires it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.runtime.bus import Bus, NatsAuth
from tests.conftest import free_port

on_loop = pytest.mark.asyncio(loop_scope="session")

PASSWORD = "s3cret with spaces #and-hash"


@pytest.fixture
def secured_nats() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "nats-server"), "-a", "127.0.0.1", "-p", str(port),
                             "--user", "tolk", "--pass", PASSWORD], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@on_loop
async def test_user_and_password_from_the_environment(secured_nats: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLK_NATS_USER", "tolk")
    monkeypatch.setenv("TOLK_NATS_PASSWORD", PASSWORD)
    bus = await Bus.connect(secured_nats, "auth-test", first_attempt_s=5)
    try:
        sub = await bus.nc.subscribe("tolk.check")
        await bus.nc.publish("tolk.check", b"ok")
        assert (await sub.next_msg(timeout=2)).data == b"ok"
    finally:
        await bus.close()


@on_loop
async def test_without_or_with_wrong_credentials_is_refused(secured_nats: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for password in (None, "wrong"):
        monkeypatch.delenv("TOLK_NATS_USER", raising=False)
        monkeypatch.delenv("TOLK_NATS_PASSWORD", raising=False)
        if password:
            monkeypatch.setenv("TOLK_NATS_USER", "tolk")
            monkeypatch.setenv("TOLK_NATS_PASSWORD", password)
        with pytest.raises(Exception, match=r"(?i)authorization|no NATS server answered"):
            bus = await Bus.connect(secured_nats, "auth-test", first_attempt_s=3)
            await bus.close()


def test_creds_file_wins_and_secrets_stay_out_of_repr() -> None:
    auth = NatsAuth(nats_creds="/etc/tolk/nats.creds", nats_user="u", nats_password="p")
    assert auth.options() == {"user_credentials": "/etc/tolk/nats.creds"}
    assert NatsAuth().options() == {}
    assert "hunter2" not in repr(NatsAuth(nats_user="u", nats_password="hunter2"))
