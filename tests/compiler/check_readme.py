#!/usr/bin/env python3
"""Checks that README.md's five-minute path shows tests/outside_project verbatim.

Each file is shown after a marker line `<!-- file: PATH -->` as the next fenced code block; the
block must equal the file. The outside project is built and run by ctest (compiler.outside_project.*),
so the README's code is known to work.

    python3 tests/compiler/check_readme.py <repository root>
"""
import os
import re
import sys

FILES = ["tests/outside_project/greeter.fbs", "tests/outside_project/CMakeLists.txt",
         "tests/outside_project/main.cpp"]


def main() -> int:
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..")
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    failures = []
    for path in FILES:
        m = re.search(r"<!-- file: " + re.escape(path) + r" -->\s*\n```[a-z]*\n(.*?)```\n", readme, re.S)
        if not m:
            failures.append(f"README.md does not show {path} (a `<!-- file: {path} -->` marker and a code block)")
            continue
        with open(os.path.join(root, path), encoding="utf-8") as f:
            if m.group(1) != f.read():
                failures.append(f"README.md's copy of {path} differs from the file; copy the file into the README")
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
