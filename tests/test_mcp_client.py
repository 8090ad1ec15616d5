"""McpClient: replayed against the real recorded MCP exchanges (04_mcp.yaml), plus MockTransport unit tests."""

from __future__ import annotations

import functools
import itertools
import json

import httpx
import pytest
import vcr
import yaml

from migrate.customermates.client import (
    AuthenticationError,
    CustomermatesError,
    UncertainWriteError,
)
from migrate.customermates.mcp import (
    COLUMN_TYPES,
    McpAuthenticationError,
    McpClient,
    McpToolError,
    parse_sse,
    parse_toon_fields,
)
from tests.recorded import (
    ADMIN_KEY,
    CASSETTES,
    SERVER,
    WRONG_KEY,
    api_key,
    json_body,
    needs_cassettes,
)

MCP = "04_mcp.yaml"



def replay(name: str = MCP):
    recorder = vcr.VCR(
        record_mode="none", match_on=["method", "scheme", "host", "port", "path", "query", "json_body", "api_key"]
    )
    recorder.register_matcher("json_body", json_body)
    recorder.register_matcher("api_key", api_key)
    return recorder.use_cassette(str(CASSETTES / name))


def mcp_at(first_id: int, key: str = ADMIN_KEY) -> McpClient:
    """A client whose next JSON-RPC id is ``first_id``, so its requests equal the recorded ones byte for byte."""
    client = McpClient(SERVER, key, timeout=5)
    client._ids = itertools.count(first_id)
    return client


@functools.lru_cache(maxsize=None)
def _interactions(name: str) -> list[dict]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load((CASSETTES / name).read_text(encoding="utf-8"), Loader=loader)["interactions"]


def recorded(index: int, name: str = MCP) -> dict:
    return _interactions(name)[index]



# ------------------------------------------------------------------------------------------------------------------
# Replayed: 04_mcp.yaml
# ------------------------------------------------------------------------------------------------------------------


FIRST_PIPEDRIVE_ID_COLUMN = "e9231ae5-dbde-43ad-861a-7a26051414b2"  # the contact column "Pipedrive ID" made first


@needs_cassettes
def test_create_custom_column_returns_the_new_id_for_all_ten_types():
    calls = [
        (("contact", "Pipedrive ID", "plain"), {}),
        (("contact", "Lead source", "singleSelect"),
         {"options": [{"label": "Website", "color": "info"}, {"label": "Referral", "color": "success"},
                      {"label": "Trade fair", "color": "warning"}]}),
        (("deal", "Original value", "currency"), {"currency": "usd"}),
        (("contact", "Birthday", "date"), {}),
        (("task", "Due at", "dateTime"), {"display_format": "relative"}),
        (("contact", "Phones", "phone"), {"color": "info", "allow_multiple": True}),
        (("contact", "Private email", "email"), {"color": "secondary", "allow_multiple": False}),
        (("organization", "Website", "link"), {"allow_multiple": True}),
        (("deal", "Contract term", "dateRange"), {"display_format": "descriptiveShort"}),
        (("task", "Time slot", "dateTimeRange"), {}),
    ]
    expected_ids = [
        FIRST_PIPEDRIVE_ID_COLUMN,
        "19fc425f-f404-4f6e-a3f3-e413d24024ab",
        "b421c9c9-5aa9-4530-acee-6e2adf91802e",
        "7fa32286-940a-4975-addf-9d6153c9b56b",
        "27ec70f8-60d8-4c29-bb86-689f72b77b09",
        "68a68226-6827-4459-8ef5-75f32c387465",
        "cf2dad77-d8ee-4e41-9eff-c49cd2241d16",
        "f7bb1254-bffc-4e45-805e-57fc5f9a9f0f",
        "844ea7bb-55d2-4faa-b95c-93b5d8d1dffa",
        "1d3ed36d-3eae-47b9-b213-2e4e48274a8c",
    ]
    with replay() as cassette, mcp_at(3) as client:
        ids = [client.create_custom_column(*args, **kwargs) for args, kwargs in calls]
    assert ids == expected_ids
    assert {args[2] for args, _ in calls} == set(COLUMN_TYPES)
    assert cassette.play_count == 10


