"""Regenerate the field tables of ``docs/imports.md`` from ``goldkey.collect.import_schemas.SCHEMAS``.

Run from the repository root after changing an import schema::

    .venv/bin/python docs/gen_imports.py

Only the text between the ``BEGIN GENERATED FIELDS`` and ``END GENERATED FIELDS`` markers is
replaced; the rest of docs/imports.md is written by hand. ``tests/test_docs.py`` fails when the
tables are stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
IMPORTS_MD = DOCS / "imports.md"
BEGIN = "<!-- BEGIN GENERATED FIELDS (docs/gen_imports.py) -->"
END = "<!-- END GENERATED FIELDS -->"

_TYPE_TEXT = {
    "string": "text",
    "identifier": "identifier (text)",
    "phone": "phone → E.164",
    "email": "e-mail → lower case",
    "date": "date",
    "datetime": "date-time → UTC",
    "amount": "amount (2 decimals)",
    "int": "integer",
    "region": "region → standard province name",
    "enum": "one of a list",
}


def _cell(text: object) -> str:
    return ("" if text is None else str(text)).replace("|", "\\|").replace("\n", " ").strip()


def render_fields() -> str:
    """Return the generated block (markers included)."""
    from goldkey.collect.import_schemas import DEDUPE_KEY, LINE_NO, SCHEMAS

    key_text = {
        DEDUPE_KEY: "the first identifier field present, in the order listed below",
        LINE_NO: f"`{LINE_NO}` (the number of the line among the order's lines with the same `sku`)",
    }
    out = [BEGIN, ""]
    for kind, schema in SCHEMAS.items():
        out += [f"### `{kind}`", ""]
        if schema.help:
            line = schema.help[0].upper() + schema.help[1:]
            out += [f"{line}.", ""]
        keys = ", ".join(key_text.get(k, f"`{k}`") for k in schema.key)
        facts = [f"Key (what makes a record unique): {keys}."]
        if schema.identifier_fields:
            facts.append(
                "A row needs at least one of the identifier fields "
                + ", ".join(f"`{f}`" for f in schema.identifier_fields)
                + "."
            )
        if schema.keeps_extra:
            facts.append("Columns that map to no field are kept in `extra` and become profile attributes.")
        else:
            facts.append("Columns that map to no field are ignored.")
        out += [" ".join(facts), ""]
        out += ["| Field | Type | Required | Description |", "|---|---|---|---|"]
        for f in schema.fields:
            notes = [f.help]
            if f.choices:
                notes.append("values: " + ", ".join(f"`{c}`" for c in f.choices))
            if f.synonyms:
                notes.append("also accepted: " + ", ".join(f"`{s}` → `{c}`" for s, c in f.synonyms))
            if f.default is not None:
                notes.append(f"default `{f.default}`")
            if f.min_value is not None or f.max_value is not None:
                lo = "" if f.min_value is None else str(f.min_value)
                hi = "" if f.max_value is None else str(f.max_value)
                notes.append(f"range {lo}..{hi}")
            required = "yes" if f.required else ("one identifier" if f.name in schema.identifier_fields else "no")
            out.append(
                f"| `{f.name}` | {_TYPE_TEXT.get(str(f.type), str(f.type))} | {required} | "
                f"{_cell('; '.join(n for n in notes if n))} |"
            )
        out.append("")
    out.append(END)
    return "\n".join(out)


def render(current: str) -> str:
    """Return ``current`` (the text of docs/imports.md) with the generated block replaced."""
    if BEGIN not in current or END not in current:
        raise SystemExit(f"{IMPORTS_MD} lacks the markers {BEGIN!r} ... {END!r}")
    head, rest = current.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + render_fields() + tail


def main() -> int:
    IMPORTS_MD.write_text(render(IMPORTS_MD.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote the field tables of {IMPORTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
