"""What every source reader shares: the SkipItem signal, text cleaning, field checks, and streaming JSON
readers (JSON Lines, a top-level JSON array, a whole JSON document) whose errors name the file and line.

The readers take binary streams and decode themselves, so an invalid UTF-8 byte is reported on its own line, a BOM
is accepted everywhere, and memory stays bounded: a line or array element over `max_line_bytes` is refused before
it is held whole (a zip member of one 3 GiB line costs at most that limit), and runs of blank lines are skipped a
chunk at a time.
"""
from __future__ import annotations

import codecs
import io
import json
import re
from pathlib import Path
from typing import IO, Any, Iterator

from llmft.data.records import has_surrogate
from llmft.errors import InputFormatError

BOM = codecs.BOM_UTF8
DEFAULT_MAX_LINE_BYTES = 64 << 20      # DataConfig.max_line_bytes
_READ_CHUNK = 1 << 20


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
        if has_surrogate(value):
            raise SkipItem(f"field '{key}' is not valid Unicode (a lone surrogate)")
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


def iter_jsonl(stream: IO[bytes] | IO[str], name: str | Path,
               max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line; malformed JSON, invalid UTF-8, nesting too deep for
    the parser and a line over `max_line_bytes` name the file and line. Give a binary stream (a text stream is
    read through its buffer, or line by line when it has none)."""
    for lineno, raw in _lines(stream, name, max_line_bytes):
        text = raw if isinstance(raw, str) else decode_utf8(raw, name, lineno)
        yield lineno, parse_json(text, name, lineno)


def decode_utf8(data: bytes, name: str | Path, line: int = 1) -> str:
    """`data` as text; an invalid byte names its line (counted from `line`, the line `data` starts on)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line += data.count(b"\n", 0, e.start)
        raise InputFormatError(name, f"not UTF-8 text (byte 0x{data[e.start]:02x}: {e.reason})", line=line) from None


def parse_json(text: str, name: str | Path, line: int | None) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputFormatError(name, f"malformed JSON ({e.msg} at column {e.colno})", line=line) from None
    except RecursionError:
        raise InputFormatError(name, "JSON nested too deeply to read", line=line) from None


def load_json_document(path: Path) -> Any:
    """A whole JSON file (a natural-instructions task): BOM accepted; errors name the line."""
    data = Path(path).read_bytes()
    text = decode_utf8(data[len(BOM):] if data.startswith(BOM) else data, path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputFormatError(path, f"malformed JSON ({e.msg})", line=e.lineno) from None
    except RecursionError:
        raise InputFormatError(path, "JSON nested too deeply to read") from None


def _lines(stream, name, max_line_bytes: int) -> Iterator[tuple[int, bytes | str]]:
    if isinstance(stream, io.TextIOBase):
        raw = getattr(stream, "buffer", None)
        if raw is None:        # an in-memory text stream
            yield from _text_lines(stream, name, max_line_bytes)
            return
        stream = raw
    yield from _byte_lines(stream, name, max_line_bytes)


def _text_lines(stream: IO[str], name, max_line_bytes: int) -> Iterator[tuple[int, str]]:
    for lineno, line in enumerate(stream, 1):
        if len(line) > max_line_bytes:
            raise _too_long(name, lineno, max_line_bytes)
        if line.strip():
            yield lineno, line


def _byte_lines(stream: IO[bytes], name, max_line_bytes: int) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of every non-blank line, holding at most one read chunk plus one partial line (kept as
    a list of pieces, so a long line costs one join, not a copy per chunk)."""
    lineno, pieces, held, first = 1, [], 0, True
    while chunk := stream.read(_READ_CHUNK):
        if first:
            chunk, first = (chunk[len(BOM):] if chunk.startswith(BOM) else chunk), False
        if b"\n" not in chunk:
            pieces.append(chunk)
            held += len(chunk)
            if held > max_line_bytes:
                raise _too_long(name, lineno, max_line_bytes)
            continue
        if chunk.isspace():        # a run of blank lines costs one count per chunk, not one loop per line
            if any(p.strip() for p in pieces):
                yield lineno, b"".join(pieces)
            lineno += chunk.count(b"\n")
            tail = chunk[chunk.rindex(b"\n") + 1:]
            pieces, held = [tail], len(tail)
            continue
        parts = chunk.split(b"\n")
        if pieces:
            parts[0] = b"".join(pieces) + parts[0]
        tail = parts.pop()
        pieces, held = [tail], len(tail)
        for part in parts:
            if len(part) > max_line_bytes:
                raise _too_long(name, lineno, max_line_bytes)
            if part.strip():
                yield lineno, part
            lineno += 1
        if held > max_line_bytes:
            raise _too_long(name, lineno, max_line_bytes)
    rest = b"".join(pieces)
    if rest.strip():
        yield lineno, rest


def _too_long(name, line: int, limit: int) -> InputFormatError:
    return InputFormatError(name, f"line longer than max_line_bytes ({limit:,} bytes); if the file is genuine, "
                                  "raise max_line_bytes in the data config", line=line)


class _ArrayReader:
    """Reads the elements of a top-level JSON array one at a time, holding only the unconsumed part of the text in
    memory (about one chunk plus the element being decoded, which may not grow past `max_chars`). A binary stream is
    decoded here, so an invalid UTF-8 byte is reported on its own line."""

    def __init__(self, stream: IO[bytes] | IO[str], name: str | Path, chunk_chars: int, max_chars: int):
        self.stream, self.name, self.chunk_chars, self.max_chars = stream, name, chunk_chars, max_chars
        self.utf8 = None if isinstance(stream, io.TextIOBase) else codecs.getincrementaldecoder("utf-8")()
        self.at_start = True
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

    def fail(self, what: str, pos: int | None = None, line: int | None = None):
        line = self.line_at(self.pos if pos is None else pos) if line is None else line
        raise InputFormatError(self.name, what, line=line)

    def fill(self) -> bool:
        """Read more text (at least doubling what is buffered, so a huge element costs O(n)); False at EOF."""
        if self.eof:
            return False
        self.line_at(self.pos)
        self.counted_pos = 0
        rest = self.buf[self.pos:]
        self.buf, self.pos = rest, 0
        if len(rest) > self.max_chars:
            self.too_long()
        more = self.read(max(self.chunk_chars, len(rest)))
        self.buf += more
        self.eof = not more
        return bool(more)

    def too_long(self):
        self.fail(f"array element longer than max_line_bytes ({self.max_chars:,}); if the file is genuine, "
                  "raise max_line_bytes in the data config")

    def read(self, size: int) -> str:
        if self.utf8 is None:
            try:
                return self.stream.read(size)
            except UnicodeDecodeError as e:     # a text stream decodes ahead: the line is only approximate
                self.fail(f"not UTF-8 text ({e.reason})")
        data = self.stream.read(size)
        if self.at_start:
            data, self.at_start = (data[len(BOM):] if data.startswith(BOM) else data), False
        held = len(self.utf8.getstate()[0])      # bytes of an unfinished character from the last read (no newline)
        try:
            return self.utf8.decode(data, final=not data)
        except UnicodeDecodeError as e:
            line = self.line_at(len(self.buf)) + data.count(b"\n", 0, max(0, e.start - held))
            self.fail(f"not UTF-8 text ({e.reason})", line=line)

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
            except RecursionError:
                self.fail("JSON nested too deeply to read")
            except json.JSONDecodeError as e:
                offset = e.pos - start  # fill() moves the buffer; the value still starts at self.pos after it
                if self.fill():
                    continue
                self.fail(f"malformed JSON ({e.msg})", self.pos + offset)
            if end == len(self.buf) and self.fill():
                continue  # a number or literal may continue in the next chunk
            if end - start > self.max_chars:
                self.too_long()
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


def iter_json_array(stream: IO[bytes] | IO[str], name: str | Path, chunk_chars: int = 1 << 20,
                    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[tuple[int, Any]]:
    """(line where the element starts, element) for each element of a top-level JSON array, streaming. Give a
    binary stream (a text stream works too, but then an invalid UTF-8 byte's line is only approximate)."""
    return _ArrayReader(stream, name, chunk_chars, max_line_bytes).elements()


def expand_units(path: Path, patterns: tuple[str, ...]) -> list[Path]:
    """A file is its own unit; a folder expands to its files matching any pattern, sorted by name. A match that is
    not a readable file (a broken symbolic link, a folder) is refused by name rather than skipped uncounted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputFormatError(path, _missing(path))
    matches = sorted({p for pattern in patterns for p in path.glob(pattern)}, key=lambda p: p.name)
    for match in matches:
        if not match.is_file():
            raise InputFormatError(match, f"{_missing(match) if not match.is_dir() else 'is a folder'}, not a data "
                                          "file; remove it or give the files to read one by one")
    if not matches:
        raise InputFormatError(path, f"folder holds no {' or '.join(patterns)} files")
    return matches


def _missing(path: Path) -> str:
    if path.is_symlink():
        return f"a broken symbolic link (its target {path.readlink()} does not exist)"
    return "no such file or folder"