@needs_cassettes
def test_the_same_label_twice_makes_a_second_column():
    with replay() as cassette, mcp_at(13) as client:
        second = client.create_custom_column("contact", "Pipedrive ID", "plain")
    assert second == "9f668244-b1dc-44e3-9aee-f9d9e37dbe48"
    assert second != FIRST_PIPEDRIVE_ID_COLUMN
    assert cassette.play_count == 1


@needs_cassettes
def test_call_tool_returns_the_toon_text():
    with replay() as cassette, mcp_at(15) as client:
        text = client.call_tool("list_custom_columns", {"entityType": "deal"})
    assert text.startswith("items[2]:\n  - id: 844ea7bb-55d2-4faa-b95c-93b5d8d1dffa")
    assert "currency: usd" in text
    assert cassette.play_count == 1


@needs_cassettes
@pytest.mark.parametrize(("first_id", "key"), [(2, ADMIN_KEY), (24, "")])
def test_list_tools_returns_all_61_tools_with_or_without_a_key(first_id, key):
    with replay() as cassette, mcp_at(first_id, key) as client:
        tools = client.list_tools()
    names = {t["name"] for t in tools}
    assert len(tools) == 61
    assert set(COLUMN_TYPES.values()) <= names
    assert {"update_single_select_custom_column", "delete_custom_column"} <= names
    assert cassette.play_count == 1


@needs_cassettes
def test_a_bad_color_is_a_tool_error_with_the_server_text():
    with replay() as cassette, mcp_at(16) as client:
        with pytest.raises(McpToolError) as caught:
            client.create_custom_column("contact", "Blog", "link", color="primary", allow_multiple=False)
    assert caught.value.text.startswith("MCP error -32602: Input validation error: Invalid arguments for tool "
                                        "create_link_custom_column")
    assert caught.value.tool == "create_link_custom_column"
    assert caught.value.text in str(caught.value)
    assert not isinstance(caught.value, AuthenticationError)
    assert cassette.play_count == 1


@needs_cassettes
def test_a_single_select_without_options_is_a_tool_error():
    with replay() as cassette, mcp_at(17) as client:
        with pytest.raises(McpToolError) as caught:
            client.create_custom_column("contact", "Empty", "singleSelect", options=[])
    assert "Too small: expected array to have >=1 items" in caught.value.text
    assert cassette.play_count == 1


@needs_cassettes
@pytest.mark.parametrize(
    ("first_id", "name", "arguments", "text"),
    [
        (18, "create_plain_custom_column", {"entityType": "person", "label": "X"}, "Invalid option: expected one of"),
        (19, "no_such_tool", {}, "MCP error -32602: Tool no_such_tool not found"),
    ],
)
def test_bad_arguments_and_unknown_tools_are_tool_errors(first_id, name, arguments, text):
    with replay() as cassette, mcp_at(first_id) as client:
        with pytest.raises(McpToolError) as caught:
            client.call_tool(name, arguments)
    assert text in caught.value.text
    assert cassette.play_count == 1


@needs_cassettes
def test_a_json_rpc_error_object_is_a_customermates_error():
    with replay() as cassette, mcp_at(20) as client:
        with pytest.raises(CustomermatesError) as caught:
            client.rpc("no/such/method", {})
    assert not isinstance(caught.value, McpToolError)
    assert "-32601" in str(caught.value) and "Method not found" in str(caught.value)
    assert cassette.play_count == 1


@needs_cassettes
def test_a_wrong_key_is_reported_as_rejected_api_key():
    with replay() as cassette, mcp_at(23, WRONG_KEY) as client:
        with pytest.raises(McpAuthenticationError) as caught:
            client.call_tool("list_custom_columns", {})
    error = caught.value
    assert isinstance(error, McpToolError) and isinstance(error, AuthenticationError)
    assert str(error).startswith("Customermates rejected the API key")
    assert error.text == "Error: Invalid API key."
    assert WRONG_KEY not in str(error) and WRONG_KEY not in repr(error)
    assert cassette.play_count == 1


