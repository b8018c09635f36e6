"""Command line: python3 -m flatpipe_compiler ...

  --frontend EXE [-I DIR]... SCHEMA.fbs --out-dir DIR    parse with the front end, then generate
  --model MODEL.json --out-dir DIR                        generate from a model printed earlier
  --depfile FILE [--depfile-target PATH]                  also write a Make-style depfile

Exit status: 0 done; 1 schema error (one `file:line: error: ...` line on stderr); 2 bad usage or
an environment problem (front end missing, unwritable output). Never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from . import VERSION
from .errors import SchemaError
from .model import build
from .render import default_template_dir, render


class UsageError(Exception):
    pass


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="flatpipe_compiler",
                                description="Generate flatpipe C++ stubs and skeletons from a FlatBuffers schema.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--frontend", metavar="EXE", help="the flatpipe_schema front end executable")
    src.add_argument("--model", metavar="JSON", help="a model printed by flatpipe_schema")
    p.add_argument("-I", dest="include_dirs", action="append", default=[], metavar="DIR",
                   help="include directory for `include` statements (with --frontend)")
    p.add_argument("schema", nargs="?", help="the .fbs schema (with --frontend)")
    p.add_argument("--out-dir", required=True, help="where <schema>_flatpipe.hpp is written")
    p.add_argument("--templates", default=None, help="template directory (default: the installed one)")
    p.add_argument("--depfile", default=None, help="write a Make-style depfile listing every schema read")
    p.add_argument("--depfile-target", action="append", default=[], metavar="PATH",
                   help="the output the depfile names (default: the generated headers)")
    p.add_argument("--version", action="version", version=f"flatpipe_compiler {VERSION}")
    args = p.parse_args(argv)
    if args.frontend and not args.schema:
        p.error("--frontend needs the schema file")
    if args.model and (args.schema or args.include_dirs):
        p.error("--model takes no schema or -I (the model was made from them)")
    return args


def _run_frontend(exe: str, include_dirs: list[str], schema: str) -> dict:
    cmd = [exe]
    for d in include_dirs:
        cmd += ["-I", d]
    cmd.append(schema)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise UsageError(f"cannot run the front end {exe}: {e.strerror}") from None
    if proc.returncode != 0:
        # The front end already printed `file:line: error: ...`; pass it through unchanged.
        raise _FrontendFailed(proc.stderr.rstrip("\n"), proc.returncode)
    return json.loads(proc.stdout)


class _FrontendFailed(Exception):
    def __init__(self, text: str, code: int):
        super().__init__(text)
        self.text = text
        self.code = code


def _write_if_changed(path: str, text: str) -> None:
    """Writes atomically, and not at all when the contents are the same (keeps rebuilds cheap)."""
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
    except OSError:
        pass
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".flatpipe-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _depfile_escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(" ", "\\ ").replace("#", "\\#").replace("$", "$$")


def run(argv: list[str]) -> int:
    args = _parse_args(argv)
    if args.frontend:
        model = _run_frontend(args.frontend, args.include_dirs, args.schema)
    else:
        try:
            with open(args.model, encoding="utf-8") as f:
                model = json.load(f)
        except OSError as e:
            raise UsageError(f"cannot read the model {args.model}: {e.strerror}") from None
    schema = build(model)
    outputs = render(schema, args.templates or default_template_dir())
    try:
        os.makedirs(args.out_dir, exist_ok=True)
        written = []
        for name, text in outputs.items():
            path = os.path.join(args.out_dir, name)
            _write_if_changed(path, text)
            written.append(path)
        if args.depfile:
            deps = [os.path.abspath(f) for f in schema.files]
            named = args.depfile_target or written
            target = " ".join(_depfile_escape(os.path.abspath(p)) for p in named)
            _write_if_changed(args.depfile, f"{target}: " + " ".join(_depfile_escape(d) for d in deps) + "\n")
    except OSError as e:
        raise UsageError(f"cannot write {e.filename}: {e.strerror}") from None
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except SchemaError as e:
        print(str(e), file=sys.stderr)
        return 1
    except _FrontendFailed as e:
        print(e.text, file=sys.stderr)
        return 1 if e.code == 1 else 2
    except UsageError as e:
        print(f"flatpipe_compiler: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug of ours: still one line, never a traceback
        print(f"flatpipe_compiler: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 3
