"""The caption strip: frameless, translucent, always on top, never taking the keyboard focus (so voice typing
goes to the window you were in), draggable, its font resizable, click-through on demand."""

from __future__ import annotations

from collections import deque
from typing import Any

from PySide6.QtCore import QPoint, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QContextMenuEvent, QFont, QMouseEvent, QPainter, QPaintEvent, QWheelEvent
from PySide6.QtWidgets import QMenu, QWidget

from tolk_client.results import Result

BACKGROUND = QColor(0, 0, 0, 150)  # what is behind shows through
FINAL = QColor(255, 255, 255)
PARTIAL = QColor(170, 170, 170)
TRANSLATION = QColor(255, 225, 120)


class Overlay(QWidget):
    """Shows the live partial greyed, the last finals, and under them one line per target language."""

    menu_requested = Signal(QMenu)  # the app fills the context menu (languages, typing, quit)

    def __init__(self, lines: int = 2, font_size: int = 20) -> None:
        super().__init__(None, Qt.WindowType.FramelessWindowHint | Qt.WindowType.WindowStaysOnTopHint
                         | Qt.WindowType.Tool | Qt.WindowType.WindowDoesNotAcceptFocus)
        self.setAttribute(Qt.WidgetAttribute.WA_TranslucentBackground)
        self.setAttribute(Qt.WidgetAttribute.WA_ShowWithoutActivating)
        self.setWindowTitle("Tolk captions")
        self.finals: deque[str] = deque(maxlen=lines)
        self.transcript: list[str] = []  # every final of the session ("Copy transcript")
        self.partial = ""
        self.translations: dict[str, str] = {}
        self.status = ""
        self.font_size = font_size
        self.click_through = False
        self._drag: QPoint | None = None

    # ------------------------------------------------------------------ content
    def show_result(self, r: Result) -> None:
        if r.is_final:
            self.partial = ""
            if r.text:
                self.finals.append(r.text)
                self.transcript.append(r.text)
                self.translations = dict(r.translations)
        else:
            self.partial = r.text
        self.update()

    def set_status(self, text: str) -> None:
        self.status = text
        self.update()

    def text(self) -> dict[str, Any]:
        """What the strip shows, as data (the `--dump` file; tests read it back)."""
        return {"finals": list(self.finals), "transcript": self.transcript, "partial": self.partial,
                "translations": self.translations, "status": self.status,
                "geometry": [self.x(), self.y(), self.width(), self.height()],
                "click_through": self.click_through, "font_size": self.font_size}

    # ------------------------------------------------------------------ behaviour
    def set_click_through(self, on: bool) -> None:
        """Mouse events pass to the window below (toggle from the tray or the hotkey: the strip cannot be
        clicked while it is on)."""
        self.click_through = on
        self.setWindowFlag(Qt.WindowType.WindowTransparentForInput, on)
        self.show()

    def set_font_size(self, size: int) -> None:
        self.font_size = max(8, min(72, size))
        self.update()

    def mousePressEvent(self, e: QMouseEvent) -> None:
        if e.button() == Qt.MouseButton.LeftButton:
            self._drag = e.globalPosition().toPoint() - self.frameGeometry().topLeft()

    def mouseMoveEvent(self, e: QMouseEvent) -> None:
        if self._drag is not None:
            self.move(e.globalPosition().toPoint() - self._drag)

    def mouseReleaseEvent(self, e: QMouseEvent) -> None:
        self._drag = None

    def wheelEvent(self, e: QWheelEvent) -> None:
        if e.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self.set_font_size(self.font_size + (1 if e.angleDelta().y() > 0 else -1))

    def contextMenuEvent(self, e: QContextMenuEvent) -> None:
        menu = QMenu(self)
        self.menu_requested.emit(menu)
        menu.exec(e.globalPos())

    # ------------------------------------------------------------------ drawing
    def paintEvent(self, e: QPaintEvent) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(BACKGROUND)
        p.drawRoundedRect(QRectF(self.rect()), 12, 12)
        font = QFont()
        font.setPixelSize(self.font_size)
        p.setFont(font)
        line = self.font_size * 1.35
        rows: list[tuple[str, QColor]] = [(t, FINAL) for t in self.finals]
        if self.partial:
            rows.append((self.partial, PARTIAL))
        rows += [(f"[{lang}] {text}", TRANSLATION) for lang, text in self.translations.items()]
        if not rows and self.status:
            rows = [(self.status, PARTIAL)]
        y = self.height() - 10 - line * len(rows)  # bottom-aligned: the newest line stays where the eye is
        for text, color in rows:
            p.setPen(color)
            p.drawText(QRectF(16, y, self.width() - 32, line), Qt.AlignmentFlag.AlignLeft
                       | Qt.AlignmentFlag.AlignVCenter, p.fontMetrics().elidedText(
                           text, Qt.TextElideMode.ElideLeft, self.width() - 32))
            y += line
        p.end()
