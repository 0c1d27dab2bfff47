"""Generate ``docs/api.md`` and ``docs/openapi.json`` from Goldkey's OpenAPI schema.

Run from the repository root after changing any route, schema or docstring of the API::

    .venv/bin/python docs/gen_api.py

``tests/test_docs.py`` regenerates the text in memory and fails when the committed files are stale.
The schema comes from ``create_app(Settings()).openapi()``: building the app opens no store (the
stores open in the app's lifespan), so this needs no data directory and no running server.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
API_MD = DOCS / "api.md"
OPENAPI_JSON = DOCS / "openapi.json"

METHODS = ("get", "put", "post", "patch", "delete", "head", "options")

# Which credential each group of paths takes (the API checks credentials by hand, so the OpenAPI
# schema declares no security schemes; see docs/concepts.md and docs/tracking-api.md).
_AUTH = (
    (
        "/v1/",
        "write key — HTTP Basic with the write key as user name and an empty password "
        "(what the Segment and RudderStack SDKs send), or `Authorization: Bearer <write key>`, "
        "or a `writeKey` field in the JSON body",
    ),
    ("/api/v1/", "admin token — `Authorization: Bearer <admin token>`"),
    ("/", "none"),
)


def openapi_schema() -> dict[str, Any]:
    """Return the OpenAPI schema of the current code (no store is opened)."""
    from goldkey.app import create_app
    from goldkey.settings import Settings

    return create_app(Settings()).openapi()


# -- formatting helpers -----------------------------------------------------------------------------
def _cell(text: Any) -> str:
    """Return ``text`` safe for a Markdown table cell."""
    s = "" if text is None else str(text)
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


def _anchor(name: str) -> str:
    return "schema-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def fmt_type(schema: dict[str, Any] | None) -> str:
    """Return a short readable type for a JSON schema (links for component references)."""
    if not schema:
        return "any"
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f"[{name}](#{_anchor(name)})"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            parts = [fmt_type(s) for s in schema[key]]
            return " or ".join(dict.fromkeys(parts))
    if "allOf" in schema:
        return " and ".join(fmt_type(s) for s in schema["allOf"])
    if "const" in schema:
        return json.dumps(schema["const"], ensure_ascii=False)
    if "enum" in schema:
        return " or ".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    t = schema.get("type")
    if t == "array":
        return f"array of {fmt_type(schema.get('items'))}"
    if t == "object" or "properties" in schema:
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            return f"object of {fmt_type(extra)}"
        return "object"
    if t == "string":
        if "contentMediaType" in schema or schema.get("format") == "binary":
            return "file"
        if "format" in schema:
            return f"string ({schema['format']})"
        return "string"
    if isinstance(t, list):
        return " or ".join(t)
    return str(t) if t else "any"


def _constraints(schema: dict[str, Any]) -> str:
    """Return defaults and limits of a schema as a short phrase."""
    out = []
    if "default" in schema:
        out.append(f"default `{json.dumps(schema['default'], ensure_ascii=False)}`")
    if "minimum" in schema:
        out.append(f"minimum {schema['minimum']}")
    if "exclusiveMinimum" in schema:
        out.append(f"greater than {schema['exclusiveMinimum']}")
    if "maximum" in schema:
        out.append(f"maximum {schema['maximum']}")
    if "exclusiveMaximum" in schema:
        out.append(f"less than {schema['exclusiveMaximum']}")
    if "minLength" in schema:
        out.append(f"at least {schema['minLength']} characters")
    if "maxLength" in schema:
        out.append(f"at most {schema['maxLength']} characters")
    if "pattern" in schema:
        out.append(f"pattern `{schema['pattern']}`")
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key, []):
            c = _constraints(sub)
            if c:
                out.append(c)
    return "; ".join(out)


def _describe(schema: dict[str, Any]) -> str:
    parts = [schema.get("description", "")]
    c = _constraints(schema)
    if c:
        parts.append(f"({c})")
    return " ".join(p for p in parts if p)


def _property_rows(schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Return table rows for the properties of an object schema; inline objects are expanded."""
    rows = []
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        rows.append(
            f"| `{prefix}{name}` | {_cell(fmt_type(prop))} | {'yes' if name in required else 'no'} "
            f"| {_cell(_describe(prop))} |"
        )
        if "properties" in prop:
            rows.extend(_property_rows(prop, f"{prefix}{name}."))
        items = prop.get("items") if prop.get("type") == "array" else None
        if isinstance(items, dict) and "properties" in items:
            rows.extend(_property_rows(items, f"{prefix}{name}[]."))
    return rows


def _fields_table(schema: dict[str, Any]) -> list[str]:
    rows = _property_rows(schema)
    if not rows:
        return []
    return ["| Field | Type | Required | Description |", "|---|---|---|---|", *rows]


def _auth_for(path: str) -> str:
    for prefix, text in _AUTH:
        if path.startswith(prefix):
            return text
    return "none"


# -- rendering ------------------------------------------------------------------------------------------
def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    ops = []
    for path, item in schema.get("paths", {}).items():
        for method in METHODS:
            if method in item:
                ops.append((path, method, item[method]))
    return ops


def _op_anchor(path: str, method: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"{method} {path}".lower()).strip("-")


