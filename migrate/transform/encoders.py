"""Named encoders: a Pipedrive value → the string a Customermates column stores.

`mappings/*.yaml` refer to these by name. Each encoder writes through `RecordOut.put`
(possibly into a variant column: one per currency, or an "as entered" fallback) and reports
every value it cannot carry exactly through `RecordOut.issue` — never a silent drop.
"""

from __future__ import annotations

import ipaddress
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from migrate.transform import values as v
from migrate.transform.columns import ColumnRegistry, ColumnSpec

T_co = TypeVar("T_co", covariant=True)

DEAL_STATUS_LABELS = {"open": "Open", "won": "Won", "lost": "Lost", "lead": "Lead"}
DONE_LABELS = ("Open", "Done")


class ByKey(Protocol[T_co]):
    """What a lookup needs of a dict: `get`."""

    def get(self, key: str, default: Any = None, /) -> T_co | None: ...


@dataclass
class Lookups:
    """Reference data an encoder may need, read from staging before the records."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    pipelines: dict[str, str] = field(default_factory=dict)
    stages: dict[str, str] = field(default_factory=dict)  # stage id → "Pipeline / Stage"
    # stage id → its deal_probability, of the stages whose pipeline uses probabilities
    stage_probabilities: dict[str, Any] = field(default_factory=dict)
    activity_types: dict[str, str] = field(default_factory=dict)  # key_string → name
    lead_labels: dict[str, str] = field(default_factory=dict)
    organization_names: ByKey[str] = field(default_factory=dict)  # a NameTable in a transform
    person_names: ByKey[str] = field(default_factory=dict)
    deal_products: ByKey[list[dict[str, Any]]] = field(default_factory=dict)  # the current deals' lines, streamed
    product_names: ByKey[str] = field(default_factory=dict)
    phone_region: str | None = None


@dataclass
class Field:
    """Where a value comes from: `name` is what reports show (the Pipedrive field name)."""

    name: str
    options: dict[str, str] = field(default_factory=dict)  # option id → label
    # option id → label of an option deleted in Pipedrive whose id records may still hold (v1 `options_deleted`)
    deleted_options: dict[str, str] = field(default_factory=dict)


@dataclass
class RecordOut:
    registry: ColumnRegistry
    values: dict[str, str] = field(default_factory=dict)
    issues: list[tuple[str, str, str]] = field(default_factory=list)
    written: int = 0  # values put so far (a value put twice counts twice)

    def put(self, spec: ColumnSpec, value: str | None) -> None:
        if value is None or value == "":
            return
        spec.used = True
        self.values[spec.key] = value
        self.written += 1

    def issue(self, field_name: str, rule: str, detail: str) -> None:
        self.issues.append((field_name, rule, detail))

    def put_as_entered(self, spec: ColumnSpec, text: str) -> ColumnSpec:
        """Put `text` verbatim in '<column> (as entered)', where a value goes that `spec` cannot
        hold, after what is there already (a list's numbers that are no E.164 and its items of
        another shape, say); returns that column, which the issue reporting it names."""
        fallback = self.registry.variant(spec, "as_entered", "as entered", "plain")
        before = self.values.get(fallback.key)
        self.put(fallback, f"{before}, {text}" if before and text else text)
        return fallback


def as_entered(value: Any) -> str:
    """A value as text for '<column> (as entered)': an object's non-empty values, a list's items, comma-joined."""
    if isinstance(value, dict):
        return " ".join(as_entered(v) for v in value.values() if v not in (None, "", [], {}))
    if isinstance(value, list):
        return ", ".join(as_entered(v) for v in value)
    if value is None or isinstance(value, bool):
        return json.dumps(value)  # as JSON writes it, not as Python does ("True")
    return str(value)


def keep_as_entered(value: Any, spec: ColumnSpec, fld: Field, out: RecordOut, reason: str) -> None:
    """Put a value that cannot be read in '<column> (as entered)', reported with why."""
    text = as_entered(value)
    fallback = out.put_as_entered(spec, text)
    out.issue(fld.name, "invalid_value_kept_as_text", f"{text!r} cannot be read ({reason}); kept as text in '{fallback.label}'")


def _beside_readable(items: list[Any], readable: Callable[[Any], Any]) -> tuple[list[Any], list[Any]]:
    """A list's items that `readable` takes, and beside them the others that hold something (an
    empty item, such as a phone without a number, holds nothing): those the encoder keeps as entered,
    reported (`keep_as_entered`), where they went without a word while it wrote the readable ones.
    With none readable there are none: the engine keeps the whole value so (`RecordMaker._encode`)."""
    taken: list[Any] = []
    others: list[Any] = []
    for item in items:
        (taken if readable(item) else others).append(item)
    return taken, [item for item in others if content(item)] if taken else []


def json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "text"


def content(value: Any) -> str:
    """What of a value a column could show: an object's `value` when it has one (the rest is labels
    and flags, as in an empty phone item), else all of it; "" for null, false and empty shapes."""
    if value is None or value is False:
        return ""
    if isinstance(value, dict):
        parts = [value["value"]] if "value" in value else list(value.values())
        return " ".join(text for text in map(content, parts) if text)
    if isinstance(value, list):
        return ", ".join(text for text in map(content, value) if text)
    return str(value).strip()


Encoder = Callable[[Any, dict[str, Any], ColumnSpec, Field, Lookups, RecordOut], None]
ENCODERS: dict[str, Encoder] = {}
# Encoders whose value is a key to what they write (a deal's id to its product lines), not the
# content: writing nothing for it is no sign of a value they could not read.
KEYED: set[Encoder] = set()


def encoder(name: str, *, keyed: bool = False) -> Callable[[Encoder], Encoder]:
    def register(fn: Encoder) -> Encoder:
        ENCODERS[name] = fn
        if keyed:
            KEYED.add(fn)
        return fn

    return register


def _as_text(value: Any) -> str | None:
    """A value as one text; a list raises (the engine keeps its items as entered, reported), where
    it was written as Python shows it ("['a@b.de']")."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "Yes" if value else "No"
    if isinstance(value, (int, float)):
        return v.decimal_string(value)
    if isinstance(value, dict):
        inner = value.get("value", value.get("name"))
        return _as_text(inner) if inner is not None else None
    if isinstance(value, list):
        raise TypeError("a list where the column takes one text")
    text = str(value).strip()
    return text or None