@needs_cassettes
@pytest.mark.parametrize(("first_id", "call"), [(21, "list"), (22, "create")])
def test_no_key_is_an_authentication_error(first_id, call):
    with replay() as cassette, mcp_at(first_id, "") as client:
        with pytest.raises(McpAuthenticationError) as caught:
            if call == "list":
                client.call_tool("list_custom_columns", {})
            else:
                client.create_custom_column("contact", "Nope", "plain")
    assert caught.value.text == "Error: Not authenticated"
    assert cassette.play_count == 1


@needs_cassettes
@pytest.mark.parametrize(
    ("index", "status", "message"),
    [
        (24, 406, "Not Acceptable: Client must accept both application/json and text/event-stream"),
        (25, 400, "Bad Request: Unsupported protocol version"),
        (26, 405, "Method not allowed."),
    ],
)
def test_http_errors_from_the_transport_layer_are_customermates_errors(index, status, message):
    response = recorded(index)["response"]
    assert response["status"]["code"] == status
    body = response["body"]["string"]
    client = McpClient(SERVER, ADMIN_KEY, transport=httpx.MockTransport(lambda request: httpx.Response(status, text=body)))
    with pytest.raises(CustomermatesError) as caught:
        client.call_tool("list_custom_columns", {"entityType": "organization"})
    assert caught.value.status == status
    assert message in str(caught.value)
    assert not isinstance(caught.value, (McpToolError, UncertainWriteError))


@needs_cassettes
def test_a_batch_answer_holds_one_sse_message_per_call_and_the_right_one_is_picked():
    body = recorded(28)["response"]["body"]["string"]
    events = parse_sse(body)
    assert [e for e, _ in events] == ["message", "message"]
    assert [json.loads(d)["id"] for _, d in events] == [901, 902]

    client = McpClient(SERVER, ADMIN_KEY, transport=httpx.MockTransport(
        lambda request: httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})))
    client._ids = itertools.count(902)
    text = client.call_tool("list_custom_columns", {"entityType": "task"})
    assert "entityType: task" in text and "entityType: deal" not in text


@needs_cassettes
def test_parse_toon_fields_reads_the_recorded_create_answer():
    data = recorded(3)["response"]["body"]["string"]
    (_, payload), = parse_sse(data)
    text = json.loads(payload)["result"]["content"][0]["text"]
    fields = parse_toon_fields(text)
    assert fields == {
        "id": "19fc425f-f404-4f6e-a3f3-e413d24024ab",
        "label": "Lead source",
        "message": 'Custom field "Lead source" created successfully',
    }


# ------------------------------------------------------------------------------------------------------------------
# Unit tests
# ------------------------------------------------------------------------------------------------------------------

SECRET = "cm_live_5ecret_key_0123456789abcdef0123456789abcdef0123456789abcd"


def sse(*messages: dict) -> httpx.Response:
    body = "".join(f"event: message\ndata: {json.dumps(m)}\n\n" for m in messages)
    return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})


def tool_text(request_id: int, text: str, is_error: bool = False) -> dict:
    result: dict = {"content": [{"type": "text", "text": text}]}
    if is_error:
        result["isError"] = True
    return {"result": result, "jsonrpc": "2.0", "id": request_id}


class Server:
    """Answers each JSON-RPC request with ``reply(body)`` and records the parsed requests."""

    def __init__(self, reply):
        self.reply = reply
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.reply(json.loads(request.content))

    @property
    def bodies(self) -> list[dict]:
        return [json.loads(r.content) for r in self.requests]


def client_with(reply, **kwargs) -> tuple[McpClient, Server]:
    server = Server(reply)
    return McpClient("https://cm.example/", SECRET, transport=httpx.MockTransport(server), **kwargs), server


