"""The command line's error boundary: whatever goes wrong becomes one line on stderr and an exit status, never a
traceback (unless asked for with `llmft --debug ...` or LLMFT_DEBUG=1).

Exit 2: the input, the configuration or the machine (a file that cannot be read, a full disk, memory) -- something
the user can fix, said with the file where it is known and what to do. Exit 1: an internal error, a bug in llmft.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
import zipfile
import zlib
from typing import Callable

from llmft.errors import LlmftError, is_disk_full, one_line, os_error_message

DEBUG_ENV = "LLMFT_DEBUG"
_DEBUG_HINT = "(llmft --debug ... shows the traceback)"


def debug_requested(flag: bool = False) -> bool:
    return flag or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def describe(error: BaseException) -> tuple[int, str]:
    """(exit status, one-line message) for an exception that reached the top of a command."""
    if isinstance(error, LlmftError):
        return 2, str(error)     # its own words (a list of config problems may take several lines)
    status, message = _describe_other(error)
    return status, one_line(message)


def _describe_other(error: BaseException) -> tuple[int, str]:
    if isinstance(error, OSError):
        hint = "" if is_disk_full(error) else f" {_DEBUG_HINT}"
        return 2, os_error_message(error) + hint
    if isinstance(error, UnicodeDecodeError):
        return 2, (f"input is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}: "
                   f"{error.reason}); convert the file to UTF-8 {_DEBUG_HINT}")
    if isinstance(error, UnicodeError):
        return 2, f"text that cannot be written as UTF-8 ({error}) {_DEBUG_HINT}"
    if isinstance(error, RecursionError):
        return 2, f"input nested too deeply to process (RecursionError) {_DEBUG_HINT}"
    if isinstance(error, MemoryError):
        return 2, ("out of memory: use a smaller input, fewer workers or lower limits (max_line_bytes, "
                   f"--batch-tokens) {_DEBUG_HINT}")
    if isinstance(error, (json.JSONDecodeError, zipfile.BadZipFile, zlib.error, EOFError)):
        return 2, f"unreadable input ({type(error).__name__}: {error}) {_DEBUG_HINT}"
    first_line = (str(error).splitlines() or [""])[0]
    return 1, (f"internal error ({type(error).__name__}: {first_line}): a bug in llmft; rerun with llmft --debug "
               "and report the traceback")


def guarded(func: Callable[[], int | None], debug: bool = False) -> int:
    """Run one command; its exit status, with any error reported as one line."""
    try:
        return int(func() or 0)
    except KeyboardInterrupt:
        print("llmft: interrupted", file=sys.stderr)
        return 130
    except Exception as error:      # noqa: BLE001 -- the one place every error becomes a message
        status, message = describe(error)
        if debug_requested(debug):
            traceback.print_exc()
        print(f"llmft: error: {message}", file=sys.stderr)
        return status
