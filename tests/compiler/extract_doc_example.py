#!/usr/bin/env python3
"""Writes docs/compiler.md's example (its first ```fbs block and its last ```cpp block) into a
directory, so that the build compiles and ctest runs it (compiler.doc_example): the page's
complete example stays true.

    python3 tests/compiler/extract_doc_example.py docs/compiler.md OUT_DIR
"""
import os
import re
import sys


def main() -> int:
    doc, out = sys.argv[1], sys.argv[2]
    with open(doc, encoding="utf-8") as f:
        blocks = re.findall(r"```(\w*)\n(.*?)```", f.read(), re.S)
    schemas = [b for lang, b in blocks if lang == "fbs"]
    programs = [b for lang, b in blocks if lang == "cpp"]
    if not schemas or not programs:
        print(f"{doc}: no ```fbs or no ```cpp block", file=sys.stderr)
        return 1
    os.makedirs(out, exist_ok=True)
    for name, text in (("robot.fbs", schemas[0]), ("main.cpp", programs[-1])):
        path = os.path.join(out, name)
        old = None
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                old = f.read()
        if old != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
