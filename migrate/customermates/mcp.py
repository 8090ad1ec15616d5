"""A small JSON-RPC client for Customermates' stateless streamable-HTTP MCP endpoint (``POST /api/v1/mcp``).

Used only for what REST cannot do: managing custom columns (contract §6, §7). Not the ``mcp`` SDK: one POST per
call, the answer is an SSE body (``event: message`` / ``data: {…}``) whose JSON-RPC message carries the result.

* Tool failures come back inside ``result`` with ``isError: true`` → :class:`McpToolError` (``.text`` is the server's
  text). A wrong or missing key shows up that way too → :class:`McpAuthenticationError`, which is also an
  :class:`~migrate.customermates.client.AuthenticationError`.
* JSON-RPC ``error`` objects and HTTP 4xx (406, 415, 400, 405) → :class:`CustomermatesError`.
* A timeout is always set: the real server never answers a malformed body, it just hangs.
* Calls to tools that change data are never retried; an unanswered one raises ``UncertainWriteError``.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from typing import Any

import httpx
import structlog

from migrate.customermates.client import (
    USER_AGENT,
    AuthenticationError,
    CustomermatesError,
    HttpSession,
    PermissionDeniedError,
    UncertainWriteError,
    _describe_body,
    _dumps,
    _make_http,
    _normalize_base_url,
    _Scrubber,
)

__all__ = [
    "PROTOCOL_VERSION",
    "COLUMN_TYPES",
    "McpToolError",
    "McpAuthenticationError",
    "McpClient",
    "parse_sse",
    "parse_toon_fields",
]

log = structlog.get_logger(__name__)

PROTOCOL_VERSION = "2025-06-18"

COLUMN_TYPES: dict[str, str] = {
    "plain": "create_plain_custom_column",
    "date": "create_date_custom_column",
    "dateTime": "create_datetime_custom_column",
    "dateRange": "create_date_range_custom_column",
    "dateTimeRange": "create_datetime_range_custom_column",
    "currency": "create_currency_custom_column",
    "singleSelect": "create_single_select_custom_column",
    "link": "create_link_custom_column",
    "email": "create_email_custom_column",
    "phone": "create_phone_custom_column",
}
"""Custom column type → the MCP tool that creates it."""

ENTITY_TYPES = ("contact", "organization", "deal", "service", "task")
_DATE_TYPES = frozenset({"date", "dateTime", "dateRange", "dateTimeRange"})
_CHANNEL_TYPES = frozenset({"link", "email", "phone"})
_READ_ONLY_PREFIXES = ("get_", "list_", "filter_", "count_", "search_")

_AUTH_TEXTS = {
    "Error: Invalid API key.": "Customermates rejected the API key",
    "Error: Not authenticated": "Customermates rejected the request: no API key was sent",
}


class McpToolError(CustomermatesError):
    """A ``tools/call`` answered with ``isError: true``. ``text`` is the server's text, unchanged."""

    def __init__(self, message: str, *, text: str, tool: str) -> None:
        super().__init__(message, status=200, body=text)
        self.text = text
        self.tool = tool


class McpAuthenticationError(McpToolError, AuthenticationError):
    """The tool refused the key (``Error: Invalid API key.``) or got none (``Error: Not authenticated``)."""


# --------------------------------------------------------------------------------------------------------------------
# Parsing helpers
# --------------------------------------------------------------------------------------------------------------------


def parse_sse(body: str) -> list[tuple[str, str]]:
    """Split a ``text/event-stream`` body into ``(event, data)`` pairs.

    Follows the SSE rules that matter here: events end at a blank line, several ``data:`` lines are joined with
    ``\\n``, one space after the colon is dropped, comment lines (``:``) and ``id:``/``retry:`` are ignored, the
    event type defaults to ``message``, and CRLF/CR line ends are accepted.
    """
    events: list[tuple[str, str]] = []
    event_type = ""
    data: list[str] = []
    lines = body.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for line in lines + [""]:
        if line == "":
            if data:
                events.append((event_type or "message", "\n".join(data)))
            event_type, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "event":
            event_type = value
        elif field == "data":
            data.append(value)
    return events