@encoder("text")
def _text(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    out.put(spec, _as_text(value))


@encoder("number")
def _number(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    if value is None or value == "":
        return
    try:
        out.put(spec, v.decimal_string(value))
    except (ValueError, TypeError):
        text = v.as_plain_text(value) or json.dumps(value)  # an object as its JSON; false, [] and {}, which are "" there, too
        out.put(spec, text)
        out.issue(fld.name, "number_kept_as_text", f"{text!r} is not a number; kept as text in '{spec.label}'")


def _flag(value: Any) -> bool:
    """A yes/no value as Pipedrive writes them: a boolean, 0 or 1, or those as text."""
    if isinstance(value, str):
        value = value.strip().lower()
    if value in (True, 1, "1", "true"):
        return True
    if value in (False, 0, "0", "false", ""):
        return False
    raise ValueError("not a yes/no value")


@encoder("yes_no")
def _yes_no(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    if value is not None:
        out.put(spec, "Yes" if _flag(value) else "No")


def _checked(
    out: RecordOut, spec: ColumnSpec, fld: Field, value: Any, convert: Callable[[Any], str | None], entered: str | None = None
) -> None:
    """Write `convert(value)`; a value it refuses goes verbatim (`entered`, by default `as_entered`'s
    text of it) to '<column> (as entered)', reported."""
    if value is None or value == "":
        return
    try:
        out.put(spec, convert(value))
    except (ValueError, TypeError) as exc:
        text = as_entered(value) if entered is None else entered
        fallback = out.put_as_entered(spec, text)
        out.issue(fld.name, "invalid_value_kept_as_text", f"{text!r}: {exc}; kept as text in '{fallback.label}'")


@encoder("date")
def _date(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    _checked(out, spec, fld, value, v.to_date)


@encoder("datetime")
def _datetime(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    _checked(out, spec, fld, value, _exact_utc_datetime)


def _exact_utc_datetime(value: Any) -> str | None:
    return v.to_utc_datetime(value, fraction=True)


@encoder("due")
def _due(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    """An activity's `due_date` and `due_time` in one value; refused, both go to 'as entered'."""
    time = record.get("due_time")
    if time in (None, ""):
        _checked(out, spec, fld, value, v.to_date)
        return
    entered = f"{'' if value is None else value} {time}".strip()
    if value in (None, ""):
        value = entered  # a time without a date: refused below, kept as entered
    _checked(out, spec, fld, value, lambda d: v.combine_date_time(d, time), entered)


@encoder("date_range")
def _date_range(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    """`start,end`; with one side only, the one-day range of it (`values.date_range`), reported."""
    if value is None:
        return
    start, until = (value.get("value"), value.get("until")) if isinstance(value, dict) else (value, None)
    _checked(out, spec, fld, value, lambda _: v.date_range(v.to_date(start), v.to_date(until)))
    sides = [str(side).strip() if side is not None else "" for side in (start, until)]
    if spec.key in out.values and not all(sides):
        missing = "end" if sides[0] else "start"
        out.issue(fld.name, "date_range_one_day", f"{as_entered(value)!r} has no {missing}; written as the one-day range {out.values[spec.key]}")


@encoder("time")
def _time(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    out.put(spec, v.format_time_value(value))


@encoder("time_range")
def _time_range(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    if value:
        out.put(spec, v.format_time_range(value))


@encoder("address")
def _address(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    out.put(spec, v.format_address(value))


def _money(amount: Any, currency: Any, spec: ColumnSpec, fld: Field, out: RecordOut) -> None:
    text = v.decimal_string(amount)
    if text is None:  # no amount: null, or text that is blank
        return
    code = str(currency or "").strip()
    if code.lower() in v.CUSTOMERMATES_CURRENCIES:
        if v.past_decimal_20_4(text):
            raise ValueError(f"{text} {code.upper()} has more than the 16 digits before the point a currency column holds")
        column = out.registry.variant(spec, code.lower(), code.upper(), "currency", currency=code.lower())
        out.put(column, text)
    else:
        column = out.registry.variant(spec, "other_currency", "other currency", "plain")
        out.put(column, f"{text} {code}".strip())
        out.issue(
            fld.name,
            "currency_unsupported",
            f"{text} {code}: Customermates has no {code} currency; kept as text in '{column.label}'" if code
            else f"{text} without a currency, which a currency column needs; kept as text in '{column.label}'",
        )


@encoder("money")
def _money_encoder(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    """`value` is `{value, currency}`: v2 custom monetary fields, and standard fields whose
    mapping names a `currency_from` (the engine pairs them)."""
    if isinstance(value, dict):
        _money(value.get("value"), value.get("currency"), spec, fld, out)
    elif value not in (None, ""):
        _money(value, None, spec, fld, out)


def _option_label(value: Any, fld: Field) -> tuple[str, str | None]:
    """An option value's label, and its id when the field's options lack it: then the label is the
    one Pipedrive keeps for a deleted option (`Field.deleted_options`), else 'Deleted option #<id>'."""
    if not isinstance(value, dict):
        key = _option_key(value)
    elif value.get("id") is not None:
        key = _option_key(value["id"])
    elif value.get("label"):
        key = ""
    else:
        raise ValueError("an object with neither an option id nor a label")
    if key in fld.options:
        return fld.options[key], None
    if key in fld.deleted_options:
        return fld.deleted_options[key], key
    if isinstance(value, dict) and value.get("label"):
        return str(value["label"]), None
    if key in fld.options.values():
        return key, None  # some fields hold the label itself rather than an option id
    if key.lstrip("-").isdigit():
        return f"Deleted option #{key}", key
    return key, key  # text that names no option: carried as it is, reported as an unknown id


def _option_key(value: Any) -> str:
    """An option id or label as text, a float by the integer it is (114.0 is option 114). A boolean,
    a list, an object or a fraction names no option: raises (the engine keeps it as entered,
    reported), where it became an option labelled as Python shows it ("True", "[113, 114]")."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return str(value).strip()
    raise TypeError(f"{json_kind(value) if not isinstance(value, float) else 'a fraction'} where the column takes one option id or label")


def _report_missing_options(out: RecordOut, fld: Field, missing: list[tuple[str, str]]) -> None:
    """One issue per rule for the option ids of one value that the field's options lack (id, label
    carried): those deleted in Pipedrive, carried by the label they had (`option_deleted`), and
    those named nowhere, carried as 'Deleted option #<id>' (`option_unknown`)."""
    deleted = [(key, label) for key, label in dict.fromkeys(missing) if key in fld.deleted_options]
    unknown = [(key, label) for key, label in dict.fromkeys(missing) if key not in fld.deleted_options]
    if unknown:
        ids, labels = _ids_and_labels(unknown)
        verb = "is" if len(unknown) == 1 else "are"
        out.issue(fld.name, "option_unknown", f"{ids} {verb} not among the field's options; carried as {labels}")
    if deleted:
        ids, labels = _ids_and_labels(deleted)
        said = "was deleted in Pipedrive; carried by the label it had" if len(deleted) == 1 else "were deleted in Pipedrive; carried by the labels they had"
        out.issue(fld.name, "option_deleted", f"{ids} {said}, {labels}")


def _ids_and_labels(pairs: list[tuple[str, str]]) -> tuple[str, str]:
    """The ids and the labels carried, for an issue: `option id 9` and `'Deleted option #9'`;
    `option ids 3, 7` and `'Deleted option #3', 'Deleted option #7'`."""
    ids = ", ".join(key for key, _ in pairs)
    return f"option id{'s' if len(pairs) > 1 else ''} {ids}", ", ".join(f"'{label}'" for _, label in pairs)


def _choose(spec: ColumnSpec, out: RecordOut, label: str) -> None:
    """Write a single-select value by its label; the label joins the column's options. A label of
    spaces only is no value: it made an empty option (`{"id": ""}`), which the column then offered."""
    if label.strip():
        spec.add_option(label)
        out.put(spec, label)


@encoder("option")
def _option(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    """One option; a list of one is that option (the shape of a set's value), one of several is none."""
    if value is None or value == "" or value == []:
        return
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    label, missing = _option_label(value, fld)
    if missing is not None:
        _report_missing_options(out, fld, [(missing, label)])
    _choose(spec, out, label)


@encoder("option_labels")
def _option_labels(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    """The labels of a set's options, comma-joined, each once. An item naming no option (a list in the list, a
    boolean), which was written as Python shows it ("[119]"), is kept as entered, reported."""
    if value is None or value == "" or value == []:
        return
    items = value if isinstance(value, list) else [p for p in value.split(",") if p.strip()] if isinstance(value, str) else [value]
    labelled: list[tuple[str, str | None]] = []
    unread: list[Any] = []
    for item in items:
        try:
            labelled.append(_option_label(item, fld))
        except (ValueError, TypeError):
            unread.append(item)
    unread = [item for item in unread if content(item)] if labelled else []  # as `_beside_readable` keeps them
    counts = Counter(label for label, _ in labelled)
    out.put(spec, ", ".join(counts) or None)
    if repeated := [f"{label!r} given {n} times" for label, n in counts.items() if n > 1]:
        out.issue(fld.name, "option_repeated", f"{', '.join(repeated)}; written once")
    if missing := [(key, label) for label, key in labelled if key is not None]:
        _report_missing_options(out, fld, missing)
    if unread:
        keep_as_entered(unread, spec, fld, out, "not an option id or label")


def _ids(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [i for item in value for i in _ids(item)]
    if isinstance(value, dict):
        inner = value.get("value", value.get("id"))
        return _ids(inner)
    text = v.number_id(value) if isinstance(value, (int, float)) else str(value).strip()
    return [text] if text else []


def user_label(user: dict[str, Any] | None, user_id: str) -> str:
    if not user:
        return f"Pipedrive user #{user_id}"
    name, email = (user.get("name") or "").strip(), (user.get("email") or "").strip()
    return f"{name} <{email}>" if name and email else name or email or f"Pipedrive user #{user_id}"


def _leaves(value: Any) -> list[Any]:
    """A list's items, those of a list in it too (`[1, [2]]` holds 1 and 2); anything else alone."""
    return [leaf for item in value for leaf in _leaves(item)] if isinstance(value, list) else [value]


def _read_ids(value: Any, spec: ColumnSpec, fld: Field, out: RecordOut) -> list[str]:
    """The ids a value names (`_ids`); an item of a list beside them that names none (an object with
    neither value nor id: `{"name": "X"}`) is kept as entered, reported (`_beside_readable`), as in a
    list wrapped in an object (`{"value": [1, {"name": "X"}]}`)."""
    if isinstance(value, dict) and isinstance(inner := value.get("value", value.get("id")), list):
        value = inner
    if not isinstance(value, list):
        return _ids(value)
    readable, unread = _beside_readable(_leaves(value), _ids)
    if unread:
        keep_as_entered(unread, spec, fld, out, "not an id or an object with one")
    return [i for item in readable for i in _ids(item)]


def _names(ids: list[str], names: ByKey[str], unknown: str) -> str | None:
    """Referenced ids as their readable names, comma-joined; `unknown` formats a missing one."""
    return ", ".join(names.get(i) or unknown.format(i) for i in ids) or None


_RECORD_ID = re.compile(r"[0-9]+", re.ASCII)


def _record_ids(value: Any, spec: ColumnSpec, fld: Field, out: RecordOut) -> list[str]:
    """The record ids a value names (`_read_ids`); text that is no id ("Hans", "-5"), which was
    written as if it were one ("Pipedrive person #Hans"), is kept as entered, reported."""
    ids = _read_ids(value, spec, fld, out)
    if others := [i for i in ids if not _RECORD_ID.fullmatch(i)]:
        keep_as_entered(others, spec, fld, out, "not a record id")
    return [i for i in ids if _RECORD_ID.fullmatch(i)]


def _referenced(ids: list[str], name_of: Callable[[str], str | None], kind: str, fld: Field, out: RecordOut) -> str | None:
    """Referenced records by their readable names, comma-joined. An id naming no record is written
    'Pipedrive <kind> #<id>', which keeps the id, and reported, where it went without a word."""
    shown, missing = [], []
    for i in ids:
        name = name_of(i)
        shown.append(name or f"Pipedrive {kind} #{i}")
        if name is None:
            missing.append(i)
    if missing:
        several = len(missing) > 1
        out.issue(
            fld.name, "link_target_not_migrated",
            f"{kind}{'s' if several else ''} {', '.join(missing)} {'are' if several else 'is'} missing in Pipedrive; "
            f"carried as {', '.join(repr(f'Pipedrive {kind} #{i}') for i in missing)}",
        )
    return ", ".join(shown) or None


@encoder("user")
def _user(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    def name_of(i: str) -> str | None:
        user = lk.users.get(i)
        return None if user is None else user_label(user, i)

    out.put(spec, _referenced(_record_ids(value, spec, fld, out), name_of, "user", fld, out))


@encoder("organization")
def _organization(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    out.put(spec, _referenced(_record_ids(value, spec, fld, out), lk.organization_names.get, "organization", fld, out))


@encoder("person")
def _person(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    out.put(spec, _referenced(_record_ids(value, spec, fld, out), lk.person_names.get, "person", fld, out))


def _phone_values(raw_values: list[str], spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    good: list[str] = []
    bad: list[str] = []
    for raw in raw_values:
        number = v.normalise_phone(raw, lk.phone_region)
        if number:
            if number not in good:
                good.append(number)
        else:
            bad.append(raw)
    if good and not spec.allow_multiple and len(good) > 1:
        bad.extend(good[1:])
        good = good[:1]
    out.put(spec, ",".join(good) or None)
    if bad:
        fallback = out.put_as_entered(spec, ", ".join(bad))
        for raw in bad:
            out.issue(fld.name, "phone_not_e164", f"{raw!r} cannot be normalised to E.164; kept as text in '{fallback.label}'")


@encoder("phones")
def _phones(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    """`[{value, primary, label}]`, the primary number first; a number given bare (text or an
    integer) is read as one too, and an item of another shape goes to '<column> (as entered)', reported."""
    items = value if isinstance(value, list) else []
    ordered = sorted(items, key=lambda i: not (isinstance(i, dict) and i.get("primary")))
    readable, unread = _beside_readable(ordered, _phone_number)
    _phone_values([_phone_number(item) for item in readable], spec, fld, lk, out)
    if unread:
        keep_as_entered(unread, spec, fld, out, "not a phone number or an item with one")


def _phone_number(item: Any) -> str:
    """A phone item's number: its `value`, or the item itself given bare (text or an integer); "" for none."""
    number = item.get("value") if isinstance(item, dict) else item
    return str(number).strip() if isinstance(number, str | int) and not isinstance(number, bool) else ""


@encoder("phone")
def _phone(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    """A number, or a list of them as `phones` reads it; several only where the column takes several,
    else they are kept as entered, reported, where the list was kept as Python shows it."""
    if isinstance(value, list):
        if len(value) > 1 and not spec.allow_multiple:
            raise ValueError(f"{len(value)} numbers where the column takes one")
        _phones(value, record, spec, fld, lk, out)
    elif number := _phone_number(value):
        _phone_values([number], spec, fld, lk, out)


@encoder("contact_items")
def _contact_items(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    """`[{value, primary, label}]` as "value (label), ..."; an item of another shape beside them
    goes to '<column> (as entered)', reported (an item without a value is an empty one)."""
    if isinstance(value, list):
        items, unread = _beside_readable(value, lambda i: isinstance(i, dict) and i.get("value"))
        parts = [f"{i['value']} ({i['label']})" if i.get("label") else str(i["value"]) for i in items]
        out.put(spec, ", ".join(dict.fromkeys(parts)) or None)  # an item twice (differing in its primary flag, say) once
        if unread:
            keep_as_entered(unread, spec, fld, out, "not an item with a value")


@encoder("link")
def _link(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    text = _as_text(value)
    if not text:
        return
    # a scheme, in any case (the server's URL parser lowercases it), makes a URL of any host;
    # without one, text whose host name has no dot (`n/a`, `none`, `https:/www.acme.de`) is taken for no web address
    schemed = "://" in text or text[:7].lower().startswith(("mailto:", "tel:"))
    url = text if schemed else f"https://{text}"
    if url[:8].lower().startswith(_LINK_SCHEMES) and " " not in url and _parses(url, dotted=not schemed):
        out.put(spec, url)
        return
    fallback = out.put_as_entered(spec, text)
    out.issue(fld.name, "link_invalid", f"{text!r} is not a usable URL; kept as text in '{fallback.label}'")


_LINK_SCHEMES = ("https://", "http://", "mailto:", "tel:")  # those Customermates takes (contract §6)
# What a URL parser (Customermates checks with `new URL()`) refuses in a host name.
_FORBIDDEN_HOST = frozenset(" #%/:<>?@[\\]^|")
# What the parser's IDNA step (UTS #46) makes a label separator: ideographic and fullwidth full stops
_DOTS = str.maketrans(dict.fromkeys("\u3002\uff0e\uff61", "."))


def _parses(url: str, *, dotted: bool = False) -> bool:
    """Whether the server's URL check will take `url`: a host without forbidden characters, one
    ending in a number a valid IPv4 address, a numeric port; with `dotted`, a host name with a dot."""
    if url[:7].lower().startswith(("mailto:", "tel:")):
        return True
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError unless the port is a number in range
    except ValueError:
        return False
    host = parts.hostname or ""
    if dotted and "." not in host:
        return False
    if parts.netloc.rpartition("@")[2].startswith("["):  # an IPv6 address: only a valid one parses
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    # as the parser's IDNA step maps it (a no-break or ideographic space to a space, which it refuses)
    host = unicodedata.normalize("NFKC", host).translate(_DOTS)
    if not host or any(ch in _FORBIDDEN_HOST or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in host):
        return False
    labels = host.split(".")
    if labels[-1] == "" and len(labels) > 1:
        labels.pop()  # one trailing dot (a fully qualified name)
    return not _ends_in_a_number(labels[-1]) or _ipv4(labels)


def _ends_in_a_number(label: str) -> bool:
    """WHATWG URL's "ends in a number" of a host's last label: decimal digits, or 0x and hex digits.
    Then the parser reads the host as an IPv4 address, or refuses it."""
    return re.fullmatch(r"[0-9]+|0[xX][0-9a-fA-F]*", label) is not None


def _ipv4(labels: list[str]) -> bool:
    """Whether WHATWG URL's IPv4 parser takes the host: at most four numbers (decimal, 0x hex, 0
    octal), each but the last below 256, the last filling the bytes left (`10.1` is 10.0.0.1)."""
    numbers = [_ipv4_number(label) for label in labels]
    if len(numbers) > 4 or None in numbers:
        return False
    *first, last = numbers
    return all(n < 256 for n in first) and last < 256 ** (5 - len(numbers))


_RADIX_DIGITS = {10: frozenset("0123456789"), 16: frozenset("0123456789abcdefABCDEF"), 8: frozenset("01234567")}


def _ipv4_number(label: str) -> int | None:
    """A label as WHATWG URL's IPv4 number parser reads it (`0x1F` hex, `017` octal); None: not a number."""
    digits, radix = label, 10
    if label[:2] in ("0x", "0X"):
        digits, radix = label[2:], 16
    elif len(label) > 1 and label[0] == "0":
        digits, radix = label[1:], 8
    if label == "" or not set(digits) <= _RADIX_DIGITS[radix]:
        return None
    return int(digits, radix) if digits else 0


@encoder("labels")
def _labels(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    names, missing = [], []
    for key in _read_ids(value, spec, fld, out):
        name = fld.options.get(key) or fld.deleted_options.get(key)
        names.append(name or f"Label #{key}")
        if key not in fld.options:
            missing.append((key, names[-1]))
    out.put(spec, ", ".join(names) or None)
    if missing:
        _report_missing_options(out, fld, missing)


@encoder("lead_labels")
def _lead_labels(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    """The labels' names; one naming no lead label is carried as 'Label <id>', reported as a deal's label is."""
    ids = _read_ids(value, spec, fld, out)
    out.put(spec, _names(ids, lk.lead_labels, "Label {}"))
    if missing := [(i, f"Label {i}") for i in ids if not lk.lead_labels.get(i)]:
        _report_missing_options(out, fld, missing)


def _one_id(value: Any, spec: ColumnSpec, fld: Field, out: RecordOut) -> list[str]:
    """The id of a single select's value, in a list (none: empty); several, which one option cannot
    hold, raise (the engine keeps them as entered, reported), where all but the last went unsaid.
    An item beside the id that names none is kept as entered, reported (`_read_ids`)."""
    ids = _ids(value)
    if len(ids) > 1:
        raise ValueError(f"{len(ids)} ids where the column takes one")
    return _read_ids(value, spec, fld, out)


def _choose_named(ids: list[str], names: dict[str, str], unknown: str, spec: ColumnSpec, fld: Field, out: RecordOut) -> None:
    """Write the option an id names (a pipeline, a stage). An id naming none is still written, its id
    in the label (`unknown`), and reported as an option id the field lacks: the deal keeps a value,
    grouped with the others of that id, and the option can be renamed once in Customermates; kept
    as entered, the deal would have none."""
    for i in ids:
        label = names.get(i) or unknown.format(i)
        if i not in names:
            _report_missing_options(out, fld, [(i, label)])
        _choose(spec, out, label)


@encoder("pipeline")
def _pipeline(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    _choose_named(_one_id(value, spec, fld, out), lk.pipelines, "Pipeline #{}", spec, fld, out)


@encoder("stage")
def _stage(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    _choose_named(_one_id(value, spec, fld, out), lk.stages, "Stage #{}", spec, fld, out)


@encoder("probability")
def _probability(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    """A deal's own probability, or without one its stage's, which Pipedrive applies then in a
    pipeline that uses probabilities (contract §7.4); where the column stayed empty."""
    if value is None and len(stage := _ids(record.get("stage_id"))) == 1:
        value = lk.stage_probabilities.get(stage[0])
    _number(value, record, spec, fld, lk, out)


def _key(value: Any) -> str:
    """A status or type key (text or a number) stripped; a list or an object, which names no one
    option, raises (the engine keeps it as entered, reported), where it became an option's label."""
    if isinstance(value, (list, dict, bool)):
        raise TypeError(f"{json_kind(value)} where the column takes one key")
    return str(value).strip() if value is not None else ""


@encoder("deal_status")
def _deal_status(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    if key := _key(value):
        _choose(spec, out, DEAL_STATUS_LABELS.get(key, key.capitalize()))


@encoder("lead_status", keyed=True)
def _lead_status(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    out.put(spec, DEAL_STATUS_LABELS["lead"])


@encoder("activity_type")
def _activity_type(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    if key := _key(value):
        _choose(spec, out, lk.activity_types.get(key) or key)


@encoder("done")
def _done(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    out.put(spec, DONE_LABELS[1] if value is not None and _flag(value) else DONE_LABELS[0])


@encoder("attendees")
def _attendees(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    if isinstance(value, list):
        attendees, unread = _beside_readable(value, _attendee)
        out.put(spec, ", ".join(map(_attendee, attendees)) or None)
        if unread:
            keep_as_entered(unread, spec, fld, out, "not an attendee, an object with a name or an email")


def _attendee(item: Any) -> str:
    """An attendee as "Name <email> (organizer, declined)": either of name and email alone, with
    whether they organize it and their answer (contract §7.7) when Pipedrive gives them; "" for
    one with neither name nor email, or an item that is no object."""
    if not isinstance(item, dict):
        return ""
    name, email = item.get("name") or "", item.get("email") or item.get("email_address") or ""
    who = f"{name} <{email}>" if name and email else str(name or email)
    if not who:
        return ""
    status = v.as_plain_text(item.get("status")).strip()
    about = [*_organizer(item.get("is_organizer")), *([status] if status else [])]
    return f"{who} ({', '.join(about)})" if about else who


def _organizer(flag: Any) -> list[str]:
    """["organizer"] for a yes, nothing for a no or none; a flag that is neither is kept as written."""
    if flag is None:
        return []
    try:
        return ["organizer"] if _flag(flag) else []
    except ValueError:
        return [f"organizer: {v.as_plain_text(flag)}"]


@encoder("prices")
def _prices(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    if isinstance(value, list):
        if any(isinstance(p, dict) and "price" not in p for p in value):
            raise ValueError("a price without 'price'")
        prices, unread = _beside_readable(value, lambda p: isinstance(p, dict))
        try:
            parts = [f"{v.decimal_string(p.get('price') or 0)} {p.get('currency') or ''}".strip() + _price_terms(p) for p in prices]
        except ValueError as exc:  # as entered, without the ids Pipedrive gives each price (its own, its product's)
            keep_as_entered([{k: x for k, x in p.items() if k not in ("id", "product_id")} for p in prices], spec, fld, out, str(exc))
        else:
            out.put(spec, "; ".join(parts) or None)
        if unread:
            keep_as_entered(unread, spec, fld, out, "not a price, an object with one")


def _amount_text(amount: Any) -> str:
    """A number in a line of text (a price's cost, a deal product line's quantity, price, discount or
    tax): a plain decimal when it is a number, else as given, so one line's `2,5` loses no line."""
    return v.decimal_string(amount) if v.finite_number(amount) is not None else v.as_plain_text(amount)


def _price_terms(price: dict[str, Any]) -> str:
    """A product price's cost, direct cost and note: " (cost 8, Listenpreis)"; "" when none."""
    terms = [
        f"{name} {_amount_text(amount)}"
        for name, amount in (("cost", price.get("cost")), ("direct cost", price.get("direct_cost")))
        if amount not in (None, "", 0)
    ]
    if note := " ".join(v.as_plain_text(price.get("notes")).split()):
        terms.append(note)
    return f" ({', '.join(terms)})" if terms else ""


@encoder("deal_products", keyed=True)
def _deal_products(value: Any, record: dict, spec: ColumnSpec, fld: Field, lk: Lookups, out: RecordOut) -> None:
    rows = lk.deal_products.get(str(value), [])
    parts = []
    for row in rows:
        name = row.get("name") or lk.product_names.get(str(row.get("product_id")), f"product #{row.get('product_id')}")
        text = f"{_amount_text(row.get('quantity') or 0)} × {name} @ {_amount_text(row.get('item_price') or 0)} {row.get('currency') or ''}".rstrip()
        if row.get("discount"):
            unit = "%" if row.get("discount_type") == "percentage" else f" {row.get('currency') or ''}".rstrip()
            text += f" (discount {_amount_text(row['discount'])}{unit})"
        for terms in (_line_tax(row), _line_billing(row)):
            if terms:
                text += f" ({terms})"
        if row.get("is_enabled") is False:
            text += " (disabled)"
        if comment := " ".join(v.as_plain_text(row.get("comments")).split()):
            text += f" (comment: {comment})"
        parts.append(text)
    out.put(spec, "; ".join(parts) or None)


def _line_tax(row: dict[str, Any]) -> str:
    """A deal product line's tax: "tax 19% inclusive"; "tax 19% not applied" for the method `none`
    (contract §7.5: `exclusive`|`inclusive`|`none`), which a line taxed would be read as; "" for none."""
    tax = row.get("tax")
    if tax in (None, "", 0):
        return ""
    method = v.as_plain_text(row.get("tax_method")).strip()
    return f"tax {_amount_text(tax)}%" + (f" {TAX_METHODS.get(method, method)}" if method else "")


TAX_METHODS = {"none": "not applied"}  # how a line's tax method reads; the others by their name


def _line_billing(row: dict[str, Any]) -> str:
    """A subscription line's billing: "monthly, 12 cycles, from 2024-03-01"; "" for a one-time line."""
    frequency = v.as_plain_text(row.get("billing_frequency")).strip()
    if not frequency or frequency == "one-time":
        return ""
    cycles, start = row.get("billing_frequency_cycles"), v.as_plain_text(row.get("billing_start_date")).strip()
    return ", ".join([frequency, *([f"{v.as_plain_text(cycles)} cycles"] if cycles not in (None, "", 0) else []), *([f"from {start}"] if start else [])])
