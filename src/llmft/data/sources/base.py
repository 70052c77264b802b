"""What every source reader shares: the SkipItem signal, text cleaning, field checks, and streaming JSON
readers (JSON Lines and a top-level JSON array) whose errors name the file and line."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import IO, Any, Iterator

from llmft.errors import InputFormatError


class SkipItem(Exception):
    """Raised by a `to_records` for an item that is rejected; the message is the short, countable reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# C0 and C1 control characters (and DEL) except tab and newline. Carriage returns are handled first, as line ends.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def clean_text(text: str) -> tuple[str, int]:
    """Normalise line ends, drop control characters and surrounding whitespace; return the text and how many
    control characters were removed. Everything else (CJK, emoji, accents) is kept exactly."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text, removed = _CONTROL_CHARS.subn("", text)
    return text.strip(), removed


class TextFields:
    """Collects cleaned fields of one item and remembers what cleaning changed, for the record's meta."""

    def __init__(self, item: Any):
        if not isinstance(item, dict):
            raise SkipItem("item is not an object")
        self.item = item
        self.removed: dict[str, int] = {}

    def text(self, key: str, *, required: bool = True, source: dict | None = None) -> str:
        obj = self.item if source is None else source
        if key not in obj or obj[key] is None:
            if required:
                raise SkipItem(f"missing field '{key}'")
            return ""
        return self.clean(key, obj[key])

    def clean(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise SkipItem(f"field '{key}' is not a string")
        text, removed = clean_text(value)
        if removed:
            self.removed[key] = self.removed.get(key, 0) + removed
        return text

    def meta(self) -> dict:
        return {"control_chars_removed": dict(self.removed)} if self.removed else {}


def check_instruction(instruction: str) -> None:
    if not instruction:
        raise SkipItem("empty instruction")


def check_output(output: str) -> None:
    if not output:
        raise SkipItem("empty output")
    # Alpaca's generator marks instructions a text model cannot fulfil (images, actions) with <nooutput>.
    if output.lower().startswith("<nooutput>"):
        raise SkipItem("<nooutput> output")


# ---------------------------------------------------------------- streaming JSON


def sniff_json_kind(path: Path, stream: IO[bytes] | None = None) -> str:
    """'array' for a top-level JSON array, 'jsonl' for JSON Lines (first value an object)."""
    f = stream if stream is not None else open(path, "rb")
    try:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf").lstrip()
    finally:
        if stream is None:
            f.close()
    if head.startswith(b"["):
        return "array"
    if head.startswith(b"{") or not head:
        return "jsonl"
    raise InputFormatError(path, "expected a JSON array or JSON Lines (one object per line)", line=1)


def iter_jsonl(stream: IO[str], name: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line; malformed JSON names the file and line."""
    lineno = 0
    try:
        for lineno, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise InputFormatError(name, f"malformed JSON ({e.msg} at column {e.colno})", line=lineno) from None
    except UnicodeDecodeError as e:
        raise InputFormatError(name, f"not UTF-8 text ({e.reason})", line=lineno + 1) from None


class _ArrayReader:
    """Reads the elements of a top-level JSON array one at a time from a text stream, holding only the
    unconsumed part of the text in memory (about one chunk plus the element being decoded)."""

    def __init__(self, stream: IO[str], name: str | Path, chunk_chars: int):
        self.stream, self.name, self.chunk_chars = stream, name, chunk_chars
        self.decoder = json.JSONDecoder()
        self.buf, self.pos = "", 0
        self.counted_pos, self.counted_line = 0, 1   # the line number at buf[counted_pos], moved forward lazily
        self.eof = False

    def line_at(self, pos: int) -> int:
        """Line number of buf[pos]; counting only the text since the last call keeps this linear overall."""
        if pos >= self.counted_pos:
            self.counted_line += self.buf.count("\n", self.counted_pos, pos)
        else:
            self.counted_line -= self.buf.count("\n", pos, self.counted_pos)
        self.counted_pos = pos
        return self.counted_line

    def fail(self, what: str, pos: int | None = None):
        raise InputFormatError(self.name, what, line=self.line_at(self.pos if pos is None else pos))

    def fill(self) -> bool:
        """Read more text (at least doubling what is buffered, so a huge element costs O(n)); False at EOF."""
        if self.eof:
            return False
        self.line_at(self.pos)
        self.counted_pos = 0
        rest = self.buf[self.pos:]
        try:
            more = self.stream.read(max(self.chunk_chars, len(rest)))
        except UnicodeDecodeError as e:
            self.buf, self.pos = rest, 0
            self.fail(f"not UTF-8 text ({e.reason})")
        self.buf, self.pos = rest + more, 0
        self.eof = not more
        return bool(more)

    def peek(self) -> str:
        """The next non-whitespace character ('' at EOF), leaving pos on it."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n\ufeff":
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return ""

    def value(self) -> Any:
        while True:
            start = self.pos
            try:
                obj, end = self.decoder.raw_decode(self.buf, start)
            except json.JSONDecodeError as e:
                offset = e.pos - start  # fill() moves the buffer; the value still starts at self.pos after it
                if self.fill():
                    continue
                self.fail(f"malformed JSON ({e.msg})", self.pos + offset)
            if end == len(self.buf) and self.fill():
                continue  # a number or literal may continue in the next chunk
            self.pos = end
            return obj

    def elements(self) -> Iterator[tuple[int, Any]]:
        if self.peek() != "[":
            self.fail("expected a JSON array")
        self.pos += 1
        index = 0
        if self.peek() == "]":
            self.pos += 1
        else:
            while True:
                if self.peek() == "":
                    self.fail("unexpected end of file inside the array")
                line = self.line_at(self.pos)
                yield line, self.value()
                index += 1
                sep = self.peek()
                if sep == ",":
                    self.pos += 1
                elif sep == "]":
                    self.pos += 1
                    break
                elif sep:
                    self.fail(f"expected ',' or ']' after element {index - 1}, got {sep!r}")
                else:
                    self.fail(f"unexpected end of file after element {index - 1} (expected ',' or ']')")
        if self.peek() != "":
            self.fail("extra data after the JSON array")


def iter_json_array(stream: IO[str], name: str | Path, chunk_chars: int = 1 << 20) -> Iterator[tuple[int, Any]]:
    """(line where the element starts, element) for each element of a top-level JSON array, streaming."""
    return _ArrayReader(stream, name, chunk_chars).elements()


def expand_units(path: Path, patterns: tuple[str, ...]) -> list[Path]:
    """A file is its own unit; a folder expands to its files matching any pattern, sorted by name."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputFormatError(path, "no such file or folder")
    files = sorted({p for pattern in patterns for p in path.glob(pattern) if p.is_file()}, key=lambda p: p.name)
    if not files:
        raise InputFormatError(path, f"folder holds no {' or '.join(patterns)} files")
    return files
