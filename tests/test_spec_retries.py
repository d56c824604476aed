"""``retries`` (lost nodes) and ``retries_on_failure`` (the job's own failures) in job.yaml: defaults,
limits, and refusals that name the field and the fix."""

from __future__ import annotations

import pytest

from coop.spec import SpecError, parse_job_yaml, validate_spec


def test_defaults_retry_lost_nodes_but_not_failures() -> None:
    spec = parse_job_yaml("name: j\nrun: exit 7\n")
    assert (spec.retries, spec.retries_on_failure) == (2, 0)
    stored = spec.model_dump(mode="json", by_alias=True)
    assert (stored["retries"], stored["retries_on_failure"]) == (2, 0)
    both = parse_job_yaml("name: j\nrun: x\nretries: 5\nretries_on_failure: 20\n")
    assert (both.retries, both.retries_on_failure) == (5, 20)


@pytest.mark.parametrize("value", ["-1", "21", "1.5", "many", "true", '"2"'])
def test_a_bad_retries_on_failure_names_the_field_and_the_fix(value: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_job_yaml(f"name: j\nrun: x\nretries_on_failure: {value}\n")
    (error,) = info.value.errors
    assert error.field == "retries_on_failure"
    assert error.fix == "use a whole number from 0 to 20: attempts after the job itself failed (a non-zero exit)"


def test_a_bad_retries_says_what_it_counts() -> None:
    with pytest.raises(SpecError) as info:
        validate_spec({"name": "j", "run": "x", "retries": -1})
    (error,) = info.value.errors
    assert error.field == "retries" and "lost" in error.fix and "0 to 20" in error.fix


@pytest.mark.parametrize(
    ("key", "meant"),
    [
        ("retry_on_failure", "retries_on_failure"),
        ("retries_on_error", "retries_on_failure"),
        ("max_retries", "retries"),
    ],
)
def test_near_names_point_to_the_field(key: str, meant: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_job_yaml(f"name: j\nrun: x\n{key}: 1\n")
    (error,) = info.value.errors
    assert error.field == key and f'did you mean "{meant}"?' in error.fix
