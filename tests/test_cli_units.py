"""The CLI's pieces without a subprocess: the JSON Lines splitter, the progress rendering,
and the parser's copy of the schema kinds."""

from __future__ import annotations

import io

from handler_consul._schema import KINDS
from handler_consul.cli.jsonl import LineSplitter
from handler_consul.cli.parser import SCHEMA_KINDS
from handler_consul.cli.progress import Progress


def split(chunks: list[bytes], max_line: int = 10) -> list[tuple[int, bytes | None]]:
    splitter = LineSplitter(max_line)
    lines = [line for chunk in chunks for line in splitter.feed(chunk)]
    return lines + splitter.finish()


def test_lines_are_numbered_as_in_the_file_and_blank_ones_skipped() -> None:
    assert split([b"a\n\n  \nb", b"c\nd"]) == [(1, b"a"), (4, b"bc"), (5, b"d")]


def test_an_oversized_line_is_reported_not_buffered() -> None:
    # Over 10 bytes, whether it arrives in one chunk or in pieces, ends the file or not.
    assert split([b"x" * 11 + b"\nok\n"]) == [(1, None), (2, b"ok")]
    assert split([b"x" * 8, b"x" * 8, b"x" * 8, b"\nok\n"]) == [(1, None), (2, b"ok")]
    assert split([b"ok\n", b"y" * 30]) == [(1, b"ok"), (2, None)]


def test_the_progress_bar_shows_percent_rate_and_eta_within_the_width() -> None:
    progress = Progress(io.StringIO(), tty=True, total=1000)
    progress.started -= 2.0  # two seconds in
    progress.processed, progress.ok, progress.failed = 450, 440, 10

    bar = progress.bar(100)

    assert len(bar) <= 99
    assert bar.startswith("[")
    assert "]" in bar
    assert " 45% 450/1000 " in bar
    assert "/s ETA 0:0" in bar
    assert bar.endswith("ok 440 failed 10")
    assert "45% of 1000, ETA " in progress.line()


def test_without_a_total_there_is_no_percent() -> None:
    progress = Progress(io.StringIO(), tty=True, total=None)
    progress.processed = 3

    assert "%" not in progress.bar(80)
    assert "%" not in progress.line()


def test_the_parser_offers_exactly_the_schema_kinds() -> None:
    assert SCHEMA_KINDS == KINDS
