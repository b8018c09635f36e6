#!/usr/bin/env python3
"""Generator tests: golden outputs, bad schemas, the command line, depfiles, version.

    python3 tests/compiler/test_generator.py --frontend build/compiler/flatpipe_schema [--update]
        [--expect-version X.Y.Z] [unittest options]

--update rewrites the golden files (golden/*.hpp) and the expected errors (bad/*.err) from the
current generator instead of comparing; review the diff before committing it. Registered in
ctest as compiler.generator (label `compiler`).
"""
from __future__ import annotations

import argparse
import difflib
import glob
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
SCHEMAS = os.path.join(HERE, "schemas")
GOLDEN = os.path.join(HERE, "golden")
BAD = os.path.join(HERE, "bad")

ARGS = argparse.Namespace(frontend=None, update=False, expect_version=None)


def run_compiler(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "compiler"), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-m", "flatpipe_compiler", *args], capture_output=True, text=True,
                          env=env, check=False, timeout=60)


def generate(schema: str, out_dir: str, *extra: str) -> subprocess.CompletedProcess:
    return run_compiler("--frontend", ARGS.frontend, "-I", os.path.join(SCHEMAS, "include"), schema,
                        "--out-dir", out_dir, *extra)


class Golden(unittest.TestCase):
    """The generated code of the schemas in schemas/ is exactly golden/."""

    def test_generated_code_matches_the_golden_files(self):
        schemas = sorted(glob.glob(os.path.join(SCHEMAS, "*.fbs")))
        self.assertTrue(schemas)
        for schema in schemas:
            with self.subTest(schema=os.path.basename(schema)), tempfile.TemporaryDirectory() as out:
                proc = generate(schema, out)
                self.assertEqual(proc.returncode, 0, proc.stderr)
                self.assertEqual(proc.stderr, "")
                for name in sorted(os.listdir(out)):
                    with open(os.path.join(out, name), encoding="utf-8") as f:
                        got = f.read()
                    golden = os.path.join(GOLDEN, name)
                    if ARGS.update:
                        with open(golden, "w", encoding="utf-8") as f:
                            f.write(got)
                        continue
                    self.assertTrue(os.path.exists(golden), f"no golden file {golden}; run with --update")
                    with open(golden, encoding="utf-8") as f:
                        want = f.read()
                    if got != want:
                        diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                                            "golden/" + name, "generated/" + name))
                        self.fail(f"{name} differs from its golden file (refresh with --update if intended):\n{diff}")

    def test_generation_is_deterministic(self):
        schema = os.path.join(SCHEMAS, "everything.fbs")
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            self.assertEqual(generate(schema, a).returncode, 0)
            self.assertEqual(generate(schema, b).returncode, 0)
            for name in os.listdir(a):
                with open(os.path.join(a, name)) as fa, open(os.path.join(b, name)) as fb:
                    self.assertEqual(fa.read(), fb.read())


class BadSchemas(unittest.TestCase):
    """Each bad/*.fbs fails with exactly the one-line message in bad/*.err, never a traceback."""

    def test_each_bad_schema_fails_with_its_expected_message(self):
        schemas = sorted(glob.glob(os.path.join(BAD, "*.fbs")))
        self.assertGreaterEqual(len(schemas), 8)
        for schema in schemas:
            name = os.path.basename(schema)
            with self.subTest(schema=name), tempfile.TemporaryDirectory() as out:
                proc = run_compiler("--frontend", ARGS.frontend, schema, "--out-dir", out)
                self.assertEqual(proc.returncode, 1, proc.stderr)
                self.assertNotIn("Traceback", proc.stderr)
                self.assertEqual(os.listdir(out), [], "nothing is written for a bad schema")
                lines = proc.stderr.splitlines()
                self.assertEqual(len(lines), 1, proc.stderr)
                # The schema's path as the tools print it (absolute or as given) -> its name.
                self.assertTrue(lines[0].startswith((schema + ":", os.path.relpath(schema) + ":")), lines[0])
                got = name + lines[0][lines[0].index(".fbs:") + 4:]
                self.assertRegex(got, r"^[a-z_]+\.fbs:[0-9]+: error: ")
                expected = os.path.splitext(schema)[0] + ".err"
                if ARGS.update:
                    with open(expected, "w", encoding="utf-8") as f:
                        f.write(got + "\n")
                    continue
                with open(expected, encoding="utf-8") as f:
                    self.assertEqual(got, f.read().rstrip("\n"))


