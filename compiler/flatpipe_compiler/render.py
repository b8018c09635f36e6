"""Renders the templates (templates/) for a Schema."""
from __future__ import annotations

import os

import jinja2

from . import VERSION
from .filters import FILTERS
from .model import Schema


def default_template_dir() -> str:
    """templates/ beside compiler/ in the source tree; share/flatpipe/templates when installed
    (the package is then share/flatpipe/python/flatpipe_compiler)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "templates"))


def environment(template_dir: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dir),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters.update(FILTERS)
    return env


def render(schema: Schema, template_dir: str | None = None) -> dict[str, str]:
    """Output file name -> contents."""
    env = environment(template_dir or default_template_dir())
    header = env.get_template("schema_flatpipe.hpp.j2").render(schema=schema, version=VERSION)
    return {f"{schema.stem}_flatpipe.hpp": header}
