"""Configs explained from their own dataclasses: the reference of every key (``metarl config
docs``, kept in docs/config.md) and one config with each field's doc and default (``metarl
config show``).

Nothing here is written by hand per key: the docstring under each field (:func:`field_docs`),
its annotation, its bounds and each kind's default instance say everything, so the reference
cannot drift from the code (a test regenerates docs/config.md and compares).
"""

from __future__ import annotations

import dataclasses
import inspect
import textwrap
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from metarl.config import (
    BASE_KEY,
    CONFIG_KINDS,
    DEFAULT_KIND,
    _type_name,
    config_to_dict,
    field_docs,
)

REGENERATE = "metarl config docs > docs/config.md"
"""The command that writes docs/config.md (from the repository root)."""


@dataclass(frozen=True)
class FieldInfo:
    """One key of a config: where it is, what it takes, its default, its docstring."""

    key: str
    """Dotted key, e.g. ``inner.lr``."""
    type_name: str
    """What the value may be, in words (``an integer``, ``'relu' | 'tanh'``)."""
    bounds: str
    """Numeric bounds, e.g. ``>= 1``, or empty."""
    default: Any
    """The kind's default value."""
    doc: str
    """The field's docstring."""
    section: bool
    """A nested section (its own keys follow)."""


def yaml_value(value: Any) -> str:
    """``value`` as one line of YAML (``[40, 40]``, ``null``, ``1.0e-05``)."""
    plain = list(value) if isinstance(value, tuple) else value
    text = yaml.safe_dump(plain, default_flow_style=True, width=10**6)
    return text.removesuffix("\n...\n").strip()


def _bounds_text(bounds: dict[str, float]) -> str:
    signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return " and ".join(f"{signs[k]} {v:g}" for k, v in bounds.items())


def fields_of(kind: str) -> Iterator[FieldInfo]:
    """Every key of ``kind``'s config, sections before their keys, in declaration order."""
    cls = CONFIG_KINDS[kind]
    yield from _walk(cls, cls(), "")


def _walk(cls: type[Any], default: Any, prefix: str) -> Iterator[FieldInfo]:
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        tp, value = hints[f.name], getattr(default, f.name)
        section = isinstance(tp, type) and dataclasses.is_dataclass(tp)
        yield FieldInfo(
            key=f"{prefix}{f.name}",
            type_name=_type_name(tp),
            bounds=_bounds_text(f.metadata.get("bounds", {})),
            default=value,
            doc=docs.get(f.name, ""),
            section=section,
        )
        if section:
            yield from _walk(tp, value, f"{prefix}{f.name}.")


def _class_doc(cls: type[Any]) -> str:
    return inspect.cleandoc(cls.__doc__ or "")


def _section_class(kind: str, key: str) -> type[Any]:
    cls = CONFIG_KINDS[kind]
    for part in key.split("."):
        cls = typing.get_type_hints(cls)[part]
    return cls


# --------------------------------------------------------------------------- the reference


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _table(rows: list[FieldInfo]) -> list[str]:
    lines = ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    for r in rows:
        default = f"`{yaml_value(r.default)}`"
        lines.append(
            f"| `{r.key}` | {_cell(r.type_name)} | {_cell(default)} | {_cell(r.bounds)} "
            f"| {_cell(r.doc)} |"
        )
    return lines


def config_reference() -> str:
    """Markdown: every key of every kind (type, default, bounds, docstring), one table per
    section. docs/config.md holds it."""
    intro = (
        f"Generated from the config dataclasses (metarl/config.py) by `{REGENERATE}`; do "
        "not edit by hand. A config is a YAML file of these keys (a key left out takes its "
        f"default); `kind` picks the table (default `{DEFAULT_KIND}`), `{BASE_KEY}: "
        "other.yaml` extends another file (relative to this one), and `--set key=value` "
        "(dotted keys, YAML values) overrides any key on the command line. `metarl config "
        "show [CONFIG] [--set ...]` prints a resolved config with these docs and marks what "
        "differs from the defaults."
    )
    kinds = ", ".join(f"[{k}](#kind-{k})" for k in CONFIG_KINDS)
    out = ["# Config reference", "", *textwrap.wrap(intro, 100), "", f"Kinds: {kinds}."]
    for kind, cls in CONFIG_KINDS.items():
        out += ["", f"## kind: {kind}", "", _class_doc(cls)]
        fields = list(fields_of(kind))
        top = [f for f in fields if "." not in f.key and not f.section]
        out += ["", *_table(top)]
        for section in (f for f in fields if f.section):
            rows = [
                f
                for f in fields
                if f.key.startswith(section.key + ".")
                and "." not in f.key[len(section.key) + 1 :]
                and not f.section
            ]
            doc = _class_doc(_section_class(kind, section.key))
            out += ["", f"### {section.key}", "", section.doc]
            if doc and doc != section.doc:
                out += ["", doc]
            out += ["", *_table(rows)]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- one config


def _comment(text: str, indent: str) -> list[str]:
    lines = []
    for paragraph in text.split("\n\n"):
        wrapped = textwrap.wrap(paragraph, width=96 - len(indent)) or [""]
        lines += [f"{indent}# {line}".rstrip() for line in wrapped]
    return lines


def describe_config(config: Any) -> str:
    """``config`` as commented YAML: each key under its docstring and a line with its type,
    bounds and default, marked ``# changed`` where the value differs from the default. The
    text loads back (it is the YAML of ``config``)."""
    kind = config.kind
    values = config_to_dict(config)
    fields = list(fields_of(kind))
    changed = [
        f.key for f in fields if not f.section and _lookup(values, f.key) != _plain(f.default)
    ]
    out = [
        *_comment(_class_doc(CONFIG_KINDS[kind]), ""),
        f"# Keys that differ from the defaults of kind '{kind}': "
        + (", ".join(changed) if changed else "none"),
        "# (every kind's keys: `metarl config docs`)",
    ]
    for f in fields:
        indent = "  " * f.key.count(".")
        name = f.key.rsplit(".", 1)[-1]
        out += ["", *_comment(f.doc, indent)]
        if f.section:
            out.append(f"{indent}{name}:")
            continue
        allowed = f"{f.type_name} {f.bounds}".strip()
        out.append(f"{indent}# {allowed}; default: {yaml_value(f.default)}")
        mark = "  # changed" if f.key in changed else ""
        out.append(f"{indent}{name}: {yaml_value(_lookup(values, f.key))}{mark}")
    return "\n".join(out) + "\n"


def _lookup(values: dict[str, Any], key: str) -> Any:
    node: Any = values
    for part in key.split("."):
        node = node[part]
    return node


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
