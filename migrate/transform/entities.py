"""The built-in Customermates fields of each entity: names, emails, amount, relations.

Everything else a record carries goes through declared columns (`mappings/`). Relations are
kept as Pipedrive ids here (`links`) and resolved to Customermates ids at load time, because
the target ids exist only once the referenced records are created. Each relation is set
from one side only (contact→organization, deal→organization/contact/services,
task→contact/organization/deal): Customermates links are symmetric, and a later replace
from the other side would erase them.
"""

from __future__ import annotations

import math
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from migrate.transform import values as v
from migrate.transform.encoders import ByKey, content

Known = Mapping[str, Container[str]]  # entity → ids of records that exist (an IdSet each, in a transform)

LINK_ENTITY = {"organizationIds": "organizations", "contactIds": "contacts", "dealIds": "deals", "serviceIds": "services"}
NO_NAME = "(no name)"


@dataclass
class Core:
    fields: dict[str, Any] = field(default_factory=dict)
    links: dict[str, list[str]] = field(default_factory=dict)
    services: list[list[Any]] = field(default_factory=list)  # [[product source id, quantity]]
    users: list[str] = field(default_factory=list)  # Pipedrive user ids
    values: dict[str, str] = field(default_factory=dict)  # extra column values (key → string)
    issues: list[tuple[str, str, str]] = field(default_factory=list)


def _id(value: Any) -> str | None:
    """One record's id: a number (`values.number_id`) or text, or an object's value or id; None for
    none, and for a list, which names no one record."""
    if isinstance(value, dict):
        value = value.get("value", value.get("id"))
    if value is None or value == "" or isinstance(value, (list, dict)):
        return None
    return v.number_id(value) if isinstance(value, (int, float)) else str(value)


def _link(core: Core, key: str, pipedrive_id: Any, known: Known, what: str) -> None:
    target = _id(pipedrive_id)
    if target is None:
        _unreadable_link(core, pipedrive_id, what)
        return
    entity = LINK_ENTITY[key]
    if target not in known[entity]:
        core.issues.append((what, "link_target_not_migrated", f"{entity[:-1]} {target} is deleted or missing in Pipedrive; link dropped"))
        return
    bucket = core.links.setdefault(key, [])
    if target not in bucket:
        bucket.append(target)


def _unreadable_link(core: Core, pipedrive_id: Any, what: str) -> None:
    """Report a link that names no one record (`_id` gave none) but holds something: a list, an
    object, a boolean, a fraction."""
    inner = pipedrive_id.get("value", pipedrive_id.get("id")) if isinstance(pipedrive_id, dict) else pipedrive_id
    if isinstance(inner, (list, dict)) and content(inner):
        core.issues.append((what, "link_unreadable", f"{pipedrive_id!r} is {_unreadable(inner)}; link dropped"))
    elif isinstance(pipedrive_id, dict) and "value" not in pipedrive_id and "id" not in pipedrive_id and content(pipedrive_id):
        core.issues.append((what, "link_unreadable", f"{pipedrive_id!r} is an object with neither value nor id; link dropped"))
    elif isinstance(inner, (bool, float)) and inner is not False:
        core.issues.append((what, "link_unreadable", f"{pipedrive_id!r} is {'a boolean' if isinstance(inner, bool) else 'a fraction'}, no record's id; link dropped"))


def _unreadable(value: list[Any] | dict[str, Any]) -> str:
    return "a list where one record's id belongs" if isinstance(value, list) else "an object where one record's id belongs"


def _owner(core: Core, record: dict[str, Any], key: str = "owner_id") -> None:
    """The record's owner as its user; each of a list's, a record in Customermates having several users."""
    owner = record.get(key)
    if isinstance(owner, dict) and isinstance(owner.get("value", owner.get("id")), list):
        owner = owner.get("value", owner.get("id"))
    for item in owner if isinstance(owner, list) else [owner]:
        user = _id(item)
        if user and user not in core.users:
            core.users.append(user)


