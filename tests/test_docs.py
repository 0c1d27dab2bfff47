"""Documentation tests (in the manner of Datasette's): the docs must keep up with the code.

They fail when a setting, a CLI command or option, or an API operation exists in the code but not in
the docs, or when the generated API reference is stale. To fix a failure, document the new thing
(docs/configuration.md by hand) or regenerate:

    .venv/bin/python docs/gen_api.py    # docs/api.md and docs/openapi.json
    .venv/bin/python docs/gen_cli.py    # docs/cli.md
    .venv/bin/python docs/gen_imports.py  # the field tables of docs/imports.md
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import typer

from goldkey.cli import app as cli_app
from goldkey.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _read(name: str) -> str:
    path = ROOT / name
    assert path.exists(), f"{name} is missing"
    return path.read_text(encoding="utf-8")


def _load(script: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_goldkey_docs_{script}", DOCS / f"{script}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- README -------------------------------------------------------------------------------------------
def test_readme_leads_with_the_two_commands() -> None:
    readme = _read("README.md")
    assert "make demo" in readme, "README.md must tell people to run `make demo`"
    assert "make test" in readme, "README.md must tell people to run `make test`"


def _anchors(md: Path) -> set[str]:
    """Return the anchors of a Markdown file: GitHub-style heading slugs and explicit ids."""
    text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)
    out = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        out.add(slug)
    return out


def test_readme_and_docs_links_resolve() -> None:
    """Relative links between README.md and docs/*.md point at files and anchors that exist."""
    for md in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            path = md.parent / target if target else md
            assert path.exists(), f"{md.relative_to(ROOT)} links to missing {target}"
            if anchor and path.suffix == ".md":
                assert anchor in _anchors(path), f"{md.relative_to(ROOT)} links to missing anchor {target}#{anchor}"


# -- settings -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_setting_is_documented(name: str) -> None:
    text = _read("docs/configuration.md")
    assert f"`{name}`" in text, f"setting {name!r} is not documented in docs/configuration.md"
    env = f"GOLDKEY_{name.upper()}"
    assert env in text, f"environment variable {env} is not documented in docs/configuration.md"


# -- CLI ----------------------------------------------------------------------------------------------
def _commands(cmd: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, cmd
    for name, sub in (getattr(cmd, "commands", None) or {}).items():
        yield from _commands(sub, (*path, name))


CLI_COMMANDS = list(_commands(typer.main.get_command(cli_app), ("goldkey",)))


def _cli_section(text: str, path: tuple[str, ...]) -> str:
    """Return the part of docs/cli.md under the command's own heading."""
    heading = f"## `{' '.join(path)}`"
    assert heading in text, f"CLI command `{' '.join(path)}` has no '{heading}' section in docs/cli.md"
    start = text.index(heading) + len(heading)
    nxt = text.find("\n## ", start)
    return text[start:] if nxt < 0 else text[start:nxt]


@pytest.mark.parametrize("path", [p for p, _ in CLI_COMMANDS], ids=lambda p: " ".join(p))
def test_cli_command_and_its_options_are_documented(path: tuple[str, ...]) -> None:
    cmd = dict(CLI_COMMANDS)[path]
    section = _cli_section(_read("docs/cli.md"), path)
    for param in cmd.params:
        if getattr(param, "hidden", False):
            continue
        names = [*param.opts, *getattr(param, "secondary_opts", [])]
        if getattr(param, "param_type_name", "") == "argument" or not names[0].startswith("-"):
            assert param.name.upper() in section, (
                f"argument {param.name.upper()} of `{' '.join(path)}` is not documented in docs/cli.md"
            )
            continue
        for opt in names:
            assert f"`{opt}`" in section, f"option {opt} of `{' '.join(path)}` is not documented in docs/cli.md"


def test_cli_doc_is_current() -> None:
    """docs/cli.md is what docs/gen_cli.py writes for the current command tree."""
    expected = _load("gen_cli").render()
    assert _read("docs/cli.md") == expected, "docs/cli.md is stale: run .venv/bin/python docs/gen_cli.py"


# -- API ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gen_api() -> ModuleType:
    return _load("gen_api")


@pytest.fixture(scope="module")
def openapi(gen_api: ModuleType) -> dict[str, Any]:
    return gen_api.openapi_schema()  # type: ignore[no-any-return]


def test_every_api_operation_is_documented(openapi: dict[str, Any]) -> None:
    text = _read("docs/api.md")
    missing = [
        f"{method.upper()} {path}"
        for path, item in openapi["paths"].items()
        for method in item
        if method in ("get", "put", "post", "patch", "delete") and f"`{method.upper()} {path}`" not in text
    ]
    assert not missing, f"operations missing from docs/api.md (run docs/gen_api.py): {missing}"


def test_api_reference_is_current(gen_api: ModuleType, openapi: dict[str, Any]) -> None:
    assert _read("docs/api.md") == gen_api.render(openapi), (
        "docs/api.md is stale relative to the OpenAPI schema: run .venv/bin/python docs/gen_api.py"
    )
    assert json.loads(_read("docs/openapi.json")) == openapi, (
        "docs/openapi.json is stale: run .venv/bin/python docs/gen_api.py"
    )


def test_guides_name_only_real_endpoints(openapi: dict[str, Any]) -> None:
    """Every `/v1/...` or `/api/v1/...` path written in the README and the guides exists (or is the
    prefix of paths that exist, such as `/api/v1/insights`)."""
    patterns = [re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$") for p in openapi["paths"]]
    for md in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        if md.name == "api.md":
            continue
        for found in re.findall(
            r"(?<![A-Za-z_])(/(?:api/)?v1/[A-Za-z0-9_{}\-/]*[A-Za-z0-9_}])", md.read_text(encoding="utf-8")
        ):
            path = found.split("?")[0]
            real = any(p.match(path) for p in patterns) or any(q.startswith(path + "/") for q in openapi["paths"])
            assert real, f"{md.name} mentions {path}, which the API does not have"


# -- import kinds --------------------------------------------------------------------------------------
def test_every_import_field_is_documented() -> None:
    from goldkey.collect.import_schemas import SCHEMAS

    text = _read("docs/imports.md")
    for kind, schema in SCHEMAS.items():
        assert f"`{kind}`" in text, f"import kind {kind!r} is not documented in docs/imports.md"
        for field in schema.field_names:
            assert f"`{field}`" in text, f"{kind} field {field!r} is not documented in docs/imports.md"


def test_import_field_tables_are_current() -> None:
    text = _read("docs/imports.md")
    assert text == _load("gen_imports").render(text), (
        "the field tables in docs/imports.md are stale: run .venv/bin/python docs/gen_imports.py"
    )
