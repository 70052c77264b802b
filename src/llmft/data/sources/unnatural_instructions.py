"""Unnatural Instructions (orhonovich/unnatural-instructions): `core_data.jsonl` / `full_data.jsonl`, or the
`.zip` files they ship in (read directly, member by member, without extracting).

Each line: {instruction, instances: [{instruction_with_input, input, constraints, output}],
reformulations: [{instruction, instruction_with_input, input, output}] | null}. One record per instance
(id `unnatural-instructions/<file stem>/<line>/<j>`, constraints in meta, appended to the instruction with
`append_constraints`), and with `reformulations` one per paraphrase too (`.../<line>/r<k>`).
An item for `to_records` is one instance or reformulation, with its line's instruction as context.
"""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, Iterator

from llmft.config import DataConfig
from llmft.errors import InputFormatError
from llmft.data.records import Record, Reject, stable_id
from llmft.data.sources.base import SkipItem, TextFields, check_instruction, check_output, expand_units, iter_jsonl

SOURCE = "unnatural-instructions"
INPUT_SLOT = "{INPUT}"


def to_records(item, *, stem: str, line: int, index: int, instruction: str | None = None,
               reformulation: bool = False, append_constraints: bool = False) -> list[Record]:
    """Instance `index` of line `line` (its instruction given as context), or reformulation `index`."""
    fields = TextFields(item)
    if reformulation:
        instruction = fields.text("instruction")
    elif not isinstance(instruction, str):
        raise SkipItem("missing field 'instruction'")
    else:
        instruction = fields.clean("instruction", instruction)
    input_text = fields.text("input", required=False)
    meta: dict = {"line": line, "reformulation": reformulation}
    if INPUT_SLOT in instruction:
        # A paraphrase may place the input inside the instruction; instruction_with_input has it filled in.
        instruction, input_text = fields.text("instruction_with_input"), ""
        meta["input_inline"] = True
    constraints = "" if reformulation else fields.text("constraints", required=False)
    if constraints:
        meta["constraints"] = constraints
        if append_constraints:
            instruction = f"{instruction}\n{constraints}"
    output = fields.text("output")
    check_instruction(instruction)
    check_output(output)
    meta.update(fields.meta())
    rid = stable_id(SOURCE, stem, line, f"r{index}" if reformulation else index)
    return [Record(rid, SOURCE, SOURCE, instruction, input_text, output, [output], meta)]


def _line_records(name: str, stem: str, line: int, item, cfg: DataConfig) -> Iterator[Record | Reject]:
    if not isinstance(item, dict):
        yield Reject(SOURCE, name, f"line {line}", "item is not an object", item)
        return
    instances = item.get("instances")
    if not isinstance(instances, list) or not instances:
        yield Reject(SOURCE, name, f"line {line}", "field 'instances' is not a non-empty list", item)
        return
    candidates = [(j, inst, False) for j, inst in enumerate(instances)]
    if cfg.reformulations:
        reformulations = item.get("reformulations") or []
        if isinstance(reformulations, list):
            candidates += [(k, ref, True) for k, ref in enumerate(reformulations)]
        else:
            yield Reject(SOURCE, name, f"line {line} reformulations", "field 'reformulations' is not a list",
                         reformulations)
    for index, candidate, is_reformulation in candidates:
        try:
            yield from to_records(candidate, stem=stem, line=line, index=index, instruction=item.get("instruction"),
                                  reformulation=is_reformulation, append_constraints=cfg.append_constraints)
        except SkipItem as skip:
            where = f"line {line} {'reformulation' if is_reformulation else 'instance'} {index}"
            yield Reject(SOURCE, name, where, skip.reason, candidate)


def _read_stream(stream: IO[bytes], name: str, stem: str, cfg: DataConfig) -> Iterator[Record | Reject]:
    for line, item in iter_jsonl(stream, name, cfg.max_line_bytes):
        yield from _line_records(name, stem, line, item, cfg)


def safe_member_names(path: Path, archive: zipfile.ZipFile) -> list[str]:
    """The .jsonl members to read; any member name that could escape a folder refuses the whole archive."""
    names = []
    for name in archive.namelist():
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or (parts and parts[0].endswith(":")) or ".." in parts:
            raise InputFormatError(path, f"archive member {name!r} escapes the archive (absolute or '..' path)")
        base = parts[-1] if parts else ""
        if base.endswith(".jsonl") and "__MACOSX" not in parts and not base.startswith("._"):
            names.append(name)
    if not names:
        raise InputFormatError(path, "archive holds no .jsonl member")
    return sorted(names)


# A member smaller than this cannot hurt whatever its compression ratio (tiny repetitive test files compress well).
_RATIO_FLOOR_BYTES = 1 << 20


def check_member_size(path: Path, info: zipfile.ZipInfo, cfg: DataConfig) -> None:
    """Refuse a zip bomb before unpacking it. A member never unpacks past its declared size (zipfile stops there
    and fails the CRC), so checking the declared sizes bounds what reading it costs."""
    name = f"{path}:{info.filename}"
    if info.file_size > cfg.max_member_bytes:
        raise InputFormatError(name, f"archive member unpacks to {info.file_size:,} bytes, over max_member_bytes "
                                     f"({cfg.max_member_bytes:,}); if the archive is genuine, raise max_member_bytes "
                                     "in the data config")
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > _RATIO_FLOOR_BYTES and ratio > cfg.max_compression_ratio:
        raise InputFormatError(name, f"archive member unpacks to {ratio:,.0f} times its packed size, over "
                                     f"max_compression_ratio ({cfg.max_compression_ratio}): a zip bomb? If the "
                                     "archive is genuine, raise max_compression_ratio in the data config")


def _read_zip(path: Path, cfg: DataConfig) -> Iterator[Record | Reject]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as e:
        raise InputFormatError(path, f"not a valid zip archive ({e})") from None
    with archive:
        for member in safe_member_names(path, archive):
            info = archive.getinfo(member)
            check_member_size(path, info, cfg)
            name = f"{path}:{member}"
            try:
                with archive.open(info) as raw:
                    yield from _read_stream(raw, name, PurePosixPath(member).stem, cfg)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
                raise InputFormatError(name, f"damaged or unsupported archive member ({e})") from None


def read(path: Path, cfg: DataConfig) -> Iterator[Record | Reject]:
    path = Path(path)
    if zipfile.is_zipfile(path):
        yield from _read_zip(path, cfg)
        return
    with open(path, "rb") as f:
        yield from _read_stream(f, str(path), path.stem, cfg)


def units(path: Path, cfg: DataConfig | None = None) -> list[Path]:
    return expand_units(path, ("*.jsonl", "*.zip"))
