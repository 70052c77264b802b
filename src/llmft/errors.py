"""One exception type for problems the user can fix; the CLI prints it without a traceback."""


class LlmftError(Exception):
    """Bad input or configuration: the message names the file, line or field and what is wrong."""


class InputFormatError(LlmftError):
    def __init__(self, path, what: str, line: int | None = None, offset: int | None = None):
        where = one_line(str(path))      # a file name may hold a line break; `what` may list problems, one a line
        if line is not None:
            where += f", line {line}"
        if offset is not None:
            where += f", byte offset {offset}"
        super().__init__(f"{where}: {what}")
        self.path, self.line, self.offset = path, line, offset


def one_line(text: str) -> str:
    """`text` with line breaks and other control characters escaped, so a message stays one line."""
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
                   for ch in text) if not text.isprintable() else text


def is_disk_full(error: BaseException) -> bool:
    import errno

    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def os_error_message(error: OSError, where: object = None) -> str:
    """One line for an OSError: the file (`where` when the error names none), what happened, what to do.
    A full disk is said to be one, never blamed on the input."""
    import errno

    name = error.filename if error.filename is not None else where
    name = f"{name}" + (f" -> {error.filename2}" if error.filename2 is not None else "") if name is not None else None
    if is_disk_full(error):
        return (f"no space left on the device{f' writing {name}' if name else ''}: "
                "free some space or write the output elsewhere")
    what = {
        errno.EACCES: "permission denied; check the file's permissions",
        errno.EPERM: "operation not permitted; check the file's permissions",
        errno.ENOENT: "no such file or folder",
        errno.EISDIR: "is a folder, expected a file",
        errno.ENOTDIR: "a part of the path is not a folder",
        errno.EROFS: "the file system is read-only; write the output elsewhere",
        errno.ELOOP: "too many levels of symbolic links",
        errno.ENAMETOOLONG: "file name too long",
        errno.EIO: "input/output error (a failing disk or network share?)",
    }.get(error.errno, error.strerror or str(error))
    return f"{name}: {what}" if name else what
