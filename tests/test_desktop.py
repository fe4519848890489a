"""`tolk desktop` on a real (virtual) X screen: Xvfb with a compositing manager, a private PulseAudio with a
null sink, and a real `tolk up`. A real clip played into the sink is captured from its monitor (system audio),
captioned in the overlay (read back from the widget), typed into an xterm by voice typing, and the screen is
captured to check the strip is on top and translucent. Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.speech import Clip, clips
from loadtest.wer import corpus_wer
from tests.conftest import Running

pytestmark = pytest.mark.e2e
TOLK = str(Path(sys.executable).parent / "tolk")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
BACKDROP = 128  # xcompmgr paints the root window this grey


def jfk() -> Clip:
    return next(c for c in clips("en") if c.name.startswith("en_jfk"))


@pytest.fixture(scope="module")
def x11(pulse: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Xvfb (1280×720) with xcompmgr, so translucent windows are blended as on a desktop; the env to use it
    (PulseAudio's included, and a private config home so remembered settings start empty)."""
    for tool in ("Xvfb", "xcompmgr", "xdotool", "xterm"):
        assert shutil.which(tool), f"{tool} not installed (.ci/run installs xvfb, xcompmgr, xdotool, xterm)"
    read, write = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x720x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as fh:
        display = f":{fh.readline().strip()}"
    env = {**pulse, "DISPLAY": display, "XDG_CONFIG_HOME": str(tmp_path_factory.mktemp("config")),
           "QT_QPA_PLATFORM": "xcb"}
    env.pop("WAYLAND_DISPLAY", None)
    comp = subprocess.Popen(["xcompmgr"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    yield env
    comp.terminate()
    xvfb.terminate()
    comp.wait(10)
    xvfb.wait(10)


def wait_for(path: Path, ok: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if path.exists():
            last = json.loads(path.read_text())
            if ok(last):
                return last
        time.sleep(0.2)
    raise AssertionError(f"timed out; last dump: {last}")


def desktop(tolk: Running, env: dict[str, str], dump: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([TOLK, "desktop", "--forget", "--url", tolk.http, "--system-audio", "--language", "en",
                             "--dump", str(dump), *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.terminate()
    try:
        return proc.communicate(timeout=60)
    finally:
        proc.kill()


def screenshot(env: dict[str, str], name: str, points: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """The whole X screen (as composited) saved under test-artifacts/, and the colours at `points`."""
    ARTIFACTS.mkdir(exist_ok=True)
    code = (
        "import json, sys\n"
        "from PySide6.QtGui import QGuiApplication\n"
        "app = QGuiApplication([])\n"
        "img = app.primaryScreen().grabWindow(0).toImage()\n"
        f"img.save({str(ARTIFACTS / name)!r})\n"
        f"pts = {points!r}\n"
        "print(json.dumps([[img.pixelColor(x, y).red(), img.pixelColor(x, y).green(), img.pixelColor(x, y).blue()]"
        " for x, y in pts]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    return [tuple(c) for c in json.loads(out.stdout)]  # type: ignore[misc]


def play(env: dict[str, str], clip: Clip) -> None:
    subprocess.run(["paplay", "--device=tolk_test", str(clip.path)], env=env, check=True, timeout=60)


def test_overlay_captions_system_audio_on_top_and_translucent(tolk: Running, x11: dict[str, str],
                                                              tmp_path: Path) -> None:
    clip = jfk()
    dump = tmp_path / "overlay.json"
    app = desktop(tolk, x11, dump)
    try:
        wait_for(dump, lambda d: d["session_id"] and d["status"] in ("connected", "voice typing off"))
        time.sleep(1)
        play(x11, clip)
        shown = wait_for(dump, lambda d: d["transcript"] and not d["partial"], timeout=30)
        time.sleep(2)  # the last final after the closing pause
        shown = json.loads(dump.read_text())
        x, y, w, _ = shown["geometry"]
        inside, outside = (x + 30, y + 6), (x + w // 2, max(0, y - 30))
        (ix, ox) = screenshot(x11, "desktop-overlay.png", [inside, outside])
    finally:
        _, err = stop(app)
    said = " ".join(shown["transcript"])
    assert corpus_wer([(clip.reference, said)]) <= 0.15, (said, err)
    assert ox == (BACKDROP, BACKDROP, BACKDROP)  # the desktop around the strip
    # On top, and translucent: the strip darkens what is behind it without hiding it.
    assert all(10 < v < BACKDROP - 20 for v in ix), ix


def test_voice_typing_into_another_window(tolk: Running, x11: dict[str, str], tmp_path: Path) -> None:
    """Finals are typed (XTest) into the focused window of another process: an xterm running `cat`."""
    clip = jfk()
    typed_file = tmp_path / "typed.txt"
    term = subprocess.Popen(["xterm", "-geometry", "120x20+0+420", "-bg", "white", "-fg", "black", "-e", "sh", "-c",
                             f"cat > {typed_file}"], env=x11, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dump = tmp_path / "typing.json"
    app = None
    try:
        wid = subprocess.run(["xdotool", "search", "--sync", "--onlyvisible", "--class", "xterm"], env=x11,
                             capture_output=True, text=True, timeout=30, check=True).stdout.split()[0]
        subprocess.run(["xdotool", "windowfocus", "--sync", wid], env=x11, check=True, timeout=30)
        app = desktop(tolk, x11, dump, "--typing")
        wait_for(dump, lambda d: d["session_id"] and d["typing"])
        time.sleep(1)
        play(x11, clip)
        wait_for(dump, lambda d: d["typed"] and not d["partial"], timeout=30)
        time.sleep(2)
        shown = json.loads(dump.read_text())
        x, y, _, h = shown["geometry"]
        (over_term,) = screenshot(x11, "desktop-typing.png", [(x + 30, y + h - 6)])  # the xterm (white) below
        focused = subprocess.run(["xdotool", "getwindowfocus"], env=x11, capture_output=True, text=True,
                                 timeout=30).stdout.strip()
        assert focused == wid, "the overlay must never take the focus"
        subprocess.run(["xdotool", "key", "Return", "ctrl+d"], env=x11, check=True, timeout=30)  # XTest, as typed
        term.wait(30)
    finally:
        if app is not None:
            stop(app)
        term.kill()
    typed = typed_file.read_text()
    assert " ".join(typed.split()) == " ".join(shown["typed"].split()), (typed, shown["typed"])
    assert corpus_wer([(clip.reference, typed)]) <= 0.15, typed
    assert all(20 < v < 200 for v in over_term), over_term  # white behind the strip, darkened, not hidden
