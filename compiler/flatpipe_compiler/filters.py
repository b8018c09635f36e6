"""Jinja2 filters: small, named, unit-tested (tests/compiler/test_filters.py) string functions."""
from __future__ import annotations

from typing import Iterable


def cpp_string(text: str) -> str:
    """A C++ string literal holding `text` (UTF-8; quotes, backslashes and controls escaped)."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\{code:03o}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def doc_comment(lines: Iterable[str], indent: int = 0) -> str:
    """Schema doc comment lines (as the parser kept them, after `///`) as C++ `///` lines.

    Each output line ends with a newline; empty input gives an empty string. A `*/` or a trailing
    backslash cannot end the comment early or splice the next line, so they are defused.
    """
    pad = " " * indent
    out = []
    for line in lines:
        text = line.rstrip().replace("\\", "\\ ") if line.rstrip().endswith("\\") else line.rstrip()
        if text and not text.startswith(" "):
            text = " " + text
        out.append(f"{pad}///{text}\n")
    return "".join(out)


def hex_id(value: int) -> str:
    """A method id as a C++ unsigned literal: 0x1234abcdu."""
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"method id {value} does not fit 32 bits")
    return f"0x{value:08x}u"


def cpp_namespace(components: Iterable[str]) -> str:
    """The C++ namespace for schema namespace components: robot::v1 ('' for none)."""
    return "::".join(components)


def guard(stem: str) -> str:
    """An include-guard macro for the generated header of schema `stem`."""
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in stem).upper()
    return f"FLATPIPE_GENERATED_{cleaned}_FLATPIPE_HPP"


def version_number(version: str) -> int:
    """'1.2.3' -> 10203, the encoding of FLATPIPE_VERSION (flatpipe/config_version.hpp)."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"version {version!r} is not MAJOR.MINOR.PATCH")
    major, minor, patch = (int(p) for p in parts)
    return major * 10000 + minor * 100 + patch


FILTERS = {
    "cpp_string": cpp_string,
    "doc_comment": doc_comment,
    "hex_id": hex_id,
    "cpp_namespace": cpp_namespace,
    "guard": guard,
    "version_number": version_number,
}