def _render_operation(path: str, method: str, op: dict[str, Any]) -> list[str]:
    out = [f'<a id="{_op_anchor(path, method)}"></a>', "", f"### `{method.upper()} {path}`", ""]
    summary = op.get("summary", "")
    if summary:
        out += [f"**{summary}.** {op.get('description', '')}".rstrip(), ""]
    elif op.get("description"):
        out += [op["description"], ""]
    out += [f"Authentication: {_auth_for(path)}.", ""]

    params = op.get("parameters", [])
    if params:
        out += ["Parameters:", "", "| Name | In | Type | Required | Description |", "|---|---|---|---|---|"]
        for p in params:
            ps = p.get("schema", {})
            desc = " ".join(
                x for x in (p.get("description", ""), f"({_constraints(ps)})" if _constraints(ps) else "") if x
            )
            out.append(
                f"| `{p['name']}` | {p.get('in', '')} | {_cell(fmt_type(ps))} | "
                f"{'yes' if p.get('required') else 'no'} | {_cell(desc)} |"
            )
        out.append("")

    body = op.get("requestBody")
    if body:
        for ctype, media in body.get("content", {}).items():
            bs = media.get("schema", {})
            req = "required" if body.get("required") else "optional"
            out += [f"Request body ({req}), `{ctype}`: {fmt_type(bs) if '$ref' in bs else 'object'}", ""]
            inline = bs if "$ref" not in bs else None
            if inline is not None:
                if inline.get("description"):
                    out += [inline["description"], ""]
                table = _fields_table(inline)
                if table:
                    out += [*table, ""]
                if inline.get("additionalProperties") is True:
                    out += [
                        "Fields not listed here are accepted without error; "
                        "[tracking-api.md](tracking-api.md) says which of them Goldkey reads.",
                        "",
                    ]

    responses = op.get("responses", {})
    if responses:
        out += ["Responses:", "", "| Status | Description | Body |", "|---|---|---|"]
        for status, resp in responses.items():
            bodies = []
            for ctype, media in (resp.get("content") or {}).items():
                s = media.get("schema")
                bodies.append(f"{fmt_type(s)} (`{ctype}`)" if s else f"`{ctype}`")
            out.append(f"| {status} | {_cell(resp.get('description', ''))} | {_cell(', '.join(bodies))} |")
        out.append("")
    return out


def render(schema: dict[str, Any]) -> str:
    """Return the Markdown API reference for an OpenAPI schema."""
    info = schema.get("info", {})
    ops = _operations(schema)
    out = [
        "# API reference",
        "",
        "<!-- Generated by docs/gen_api.py from the OpenAPI schema. Do not edit by hand: change the",
        "     code, then run `.venv/bin/python docs/gen_api.py`. tests/test_docs.py fails when this",
        "     file is stale. -->",
        "",
        f"{info.get('title', 'Goldkey')} {info.get('version', '')} (OpenAPI {schema.get('openapi', '')}). "
        f"{info.get('description', '')}".rstrip(),
        "",
        "The same schema is in [openapi.json](openapi.json); a running server also serves it at "
        "`/openapi.json`, with interactive documentation at `/docs`.",
        "",
        "## Authentication and errors",
        "",
        "| Paths | Credential |",
        "|---|---|",
        *[f"| `{prefix}…` | {_cell(text)} |" for prefix, text in _AUTH[:2]],
        "| `/healthz`, `/metrics` | none |",
        "",
        "A missing, unknown or wrong-kind credential answers 401. Every error answer is an "
        "[ErrorBody](#schema-errorbody): `error` (a message naming the problem), `field` and `record` "
        "(where the problem is, when known). A request that fails FastAPI's own validation (a bad query "
        "parameter or JSON body) answers 422 with `error`, `field` and `details` (the list of validation "
        "errors), not the `HTTPValidationError` shape the schema declares for 422.",
        "",
        "## Endpoints",
        "",
        "| Method | Path | Summary |",
        "|---|---|---|",
    ]
    for path, method, op in ops:
        out.append(f"| {method.upper()} | [`{path}`](#{_op_anchor(path, method)}) | {_cell(op.get('summary', ''))} |")
    out.append("")

    tags: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, method, op in ops:
        tags.setdefault((op.get("tags") or ["other"])[0], []).append((path, method, op))
    for tag, tag_ops in tags.items():
        out += [f"## {tag.capitalize()}", ""]
        for path, method, op in tag_ops:
            out += _render_operation(path, method, op)

    components = schema.get("components", {}).get("schemas", {})
    if components:
        out += ["## Schemas", ""]
        for name, comp in components.items():
            out += [f'<a id="{_anchor(name)}"></a>', "", f"### {name}", ""]
            if comp.get("description"):
                out += [comp["description"], ""]
            table = _fields_table(comp)
            if table:
                out += [*table, ""]
            elif comp.get("type") and comp.get("type") != "object":
                out += [f"Type: {fmt_type(comp)}", ""]
    return "\n".join(out).rstrip() + "\n"


def render_json(schema: dict[str, Any]) -> str:
    """Return the schema as the text written to docs/openapi.json."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    schema = openapi_schema()
    API_MD.write_text(render(schema), encoding="utf-8")
    OPENAPI_JSON.write_text(render_json(schema), encoding="utf-8")
    print(f"wrote {API_MD} ({len(_operations(schema))} operations) and {OPENAPI_JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
