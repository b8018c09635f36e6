"""The service model the templates see, built from the front end's JSON and validated.

Everything the templates need is computed here (ids, kinds, C++ names); templates only format.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .errors import SchemaError

STREAMING_KINDS = {"server": "server_stream", "client": "client_stream", "bidi": "bidi"}
KIND_NAMES = ("unary", "server_stream", "client_stream", "bidi")

# C++ keywords and alternative tokens: a method with such a name cannot become a member function.
CPP_KEYWORDS = frozenset("""
alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t char16_t
char32_t class compl concept const consteval constexpr constinit const_cast continue co_await
co_return co_yield decltype default delete do double dynamic_cast else enum explicit export
extern false float for friend goto if inline int long mutable namespace new noexcept not not_eq
nullptr operator or or_eq private protected public register reinterpret_cast requires return
short signed sizeof static static_assert static_cast struct switch template this thread_local
throw true try typedef typeid typename union unsigned using virtual void volatile wchar_t while
xor xor_eq
""".split())


def fnv1a32(text: str) -> int:
    """FNV-1a, 32 bits, over the UTF-8 bytes of `text` (docs/protocol.md, "Ids")."""
    h = 2166136261
    for byte in text.encode("utf-8"):
        h ^= byte
        h = (h * 16777619) & 0xFFFFFFFF
    return h


@dataclass(frozen=True)
class TypeRef:
    """A table used as a request or response."""
    name: str
    full_name: str            # "robot.Pose"
    namespace: tuple[str, ...]
    file: str                 # the .fbs that declares it

    @property
    def cpp(self) -> str:
        """The fully qualified C++ type flatc generates: ::robot::Pose."""
        return "::" + "::".join(self.namespace + (self.name,))


@dataclass
class Method:
    name: str
    full_name: str            # "robot.Sensors.GetPose": hashed for the id, shown in errors
    id: int
    id_fixed: bool            # from the `id` attribute
    kind: str                 # one of KIND_NAMES
    latest: bool              # stream QoS `latest`
    request: TypeRef
    response: TypeRef
    doc: list[str]
    line: int

    @property
    def client_writes(self) -> bool:
        return self.kind in ("client_stream", "bidi")

    @property
    def server_writes(self) -> bool:
        return self.kind in ("server_stream", "bidi")


@dataclass
class Service:
    name: str
    full_name: str
    namespace: tuple[str, ...]
    doc: list[str]
    file: str
    line: int
    methods: list[Method] = field(default_factory=list)


@dataclass
class Schema:
    path: str                 # as given to the front end
    stem: str                 # "robot" for robot.fbs: names the outputs
    files: list[str]          # every schema file read (the main one and its includes)
    services: list[Service]   # declared in the main file only

    @property
    def file_name(self) -> str:
        return os.path.basename(self.path)

    @property
    def has_streams(self) -> bool:
        return any(m.kind != "unary" for s in self.services for m in s.methods)


def _type(raw: dict[str, Any] | None, where: tuple[str, int], role: str, method: str) -> TypeRef:
    if raw is None:
        raise SchemaError(where[0], where[1], f"method {method} has no {role} type")
    if raw.get("is_struct"):
        raise SchemaError(where[0], where[1],
                          f"the {role} of {method} is the struct {raw['full_name']}; requests and "
                          f"responses must be tables")
    return TypeRef(raw["name"], raw["full_name"], tuple(raw["namespace"]), raw["file"])


def _method(svc_full: str, raw: dict[str, Any], file: str) -> Method:
    name = raw["name"]
    line = int(raw.get("line") or 0)
    full = f"{svc_full}.{name}"
    attrs = raw.get("attributes", {})

    kind = "unary"
    if "streaming" in attrs:
        value = attrs["streaming"]["value"]
        if not attrs["streaming"]["string"] or value not in STREAMING_KINDS:
            shown = f'"{value}"' if attrs["streaming"]["string"] else value
            raise SchemaError(file, line,
                              f'method {full}: unknown streaming value {shown}; use streaming: "server", '
                              f'"client" or "bidi" (or no streaming attribute for a unary method)')
        kind = STREAMING_KINDS[value]

    if "id" in attrs:
        # flatc parses attribute numbers as 32-bit signed integers, so ids above 2147483647 are
        # written as strings: (id: "4000000000").
        text = attrs["id"]["value"]
        try:
            mid = int(text.strip(), 0)
        except ValueError:
            mid = -1
        if not 1 <= mid <= 0xFFFFFFFF:
            shown = f'"{text}"' if attrs["id"]["string"] else text
            raise SchemaError(file, line,
                              f"method {full}: id {shown} is not a method id; use an integer from 1 to "
                              f'4294967295 (0 is reserved; above 2147483647 write it as a string: id: "N")')
        fixed = True
    else:
        mid = fnv1a32(full)
        fixed = False
        if mid == 0:
            raise SchemaError(file, line,
                              f"method {full} hashes to the reserved method id 0; give it a fixed id "
                              f"with the id attribute, e.g. {name}(...):... (id: 1)")

    latest = "latest" in attrs
    if latest and kind == "unary":
        raise SchemaError(file, line,
                          f"method {full}: `latest` is a stream QoS and {full} is unary; add "
                          f'streaming: "server", "client" or "bidi", or remove latest')

    if name in CPP_KEYWORDS:
        raise SchemaError(file, line, f"method {full}: '{name}' is a C++ keyword; rename the method")

    where = (file, line)
    return Method(name=name, full_name=full, id=mid, id_fixed=fixed, kind=kind, latest=latest,
                  request=_type(raw.get("request"), where, "request", full),
                  response=_type(raw.get("response"), where, "response", full),
                  doc=list(raw.get("doc", [])), line=line)


def generated_members(svc: Service) -> dict[str, dict[str, str]]:
    """The member names each generated class gets, with what each one is. Raises SchemaError
    when a method's name collides with one the generator adds (async_X, co_X, channel, ...)."""
    classes: dict[str, dict[str, tuple[str, Method | None]]] = {
        cls: {cls: (f"the generated class {svc.name}::{cls}", None)} for cls in ("Client", "Server", "Ids")}
    classes["Client"]["channel"] = ("the generated accessor channel()", None)
    classes["Client"]["channel_"] = ("the generated data member channel_", None)

    def put(cls: str, name: str, what: str, method: Method, generated: bool) -> None:
        table = classes[cls]
        if name in table:
            other_what, other = table[name]
            # Blame the method whose own name is the problem: the user's method that took the
            # name a generated member needs, or the method named like a fixed generated member.
            culprit = other if generated and other is not None else method
            raise SchemaError(svc.file, culprit.line,
                              f"{svc.name}::{cls}::{name} would be both {other_what} and {what}; "
                              f"rename the method {culprit.full_name}")
        table[name] = (what, method)

    for m in svc.methods:
        put("Client", m.name, f"the call of {m.full_name}", m, False)
        put("Server", m.name, f"the handler of {m.full_name}", m, False)
        put("Ids", m.name, f"the id of {m.full_name}", m, False)
    for m in svc.methods:
        if m.kind == "unary":
            put("Client", "async_" + m.name, f"the asynchronous call of {m.full_name}", m, True)
            put("Server", "co_" + m.name, f"the coroutine handler of {m.full_name}", m, True)
    return {cls: {name: what for name, (what, _) in table.items()} for cls, table in classes.items()}


