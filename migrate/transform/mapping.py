"""Loads the declared mappings (`mappings/columns.yaml`, `mappings/field_types.yaml`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from migrate.errors import ConfigError
from migrate.transform.columns import COLUMN_TYPES
from migrate.transform.encoders import ENCODERS

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "mappings"


@dataclass(frozen=True)
class ColumnDecl:
    key: str
    label: str
    type: str
    source_field: str
    encode: str
    options_from: str | None = None
    currency_from: str | None = None
    allow_multiple: bool = False
    field: str | None = None  # field metadata whose options label the values (label_ids)
    also_from: tuple[str, ...] = ()  # other names the field goes by (`from: [im, ims]`): their values are read with its own


@dataclass(frozen=True)
class SourceMapping:
    collection: str
    entity: str
    columns: tuple[ColumnDecl, ...]


@dataclass(frozen=True)
class FieldTypeRule:
    type: str
    encode: str


@dataclass(frozen=True)
class Mappings:
    sources: dict[str, SourceMapping]
    field_types: dict[str, FieldTypeRule]
    coverage: dict[str, dict[str, str]]  # where non-column fields go, or why they are not migrated


def load_mappings(directory: Path | None = None) -> Mappings:
    directory = directory or DEFAULT_DIR
    columns = _read(directory / "columns.yaml")
    types = _read(directory / "field_types.yaml")
    sources: dict[str, SourceMapping] = {}
    for collection, body in columns.items():
        where = f"{directory / 'columns.yaml'}: {collection}"
        if not isinstance(body, dict) or "entity" not in body:
            raise ConfigError(f"{where}: needs 'entity' and 'columns'")
        decls = []
        for raw in body.get("columns") or []:
            try:
                names = raw["from"] if isinstance(raw["from"], list) else [raw["from"]]
                if not names:
                    raise ConfigError(f"{where}: column {raw['key']!r} reads no field ('from' is an empty list)")
                decl = ColumnDecl(
                    key=raw["key"],
                    label=raw["label"],
                    type=raw["type"],
                    source_field=names[0],
                    encode=raw["encode"],
                    options_from=raw.get("options_from"),
                    currency_from=raw.get("currency_from"),
                    allow_multiple=bool(raw.get("allow_multiple", False)),
                    field=raw.get("field"),
                    also_from=tuple(names[1:]),
                )
            except (KeyError, TypeError) as exc:
                raise ConfigError(f"{where}: column {raw!r} lacks {exc}") from None
            _check(decl.type, decl.encode, f"{where}.{decl.key}")
            decls.append(decl)
        sources[collection] = SourceMapping(collection, body["entity"], tuple(decls))
    field_types = {}
    for name, rule in types.items():
        _check(rule.get("type"), rule.get("encode"), f"{directory / 'field_types.yaml'}: {name}")
        field_types[name] = FieldTypeRule(rule["type"], rule["encode"])
    coverage_file = directory / "coverage.yaml"
    coverage = _read(coverage_file) if coverage_file.exists() else _read(DEFAULT_DIR / "coverage.yaml")
    return Mappings(sources, field_types, coverage)


# libyaml's parser when PyYAML has it: the three mapping files in 11 ms, where the pure-Python
# one takes 110 (every command reads them). A file libyaml refuses is read again by the pure one,
# whose message quotes the line at fault.
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"mapping file not found: {path}") from None
    try:
        data = yaml.load(text, Loader=FAST_LOADER)
    except yaml.YAMLError:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"mapping file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"mapping file {path} must hold a mapping at the top level")
    return data


def _check(column_type: Any, encode: Any, where: str) -> None:
    if column_type not in COLUMN_TYPES:
        raise ConfigError(f"{where}: unknown column type {column_type!r} (one of {', '.join(sorted(COLUMN_TYPES))})")
    if encode not in ENCODERS:
        raise ConfigError(f"{where}: unknown encoder {encode!r} (one of {', '.join(sorted(ENCODERS))})")