_TOON_LINE = re.compile(r"^(?P<key>[^\s:][^:]*?):(?:\s(?P<value>.*))?$")


def parse_toon_fields(text: str) -> dict[str, str]:
    """The top-level ``key: value`` lines of TOON text for a flat object.

    Quoted values (``"Custom field \\"X\\" created"``) are JSON strings and come back unquoted. Indented lines (nested
    objects, table rows) are skipped; a key whose value is a nested block maps to ``""``.
    """
    fields: dict[str, str] = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line or line[0].isspace():
            continue
        match = _TOON_LINE.match(line)
        if not match:
            continue
        value = (match.group("value") or "").strip()
        if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
            try:
                decoded = json.loads(value)
            except ValueError:
                decoded = value[1:-1]
            value = decoded if isinstance(decoded, str) else value
        fields[match.group("key").strip()] = value
    return fields


def _is_mutating(tool: str) -> bool:
    return not tool.startswith(_READ_ONLY_PREFIXES)


# --------------------------------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------------------------------


class McpClient(HttpSession):
    """JSON-RPC over ``POST <base_url>/api/v1/mcp`` (stateless: no session, no ``initialize`` needed)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        verify: bool | str = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._base_url = _normalize_base_url(base_url)
        self._url = self._base_url + "/api/v1/mcp"
        self._scrub = _Scrubber(api_key or "")
        self._ids = itertools.count(1)
        self._ids_lock = threading.Lock()
        headers = {
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": PROTOCOL_VERSION,
            "user-agent": USER_AGENT,
        }
        if api_key:
            headers["x-api-key"] = api_key
        self._http = _make_http(timeout=timeout, verify=verify, transport=transport, headers=headers)

    # -- generic --------------------------------------------------------------------------------------------------

    def rpc(self, method: str, params: dict | None = None) -> Any:
        """Send one JSON-RPC request and return its ``result`` (raises on a JSON-RPC ``error``)."""
        return self._rpc(method, params if params is not None else {}, what=method, mutating=False)

    def list_tools(self) -> list[dict]:
        result = self.rpc("tools/list")
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(tools, list):
            raise CustomermatesError("Unexpected answer to MCP tools/list: no 'tools' list")
        return tools

    def call_tool(self, name: str, arguments: dict) -> str:
        """Call one tool and return its text content (TOON or a sentence). ``isError`` raises McpToolError."""
        result = self._rpc(
            "tools/call",
            {"name": name, "arguments": arguments},
            what=f"MCP tool {name}",
            mutating=_is_mutating(name),
        )
        if not isinstance(result, dict):
            raise CustomermatesError(f"Unexpected answer to MCP tool {name}: result is not an object")
        text = "\n".join(
            str(part.get("text", ""))
            for part in result.get("content") or []
            if isinstance(part, dict) and part.get("type") == "text"
        )
        if result.get("isError"):
            text = self._scrub(text)
            stripped = text.strip()
            if stripped in _AUTH_TEXTS:
                raise McpAuthenticationError(
                    f"{_AUTH_TEXTS[stripped]} (MCP tool {name} answered {stripped!r})", text=text, tool=name
                )
            raise McpToolError(f"MCP tool {name} failed: {text}", text=text, tool=name)
        return text

    # -- custom columns -------------------------------------------------------------------------------------------

    def create_custom_column(
        self,
        entity_type: str,
        label: str,
        column_type: str,
        *,
        options: list[dict] | None = None,
        currency: str | None = None,
        allow_multiple: bool | None = None,
        color: str = "default",
        display_format: str | None = None,
    ) -> str:
        """Create a custom column and return its id.

        ``entity_type`` is singular (contact, organization, deal, service, task); ``column_type`` one of
        :data:`COLUMN_TYPES`. Single-select ``options`` are dicts with ``label`` and optionally ``color`` (default
        ``"default"``) and ``index`` (default: position); every option is sent with ``isDefault: false`` so that the
        server does not write a default value into existing records. The option ids are not returned: read them back
        with ``GET /v1/<e>/configuration``. Labels are not unique: creating twice makes two columns.
        """
        if entity_type not in ENTITY_TYPES:
            raise ValueError(f"unknown entity type {entity_type!r}; expected one of {', '.join(ENTITY_TYPES)}")
        if column_type not in COLUMN_TYPES:
            raise ValueError(f"unknown column type {column_type!r}; expected one of {', '.join(COLUMN_TYPES)}")
        if not isinstance(label, str) or not label:
            raise ValueError("a custom column needs a non-empty label")
        arguments: dict[str, Any] = {"entityType": entity_type, "label": label}
        if column_type in _DATE_TYPES:
            if display_format is not None:
                arguments["displayFormat"] = display_format
        elif display_format is not None:
            raise ValueError(f"display_format applies to date columns only, not {column_type!r}")
        if column_type == "currency":
            if not currency:
                raise ValueError("a currency column needs a currency code (e.g. 'eur')")
            arguments["currency"] = currency.lower()
        if column_type == "singleSelect":
            if options is None:
                raise ValueError("a singleSelect column needs options")
            arguments["options"] = _select_options(options, keep_values=False)
        elif options is not None:
            raise ValueError(f"options apply to singleSelect columns only, not {column_type!r}")
        if column_type in _CHANNEL_TYPES:
            arguments["color"] = color
            arguments["allowMultiple"] = bool(allow_multiple)
        text = self.call_tool(COLUMN_TYPES[column_type], arguments)
        column_id = parse_toon_fields(text).get("id")
        if not column_id:
            raise CustomermatesError(
                f"MCP tool {COLUMN_TYPES[column_type]} did not return a column id: {text[:200]!r}"
            )
        log.info("customermates.custom_column_created", entity_type=entity_type, label=label, type=column_type)
        return column_id

    def update_single_select_options(self, column_id: str, label: str, options: list[dict]) -> None:
        """Replace a single-select column's options. Keep each existing option's ``value`` uuid in its dict, or the
        records that use it lose their value; options without ``value`` are created, never as the default. An
        existing option keeps its ``isDefault`` (a user may have chosen it in Customermates)."""
        arguments = {"id": column_id, "label": label, "options": _select_options(options, keep_values=True)}
        self.call_tool("update_single_select_custom_column", arguments)

    def rename_custom_column(self, column: dict, label: str) -> None:
        """Give an existing column (a configuration entry) a new label, keeping everything else:
        its options with their uuids, currency, colour, multiplicity, display format."""
        column_type = column["type"]
        if column_type not in COLUMN_TYPES:
            raise ValueError(f"unknown column type {column_type!r}")
        options = column.get("options") or {}
        arguments: dict[str, Any] = {"id": column["id"], "label": label}
        if column_type == "currency":
            arguments["currency"] = options["currency"]
        elif column_type == "singleSelect":
            arguments["options"] = _select_options(options.get("options") or [], keep_values=True)
        elif column_type in _CHANNEL_TYPES:
            arguments["color"] = options.get("color") or "default"
            arguments["allowMultiple"] = bool(options.get("allowMultiple"))
        elif column_type in _DATE_TYPES and options.get("displayFormat"):
            arguments["displayFormat"] = options["displayFormat"]
        self.call_tool(COLUMN_TYPES[column_type].replace("create_", "update_", 1), arguments)

    def active_webhooks(self) -> int:
        """How many enabled webhooks the company has (MCP `list_webhooks`, TOON text)."""
        return count_enabled_webhooks(self.call_tool("list_webhooks", {}))

    def delete_custom_column(self, column_id: str) -> None:
        """Delete a custom column and every value stored in it (irreversible)."""
        self.call_tool("delete_custom_column", {"id": column_id})

    # -- plumbing -------------------------------------------------------------------------------------------------

    def _next_id(self) -> int:
        with self._ids_lock:
            return next(self._ids)

    def _rpc(self, method: str, params: dict, *, what: str, mutating: bool) -> Any:
        request_id = self._next_id()
        content = _dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        try:
            response = self._http.post(self._url, content=content)
        except httpx.RequestError as exc:
            detail = f"{type(exc).__name__} ({self._scrub(str(exc)) or 'no detail'})"
            if mutating:
                raise UncertainWriteError(
                    f"Outcome unknown for {what}: {detail}; the server may have applied it. Check before retrying.",
                    cause=exc,
                ) from exc
            raise CustomermatesError(f"No answer from the Customermates MCP endpoint for {what}: {detail}") from exc
        return self._result(response, request_id, what=what, mutating=mutating)

    def _result(self, response: httpx.Response, request_id: int, *, what: str, mutating: bool) -> Any:
        status = response.status_code
        text = self._scrub(response.text)
        if status != 200:
            detail = _jsonrpc_error_text(text) or _describe_body(response, text)
            message = f"The Customermates MCP endpoint answered {what} with HTTP {status}: {detail}"
            if status == 401:
                raise AuthenticationError(message, status=status, body=text)
            if status == 403:
                raise PermissionDeniedError(message, status=status, body=text)
            if status >= 500 and mutating:
                raise UncertainWriteError(message + "; the change may have been applied.", status=status, body=text)
            raise CustomermatesError(message, status=status, body=text)
        messages = _messages(response, text)
        if messages is None:
            raise CustomermatesError(
                f"Unreadable answer from the MCP endpoint for {what}: {_describe_body(response, text)}",
                status=status,
                body=text,
            )
        for message in messages:
            if isinstance(message, dict) and message.get("id") == request_id:
                break
        else:
            raise CustomermatesError(
                f"The MCP endpoint's answer for {what} holds no message for request id {request_id}",
                status=status,
                body=text[:1000],
            )
        error = message.get("error")
        if error is not None:
            code = error.get("code") if isinstance(error, dict) else None
            detail = error.get("message") if isinstance(error, dict) else error
            raise CustomermatesError(f"MCP {what} failed: JSON-RPC error {code}: {detail}", status=status, body=text)
        if "result" not in message:
            raise CustomermatesError(f"The MCP answer for {what} has neither result nor error", status=status)
        return message["result"]


def _messages(response: httpx.Response, text: str) -> list[Any] | None:
    """The JSON-RPC messages of a 200 answer: SSE (the server's mode) or plain JSON (single or batch)."""
    content_type = response.headers.get("content-type", "")
    stripped = text.lstrip()
    if "text/event-stream" in content_type or stripped.startswith(("event:", "data:", ":")):
        messages = []
        for event, data in parse_sse(text):
            if event != "message":
                continue
            try:
                value = json.loads(data)
            except ValueError:
                return None
            messages.extend(value if isinstance(value, list) else [value])
        return messages
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, list) else [value]


