"""Message templates: personalised text in Chinese and English, checked when saved.

Templates are Jinja2 (``jinja2.sandbox.SandboxedEnvironment``: a template cannot reach Python
internals) with ``StrictUndefined`` (a missing value fails the message with a precise reason instead
of sending "None" to a customer). A template names profile fields the way rules do
(``{{ attributes.name }}``, ``{{ traits.orders_90d }}``, ``{{ scores.rfm_r }}``, ``{{ orders.count }}``)
plus the extra variables of ``EXTRA_VARIABLES``; ``compile_template`` walks the Jinja AST at save
time and refuses any variable that is neither in the workspace's field catalog
(``goldkey.audience.catalog``) nor an extra, naming the variant, the part and the closest field.

``{{ link('https://shop.example/p/1') }}`` becomes a tracked redirect on our server that records a
``Link Clicked`` event; e-mail HTML gets an open pixel. Each template has ``zh`` and/or ``en``
variants; the customer's ``attributes.language`` picks one (default: the template's default).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import jinja2
from jinja2 import StrictUndefined, nodes
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, model_validator

from goldkey.core.errors import InvalidInput, validated

Language = Literal["zh", "en"]
FIELD_ROOTS = ("profile", "orders", "attributes", "traits", "tags", "scores")
EXTRA_VARIABLES: dict[str, str] = {
    "profile_id": "the customer's profile id",
    "message_id": "this message's id",
    "unsubscribe_url": "the customer's one-click unsubscribe link",
    "link": "link('https://...') -> a tracked link that records a click",
    "vars": "values the campaign passes for this send (offer, coupon code ...): vars.<name>",
}


class TemplateVariant(BaseModel):
    """One language's text of a message."""

    model_config = ConfigDict(extra="forbid")
    subject: str | None = Field(None, max_length=500, description="E-mail subject / push title.")
    text: str = Field(min_length=1, max_length=20_000, description="Plain text (SMS, push, e-mail text part).")
    html: str | None = Field(None, max_length=200_000, description="E-mail HTML part.")
    params: dict[str, str] = Field(
        default_factory=dict,
        description="Provider-template parameters (Aliyun TemplateParam, WeChat template data), each a template.")
    url: str | None = Field(None, max_length=2000, description="Where tapping the message leads (WeChat, push).")


class MessageTemplate(BaseModel):
    """A message in one or two languages."""

    model_config = ConfigDict(extra="forbid")
    template_id: str = Field("", max_length=100)
    variants: dict[Language, TemplateVariant] = Field(min_length=1)
    default_language: Language = "zh"
    provider_template: str | None = Field(
        None, max_length=200, description="The provider's template id (Aliyun TemplateCode, WeChat template_id).")
    vars: list[str] = Field(default_factory=list, description="Names the campaign will pass as vars.<name>.")

    @model_validator(mode="after")
    def _default_exists(self) -> MessageTemplate:
        if self.default_language not in self.variants:
            raise ValueError(f"default_language {self.default_language!r} has no variant")
        return self


@dataclass(frozen=True)
class Rendered:
    """A rendered message ready for a channel."""

    language: str
    text: str
    subject: str | None
    html: str | None
    params: dict[str, str]
    url: str | None


class RenderError(Exception):
    """A template could not be rendered for one customer (e.g. a missing value)."""


_TEXT_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_HTML_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)


def _parts(v: TemplateVariant) -> list[tuple[str, str, bool]]:
    out = [("text", v.text, False)]
    if v.subject is not None:
        out.append(("subject", v.subject, False))
    if v.html is not None:
        out.append(("html", v.html, True))
    if v.url is not None:
        out.append(("url", v.url, False))
    out += [(f"params.{k}", s, False) for k, s in v.params.items()]
    return out


def _referenced(ast: nodes.Template) -> set[str]:
    """Dotted names the template reads: ``attributes.name``, ``vars.offer``, ``link`` ..."""
    out: set[str] = set()
    assigned = {n.name for n in ast.find_all(nodes.Name) if n.ctx in ("store", "param")}
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        base = node.node
        if isinstance(base, nodes.Name) and base.name not in assigned:
            if isinstance(node, nodes.Getattr):
                out.add(f"{base.name}.{node.attr}")
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                out.add(f"{base.name}.{node.arg.value}")
    for name in ast.find_all(nodes.Name):
        if name.ctx == "load" and name.name not in assigned:
            out.add(name.name)
    return out


