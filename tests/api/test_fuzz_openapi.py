"""Property-based fuzz of the whole OpenAPI schema: no input may make the coordinator answer 5xx.

Schemathesis generates requests from the app's own ``/openapi.json``, valid ones and ones that break
the schema, for every operation, with an admin's, a member's and an agent's token; the real app
serves them over HTTP from a real database, SQLite and PostgreSQL (which refuses what SQLite takes,
such as a NUL in text). Half the cases name resources that exist (the member, its node, its job),
so requests get past the 404s into the code that does the work. Deterministic (``derandomize``)
and bounded (``EXAMPLES`` per operation, role and strategy), so CI stays fast (about a minute).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from tests.api.helpers import job_spec, node
from tests.conftest import Coordinator, loopless_coordinator, own_postgres

# per operation, role and strategy: 5 take 17-34 s a database on 2 cores; COOP_FUZZ_EXAMPLES=50 digs deeper
EXAMPLES = int(os.environ.get("COOP_FUZZ_EXAMPLES", "5"))

# A job spec is free-form to the schema (a mapping or YAML text): aim at its numbers directly, in
# both forms, with what breaks arithmetic (NaN, infinities, 70-bit integers, absurd sizes).
_NUMBER = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.sampled_from(["1e400", "16GB+", "8GB..4TB", "99999TB", "0.5TB", "4h", "1e308s", "9999999999999999d", "9.0+"]),
    st.text(max_size=8),
)
_RESOURCES = ("gpus", "cpus", "memory", "gpu_memory", "compute_capability")
_SPEC = st.fixed_dictionaries(
    {"name": st.just("fuzz"), "run": st.just("true")},
    optional={
        "resources": st.fixed_dictionaries({}, optional=dict.fromkeys(_RESOURCES, _NUMBER)),
        "max_runtime": _NUMBER,
        "retries": _NUMBER,
        "retries_on_failure": _NUMBER,
        "env": st.dictionaries(st.sampled_from(["A", "B"]), _NUMBER, max_size=2),
    },
)
SPEC_BODIES = st.fixed_dictionaries({"spec": st.one_of(_SPEC, _SPEC.map(yaml.safe_dump))})


@dataclass
class World:
    """The coordinator and what exists in it: tokens per role, and ids the fuzz may aim at."""

    coordinator: Coordinator
    tokens: dict[str, str]
    known: dict[str, Any]
    protected_token_ids: set[int]
    spare_token_ids: list[int] = field(default_factory=list)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    url = own_postgres("coop_fuzz_openapi") if request.param == "postgres" else None
    with loopless_coordinator(tmp_path_factory.mktemp("fuzz") / "coop", url) as c:
        member, member_token = c.new_member("alice")
        agent_token = c.admin.create_token(kind="agent", member="alice")["token"]
        node_id = c.client(agent_token).register_node(node("box", gpus=2))["id"]
        job_id = member.submit(job_spec("fuzzed"))["id"]
        c.admin.grant("alice", 10, "seed")
        protected = {t["id"] for t in c.admin.tokens()}  # the three tokens the fuzz runs with
        known = {"name": "alice", "job_id": job_id, "node_id": node_id, "sha256": "0" * 64, "action": "pause"}
        tokens = {"admin": c.admin_token, "member": member_token, "agent": agent_token}
        yield World(c, tokens, known, protected)


def _aim(world: World, case: Any) -> None:
    """Never let the fuzz revoke the tokens it runs with: a DELETE aimed at one revokes a spare."""
    token_id = (case.path_parameters or {}).get("token_id")
    if case.method.upper() == "DELETE" and token_id in world.protected_token_ids:
        spare = world.coordinator.admin.create_token(kind="user", member="alice", name="spare")
        case.path_parameters["token_id"] = spare["id"]


def _fuzz(world: World, operation: Any, role: str, http: requests.Session) -> str | None:
    """Run the operation's cases as ``role``; the reproducer of the first 5xx, or None."""
    params = {p.name for p in operation.path_parameters}
    aimed = {k: v for k, v in world.known.items() if k in params}
    strategies = [operation.as_strategy(mode) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    if aimed:
        strategies += [operation.as_strategy(mode, path_parameters=aimed) for mode in GenerationMode]
    if operation.method.upper() == "POST" and operation.path == "/v1/jobs":
        strategies.append(SPEC_BODIES.flatmap(lambda body: operation.as_strategy(body=body)))
    auth = {"Authorization": f"Bearer {world.tokens[role]}"}
    found: list[str] = []

    @settings(
        max_examples=EXAMPLES * len(strategies),
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(strategies))
    def run(case: Any) -> None:
        _aim(world, case)
        response = case.call(base_url=world.coordinator.url, session=http, headers=auth, timeout=30)
        if response.status_code >= 500:
            reproducer = (
                f"{operation.method.upper()} {operation.path} as {role} -> {response.status_code}\n"
                f"    {case.as_curl_command(headers=auth)}\n    reply: {response.text[:300]}"
            )
            found[:] = [reproducer]  # hypothesis shrinks: the last failure is the smallest
            raise AssertionError(reproducer)

    try:
        run()
    except Exception as e:  # AssertionError, or Hypothesis's FlakyFailure when a replay answered otherwise
        return found[-1] if found else f"{operation.method.upper()} {operation.path} as {role}: {e!r}"
    return None


def test_no_input_makes_the_coordinator_fail(world: World) -> None:
    schema = schemathesis.openapi.from_url(f"{world.coordinator.url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the schema has an operation schemathesis cannot read: {result.err()}"
        operations.append(result.ok())
    assert len(operations) >= 25, "the schema lost operations"
    failures = []
    with requests.Session() as http:
        for operation in operations:
            for role in world.tokens:
                failure = _fuzz(world, operation, role, http)
                if failure:
                    failures.append(failure)
    assert not failures, f"{len(failures)} operation(s) answered 5xx:\n" + "\n".join(failures)