def _emails(record: dict[str, Any]) -> tuple[list[str], list[str]]:
    """A person's (valid, invalid) email addresses, the primary first."""
    given = v.as_list(record.get("emails") or record.get("email"))
    # an item without "value" is kept whole, as text: no address, so it goes with the invalid ones
    emails = [e if isinstance(e, dict) and "value" in e else {"value": v.as_plain_text(e)} for e in given]
    emails = [e for e in emails if e.get("value")]
    emails.sort(key=lambda e: not e.get("primary"))
    valid: list[str] = []
    invalid: list[str] = []
    for item in emails:
        address = v.as_plain_text(item["value"]).strip()
        if v.is_valid_email(address):
            if address.lower() not in {x.lower() for x in valid}:
                valid.append(address)
        else:
            invalid.append(address)
    return valid, invalid


def unnamed_person_name(record: dict[str, Any]) -> str:
    """The name of a person without one: their first valid email's local part, else `NO_NAME`
    (the contact's first name, and how a field that names the person shows them)."""
    valid, _ = _emails(record)
    return valid[0].split("@")[0] if valid else NO_NAME


def contact_core(record: dict[str, Any], known: Known) -> Core:
    core = Core()
    first, last = v.split_name(*(_plain_text(record.get(key)) for key in ("name", "first_name", "last_name")))
    if not first and last:
        first, last = last, ""
    valid, invalid = _emails(record)
    if not first:
        fallback = unnamed_person_name(record)
        first = fallback
        core.issues.append(("name", "name_missing", f"the person has no name; firstName set to {fallback!r}"))
    core.fields = {"firstName": first, "lastName": last, "emails": valid}
    if invalid:
        core.values["other_emails"] = ", ".join(invalid)
        for address in invalid:
            core.issues.append(("emails", "email_invalid", f"{address!r} is not accepted by Customermates (ASCII-only rule); kept in 'Other emails'"))
    _link(core, "organizationIds", record.get("org_id"), known, "org_id")
    _owner(core, record)
    return core


def organization_core(record: dict[str, Any], known: Known) -> Core:
    core = Core()
    name = _plain_text(record.get("name"))
    if not name:
        name = NO_NAME
        core.issues.append(("name", "name_missing", f"the organization has no name; named {NO_NAME!r}"))
    core.fields = {"name": name}
    _owner(core, record)
    return core


MIN_AMOUNT = 0.01


def service_core(record: dict[str, Any], known: Known) -> Core:
    core = Core()
    name = _plain_text(record.get("name"))
    if not name:
        name = NO_NAME
        core.issues.append(("name", "name_missing", f"the product has no name; named {NO_NAME!r}"))
    prices = [p for p in v.as_list(record.get("prices")) if isinstance(p, dict)]
    positive = [amount for p in prices if (amount := v.finite_number(p.get("price"))) is not None and amount > 0]
    if positive:
        amount = positive[0]
    else:
        amount = MIN_AMOUNT
        shown = "; ".join(f"{_shown_price(p.get('price'))} {p.get('currency') or ''}".strip() for p in prices) or "no price"
        # a price that is no number sends the prices verbatim to their 'as entered' column (encoder `prices`)
        kept = "Prices" if all(v.finite_number(p.get("price") or 0) is not None for p in prices) else "Prices (as entered)"
        core.issues.append(
            ("prices", "product_zero_price", f"price is {shown}; Customermates needs an amount > 0, so amount is {MIN_AMOUNT} (prices kept in '{kept}')")
        )
    core.fields = {"name": name, "amount": amount}
    _owner(core, record)
    return core


def _shown_price(value: Any) -> str:
    """A price as the zero-price issue shows it: the number, or what it is and why it is not one."""
    if value in (None, ""):
        return "0"
    if v.finite_number(value) is None:
        return f"{value!r} ({'past what a number holds' if _is_infinite(value) else 'not a number'})"
    return v.decimal_string(value) or "0"


