"""No text may break the coordinator (issue 12): deeply nested specs and lone surrogates, anywhere in
a request, are refused with 422 naming the field, on the real HTTP app over SQLite and PostgreSQL."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.api.helpers import node
from tests.api.test_bad_numbers import refused, send
from tests.conftest import Coordinator

SURROGATE = '"\\ud800"'  # a JSON string holding a lone surrogate, as a client may send it


def lone(template: str) -> str:
    """A JSON body with the lone surrogate string where the template has @."""
    return template.replace("@", SURROGATE)


def deep_json(levels: int) -> str:
    return '{"name": "j", "run": "true", "env": ' + '{"a": ' * levels + "1" + "}" * levels + "}"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (json.dumps("[" * 100_000), "spec"),  # YAML flow nesting: PyYAML recursed to a RecursionError
        (json.dumps("name: j\nrun: x\nenv:\n" + "".join(" " * i + "a:\n" for i in range(1, 200))), "spec"),
        (json.dumps("name: j\nrun: true\nenv: &a {A: *a}\n"), "spec.env.A"),  # an alias to itself
        ("[" * 5000 + "]" * 5000, "spec"),  # JSON deeper than Python's parser goes
        (deep_json(100), "spec.env.a.a"),  # JSON that parses, then nests too deep for a job spec
    ],
)
def test_deeply_nested_specs_are_refused(coordinator: Coordinator, spec: str, field: str) -> None:
    c = coordinator
    member, token = c.new_member("alice")
    body = refused(send(c, "POST", "/v1/jobs", token, '{"spec": ' + spec + "}"), field)
    assert "nest" in body["message"] or "itself" in body["message"], body
    assert member.jobs() == []


@pytest.mark.parametrize(
    ("method", "path", "raw", "field"),
    [
        ("POST", "/v1/members", lone('{"name": @}'), "name"),
        ("POST", "/v1/members/alice/grants", lone('{"amount": 1, "note": @}'), "note"),
        ("POST", "/v1/tokens", lone('{"name": @}'), "name"),
        ("POST", "/v1/jobs", lone('{"spec": {"name": "j", "run": @}}'), "spec.run"),
        ("POST", "/v1/jobs", lone('{"spec": {"name": "j", "run": "x", "env": {@: "1"}}}'), "spec.env"),
        ("POST", "/v1/jobs", lone('{"spec": {"name": "j", "run": "x", "env": {"A": @}}}'), "spec.env.A"),
        ("POST", "/v1/jobs", '{"spec": "name: j\\nrun: \\ud800"}', "spec"),  # YAML text
        ("POST", "/v1/jobs", lone('{"spec": {"name": "j", "run": "x"}, "workdir_sha256": @}'), "workdir_sha256"),
        ("POST", "/v1/pools", lone('{"name": @, "slurm": {}}'), "name"),
        ("GET", "/v1/members/%ED%A0%80", None, "path"),  # the UTF-8 bytes of U+D800, percent-encoded
        ("GET", "/v1/pools/%ED%A0%80", None, "path"),
        ("GET", "/v1/jobs?name=%ED%A0%80", None, "name"),
        ("GET", "/v1/jobs?member=%ff", None, "member"),
    ],
)
def test_lone_surrogates_are_refused(coordinator: Coordinator, method: str, path: str, raw: str, field: str) -> None:
    c = coordinator
    c.new_member("alice")
    before = (c.admin.members(), c.admin.tokens(), c.admin.jobs())
    refused(send(c, method, path, c.admin_token, raw), field)
    assert (c.admin.members(), c.admin.tokens(), c.admin.jobs()) == before


def test_an_error_that_quotes_a_surrogate_still_renders(coordinator: Coordinator) -> None:
    """Error messages quote what was sent (here an unknown field's name): the reply must encode."""
    c = coordinator
    response = send(c, "POST", "/v1/members", c.admin_token, lone('{"name": "bob", @: 1}'))
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"


def test_a_body_that_is_not_utf8_is_refused(coordinator: Coordinator) -> None:
    c = coordinator
    headers = {"Authorization": f"Bearer {c.admin_token}", "Content-Type": "application/json"}
    response = httpx.post(f"{c.url}/v1/members", content=b'{"name": "\xed\xa0\x80"}', headers=headers, timeout=30)
    refused(response, "name")
    assert [m["name"] for m in c.admin.members()] == ["admin"]


NUL = '"a\\u0000b"'  # PostgreSQL's text and JSON columns hold no NUL: each of these was a 500 there


def nul(template: str) -> str:
    return template.replace("@", NUL)


@pytest.mark.parametrize(
    ("method", "path", "raw", "field"),
    [
        ("GET", "/v1/members/a%00b", None, "path"),
        ("PUT", "/v1/members/a%00b/quota", "{}", "path"),
        ("GET", "/v1/pools/a%00b", None, "path"),
        ("GET", "/v1/jobs?name=a%00b", None, "name"),
        ("GET", "/v1/jobs?member=a%00b", None, "member"),
        ("POST", "/v1/tokens", nul('{"name": @}'), "name"),
        ("POST", "/v1/members/alice/grants", nul('{"amount": 1, "note": @}'), "note"),
        (
            "POST",
            "/v1/jobs",
            nul('{"spec": {"name": "j", "run": "x", "resources": {"gpus": 1, "gpu": [@]}}}'),
            "spec.resources.gpu[0]",
        ),
        ("POST", "/v1/jobs", nul('{"spec": {"name": "j", "run": "x", "env": {@: "1"}}}'), "spec.env"),
    ],
)
def test_nul_characters_are_refused(coordinator: Coordinator, method: str, path: str, raw: str, field: str) -> None:
    c = coordinator
    c.new_member("alice")
    before = (c.admin.members(), c.admin.tokens(), c.admin.jobs(), c.admin.balance("alice", history=True))
    refused(send(c, method, path, c.admin_token, raw), field)
    assert (c.admin.members(), c.admin.tokens(), c.admin.jobs(), c.admin.balance("alice", history=True)) == before


@pytest.mark.parametrize(
    ("where", "field"),
    [("os", "os"), ("ray_version", "ray_version"), ("gpu_uuid", "gpus.0.uuid"), ("gpu_name", "gpus.0.name")],
)
def test_an_agent_cannot_store_a_nul(coordinator: Coordinator, where: str, field: str) -> None:
    c = coordinator
    c.new_member("alice")
    agent = c.admin.create_token(kind="agent", member="alice")["token"]
    registration = node("box", gpus=1).model_dump(mode="json")
    if where.startswith("gpu_"):
        registration["gpus"][0][where.removeprefix("gpu_")] = "a\0b"
    else:
        registration[where] = "a\0b"
    refused(send(c, "POST", "/v1/nodes", agent, json.dumps(registration)), field)
    node_id = c.client(agent).register_node(node("box", gpus=1))["id"]
    raw = nul('{"foreign_processes": [{"pid": 1, "name": @}]}')
    refused(send(c, "POST", f"/v1/nodes/{node_id}/heartbeat", agent, raw), "foreign_processes.0.name")
    assert [n["name"] for n in c.admin.nodes()] == ["box"]
