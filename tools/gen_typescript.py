"""Writes the protocol's message types into src/callbox/web/callbox.d.ts, from the JSON Schemas.

Why generated: the schemas (``schemas/``) are what the server validates every message against.
Types copied from them by hand would drift the first time a field or an error code is added; these
cannot, because ``tests/client/test_typescript.py`` regenerates the block and fails if the
committed file differs. The rest of ``callbox.d.ts`` (the classes of ``callbox.js``) is written
by hand around the block, between its two marker lines.

What comes out: a type for each shared definition of ``common.json`` (``UserId``, ``Media``,
``EndReason``...), and one map per direction from ``type`` to the message's shape,
``ClientMessageMap`` and ``ServerMessageMap`` (like the DOM's ``WindowEventMap``: client and
server both have an ``ice_candidate``, so a map keyed by type names each without a prefix), with
``ClientMessage`` and ``ServerMessage``, the unions. A rule between fields becomes an
intersection: ``oneOf``/``anyOf`` of ``required`` lists (``call_initiate``: exactly one of ``to``
and ``room``) and ``dependentRequired`` (``hello``: ``resume`` with ``last_seq``). Bounds that
TypeScript cannot state (lengths, patterns, ranges, uniqueness) are left to the schemas and the
server; a keyword this script does not know stops it, rather than being skipped silently.

Usage (from the repository root, or anywhere)::

    python tools/gen_typescript.py          # rewrite the block
    python tools/gen_typescript.py --check  # exit 1 if it is stale (CI, the drift test)

The output depends only on the schemas: messages follow ``client-message.json`` /
``server-message.json``, definitions and fields follow the files.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DTS = Path("src/callbox/web/callbox.d.ts")
BEGIN = "// BEGIN generated: protocol types (tools/gen_typescript.py, from schemas/)"
END = "// END generated: protocol types"
INDENT = "  "
WIDTH = 100
UNION_WIDTH = 60
"""A union longer than this is written one option a line."""

Schema = Mapping[str, Any]

DOCUMENTATION = frozenset({"$schema", "$id", "title", "description", "$defs"})
"""Keywords that say what a schema is; they become comments, or nothing."""
BOUNDS = frozenset(
    {
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "minItems",
        "maxItems",
        "uniqueItems",
        "maxProperties",
        "propertyNames",
    }
)
"""Keywords TypeScript's types cannot state: the schemas and the server enforce them."""
SHAPE = frozenset(
    {
        "$ref",
        "const",
        "enum",
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "anyOf",
        "oneOf",
        "dependentRequired",
    }
)
"""Keywords rendered as types."""
PRIMITIVES = {
    "string": "string",
    "integer": "number",
    "number": "number",
    "boolean": "boolean",
    "null": "null",
}
"""JSON Schema's types that stand alone, and theirs in TypeScript."""


class SchemaError(Exception):
    """A schema uses something this generator cannot render."""


def pascal(name: str) -> str:
    """`iceCandidateInit` -> `IceCandidateInit`: the type name of a shared definition."""
    return name[:1].upper() + name[1:]


def ref_type(ref: str) -> str:
    """The type a `$ref` to a shared definition names (`../common.json#/$defs/userId`)."""
    found = re.fullmatch(r"(?:\.\./)?(?:common\.json)?#/\$defs/(\w+)", ref)
    if found is None:
        raise SchemaError(f"$ref {ref!r} is not a shared definition of common.json")
    return pascal(found.group(1))


def doc_comment(text: str | None, indent: str) -> list[str]:
    """`text` as a JSDoc comment, wrapped, each line of the description kept (its lists)."""
    if not text:
        return []
    lines: list[str] = []
    for paragraph in text.replace("*/", "*\\/").split("\n"):
        wrapped = textwrap.wrap(paragraph, WIDTH - len(indent) - 3, break_on_hyphens=False)
        lines += wrapped or [""]
    if len(lines) == 1 and len(indent) + len(lines[0]) + 7 <= WIDTH:
        return [f"{indent}/** {lines[0]} */"]
    return [f"{indent}/**", *(f"{indent} * {line}".rstrip() for line in lines), f"{indent} */"]


def check_keywords(where: str, schema: Schema) -> None:
    unknown = set(schema) - DOCUMENTATION - BOUNDS - SHAPE
    if unknown:
        raise SchemaError(f"{where}: keywords this generator does not render: {sorted(unknown)}")


def _requirement_branches(schema: Schema, keyword: str) -> list[list[str]] | None:
    """The `required` lists of an `anyOf`/`oneOf` whose branches are nothing else, or None."""
    branches = schema.get(keyword)
    if branches is None or not all(set(branch) == {"required"} for branch in branches):
        return None
    return [list(branch["required"]) for branch in branches]


def render(schema: Schema, where: str, depth: int) -> str:
    """The TypeScript type of `schema`, nested `depth` levels deep (for the indentation)."""
    check_keywords(where, schema)
    if "$ref" in schema:
        return ref_type(schema["$ref"])
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return union([json.dumps(value) for value in schema["enum"]], depth)
    for keyword in ("anyOf", "oneOf"):
        if keyword in schema and _requirement_branches(schema, keyword) is None:
            options = [render(branch, f"{where}/{keyword}", depth) for branch in schema[keyword]]
            return union(options, depth)
    kind = schema.get("type")
    if kind is None:
        return "unknown"  # any JSON value (room_broadcast.data)
    if isinstance(kind, list):
        return union([_primitive(where, each) for each in kind], depth)
    if kind == "object":
        return _object(schema, where, depth)
    if kind == "array":
        items = render(schema["items"], f"{where}/items", depth)
        return f"({items})[]" if "|" in items or "&" in items else f"{items}[]"
    return _primitive(where, kind)