def _is_infinite(value: Any) -> bool:
    try:
        return math.isinf(float(value))
    except OverflowError:
        return True
    except (TypeError, ValueError):
        return False


def deal_core(record: dict[str, Any], known: Known, deal_products: ByKey[list[dict[str, Any]]]) -> Core:
    core = Core()
    core.fields = {"name": _title(record, core, "deal")}
    _link(core, "organizationIds", record.get("org_id"), known, "org_id")
    _link(core, "contactIds", record.get("person_id"), known, "person_id")
    quantities: dict[str, float] = {}
    for row in deal_products.get(str(record.get("id")), []):
        product = _id(row.get("product_id"))
        if product is None:
            _unreadable_link(core, row.get("product_id"), "products")
            continue
        if product not in known["services"]:
            core.issues.append(("products", "link_target_not_migrated", f"product {product} is deleted or missing in Pipedrive; not linked"))
            continue
        if product in quantities:
            core.issues.append(
                ("products", "deal_product_merged", f"product {product} appears on the deal more than once; quantities added up (Customermates links a service once)")
            )
        quantity = row.get("quantity") if row.get("quantity") is not None else 1
        number = v.finite_number(quantity)  # a finite number: a payload holds no infinity
        if number is None or number < 0:  # Customermates takes a quantity of 0 or more
            core.issues.append(
                ("products", "invalid_value_kept_as_text", f"product {product}'s quantity {quantity!r} is no number of 0 or more; linked with quantity 0, the line as written in 'Products (Pipedrive)'")
            )
        quantities[product] = quantities.get(product, 0.0) + max(0.0, number or 0.0)
    core.services = [[product, quantity] for product, quantity in quantities.items()]
    _owner(core, record)
    return core


def lead_core(record: dict[str, Any], known: Known) -> Core:
    core = Core()
    core.fields = {"name": _title(record, core, "lead")}
    _link(core, "organizationIds", record.get("organization_id"), known, "organization_id")
    _link(core, "contactIds", record.get("person_id"), known, "person_id")
    _owner(core, record)
    return core


def task_core(record: dict[str, Any], known: Known, type_names: dict[str, str]) -> Core:
    core = Core()
    subject = _plain_text(record.get("subject"))
    if not subject:
        subject = type_names.get(str(record.get("type")), "") or "(no subject)"
        core.issues.append(("subject", "name_missing", f"the activity has no subject; named {subject!r}"))
    core.fields = {"name": subject}
    people = [record.get("person_id")]
    for participant in v.as_list(record.get("participants")):
        if isinstance(participant, dict) and "person_id" in participant:
            people.append(participant["person_id"])
        elif participant not in (None, "", [], {}):
            core.issues.append(("participants", "link_unreadable", f"{participant!r} is not a participant (an object with person_id); not linked"))
    linked: set[str] = set()
    for person in people:
        if (target := _id(person)) in linked:
            continue  # the primary person is a participant too: linked, or reported, once
        if target is not None:
            linked.add(target)
        _link(core, "contactIds", person, known, "participants")
    _link(core, "organizationIds", record.get("org_id"), known, "org_id")
    _link(core, "dealIds", record.get("deal_id"), known, "deal_id")
    if record.get("lead_id"):
        _link(core, "dealIds", f"lead:{record['lead_id']}", known, "lead_id")
    _owner(core, record)
    return core


def _plain_text(value: Any) -> str:
    """A name or title as text (`values.as_plain_text`), stripped."""
    return v.as_plain_text(value).strip()


def _title(record: dict[str, Any], core: Core, kind: str) -> str:
    title = _plain_text(record.get("title"))
    if not title:
        title = f"(untitled {kind})"
        core.issues.append(("title", "name_missing", f"the {kind} has no title; named {title!r}"))
    return title
