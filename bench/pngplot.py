"""Horizontal bar charts as PNG: matplotlib when importable, else a small pure-Python writer
(zlib + struct, a 5x7 bitmap font), so the bench never needs a plotting dependency."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

Color = tuple[int, int, int]
Panel = tuple[str, list[tuple[str, str, float]]]  # title, rows of (label, kind, value)

_FONT_ROWS = {
    "0": (" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "),
    "1": ("  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "),
    "2": (" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"),
    "3": ("#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "),
    "4": ("   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "),
    "5": ("#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "),
    "6": ("  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "),
    "7": ("#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "),
    "8": (" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "),
    "9": (" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "),
    "A": (" ### ", "#   #", "#   #", "#####", "#   #", "#   #", "#   #"),
    "B": ("#### ", "#   #", "#   #", "#### ", "#   #", "#   #", "#### "),
    "C": (" ### ", "#   #", "#    ", "#    ", "#    ", "#   #", " ### "),
    "D": ("#### ", "#   #", "#   #", "#   #", "#   #", "#   #", "#### "),
    "E": ("#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#####"),
    "F": ("#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#    "),
    "G": (" ### ", "#   #", "#    ", "# ###", "#   #", "#   #", " ####"),
    "H": ("#   #", "#   #", "#   #", "#####", "#   #", "#   #", "#   #"),
    "I": (" ### ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "),
    "J": ("  ###", "   # ", "   # ", "   # ", "   # ", "#  # ", " ##  "),
    "K": ("#   #", "#  # ", "# #  ", "##   ", "# #  ", "#  # ", "#   #"),
    "L": ("#    ", "#    ", "#    ", "#    ", "#    ", "#    ", "#####"),
    "M": ("#   #", "## ##", "# # #", "# # #", "#   #", "#   #", "#   #"),
    "N": ("#   #", "#   #", "##  #", "# # #", "#  ##", "#   #", "#   #"),
    "O": (" ### ", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "),
    "P": ("#### ", "#   #", "#   #", "#### ", "#    ", "#    ", "#    "),
    "Q": (" ### ", "#   #", "#   #", "#   #", "# # #", "#  # ", " ## #"),
    "R": ("#### ", "#   #", "#   #", "#### ", "# #  ", "#  # ", "#   #"),
    "S": (" ####", "#    ", "#    ", " ### ", "    #", "    #", "#### "),
    "T": ("#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  "),
    "U": ("#   #", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "),
    "V": ("#   #", "#   #", "#   #", "#   #", "#   #", " # # ", "  #  "),
    "W": ("#   #", "#   #", "#   #", "# # #", "# # #", "# # #", " # # "),
    "X": ("#   #", "#   #", " # # ", "  #  ", " # # ", "#   #", "#   #"),
    "Y": ("#   #", "#   #", " # # ", "  #  ", "  #  ", "  #  ", "  #  "),
    "Z": ("#####", "    #", "   # ", "  #  ", " #   ", "#    ", "#####"),
    " ": ("     ",) * 7,
    ".": ("     ",) * 5 + (" ##  ", " ##  "),
    ",": ("     ",) * 4 + (" ##  ", " ##  ", " #   "),
    "-": ("     ",) * 3 + (" ### ",) + ("     ",) * 3,
    "_": ("     ",) * 6 + ("#####",),
    "/": ("    #", "    #", "   # ", "  #  ", " #   ", "#    ", "#    "),
    "(": ("   # ", "  #  ", " #   ", " #   ", " #   ", "  #  ", "   # "),
    ")": (" #   ", "  #  ", "   # ", "   # ", "   # ", "  #  ", " #   "),
    ":": ("     ", " ##  ", " ##  ", "     ", " ##  ", " ##  ", "     "),
    "%": ("##   ", "##  #", "   # ", "  #  ", " #   ", "#  ##", "   ##"),
    "=": ("     ", "     ", "#####", "     ", "#####", "     ", "     "),
    "+": ("     ", "  #  ", "  #  ", "#####", "  #  ", "  #  ", "     "),
    "?": (" ### ", "#   #", "    #", "   # ", "  #  ", "     ", "  #  "),
}
_FONT = {ch: [[c == "#" for c in row] for row in rows] for ch, rows in _FONT_ROWS.items()}


class Canvas:
    def __init__(self, width: int, height: int, bg: Color = (255, 255, 255)) -> None:
        self.w, self.h = width, height
        self.px = bytearray(bytes(bg) * (width * height))

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        x0, x1 = max(0, min(x0, x1)), min(self.w, max(x0, x1))
        y0, y1 = max(0, min(y0, y1)), min(self.h, max(y0, y1))
        if x1 <= x0:
            return
        line = bytes(color) * (x1 - x0)
        for y in range(y0, y1):
            start = (y * self.w + x0) * 3
            self.px[start : start + len(line)] = line

    def text(self, x: int, y: int, s: str, color: Color = (0, 0, 0), scale: int = 2) -> int:
        for ch in s.upper():
            glyph = _FONT.get(ch, _FONT["?"])
            for gy, row in enumerate(glyph):
                for gx, on in enumerate(row):
                    if on:
                        self.rect(
                            x + gx * scale,
                            y + gy * scale,
                            x + (gx + 1) * scale,
                            y + (gy + 1) * scale,
                            color,
                        )
            x += 6 * scale
        return x

    @staticmethod
    def text_width(s: str, scale: int = 2) -> int:
        return len(s) * 6 * scale

    def save(self, path: Path) -> None:
        raw = b"".join(
            b"\x00" + bytes(self.px[y * self.w * 3 : (y + 1) * self.w * 3]) for y in range(self.h)
        )

        def chunk(kind: bytes, data: bytes) -> bytes:
            return (
                struct.pack(">I", len(data))
                + kind
                + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
            )

        png = (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )
        Path(path).write_bytes(png)


def _value_text(v: float) -> str:
    return f"{v:,.0f}"


def hbar_chart(
    path: Path,
    title: str,
    panels: list[Panel],
    colors: dict[str, Color],
    default_color: Color,
    *,
    prefer_matplotlib: bool = True,
) -> str:
    """Write the chart; returns which backend drew it."""
    if prefer_matplotlib:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            pass
        else:
            n = max((len(rows) for _, rows in panels), default=1)
            fig, axes = plt.subplots(len(panels), 1, figsize=(11, 0.32 * n * len(panels) + 1.5))
            axes = list(axes) if len(panels) > 1 else [axes]
            for ax, (ptitle, rows) in zip(axes, panels, strict=True):
                labels = [r[0] for r in rows][::-1]
                vals = [r[2] for r in rows][::-1]
                cols = [tuple(c / 255 for c in colors.get(r[1], default_color)) for r in rows][::-1]
                ax.barh(labels, vals, color=cols)
                for i, v in enumerate(vals):
                    ax.text(v, i, " " + _value_text(v), va="center", fontsize=8)
                ax.set_title(ptitle, fontsize=10)
                ax.set_xlim(0, max([*vals, 1]) * 1.15)
            fig.suptitle(title, fontsize=11)
            fig.tight_layout()
            fig.savefig(path, dpi=100)
            plt.close(fig)
            return "matplotlib"
    scale, row_h, pad = 2, 26, 20
    label_w = (
        max((Canvas.text_width(r[0], scale) for _, rows in panels for r in rows), default=100)
        + 2 * pad
    )
    bar_w = 640
    width = max(label_w + bar_w + 150, Canvas.text_width(title, scale) + 2 * pad)
    height = 60 + sum(50 + len(rows) * row_h + 20 for _, rows in panels)
    cv = Canvas(width, height)
    cv.text(pad, pad, title, scale=scale)
    y = 60
    for ptitle, rows in panels:
        cv.text(pad, y + 10, ptitle, scale=scale, color=(40, 40, 40))
        y += 40
        vmax = max((r[2] for r in rows), default=1.0) or 1.0
        top = y
        for label, kind, value in rows:
            cv.text(label_w - pad - Canvas.text_width(label, scale), y + 6, label, scale=scale)
            length = int(bar_w * value / vmax)
            cv.rect(
                label_w,
                y + 3,
                label_w + max(length, 1),
                y + row_h - 3,
                colors.get(kind, default_color),
            )
            cv.text(
                label_w + length + 8, y + 6, _value_text(value), scale=scale, color=(60, 60, 60)
            )
            y += row_h
        cv.rect(label_w - 1, top, label_w, y, (0, 0, 0))  # axis
        y += 30
    cv.save(path)
    return "png-writer"