def union(options: list[str], depth: int) -> str:
    """`a | b`, or one option a line when that would be long."""
    joined = " | ".join(options)
    if len(joined) <= UNION_WIDTH:
        return joined
    return "".join(f"\n{INDENT * (depth + 1)}| {option}" for option in options)


def spaced(rendered: str) -> str:
    """`rendered` after a `:` or `=`: a space first, unless it starts on a line of its own."""
    return rendered if rendered.startswith("\n") else f" {rendered}"


def _primitive(where: str, kind: str) -> str:
    if kind not in PRIMITIVES:
        raise SchemaError(f"{where}: type {kind!r} cannot be one of several")
    return PRIMITIVES[kind]


def _object(schema: Schema, where: str, depth: int) -> str:
    properties: Mapping[str, Schema] = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    if not properties:
        if not isinstance(extra, Mapping):
            raise SchemaError(f"{where}: an object with no properties needs additionalProperties")
        return f"{{ [name: string]: {render(extra, f'{where}/additionalProperties', depth)} }}"
    if extra is not False:
        raise SchemaError(f"{where}: objects with properties must close additionalProperties")
    required = set(schema.get("required", ()))
    inner = INDENT * (depth + 1)
    lines = ["{"]
    for name, field in properties.items():
        lines += doc_comment(field.get("description"), inner)
        optional = "" if name in required else "?"
        type_ = render(field, f"{where}/{name}", depth + 1)
        lines.append(f"{inner}{name}{optional}:{spaced(type_)};")
    lines.append(INDENT * depth + "}")
    rules = "".join(f"\n{inner}& {rule}" for rule in _field_rules(schema, where, depth))
    return "\n".join(lines) + rules


def _field_rules(schema: Schema, where: str, depth: int) -> Iterator[str]:
    """The rules between fields of an object schema, as unions to intersect it with."""
    properties: Mapping[str, Schema] = schema["properties"]

    def fields(present: Sequence[str], absent: Sequence[str]) -> str:
        parts = [
            f"{name}: {render(properties[name], f'{where}/{name}', depth)}" for name in present
        ]
        parts += [f"{name}?: undefined" for name in absent]
        return "{ " + "; ".join(parts) + " }"

    for keyword in ("anyOf", "oneOf"):
        branches = _requirement_branches(schema, keyword)
        if branches is None:
            continue
        alternatives = []
        for branch in branches:
            others = [n for b in branches if b is not branch for n in b if n not in branch]
            alternatives.append(fields(branch, others if keyword == "oneOf" else []))
        yield "(" + " | ".join(alternatives) + ")"
    for name, needs in schema.get("dependentRequired", {}).items():
        yield f"({fields([], [name])} | {fields([name, *needs], [])})"


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def definitions(schemas: Path) -> Iterator[str]:
    common = load(schemas / "common.json")
    for name, schema in common["$defs"].items():
        where = f"common.json#/$defs/{name}"
        yield from doc_comment(schema.get("description"), "")
        yield f"export type {pascal(name)} ={spaced(render(schema, where, 0))};"
        yield ""


def message_map(schemas: Path, direction: str) -> Iterator[str]:
    """`ClientMessageMap` or `ServerMessageMap`, in the order of `<direction>-message.json`."""
    union = load(schemas / f"{direction}-message.json")
    title = direction.capitalize()
    yield from doc_comment(f"{union['description']} By `type`.", "")
    yield f"export interface {title}MessageMap {{"
    for entry in union["oneOf"]:
        path = entry["$ref"]
        schema = load(schemas / path)
        kind = schema["properties"]["type"]["const"]
        yield from doc_comment(schema.get("description"), INDENT)
        yield f"{INDENT}{kind}:{spaced(render(schema, path, 1))};"
    yield "}"
    yield ""
    yield f"/** Any {direction} message. */"
    yield f"export type {title}Message = {title}MessageMap[keyof {title}MessageMap];"
    yield ""


def render_block(root: Path = ROOT) -> str:
    """The generated block, markers included."""
    schemas = root / "schemas"
    lines = [BEGIN, ""]
    lines += definitions(schemas)
    lines += message_map(schemas, "client")
    lines += message_map(schemas, "server")
    lines.append(END)
    return "\n".join(lines)


def splice(text: str, block: str) -> str:
    """`text` with the block between its markers replaced by `block`."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SchemaError(f"{DTS}: the markers {BEGIN!r} and {END!r} are missing")
    return text[:start] + block + text[end + len(END) :]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    path = args.root / DTS
    current = path.read_text(encoding="utf-8")
    wanted = splice(current, render_block(args.root))
    if wanted == current:
        return 0
    if args.check:
        print(f"{DTS} is stale: run python tools/gen_typescript.py", file=sys.stderr)
        return 1
    path.write_text(wanted, encoding="utf-8")
    print(f"wrote {DTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
