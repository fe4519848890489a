"""`tolk desktop`: live subtitles over any window, and voice typing into whatever has the focus.

The session runs on its own asyncio loop in a worker thread (tolk_client.LiveSession: reconnect and resume
built in, audio kept during an outage); results reach the Qt thread through a signal. Settings given on the
command line are remembered (QSettings) for the next start; the spoken language and the targets change live
from the strip's context menu or the tray.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QSettings, QTimer, Signal
from PySide6.QtGui import QAction, QActionGroup, QColor, QIcon, QPixmap
from PySide6.QtWidgets import QApplication, QInputDialog, QMenu, QSystemTrayIcon

from tolk_client import audio
from tolk_client.desktop import typing as voice
from tolk_client.desktop.overlay import Overlay
from tolk_client.live import LiveSession
from tolk_client.results import Result, TolkError

LANGUAGES = ["auto", "en", "de", "fr", "es", "pt", "it", "nl", "pl", "ru", "uk", "zh", "ja"]
REMEMBERED = ("url", "token", "language", "targets", "device", "system_audio", "font_size", "hotkey")


class Bridge(QObject):
    result = Signal(object)
    state = Signal(str)
    toggle_typing = Signal()


class Worker(threading.Thread):
    """The live session: capture → LiveSession → Bridge. A refused or lost session is started afresh."""

    def __init__(self, cfg: argparse.Namespace, bridge: Bridge) -> None:
        super().__init__(name="tolk-session", daemon=True)
        self.cfg = cfg
        self.bridge = bridge
        self.loop: asyncio.AbstractEventLoop | None = None
        self.session: LiveSession | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._ready.set()
        while not self._stopping.is_set():
            try:
                await self._session()
            except TolkError as err:
                self.bridge.state.emit(f"error: {err}")
            except (OSError, ValueError) as err:  # no server yet, no device
                self.bridge.state.emit(f"offline: {err}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 3.0)

    async def _session(self) -> None:
        assert self._stopping is not None
        device: int | str | None = int(self.cfg.device) if str(self.cfg.device or "").isdigit() else self.cfg.device
        chunks = audio.device_chunks(device or None, system_audio=self.cfg.system_audio)
        targets = [t for t in self.cfg.targets.split(",") if t]
        async with LiveSession(self.cfg.url, language=self.cfg.language, targets=targets, token=self.cfg.token or None,
                               on_state=self.bridge.state.emit) as s:
            self.session = s

            async def pump() -> None:
                try:
                    async for chunk in chunks:
                        await s.send(chunk)
                        if self._stopping is not None and self._stopping.is_set():
                            break
                finally:
                    await asyncio.shield(s.stop())

            feeder = asyncio.create_task(pump())
            stopper = asyncio.create_task(self._stopping.wait())
            stopper.add_done_callback(lambda _: feeder.cancel())
            try:
                async for r in s:
                    self.bridge.result.emit(r)
            finally:
                stopper.cancel()
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feeder

    def configure(self, **changes: Any) -> None:
        if self.loop is not None and self.session is not None:
            asyncio.run_coroutine_threadsafe(self.session.configure(**changes), self.loop)

    def stop(self, timeout: float = 30.0) -> None:
        """End of audio: what was said is still finalized (up to `timeout`), then the thread ends."""
        self._ready.wait(5)
        if self.loop is not None and self._stopping is not None:
            self.loop.call_soon_threadsafe(self._stopping.set)
        self.join(timeout)


class Desktop:
    def __init__(self, cfg: argparse.Namespace, app: QApplication) -> None:
        self.cfg = cfg
        self.app = app
        self.overlay = Overlay(font_size=cfg.font_size)
        self.typing = False
        self.bridge = Bridge()
        self.bridge.result.connect(self.on_result)
        self.bridge.state.connect(self.on_state)
        self.bridge.toggle_typing.connect(lambda: self.set_typing(not self.typing))
        self.overlay.menu_requested.connect(self.fill_menu)
        self.typist: voice.XTyper | None = None
        self.typed: list[str] = []
        self.keys = ThreadPoolExecutor(1, thread_name_prefix="tolk-typing")  # one: keys stay in order
        self.worker = Worker(cfg, self.bridge)
        self.tray: QSystemTrayIcon | None = None
        self.hotkey: voice.Hotkey | None = None

    def start(self) -> None:
        screen = self.app.primaryScreen().availableGeometry()
        width = min(1000, screen.width() - 40)
        self.overlay.resize(width, int(self.cfg.font_size * 1.35 * 5 + 20))
        self.overlay.move(screen.x() + (screen.width() - width) // 2, screen.y() + screen.height()
                          - self.overlay.height() - 40)
        self.overlay.set_status("connecting…")
        self.overlay.show()
        if self.cfg.click_through:
            self.overlay.set_click_through(True)
        if QSystemTrayIcon.isSystemTrayAvailable():
            self.tray = QSystemTrayIcon(self.icon("#888888"))
            menu = QMenu()
            self.fill_menu(menu)
            self.tray.setContextMenu(menu)
            self.tray.show()
        if self.cfg.hotkey and not voice.available():
            try:
                self.hotkey = voice.Hotkey(self.cfg.hotkey, self.bridge.toggle_typing.emit)
                self.hotkey.start()
            except Exception as exc:  # another program holds the key: say so, carry on without it
                print(f"tolk desktop: hotkey {self.cfg.hotkey} unavailable: {exc}", file=sys.stderr)
        self.set_typing(self.cfg.typing)
        self.worker.start()

    @staticmethod
    def icon(color: str) -> QIcon:
        pix = QPixmap(16, 16)
        pix.fill(QColor(color))
        return QIcon(pix)

    # ------------------------------------------------------------------ events
    def on_result(self, r: Result) -> None:
        self.overlay.show_result(r)
        if self.typing and r.is_final and r.text and self.typist is not None:
            text = r.text.strip() + " "
            self.typed.append(text)
            self.keys.submit(self.typist.type, text)

    def on_state(self, state: str) -> None:
        self.overlay.set_status(state)
        if self.tray is not None:
            self.tray.setIcon(self.icon({"connected": "#2ecc40", "resumed": "#2ecc40",
                                         "reconnecting": "#ffb000"}.get(state, "#888888")))
            self.tray.setToolTip(f"Tolk: {state}")

    def set_typing(self, on: bool) -> None:
        if on and self.typist is None:
            why = voice.available()
            if why:
                print(f"tolk desktop: {why}", file=sys.stderr)
                on = False
            else:
                self.typist = voice.XTyper()
        self.typing = on
        self.overlay.set_status(f"voice typing {'on' if on else 'off'}")

    def fill_menu(self, menu: QMenu) -> None:
        spoken = menu.addMenu("Spoken language")
        group = QActionGroup(spoken)
        for lang in LANGUAGES:
            act = QAction(lang, spoken, checkable=True, checked=lang == self.cfg.language)
            act.triggered.connect(lambda _=False, lang=lang: self.set_language(lang))
            group.addAction(act)
            spoken.addAction(act)
        inputs = menu.addMenu("Input")
        choices: list[tuple[str, str, bool]] = [("System audio (what this computer plays)", "", True)]
        with contextlib.suppress(SystemExit, Exception):  # no PortAudio: only what is configured
            choices += [(f"#{d['index']} {d['name']}", str(d["index"]), False) for d in audio.devices()
                        if d["index"] is not None]
        current = "" if self.cfg.system_audio else str(self.cfg.device or "")
        source = QActionGroup(inputs)
        for label, device, system in choices:
            act = QAction(label, inputs, checkable=True, checked=(system == self.cfg.system_audio
                                                                  and (system or device == current)))
            act.triggered.connect(lambda _=False, d=device, sa=system: self.set_input(d, sa))
            source.addAction(act)
            inputs.addAction(act)
        targets = QAction(f"Translate into… ({self.cfg.targets or 'none'})", menu)
        targets.triggered.connect(self.ask_targets)
        menu.addAction(targets)
        typing = QAction("Voice typing", menu, checkable=True, checked=self.typing)
        typing.triggered.connect(self.set_typing)
        menu.addAction(typing)
        through = QAction("Click-through", menu, checkable=True, checked=self.overlay.click_through)
        through.triggered.connect(self.overlay.set_click_through)
        menu.addAction(through)
        bigger = QAction("Larger text", menu)
        bigger.triggered.connect(lambda: self.overlay.set_font_size(self.overlay.font_size + 2))
        menu.addAction(bigger)
        smaller = QAction("Smaller text", menu)
        smaller.triggered.connect(lambda: self.overlay.set_font_size(self.overlay.font_size - 2))
        menu.addAction(smaller)
        copy = QAction("Copy transcript", menu)
        copy.triggered.connect(lambda: QApplication.clipboard().setText("\n".join(self.overlay.transcript)))
        menu.addAction(copy)
        menu.addSeparator()
        menu.addAction("Quit", self.app.quit)

    def set_input(self, device: str, system_audio: bool) -> None:
        """Another microphone or system audio: the session ends (its finals are kept) and a new one starts."""
        self.cfg.device, self.cfg.system_audio = device, system_audio
        remember(self.cfg)
        self.worker.stop()
        self.worker = Worker(self.cfg, self.bridge)
        self.worker.start()

    def set_language(self, lang: str) -> None:
        self.cfg.language = lang
        self.worker.configure(language=lang)
        remember(self.cfg)

    def set_targets(self, targets: list[str]) -> None:
        self.cfg.targets = ",".join(targets)
        self.worker.configure(targets=targets)
        remember(self.cfg)

    def ask_targets(self) -> None:
        text, ok = QInputDialog.getText(None, "Tolk", "Translate into (e.g. pt,de):", text=self.cfg.targets)
        if ok:
            self.set_targets([t.strip() for t in text.split(",") if t.strip()])

    def dump(self) -> None:
        """The strip's content (and typing state) as JSON, replaced atomically: for scripts and the tests."""
        if not self.cfg.dump:
            return
        body = {**self.overlay.text(), "typing": self.typing, "typed": "".join(self.typed),
                "session_id": self.worker.session.session_id if self.worker.session else "",
                "window_id": int(self.overlay.winId())}
        tmp = Path(f"{self.cfg.dump}.tmp")
        tmp.write_text(json.dumps(body))
        tmp.replace(self.cfg.dump)

    def shutdown(self) -> None:
        self.worker.stop()
        self.keys.shutdown(wait=True)
        self.dump()
        remember(self.cfg)


