"""Target column specifications and the registry that collects them during a transform."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

COLUMN_TYPES = frozenset(
    {"plain", "date", "dateTime", "dateRange", "dateTimeRange", "currency", "singleSelect", "link", "email", "phone"}
)
PIPEDRIVE_ID = "pipedrive_id"
PIPEDRIVE_ID_LABEL = "Pipedrive ID"


@dataclass
class ColumnSpec:
    """One Customermates custom column the migration needs.

    `key` identifies the column inside the migration (stable across runs); `label` is what
    Customermates shows. A `template` column is never created itself: it stands for a family
    of variants (one per currency, say) created only when a record uses them.
    """

    entity: str
    key: str
    label: str
    type: str
    options: list[str] = field(default_factory=list)
    option_ids: dict[str, str] = field(default_factory=dict)  # Pipedrive option id → its label, of the options that have one
    currency: str | None = None
    allow_multiple: bool = False
    template: bool = False
    always: bool = False  # create even if no record has a value (Pipedrive custom fields, the id column)
    used: bool = False

    def __post_init__(self) -> None:
        if self.type not in COLUMN_TYPES:
            raise ValueError(f"column {self.entity}.{self.key}: unknown type {self.type!r}")

    def add_option(self, label: str, option_id: str | None = None) -> None:
        if label not in self.options:
            self.options.append(label)
        if option_id is not None:
            self.option_ids[option_id] = label

    def to_json(self) -> dict[str, Any]:
        return {
            "entity": self.entity,
            "key": self.key,
            "label": self.label,
            "type": self.type,
            "options": list(self.options),
            "option_ids": dict(self.option_ids),
            "currency": self.currency,
            "allow_multiple": self.allow_multiple,
        }


class ColumnRegistry:
    def __init__(self) -> None:
        self._specs: dict[tuple[str, str], ColumnSpec] = {}

    def declare(self, spec: ColumnSpec) -> ColumnSpec:
        existing = self._specs.get((spec.entity, spec.key))
        if existing is None:
            self._specs[(spec.entity, spec.key)] = spec
            return spec
        if (existing.label, existing.type) != (spec.label, spec.type):
            raise ValueError(
                f"column {spec.entity}.{spec.key} declared twice with different label/type: "
                f"{existing.label}/{existing.type} vs {spec.label}/{spec.type}"
            )
        return existing

    def variant(self, base: ColumnSpec, suffix: str, label_suffix: str, type_: str, **extra: Any) -> ColumnSpec:
        """A column derived from `base`, e.g. `Value (EUR)` from the template `Value`."""
        return self.declare(
            ColumnSpec(entity=base.entity, key=f"{base.key}:{suffix}", label=f"{base.label} ({label_suffix})", type=type_, **extra)
        )

    def mark(self) -> dict[tuple[str, str], tuple[int, bool]]:
        """Where each column stands (options, used), for `changes_since`."""
        return {k: (len(s.options), s.used) for k, s in self._specs.items()}

    def changes_since(self, mark: dict[tuple[str, str], tuple[int, bool]]) -> list[ColumnSpec]:
        """The columns declared, used or given options since `mark`, each with only its new options:
        what `merge` replays into another registry, in the order the options came."""
        changes = []
        for k, spec in self._specs.items():
            options, used = mark.get(k, (0, False))
            if k not in mark or len(spec.options) > options or spec.used > used:
                changes.append(replace(spec, options=spec.options[options:]))
        return changes

    def merge(self, changes: list[ColumnSpec]) -> None:
        """Take in what another registry (a worker's copy of this one) changed (`changes_since`)."""
        for change in changes:
            spec = self.declare(replace(change, options=[]))
            for option in change.options:
                spec.add_option(option)
            spec.used = spec.used or change.used

    def find(self, entity: str, key: str) -> ColumnSpec | None:
        return self._specs.get((entity, key))

    def get(self, entity: str, key: str) -> ColumnSpec:
        return self._specs[(entity, key)]

    def to_create(self) -> list[ColumnSpec]:
        """Columns the target needs: every non-template column that is used or always wanted."""
        return sorted(
            (s for s in self._specs.values() if not s.template and (s.used or s.always)),
            key=lambda s: (s.entity, s.key),
        )