def check_variables(names: set[str], catalog: Mapping[str, str], declared_vars: list[str], where: str) -> None:
    """Raise InvalidInput for the first name that is neither a catalog field nor an extra."""
    for name in sorted(names):
        root, _, rest = name.partition(".")
        if root in FIELD_ROOTS:
            if not rest:
                if any(f"{n}".startswith(root + ".") for n in names):
                    continue  # the root itself is read through one of its fields
                raise InvalidInput(f"name a field of {root}, e.g. {root}.<field>", field=where)
            if name not in catalog:
                near = difflib.get_close_matches(name, list(catalog), n=1)
                hint = f"; did you mean {near[0]}?" if near else ""
                raise InvalidInput(f"template variable {name!r} is not a field of this workspace's profiles{hint}",
                                   field=where)
        elif root == "vars":
            if rest and rest not in declared_vars:
                raise InvalidInput(f"template variable {name!r} is not declared in the template's vars "
                                   f"({', '.join(declared_vars) or 'none declared'})", field=where)
        elif root not in EXTRA_VARIABLES and root not in _TEXT_ENV.globals and root not in _TEXT_ENV.filters:
            known = list(FIELD_ROOTS) + list(EXTRA_VARIABLES)
            near = difflib.get_close_matches(root, known, n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            raise InvalidInput(f"template variable {root!r} does not exist{hint} (known: {', '.join(known)})",
                               field=where)


class CompiledTemplate:
    """A checked template, ready to render for many customers."""

    def __init__(self, template: MessageTemplate, compiled: dict[str, dict[str, jinja2.Template]],
                 fields: set[str]) -> None:
        self.template = template
        self._compiled = compiled
        self.fields = fields  # the catalog fields the template reads (what to load per profile)

    def language_for(self, values: Mapping[str, Any]) -> str:
        lang = str(values.get("attributes.language") or "").lower()
        for code in ("zh", "en"):
            if lang.startswith(code) and code in self._compiled:
                return code
        return self.template.default_language

    def render(self, values: Mapping[str, Any], *, message_id: str, profile_id: str,
               link: Callable[[str], str], unsubscribe_url: str | None,
               extra: Mapping[str, Any] | None = None) -> Rendered:
        """Render for one customer (``values``: ``{field: value}`` as ``profile_values`` gives);
        raise RenderError naming what is missing."""
        lang = self.language_for(values)
        ctx = nest(values)
        ctx.update(profile_id=profile_id, message_id=message_id, unsubscribe_url=unsubscribe_url or "",
                   link=link, vars=dict(extra or {}))
        out: dict[str, str] = {}
        for part, tpl in self._compiled[lang].items():
            try:
                out[part] = tpl.render(ctx)
            except jinja2.UndefinedError as exc:
                raise RenderError(f"{lang}.{part}: {_undefined_reason(exc)}") from None
            except (jinja2.TemplateError, ValueError, TypeError) as exc:
                raise RenderError(f"{lang}.{part}: {exc}") from None
        params = {k.removeprefix("params."): v for k, v in out.items() if k.startswith("params.")}
        return Rendered(lang, out["text"], out.get("subject"), out.get("html"), params, out.get("url"))


def _undefined_reason(exc: jinja2.UndefinedError) -> str:
    msg = str(exc)
    if "has no attribute" in msg:
        return f"the customer has no value for {msg.split('has no attribute')[-1].strip()} " \
               "(give a fallback with | default('...'))"
    return msg


def nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"attributes.name": x}`` -> ``{"attributes": {"name": x}}`` (every root present)."""
    out: dict[str, Any] = {r: {} for r in FIELD_ROOTS}
    for k, v in values.items():
        root, _, rest = k.partition(".")
        if rest and root in out:
            out[root][rest] = v
    return out


def compile_template(template: MessageTemplate | Mapping[str, Any], catalog: Mapping[str, str]) -> CompiledTemplate:
    """Parse and check every variant; raise InvalidInput naming ``template.variants.<lang>.<part>``
    for a syntax error or a variable that does not exist."""
    if not isinstance(template, MessageTemplate):
        template = validated(MessageTemplate, template, prefix="template")
    compiled: dict[str, dict[str, jinja2.Template]] = {}
    fields: set[str] = set()
    for lang, variant in template.variants.items():
        compiled[lang] = {}
        for part, source, html in _parts(variant):
            where = f"template.variants.{lang}.{part}"
            env = _HTML_ENV if html else _TEXT_ENV
            try:
                ast = env.parse(source)
            except jinja2.TemplateSyntaxError as exc:
                raise InvalidInput(f"template syntax error on line {exc.lineno}: {exc.message}", field=where) from None
            names = _referenced(ast)
            check_variables(names, catalog, template.vars, where)
            fields |= {n for n in names if n.partition(".")[0] in FIELD_ROOTS and "." in n}
            compiled[lang][part] = env.from_string(source)
    return CompiledTemplate(template, compiled, fields)


def compile_for_workspace(engine: Any, ws: str, template: MessageTemplate | Mapping[str, Any]) -> CompiledTemplate:
    """``compile_template`` against workspace ``ws``'s catalog; attribute fields seen since the last
    inference are inferred first (as rules do), so a new attribute is usable at once."""
    from goldkey.audience.catalog import infer_attribute_fields, load_catalog

    try:
        return compile_template(template, load_catalog(engine, ws))
    except InvalidInput as exc:
        if "attributes." not in exc.message:
            raise
    infer_attribute_fields(engine, ws)
    return compile_template(template, load_catalog(engine, ws))
