"""Voice typing on X11: finals typed into the focused window with the XTest extension, and a global hotkey.

Wayland has no way for one client to type into another's window or grab a global key (by design): there,
run under XWayland (typing reaches XWayland windows only) or use a compositor tool such as `wtype`/`ydotool`
on the dumped text. macOS would need Quartz event taps and the Accessibility permission: not implemented.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

SHIFT_INDEX = 1  # a keysym at index 1 of a keycode's list needs Shift


def available() -> str:
    """"" where voice typing works, else why not."""
    if os.environ.get("WAYLAND_DISPLAY") and not os.environ.get("DISPLAY"):
        return "voice typing needs X11 (or XWayland windows): Wayland lets no client type into another"
    if not os.environ.get("DISPLAY"):
        return "no X display (DISPLAY is not set)"
    try:
        import Xlib.display  # noqa: F401
    except ImportError:
        return "voice typing needs python-xlib: pip install '.[desktop]'"
    return ""


def keysym_of(ch: str) -> int:
    if ch == "\n":
        return 0xFF0D  # Return
    code = ord(ch)
    return code if 0x20 <= code <= 0x7E or 0xA0 <= code <= 0xFF else 0x01000000 | code  # Latin-1, else Unicode


class XTyper:
    """Types text as key presses (XTest). A character the keyboard map lacks (é on a US map, any CJK) is put on
    a spare keycode for the moment it is typed, as xdotool does."""

    def __init__(self, display: str | None = None) -> None:
        from Xlib import X
        from Xlib import display as xdisplay
        from Xlib.ext import xtest

        self._X, self._xtest = X, xtest
        self.d = xdisplay.Display(display)
        if not self.d.has_extension("XTEST"):
            raise RuntimeError("the X server has no XTEST extension")
        lo, hi = self.d.display.info.min_keycode, self.d.display.info.max_keycode
        mapping = self.d.get_keyboard_mapping(lo, hi - lo + 1)
        spare = [lo + i for i, syms in enumerate(mapping) if not any(syms)]
        self.spare = spare[-1] if spare else hi
        self.shift = self.d.keysym_to_keycode(0xFFE1)  # Shift_L
        self._lock = threading.Lock()

    def type(self, text: str) -> None:
        with self._lock:
            for ch in text:
                self._press(keysym_of(ch))
            self.d.sync()

    def _press(self, keysym: int) -> None:
        keycode, shifted = 0, False
        for kc, index in self.d.keysym_to_keycodes(keysym):
            if index in (0, SHIFT_INDEX):
                keycode, shifted = kc, index == SHIFT_INDEX
                break
        remapped = not keycode
        if remapped:
            self.d.change_keyboard_mapping(self.spare, [(keysym, keysym)])
            self.d.sync()
            time.sleep(0.02)  # the focused client refreshes its map on MappingNotify before the key arrives
            keycode = self.spare
        if shifted:
            self._xtest.fake_input(self.d, self._X.KeyPress, self.shift)
        self._xtest.fake_input(self.d, self._X.KeyPress, keycode)
        self._xtest.fake_input(self.d, self._X.KeyRelease, keycode)
        if shifted:
            self._xtest.fake_input(self.d, self._X.KeyRelease, self.shift)
        if remapped:
            self.d.sync()
            time.sleep(0.02)


MODIFIERS = {"ctrl": "ControlMask", "control": "ControlMask", "alt": "Mod1Mask", "shift": "ShiftMask",
             "super": "Mod4Mask", "win": "Mod4Mask"}


class Hotkey(threading.Thread):
    """A global key combination (e.g. `ctrl+alt+t`) grabbed on the X root window; `on_press` runs in this
    thread (hand it to the UI thread with a signal)."""

    def __init__(self, combo: str, on_press: Callable[[], None], display: str | None = None) -> None:
        super().__init__(name="tolk-hotkey", daemon=True)
        from Xlib import XK, X
        from Xlib import display as xdisplay

        self.on_press = on_press
        self.d = xdisplay.Display(display)
        *mods, key = combo.lower().split("+")
        mask = 0
        for m in mods:
            mask |= getattr(X, MODIFIERS[m])
        keysym = XK.string_to_keysym(key) or XK.string_to_keysym(key.upper())
        self.keycode = self.d.keysym_to_keycode(keysym)
        if not self.keycode:
            raise ValueError(f"no key {key!r} on this keyboard")
        root = self.d.screen().root
        for extra in (0, X.LockMask, X.Mod2Mask, X.LockMask | X.Mod2Mask):  # with Caps Lock / Num Lock on too
            root.grab_key(self.keycode, mask | extra, True, X.GrabModeAsync, X.GrabModeAsync)
        self.d.sync()
        self._X: Any = X

    def run(self) -> None:
        while True:
            event = self.d.next_event()
            if event.type == self._X.KeyPress and event.detail == self.keycode:
                self.on_press()
