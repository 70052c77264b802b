"""One exception type for problems the user can fix; the CLI prints it without a traceback."""


class LlmftError(Exception):
    """Bad input or configuration: the message names the file, line or field and what is wrong."""


class InputFormatError(LlmftError):
    def __init__(self, path, what: str, line: int | None = None, offset: int | None = None):
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if offset is not None:
            where += f", byte offset {offset}"
        super().__init__(f"{where}: {what}")
        self.path, self.line, self.offset = path, line, offset