def _service(raw: dict[str, Any]) -> Service:
    svc = Service(name=raw["name"], full_name=raw["full_name"], namespace=tuple(raw["namespace"]),
                  doc=list(raw.get("doc", [])), file=raw["file"], line=int(raw.get("line") or 0))
    if svc.name in ("Client", "Server", "Ids") or svc.name in CPP_KEYWORDS:
        raise SchemaError(svc.file, svc.line,
                          f"service {svc.full_name}: the name '{svc.name}' is taken by the generated code "
                          f"(Client, Server, Ids) or by C++; rename the service")
    by_id: dict[int, Method] = {}
    for raw_method in raw.get("methods", []):
        m = _method(svc.full_name, raw_method, svc.file)
        other = by_id.get(m.id)
        if other is not None:
            how = lambda x: f"id attribute {x.id}" if x.id_fixed else f"the hash of '{x.full_name}'"
            raise SchemaError(svc.file, m.line,
                              f"methods {other.full_name} (line {other.line}) and {m.full_name} share the "
                              f"method id {m.id} ({how(other)}, {how(m)}); give one of them another fixed "
                              f"id with the id attribute, e.g. {m.name}(...):... (id: N)")
        by_id[m.id] = m
        svc.methods.append(m)
    generated_members(svc)
    return svc


def build(raw: dict[str, Any]) -> Schema:
    """Validates the front end's model and builds the Schema. Raises SchemaError."""
    if raw.get("version") != 1:
        raise SchemaError(raw.get("schema", "<model>"), 0,
                          f"model version {raw.get('version')} is not 1: the flatpipe_schema front end "
                          f"and the Python compiler come from different flatpipe versions")
    path = raw["schema"]
    stem = os.path.splitext(os.path.basename(path))[0]
    services = [_service(s) for s in raw.get("services", []) if s.get("main")]
    return Schema(path=path, stem=stem, files=list(raw.get("files", [path])), services=services)