def test_every_request_has_the_mcp_headers_and_unique_increasing_ids():
    client, server = client_with(lambda body: sse(tool_text(body["id"], "ok")))
    for _ in range(3):
        assert client.call_tool("get_company", {}) == "ok"
    assert [b["id"] for b in server.bodies] == [1, 2, 3]
    for request in server.requests:
        assert str(request.url) == "https://cm.example/api/v1/mcp"
        assert request.method == "POST"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["accept"] == "application/json, text/event-stream"
        assert request.headers["mcp-protocol-version"] == "2025-06-18"
        assert request.headers["x-api-key"] == SECRET
    assert server.bodies[0] == {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                "params": {"name": "get_company", "arguments": {}}}


def test_sse_data_spanning_several_lines_is_joined():
    message = tool_text(1, "id: 0f0f0f0f-1111-4222-8333-444455556666\nlabel: X")
    pretty = json.dumps(message, indent=2).split("\n")
    body = "event: message\n" + "".join(f"data: {line}\n" for line in pretty) + "\n"
    client, _ = client_with(lambda _: httpx.Response(200, text=body, headers={"content-type": "text/event-stream"}))
    column_id = client.create_custom_column("deal", "X", "plain")
    assert column_id == "0f0f0f0f-1111-4222-8333-444455556666"


def test_parse_sse_follows_the_framing_rules():
    body = (
        ": a comment\r\n"
        "event: message\r\n"
        "id: 7\r\n"
        "data: {\"a\":\r\n"
        "data:1}\r\n"
        "\r\n"
        "data: second\n"
        "\n"
        "event: ping\n"
        "data: x"  # no blank line at the end of the stream
    )
    assert parse_sse(body) == [("message", '{"a":\n1}'), ("message", "second"), ("ping", "x")]


def test_parse_toon_fields_skips_nested_lines_and_unquotes_values():
    text = 'id: abc\nlabel: "a: b"\nitems[2]:\n  - id: nested\nmessage: plain text'
    assert parse_toon_fields(text) == {"id": "abc", "label": "a: b", "items[2]": "", "message": "plain text"}


def test_a_plain_json_answer_is_accepted_too():
    client, _ = client_with(lambda body: httpx.Response(200, json=tool_text(body["id"], "Deleted")))
    client.delete_custom_column("0f0f0f0f-1111-4222-8333-444455556666")


def test_single_select_options_are_sent_with_is_default_false_color_and_index():
    client, server = client_with(lambda body: sse(tool_text(body["id"], "id: 0f0f0f0f-1111-4222-8333-444455556666")))
    client.create_custom_column("deal", "Stage", "singleSelect",
                                options=[{"label": "Won", "color": "success", "isDefault": True}, {"label": "Lost"}])
    arguments = server.bodies[0]["params"]["arguments"]
    assert server.bodies[0]["params"]["name"] == "create_single_select_custom_column"
    assert arguments == {"entityType": "deal", "label": "Stage", "options": [
        {"label": "Won", "color": "success", "isDefault": False, "index": 0},
        {"label": "Lost", "color": "default", "isDefault": False, "index": 1},
    ]}


def test_update_single_select_options_keeps_existing_values_and_their_default():
    client, server = client_with(lambda body: sse(tool_text(body["id"], "Updated")))
    client.update_single_select_options("c0c0c0c0-1111-4222-8333-444455556666", "Stage", [
        {"value": "a0a0a0a0-1111-4222-8333-444455556666", "label": "Won", "color": "success", "index": 0,
         "isDefault": True},
        {"label": "New one", "index": 5},
    ])
    assert server.bodies[0]["params"] == {"name": "update_single_select_custom_column", "arguments": {
        "id": "c0c0c0c0-1111-4222-8333-444455556666", "label": "Stage", "options": [
            {"value": "a0a0a0a0-1111-4222-8333-444455556666", "label": "Won", "color": "success", "isDefault": True,
             "index": 0},
            {"label": "New one", "color": "default", "isDefault": False, "index": 5},
        ]}}


