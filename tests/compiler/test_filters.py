"""Unit tests of the generator's filters and model helpers (python3 -m unittest test_filters,
with compiler/ on PYTHONPATH). Registered in ctest as compiler.filters."""
import unittest

from flatpipe_compiler import filters
from flatpipe_compiler.errors import SchemaError
from flatpipe_compiler.model import build, fnv1a32


class Fnv1a(unittest.TestCase):
    def test_known_vectors(self):
        # The FNV reference values for 32-bit FNV-1a.
        self.assertEqual(fnv1a32(""), 0x811C9DC5)
        self.assertEqual(fnv1a32("a"), 0xE40C292C)
        self.assertEqual(fnv1a32("foobar"), 0xBF9CF968)

    def test_hashes_utf8_bytes(self):
        self.assertNotEqual(fnv1a32("é"), fnv1a32("e"))
        h = 2166136261
        for b in "é".encode("utf-8"):
            h = ((h ^ b) * 16777619) & 0xFFFFFFFF
        self.assertEqual(fnv1a32("é"), h)


class Filters(unittest.TestCase):
    def test_cpp_string_escapes(self):
        self.assertEqual(filters.cpp_string('a"b\\c\n'), '"a\\"b\\\\c\\n"')
        self.assertEqual(filters.cpp_string("\x01"), '"\\001"')

    def test_doc_comment(self):
        self.assertEqual(filters.doc_comment([" one", "two"], 2), "  /// one\n  /// two\n")
        self.assertEqual(filters.doc_comment([]), "")
        # A trailing backslash would splice the next line into the comment.
        self.assertFalse(filters.doc_comment([" ends with \\"]).rstrip("\n").endswith("\\"))

    def test_hex_id(self):
        self.assertEqual(filters.hex_id(7), "0x00000007u")
        self.assertEqual(filters.hex_id(0xFFFFFFFF), "0xffffffffu")
        with self.assertRaises(ValueError):
            filters.hex_id(1 << 32)

    def test_namespace_guard_version(self):
        self.assertEqual(filters.cpp_namespace(["robot", "v1"]), "robot::v1")
        self.assertEqual(filters.cpp_namespace([]), "")
        self.assertEqual(filters.guard("my-schema"), "FLATPIPE_GENERATED_MY_SCHEMA_FLATPIPE_HPP")
        self.assertEqual(filters.version_number("1.2.3"), 10203)
        with self.assertRaises(ValueError):
            filters.version_number("1.2")


def model(methods, service="Svc", namespace=("ns",)):
    def method(name, attrs=None):
        t = {"name": "T", "full_name": "ns.T", "namespace": ["ns"], "file": "s.fbs", "is_struct": False}
        return {"name": name, "line": 3, "doc": [], "attributes": attrs or {}, "request": t, "response": t}
    return {"version": 1, "schema": "s.fbs", "files": ["s.fbs"],
            "services": [{"name": service, "full_name": ".".join(namespace + (service,)),
                          "namespace": list(namespace), "file": "s.fbs", "line": 2, "main": True, "doc": [],
                          "attributes": {}, "methods": [method(*m) for m in methods]}]}


class Model(unittest.TestCase):
    def test_kinds_ids_and_qos(self):
        s = build(model([("A", None),
                         ("B", {"streaming": {"value": "server", "string": True}, "latest": {"value": "0", "string": False}}),
                         ("C", {"streaming": {"value": "client", "string": True}, "id": {"value": "12", "string": False}}),
                         ("D", {"streaming": {"value": "bidi", "string": True}, "id": {"value": "4000000000", "string": True}})]))
        a, b, c, d = s.services[0].methods
        self.assertEqual((a.kind, a.id, a.id_fixed), ("unary", fnv1a32("ns.Svc.A"), False))
        self.assertEqual((b.kind, b.latest), ("server_stream", True))
        self.assertEqual((c.kind, c.id, c.id_fixed), ("client_stream", 12, True))
        self.assertEqual((d.kind, d.id), ("bidi", 4000000000))

    def test_services_of_included_files_are_not_generated(self):
        raw = model([("A", None)])
        raw["services"][0]["main"] = False
        self.assertEqual(build(raw).services, [])

    def test_errors_name_file_and_line(self):
        with self.assertRaises(SchemaError) as e:
            build(model([("A", {"streaming": {"value": "sideways", "string": True}})]))
        self.assertEqual(str(e.exception).split(": error: ")[0], "s.fbs:3")
        with self.assertRaises(SchemaError):
            build(model([("A", {"id": {"value": "5", "string": False}}), ("B", {"id": {"value": "5", "string": False}})]))
        with self.assertRaises(SchemaError):
            build(model([("Client", None)]))
        with self.assertRaises(SchemaError):
            build(model([("A", None)], service="Server"))
        with self.assertRaises(SchemaError):
            build(model([("delete", None)]))

    def test_runtime_verb_names_are_fine(self):
        names = ["Call", "Cancel", "Stream", "Close", "Connect", "call", "cancel", "stream", "close", "connect"]
        s = build(model([(n, None) for n in names]))
        self.assertEqual([m.name for m in s.services[0].methods], names)


if __name__ == "__main__":
    unittest.main()