def _jsonrpc_error_text(text: str) -> str | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict) and isinstance(value.get("error"), dict):
        return str(value["error"].get("message"))
    return None


def _select_options(options: list[dict], *, keep_values: bool) -> list[dict]:
    if not isinstance(options, list):
        raise ValueError("options must be a list of dicts")
    result = []
    for position, option in enumerate(options):
        if not isinstance(option, dict) or not option.get("label"):
            raise ValueError(f"option #{position} needs a label")
        item: dict[str, Any] = {}
        if keep_values and option.get("value"):
            item["value"] = option["value"]
        item["label"] = option["label"]
        item["color"] = option.get("color") or "default"
        # a new option is never the default (the server would write it into every record without a
        # value); an existing one keeps what it is, which may be a user's choice
        item["isDefault"] = bool(option.get("isDefault")) if "value" in item else False
        item["index"] = option.get("index", position)
        result.append(item)
    return result


def count_enabled_webhooks(text: str) -> int:
    """Count `enabled: true` items in a TOON `list_webhooks` answer: list items
    (`- id: …` … `enabled: true`) or a tabular array (`items[N]{id,…,enabled,…}:` + rows)."""
    count = sum(1 for line in text.splitlines() if re.fullmatch(r"\s*(?:- )?enabled: true\s*", line))
    header = re.search(r"^items\[\d+\]\{([^}]*)\}:\s*$", text, re.MULTILINE)
    if header:
        fields = header.group(1).split(",")
        if "enabled" in fields:
            column = fields.index("enabled")
            rows = text[header.end():].strip().splitlines()
            count += sum(1 for row in rows if _toon_cells(row.strip())[column:column + 1] == ["true"])
    return count


def _toon_cells(row: str) -> list[str]:
    return [cell.strip().strip('"') for cell in re.findall(r'"(?:[^"\\]|\\.)*"|[^,]+', row)]