def test_delete_custom_column_sends_the_id():
    client, server = client_with(lambda body: sse(tool_text(body["id"], "Custom column deleted")))
    client.delete_custom_column("c0c0c0c0-1111-4222-8333-444455556666")
    assert server.bodies[0]["params"] == {"name": "delete_custom_column",
                                          "arguments": {"id": "c0c0c0c0-1111-4222-8333-444455556666"}}


def test_a_validation_error_of_a_tool_raises_with_the_text():
    client, _ = client_with(lambda body: sse(tool_text(body["id"], "Validation error: label taken", True)))
    with pytest.raises(McpToolError) as caught:
        client.delete_custom_column("c0c0c0c0-1111-4222-8333-444455556666")
    assert caught.value.text == "Validation error: label taken"


def test_a_timeout_on_a_tool_that_writes_is_an_uncertain_write_and_is_not_retried():
    calls = []

    def hang(request):
        calls.append(request)
        raise httpx.ReadTimeout("timed out")

    client = McpClient("https://cm.example", SECRET, timeout=0.1, transport=httpx.MockTransport(hang))
    with pytest.raises(UncertainWriteError) as caught:
        client.create_custom_column("contact", "X", "plain")
    assert isinstance(caught.value.cause, httpx.ReadTimeout)
    assert len(calls) == 1


def test_a_timeout_on_a_read_is_a_customermates_error():
    client = McpClient("https://cm.example", SECRET, transport=httpx.MockTransport(
        lambda request: (_ for _ in ()).throw(httpx.ReadTimeout("timed out"))))
    with pytest.raises(CustomermatesError) as caught:
        client.list_tools()
    assert not isinstance(caught.value, UncertainWriteError)
    assert "ReadTimeout" in str(caught.value)


def test_a_5xx_on_a_tool_that_writes_is_an_uncertain_write():
    client, _ = client_with(lambda body: httpx.Response(500))
    with pytest.raises(UncertainWriteError):
        client.update_single_select_options("c0c0c0c0-1111-4222-8333-444455556666", "S", [{"label": "A"}])


def test_415_and_an_answer_without_our_id_are_errors():
    client, _ = client_with(lambda body: httpx.Response(415, json={"jsonrpc": "2.0", "error": {
        "code": -32000, "message": "Unsupported Media Type: Content-Type must be application/json"}, "id": None}))
    with pytest.raises(CustomermatesError) as caught:
        client.list_tools()
    assert caught.value.status == 415 and "Unsupported Media Type" in str(caught.value)

    client, _ = client_with(lambda body: sse(tool_text(body["id"] + 100, "not yours")))
    with pytest.raises(CustomermatesError) as caught:
        client.call_tool("get_company", {})
    assert "no message for request id" in str(caught.value)


def test_create_custom_column_checks_its_arguments_before_sending():
    client, server = client_with(lambda body: sse(tool_text(body["id"], "id: x")))
    with pytest.raises(ValueError):
        client.create_custom_column("person", "X", "plain")
    with pytest.raises(ValueError):
        client.create_custom_column("deal", "X", "number")
    with pytest.raises(ValueError):
        client.create_custom_column("deal", "X", "currency")
    with pytest.raises(ValueError):
        client.create_custom_column("deal", "X", "plain", display_format="relative")
    assert server.requests == []


def test_a_create_answer_without_an_id_is_an_error():
    client, _ = client_with(lambda body: sse(tool_text(body["id"], "Created, but no id here")))
    with pytest.raises(CustomermatesError):
        client.create_custom_column("deal", "X", "plain")


def test_the_api_key_is_not_in_the_repr_or_in_errors():
    client, _ = client_with(lambda body: sse(tool_text(body["id"], f"Error: key {SECRET} is bad", True)))
    with pytest.raises(McpToolError) as caught:
        client.call_tool("list_custom_columns", {})
    assert SECRET not in str(caught.value) and SECRET not in caught.value.text and SECRET not in repr(caught.value)
    assert SECRET not in repr(client)