def settings() -> QSettings:
    return QSettings("tolk", "desktop")


def remember(cfg: argparse.Namespace) -> None:
    s = settings()
    for key in REMEMBERED:
        s.setValue(key, getattr(cfg, key))
    s.sync()


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    d = sub.add_parser("desktop", help="live subtitles over every window, and voice typing (needs .[desktop])")
    d.add_argument("--url", help="the edge (remembered; default http://127.0.0.1:8080)")
    d.add_argument("--token", help="API or signed token (remembered)")
    d.add_argument("--language", help="spoken language, or auto (remembered)")
    d.add_argument("--targets", help="comma-separated translation targets (remembered)")
    d.add_argument("--device", help="input device index or name, see `tolk devices` (remembered)")
    d.add_argument("--system-audio", action="store_true", default=None,
                   help="caption what this computer plays (its output's monitor) instead of a microphone")
    d.add_argument("--microphone", dest="system_audio", action="store_false", help="capture the microphone again")
    d.add_argument("--typing", action="store_true", help="start with voice typing on (X11)")
    d.add_argument("--hotkey", help="global key to switch voice typing, e.g. ctrl+alt+t (remembered)")
    d.add_argument("--click-through", action="store_true", help="mouse clicks pass through the strip")
    d.add_argument("--font-size", type=int, help="caption size in pixels (remembered)")
    d.add_argument("--dump", help="keep the strip's content in this JSON file (for scripts and tests)")
    d.add_argument("--forget", action="store_true", help="start from the defaults, not the remembered settings")


