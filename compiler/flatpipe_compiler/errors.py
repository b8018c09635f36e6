"""The one error type the compiler reports: a schema problem at a file and line."""


class SchemaError(Exception):
    """A problem in the user's schema. Printed as `file:line: error: message`."""

    def __init__(self, file: str, line: int, message: str):
        super().__init__(message)
        self.file = file
        self.line = line
        self.message = message

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: error: {self.message}"