class CommandLine(unittest.TestCase):
    def test_a_missing_schema_is_an_error_with_its_name(self):
        with tempfile.TemporaryDirectory() as out:
            proc = run_compiler("--frontend", ARGS.frontend, os.path.join(out, "nope.fbs"), "--out-dir", out)
            self.assertEqual(proc.returncode, 1)
            self.assertIn("nope.fbs:0: error: cannot read the schema file", proc.stderr)

    def test_a_missing_front_end_is_a_usage_error_without_traceback(self):
        with tempfile.TemporaryDirectory() as out:
            proc = run_compiler("--frontend", os.path.join(out, "no-such-exe"), os.path.join(SCHEMAS, "everything.fbs"),
                                "--out-dir", out)
            self.assertEqual(proc.returncode, 2)
            self.assertIn("flatpipe_compiler: error: cannot run the front end", proc.stderr)
            self.assertNotIn("Traceback", proc.stderr)

    def test_a_model_from_another_version_is_refused(self):
        with tempfile.TemporaryDirectory() as out:
            model = os.path.join(out, "m.json")
            with open(model, "w") as f:
                f.write('{"version": 99, "schema": "x.fbs", "services": []}')
            proc = run_compiler("--model", model, "--out-dir", out)
            self.assertEqual(proc.returncode, 1)
            self.assertIn("x.fbs:0: error: model version 99 is not 1", proc.stderr)

    def test_the_front_end_model_round_trips_through_a_file(self):
        with tempfile.TemporaryDirectory() as out:
            schema = os.path.join(SCHEMAS, "everything.fbs")
            fe = subprocess.run([ARGS.frontend, "-I", os.path.join(SCHEMAS, "include"), schema],
                                capture_output=True, text=True, check=True)
            model = os.path.join(out, "everything.json")
            with open(model, "w") as f:
                f.write(fe.stdout)
            a, b = os.path.join(out, "a"), os.path.join(out, "b")
            self.assertEqual(run_compiler("--model", model, "--out-dir", a).returncode, 0)
            self.assertEqual(generate(schema, b).returncode, 0)
            with open(os.path.join(a, "everything_flatpipe.hpp")) as fa, \
                    open(os.path.join(b, "everything_flatpipe.hpp")) as fb:
                self.assertEqual(fa.read(), fb.read())

    def test_the_depfile_lists_the_schema_and_its_includes(self):
        with tempfile.TemporaryDirectory() as out:
            dep = os.path.join(out, "e.d")
            proc = generate(os.path.join(SCHEMAS, "everything.fbs"), out, "--depfile", dep,
                            "--depfile-target", os.path.join(out, "everything_generated.h"))
            self.assertEqual(proc.returncode, 0, proc.stderr)
            with open(dep) as f:
                text = f.read()
            target, deps = text.split(": ", 1)
            self.assertEqual(target, os.path.join(out, "everything_generated.h"))
            self.assertEqual(sorted(os.path.basename(d) for d in deps.split()), ["everything.fbs", "geometry.fbs"])

    def test_the_front_end_lists_dependencies(self):
        proc = subprocess.run([ARGS.frontend, "-I", os.path.join(SCHEMAS, "include"), "--deps",
                               os.path.join(SCHEMAS, "everything.fbs")], capture_output=True, text=True, check=False)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(sorted(os.path.basename(p) for p in proc.stdout.split()), ["everything.fbs", "geometry.fbs"])

    def test_unchanged_outputs_are_not_rewritten(self):
        with tempfile.TemporaryDirectory() as out:
            schema = os.path.join(SCHEMAS, "everything.fbs")
            self.assertEqual(generate(schema, out).returncode, 0)
            path = os.path.join(out, "everything_flatpipe.hpp")
            os.utime(path, (1, 1))
            self.assertEqual(generate(schema, out).returncode, 0)
            self.assertEqual(os.stat(path).st_mtime, 1)


class Version(unittest.TestCase):
    def test_generator_version_is_the_projects(self):
        if ARGS.expect_version is None:
            self.skipTest("no --expect-version given")
        sys.path.insert(0, os.path.join(ROOT, "compiler"))
        try:
            from flatpipe_compiler import VERSION
        finally:
            sys.path.pop(0)
        self.assertEqual(VERSION, ARGS.expect_version,
                         "compiler/flatpipe_compiler/__init__.py VERSION must equal project(flatpipe VERSION)")


def main() -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--frontend", required=True)
    parser.add_argument("--update", action="store_true")
    parser.add_argument("--expect-version")
    args, rest = parser.parse_known_args()
    ARGS.frontend = os.path.abspath(args.frontend)
    ARGS.update = args.update
    ARGS.expect_version = args.expect_version
    program = unittest.main(argv=[sys.argv[0], *rest], exit=False)
    return 0 if program.result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