def resolve(cfg: argparse.Namespace) -> argparse.Namespace:
    """Command line, else remembered, else defaults."""
    defaults: dict[str, Any] = {
        "url": os.environ.get("TOLK_URL", "http://127.0.0.1:8080"), "token": os.environ.get("TOLK_TOKEN", ""),
        "language": "auto", "targets": "", "device": "", "system_audio": False, "font_size": 22,
        "hotkey": "ctrl+alt+t"}
    s = settings()
    if cfg.forget:
        s.clear()
    for key, default in defaults.items():
        if getattr(cfg, key) is None:
            stored = s.value(key)
            if stored is None:
                value: Any = default
            elif isinstance(default, bool):
                value = str(stored).lower() == "true"
            else:
                value = type(default)(stored)
            setattr(cfg, key, value)
    return cfg


def main(cfg: argparse.Namespace) -> int:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setQuitOnLastWindowClosed(False)
    desk = Desktop(resolve(cfg), app)
    remember(desk.cfg)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: app.quit())
    ticker = QTimer()  # lets Python run its signal handlers while Qt's loop runs, and refreshes --dump
    ticker.timeout.connect(desk.dump)
    ticker.start(250)
    desk.start()
    app.aboutToQuit.connect(desk.shutdown)
    return int(app.exec())
