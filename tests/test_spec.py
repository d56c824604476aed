"""coop.spec: job.yaml parsing, validation and the error messages users see."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from coop import arrays
from coop.spec import (
    FieldError,
    JobSpec,
    MemRange,
    Resources,
    SpecError,
    VersionRange,
    normalise_gpu_model,
    parse_duration_s,
    parse_job_yaml,
    parse_size_gb,
    validate_spec,
)

DATA = Path(__file__).parent / "data"
GOOD = sorted((DATA / "good_jobs").glob("*.yaml"))
BAD = sorted((DATA / "bad_jobs").glob("*.yaml"))


def errors_of(text: str) -> list[FieldError]:
    with pytest.raises(SpecError) as info:
        parse_job_yaml(text)
    return info.value.errors


def job(body: str) -> str:
    return "name: j\nrun: x\n" + body


# --- corpus -------------------------------------------------------------------------------------


def test_corpus_is_big_enough_and_small() -> None:
    assert len(BAD) >= 24 and len(GOOD) >= 4
    assert all(p.stat().st_size < 4096 for p in GOOD + BAD)


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_good_job_parses_and_round_trips(path: Path) -> None:
    spec = parse_job_yaml(path.read_text())
    for dumped in (spec.model_dump(mode="json", by_alias=True), spec.model_dump(mode="json")):
        json.dumps(dumped)
        again = validate_spec(dumped)
        assert again == spec
        assert again.model_dump(mode="json", by_alias=True) == dumped


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_job_names_the_field(path: Path) -> None:
    text = path.read_text()
    first = text.splitlines()[0]
    assert first.startswith("# expect:"), f"{path.name} must start with '# expect: FIELD'"
    errors = errors_of(text)
    assert errors[0].field == first.removeprefix("# expect:").strip()
    for error in errors:
        assert error.message and error.fix


def test_complete_examples_in_the_docs_are_valid() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "jobspec.md").read_text()
    blocks = [b.split("```", 1)[0] for b in docs.split("```yaml\n")[1:]]
    jobs = [parse_job_yaml(b) for b in blocks if b.startswith("name:")]
    assert len(jobs) == 5
    assert jobs[0] == jobs[4]  # the stored form reads back to the full example
    gang = jobs[2].resources  # the multi-node example
    assert (gang.nodes, gang.gpus, gang.total_gpus) == (4, 2, 8)
    sweep = jobs[3]  # the arrays example
    assert sweep.array is not None and arrays.size(sweep.array) == 6 and sweep.max_parallel == 4
    assert sweep == parse_job_yaml((DATA / "good_jobs" / "eval_sweep_array.yaml").read_text())
    example = (DATA / "good_jobs" / "full_example.yaml").read_text()
    assert jobs[0] == parse_job_yaml(example)


def test_full_example_values() -> None:
    spec = parse_job_yaml((DATA / "good_jobs" / "full_example.yaml").read_text())
    assert spec.name == "lora-qwen-0.5b" and spec.kind == "finetune"
    r = spec.resources
    assert r.gpus == 1 and r.cpus == 4 and r.tier == "any"
    assert r.gpu_memory == MemRange(min_gb=16.0, max_gb=None)
    assert r.gpu == ["RTX4090", "A100"]
    assert r.compute_capability == VersionRange(min=8.0, max=None)
    assert r.memory_gb == 32.0
    assert spec.workdir == "." and spec.setup == "pip install -r requirements.txt"
    assert spec.run == "python train.py --epochs 1"
    assert spec.env == {"WANDB_MODE": "offline"}
    assert spec.max_runtime_s == 4 * 3600
    assert spec.priority == "normal" and spec.preemptible is True
    assert spec.checkpoint_dir == "/tmp/ckpt" and spec.retries == 2


def test_other_forms_values() -> None:
    spec = parse_job_yaml((DATA / "good_jobs" / "eval_range.yaml").read_text())
    r = spec.resources
    assert r.gpu_memory is not None and (r.gpu_memory.min_gb, r.gpu_memory.max_gb) == (16.0, 48.0)
    assert r.gpu == ["RTX4090"]  # a single string, normalised
    assert r.compute_capability == VersionRange(min=8.0, max=9.0)
    assert r.memory_gb == pytest.approx(64 * 2**30 / 1e9)
    assert spec.workdir is None and spec.max_runtime_s == 5400
    assert spec.run.startswith("python -m lm_eval")
    assert spec.env == {"BATCH_SIZE": "8", "USE_FLASH": "true", "LR": "0.0001", "EMPTY": ""}
    assert spec.preemptible is False and spec.retries == 0 and spec.priority == "high"


def test_defaults() -> None:
    spec = parse_job_yaml("name: hello\nrun: echo hi\n")
    assert spec.kind == "batch" and spec.resources == Resources()
    assert spec.resources.gpus == 0 and spec.resources.cpus == 1 and spec.resources.memory_gb is None
    assert spec.workdir == "." and spec.setup is None and spec.env == {}
    assert spec.max_runtime_s is None and spec.checkpoint_dir is None
    assert (spec.priority, spec.preemptible, spec.retries) == ("normal", True, 2)


def test_empty_resources_and_env_mean_defaults() -> None:
    spec = parse_job_yaml(job("resources:\n  # gpus: 1\nenv:\n"))
    assert spec.resources == Resources() and spec.env == {}


# --- ranges ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "low", "high"),
    [
        ("16GB", 16.0, None),  # a bare size means "at least"
        ("16GB+", 16.0, None),
        ("16GB..48GB", 16.0, 48.0),
        ("16 GB .. 48 GB", 16.0, 48.0),
        ("24GB..24GB", 24.0, 24.0),
        (24, 24.0, None),
        (7.5, 7.5, None),
        ({"min_gb": 8, "max_gb": 16}, 8.0, 16.0),
        ({"min_gb": 8}, 8.0, None),
    ],
)
def test_mem_range_forms(given: object, low: float, high: float | None) -> None:
    spec = validate_spec({"name": "j", "run": "x", "resources": {"gpus": 1, "gpu_memory": given}})
    assert spec.resources.gpu_memory == MemRange(min_gb=low, max_gb=high)


def test_range_contains() -> None:
    assert MemRange.model_validate("16GB..48GB").contains(24)
    assert not MemRange.model_validate("16GB..48GB").contains(80)
    assert not MemRange.model_validate("16GB+").contains(8)
    assert MemRange.model_validate("16GB").contains(80)
    assert VersionRange.model_validate("8.0+").contains(9.0)
    assert not VersionRange.model_validate("8.0..8.9").contains(9.0)
    assert VersionRange.model_validate(7).contains(7.5)


@pytest.mark.parametrize("given", ["8.0", "8.0+", 8.0, 8, {"min": 8.0, "max": None}])
def test_version_range_at_least(given: object) -> None:
    assert VersionRange.model_validate(given) == VersionRange(min=8.0, max=None)


@pytest.mark.parametrize(
    "given", ["ampere", "9.0..8.0", "0.5", "", "+", "8.0..", True, [8.0], {"min": "8.0"}, {"min": 0.5}]
)
def test_version_range_rejects(given: object) -> None:
    spec = {"name": "j", "run": "x", "resources": {"gpus": 1, "compute_capability": given}}
    with pytest.raises(SpecError) as info:
        validate_spec(spec)
    assert info.value.errors[0].field.startswith("resources.compute_capability")


# --- sizes and durations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "gb"),
    [
        ("24GB", 24.0),
        ("24G", 24.0),
        ("24gb", 24.0),
        ("24 GB", 24.0),
        ("24GiB", 24 * 2**30 / 1e9),
        ("512MB", 0.512),
        ("512MiB", 512 * 2**20 / 1e9),
        ("1.5TB", 1500.0),
        ("1TiB", 2**40 / 1e9),
        (".5GB", 0.5),
        ("24", 24.0),
        (24, 24.0),
        (0.5, 0.5),
    ],
)
def test_parse_size_gb(given: str | int | float, gb: float) -> None:
    assert parse_size_gb(given) == pytest.approx(gb)


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ("24 gigs", 'unknown unit "gigs"'),
        ("-5GB", "more than 0"),
        ("0GB", "more than 0"),
        (0, "more than 0"),
        (float("inf"), "more than 0"),
        (float("nan"), "more than 0"),
        ("", "not a size"),
        ("GB", "not a size"),
        ("1,5GB", "not a size"),
        ("16GB+", "not a size"),
        (True, "not a size"),
        (None, "not a size"),
    ],
)
def test_parse_size_gb_errors(given: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_size_gb(given)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        ("4h", 14400),
        ("30m", 1800),
        ("90s", 90),
        ("1d", 86400),
        ("1h30m", 5400),
        ("1h 30m 10s", 5410),
        ("1.5h", 5400),
        ("2 hours", 7200),
        ("45min", 2700),
        ("3600", 3600),
        ("04:00:00", 14400),
        ("10:30", 630),
        (3600, 3600),
        (90.4, 90),
        (0, 0),
    ],
)
def test_parse_duration_s(given: str | int | float, seconds: int) -> None:
    assert parse_duration_s(given) == seconds


@pytest.mark.parametrize(
    "given", ["forever", "4 hours and more", "h", "-4h", "4w", "", "1h30", "1:2:3:4", -1, True, None]
)
def test_parse_duration_s_errors(given: object) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_s(given)  # type: ignore[arg-type]


def test_duration_unknown_unit_is_named() -> None:
    with pytest.raises(ValueError, match='unknown unit "w"'):
        parse_duration_s("4w")


@pytest.mark.parametrize(("given", "seconds"), [("1s", 1), ("30d", 30 * 86400), (1, 1), ("720h", 2592000)])
def test_max_runtime_bounds_accepted(given: object, seconds: int) -> None:
    assert validate_spec({"name": "j", "run": "x", "max_runtime": given}).max_runtime_s == seconds


@pytest.mark.parametrize("given", ["0s", 0, "30d1s", 10**9, "forever", 1.5e9, [1]])
def test_max_runtime_bounds_refused(given: object) -> None:
    with pytest.raises(SpecError) as info:
        validate_spec({"name": "j", "run": "x", "max_runtime": given})
    assert [e.field for e in info.value.errors] == ["max_runtime"]
    assert "4h" in info.value.errors[0].fix


# --- GPU models ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("NVIDIA GeForce RTX 4090", "RTX4090"),
        ("NVIDIA GeForce RTX 3090 Ti", "RTX3090TI"),
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("Tesla V100-SXM2-16GB", "V100"),
        ("Tesla T4", "T4"),
        ("NVIDIA RTX A6000", "RTXA6000"),
        ("NVIDIA RTX 6000 Ada Generation", "RTX6000ADA"),
        ("NVIDIA H100 NVL", "H100"),
        ("NVIDIA L40S", "L40S"),
        ("RTX 4090", "RTX4090"),
        ("rtx4090", "RTX4090"),
        ("RTX4090", "RTX4090"),
        ("AMD Instinct MI300X", "MI300X"),
    ],
)
def test_normalise_gpu_model(name: str, model: str) -> None:
    assert normalise_gpu_model(name) == model
    assert normalise_gpu_model(model) == model  # idempotent


def test_gpu_allow_list_is_normalised() -> None:
    spec = parse_job_yaml(job("resources: {gpus: 1, gpu: [RTX 4090, NVIDIA A100-SXM4-80GB, h100]}"))
    assert spec.resources.gpu == ["RTX4090", "A100", "H100"]


@pytest.mark.parametrize("gpu", ["[]", "NVIDIA", '""', "x" * 65, "{a: 1}"])
def test_gpu_allow_list_rejects(gpu: str) -> None:
    errors = errors_of(job(f"resources: {{gpus: 1, gpu: {gpu}}}"))
    assert errors[0].field.startswith("resources.gpu")


# --- messages -----------------------------------------------------------------------------------


def test_unknown_field_suggests_nearest() -> None:
    (error,) = errors_of(job("resources:\n  gpus: 1\n  gpu_mem: 24GB\n"))
    assert error.field == "resources.gpu_mem"
    assert error.message == 'unknown field "gpu_mem"'
    assert error.fix.startswith('did you mean "gpu_memory"? valid fields: gpus, gpu_memory, ')


@pytest.mark.parametrize(
    ("body", "field", "hint"),
    [
        ("priorty: high", "priorty", 'did you mean "priority"?'),
        ("max_runtime_s: 60", "max_runtime_s", 'did you mean "max_runtime"?'),
        ("timeout: 4h", "timeout", 'did you mean "max_runtime"?'),
        ("resources: {memory_gb: 4}", "resources.memory_gb", 'did you mean "memory"?'),
        ("resources: {num_gpus: 2}", "resources.num_gpus", 'did you mean "gpus"?'),
        ("gpu_memory: 24GB", "gpu_memory", "move it under resources:"),
        ("resources: {retries: 3}", "resources.retries", "top level"),
        ("resources: {gpus: 1, gpu_memory: {min_gb: 8, mx_gb: 9}}", "resources.gpu_memory.mx_gb", '"max_gb"'),
        ("zzzz: 1", "zzzz", "valid fields: name, kind, resources,"),
    ],
)
def test_unknown_field_hints(body: str, field: str, hint: str) -> None:
    (error,) = errors_of(job(body))
    assert error.field == field
    assert hint in error.fix


def test_all_errors_are_collected_in_field_order() -> None:
    text = "name: bad name\nkind: training\nresources: {gpus: -1, memory: lots, tier: cloud}\n"
    errors = errors_of(text + "retries: 99\nfoo: 1\n")
    assert [e.field for e in errors] == [
        "name",
        "kind",
        "resources.gpus",
        "resources.memory",
        "resources.tier",
        "run",
        "retries",
        "foo",
    ]


def test_messages_quote_the_value_and_list_choices() -> None:
    (error,) = errors_of(job("priority: urgent"))
    assert '"urgent"' in error.message and error.fix == "use one of: low, normal, high"
    (error,) = errors_of(job("resources: {gpus: 1, gpu_memory: 24 gigs}"))
    assert '"24 gigs"' in error.message
    assert error.fix == "use a size like 24GB, a range like 16GB..48GB, or 16GB+ (per GPU, at most 4096GB)"
    (error,) = errors_of(job("resources: {gpus: 1, gpu_memory: 48GB..16GB}"))
    assert "48GB" in error.message and "16GB..48GB" in error.fix
    (error,) = errors_of(job("resources: {gpus: 0, gpu_memory: 24GB}"))
    assert error.fix.startswith("set resources.gpus to 1 or more, or remove resources.gpu_memory")
    (error,) = errors_of(job("retries: -1"))
    assert "0 to 20" in error.fix


def test_long_values_are_truncated_in_messages() -> None:
    (error,) = errors_of(job("resources: {memory: " + "9" * 200 + "x}"))
    assert len(error.message) < 150 and "..." in error.message


def test_spec_error_str_and_json() -> None:
    with pytest.raises(SpecError) as info:
        validate_spec({"name": "j", "run": "x", "retries": 50, "resources": {"gpus": "two"}})
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("resources.gpus: ") and lines[0].endswith(
        "(use a whole number from 0 (CPU only) to 64: GPUs on each node)"
    )
    assert lines[1].startswith("retries: ")
    assert isinstance(info.value, ValueError)
    payload = json.loads(json.dumps([e.model_dump(mode="json") for e in info.value.errors]))
    assert payload[0] == {
        "field": "resources.gpus",
        "message": 'should be a valid integer, got "two"',
        "fix": lines[0].split("(", 1)[1][:-1],
    }
    assert [FieldError.model_validate(p) for p in payload] == info.value.errors


def test_spec_error_pickles() -> None:
    with pytest.raises(SpecError) as info:
        validate_spec({"name": "j"})
    again = pickle.loads(pickle.dumps(info.value))
    assert again.errors == info.value.errors and str(again) == str(info.value)


def test_document_errors_use_empty_field() -> None:
    for text in ("", "   \n", "# only a comment\n", "- a\n- b\n", "42\n", "hello\n"):
        errors = errors_of(text)
        assert [e.field for e in errors] == [""]
        assert str(SpecError(errors)).startswith("(document): ")


def test_bad_yaml_names_line_and_column() -> None:
    (error,) = errors_of("name: j\nrun: x\nresources:\n\tgpus: 1\n")
    assert "line 4, column 1" in error.message and "tabs" in error.fix
    (error,) = errors_of("name: j\nrun: [x\n")
    assert error.field == "" and "line" in error.message and "column" in error.message


def test_duplicate_keys_refused_but_merge_keys_work() -> None:
    (error,) = errors_of("name: j\nrun: x\nresources: {gpus: 1, gpus: 2}\n")
    assert "duplicate" in error.message and '"gpus"' in error.message
    spec = parse_job_yaml("name: j\nrun: x\nresources:\n  <<: {gpus: 1, cpus: 2}\n  cpus: 4\n")
    assert (spec.resources.gpus, spec.resources.cpus) == (1, 4)  # an explicit key overrides a merged one


def test_yaml_booleans_are_only_true_and_false() -> None:
    for word in ("yes", "no", "on", "off", "y", "Yes"):
        (error,) = errors_of(job(f"preemptible: {word}"))
        assert error.field == "preemptible" and "true or false" in error.fix
    assert parse_job_yaml(job("preemptible: False")).preemptible is False
    assert parse_job_yaml(job("env: {DEBUG: on, X: true}")).env == {"DEBUG": "on", "X": "true"}
    assert parse_job_yaml(job("resources: {gpus: 1, gpu: [NO]}")).resources.gpu == ["NO"]


def test_yaml_tags_cannot_build_objects() -> None:
    (error,) = errors_of("name: j\nrun: !!python/object/apply:os.system ['true']\n")
    assert error.field == "" and "invalid YAML" in error.message


# --- limits -------------------------------------------------------------------------------------


def test_huge_run_is_refused() -> None:
    (error,) = errors_of(job("").replace("run: x", "run: " + "x" * (64 * 1024 + 1)))
    assert error.field == "run" and "65536" in error.message and len(error.message) < 200
    assert parse_job_yaml("name: j\nrun: " + "x" * (64 * 1024)).run == "x" * 64 * 1024


def test_huge_document_is_refused_before_parsing() -> None:
    text = "name: j\nrun: x\n# " + "x" * (1 << 20) + "\n"
    (error,) = errors_of(text)
    assert error.field == "" and "1 MiB" in error.message


def test_nested_aliases_do_not_blow_up_messages() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    errors = errors_of("\n".join(lines) + "\nname: j\nrun: *a11\n")
    assert errors[0].field == "run" and len(str(SpecError(errors))) < 5000


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"COOP_ATTEMPT": "1"}, "env.COOP_ATTEMPT"),
        ({"coop_x": "1"}, "env.coop_x"),
        ({"1ABC": "1"}, "env.1ABC"),
        ({"A B": "1"}, "env.A B"),
        ({"A": "x" * 8193}, "env.A"),
        ({"A": None}, "env.A"),
        ({"A": {"b": 1}}, "env.A"),
        ({"A": "a\0b"}, "env.A"),
        ({f"V{i}": "1" for i in range(129)}, "env"),
    ],
)
def test_env_rejects(env: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError) as info:
        validate_spec({"name": "j", "run": "x", "env": env})
    assert info.value.errors[0].field == field


def test_env_converts_scalars_and_accepts_limits() -> None:
    env = {"N": 1, "F": 1.5, "B": False, "S": "s", "_X": "x" * 8192}
    assert validate_spec({"name": "j", "run": "x", "env": env}).env == {
        "N": "1",
        "F": "1.5",
        "B": "false",
        "S": "s",
        "_X": "x" * 8192,
    }
    many = {f"V{i}": "1" for i in range(128)}
    assert len(validate_spec({"name": "j", "run": "x", "env": many}).env) == 128


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"resources": {"gpus": 64, "cpus": 1024}, "retries": 20}, None),
        ({"resources": {"cpus": 1025}}, "resources.cpus"),
        ({"resources": {"cpus": 2.0}}, "resources.cpus"),
        ({"resources": {"gpus": "1"}}, "resources.gpus"),
        ({"retries": 21}, "retries"),
        ({"retries": True}, "retries"),
        ({"name": "a" * 63}, None),
        ({"name": "-lead"}, "name"),
        ({"name": ""}, "name"),
        ({"workdir": "w" * 4097}, "workdir"),
        ({"checkpoint_dir": "c" * 4097}, "checkpoint_dir"),
        ({"checkpoint_dir": ""}, "checkpoint_dir"),
        ({"setup": "s" * (64 * 1024 + 1)}, "setup"),
        ({"preemptible": 1}, "preemptible"),
        ({"preemptible": "true"}, "preemptible"),
        ({"priority": "HIGH"}, "priority"),
        ({"resources": {"memory": "0MB"}}, "resources.memory"),
        ({"resources": {"memory": True}}, "resources.memory"),
        ({"resources": {"gpus": 1, "compute_capability": "9.0..8.0"}}, "resources.compute_capability"),
        ({"resources": {"gpus": 1, "gpu_memory": {"min_gb": 0}}}, "resources.gpu_memory.min_gb"),
        ({"resources": {"gpus": 1, "gpu_memory": {"max_gb": 8}}}, "resources.gpu_memory.min_gb"),
        ({"resources": None, "env": None}, None),
        ({1: "x"}, "1"),
    ],
)
def test_bounds_and_strict_types(data: dict[object, object], field: str | None) -> None:
    spec = {"name": "j", "run": "x", **data}
    if field is None:
        assert isinstance(validate_spec(spec), JobSpec)
        return
    with pytest.raises(SpecError) as info:
        validate_spec(spec)
    assert info.value.errors[0].field == field


def test_validate_spec_accepts_a_spec_and_python_construction_works() -> None:
    spec = JobSpec(name="j", run="x", resources=Resources(gpus=1, memory=16), max_runtime="1h")  # type: ignore[arg-type]
    assert validate_spec(spec) is spec
    assert spec.resources.memory_gb == 16.0 and spec.max_runtime_s == 3600
    assert spec.model_dump()["resources"]["memory"] == 16.0


# --- hardening (issue 12): every number bounded, no nesting or text that breaks what follows ---------


@pytest.mark.parametrize(
    ("data", "field", "says"),
    [
        ({"resources": {"memory": "100001GB"}}, "resources.memory", "at most 100000GB"),
        ({"resources": {"memory": 1e300}}, "resources.memory", "at most 100000GB"),
        ({"resources": {"memory": 10**400}}, "resources.memory", "far too large"),
        ({"resources": {"memory": "9" * 100 + "GB"}}, "resources.memory", "not a size"),
        ({"resources": {"memory": float("inf")}}, "resources.memory", "more than 0"),
        ({"resources": {"gpus": 1, "gpu_memory": "5TB"}}, "resources.gpu_memory", "at most 4096GB"),
        ({"resources": {"gpus": 1, "gpu_memory": "16GB..5TB"}}, "resources.gpu_memory", "at most 4096GB"),
        ({"resources": {"gpus": 1, "gpu_memory": {"min_gb": 1e300}}}, "resources.gpu_memory.min_gb", "4096"),
        ({"resources": {"gpus": 1, "gpu_memory": {"min_gb": float("nan")}}}, "resources.gpu_memory.min_gb", "finite"),
        ({"resources": {"gpus": 1, "compute_capability": 10**400}}, "resources.compute_capability", "capability"),
        ({"resources": {"gpus": 2**70}}, "resources.gpus", "64"),
        ({"resources": {"cpus": 2**70}}, "resources.cpus", "1024"),
        ({"max_runtime": 10**400}, "max_runtime", "far too large"),
        ({"max_runtime": float("nan")}, "max_runtime", "not a duration"),
        ({"max_runtime": "1" * 400 + "h"}, "max_runtime", "too long"),
        ({"max_runtime": "1e308s"}, "max_runtime", "not a duration"),
        ({"retries": 2**70}, "retries", "20"),
    ],
)
def test_numbers_are_bounded_and_finite(data: dict[str, object], field: str, says: str) -> None:
    with pytest.raises(SpecError) as info:
        validate_spec({"name": "j", "run": "x", **data})
    (error,) = info.value.errors
    assert error.field == field and says in error.message + error.fix, error


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[" * 100_000, "nested more than 16"),
        ("name: j\nrun: x\nenv:\n" + "".join(" " * i + "a:\n" for i in range(1, 100)), "nested more than 16"),
        ("name: j\nrun: x\nenv: {A: " + "9" * 5000 + "}\n", "4300 digits"),
        ("name: j\nrun: \ud800\n", "lone surrogate at line 2"),
    ],
)
def test_yaml_that_would_break_the_parser_is_one_error(text: str, says: str) -> None:
    (error,) = errors_of(text)
    assert error.field == "" and says in error.message, error
    assert "sys.set_int_max_str_digits" not in error.message


def test_nesting_cycles_and_surrogates_name_the_field() -> None:
    deep: dict[str, object] = {}
    inner = deep
    for _ in range(20):
        inner["a"] = {}
        inner = inner["a"]  # type: ignore[assignment]
    cyclic: list[object] = []
    cyclic.append(cyclic)
    cases: list[tuple[dict[str, object], str, str]] = [
        ({"env": deep}, "env.a.a", "nested more than 16"),
        ({"env": {"A": cyclic}}, "env.A[0]", "contains itself"),
        ({"run": "\udc80"}, "run", "lone surrogate"),
        ({"env": {"\ud800": "1"}}, "env", "lone surrogate"),
        ({"resources": {"gpu": ["RTX4090", "\ud83d"]}}, "resources.gpu[1]", "lone surrogate"),
    ]
    for data, field, says in cases:
        with pytest.raises(SpecError) as info:
            validate_spec({"name": "j", "run": "x", **data})
        (error,) = info.value.errors
        assert error.field == field and says in error.message, (data, error)


def test_shared_aliases_are_walked_once_and_legitimate_depth_passes() -> None:
    """Aliases repeated at every level make 5^12 paths to one list: the walk visits each container once."""
    lines = ["a0: &a0 [x]"] + [
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 13)
    ]
    errors = errors_of("\n".join(lines) + "\nname: j\nrun: x\n")
    assert [e.field for e in errors] == [f"a{i}" for i in range(13)]  # unknown fields, nothing worse
    spec = validate_spec({"name": "j", "run": "x", "resources": {"gpus": 1, "gpu_memory": {"min_gb": 24}}})
    assert spec.resources.gpu_memory == MemRange(min_gb=24)


def test_a_huge_integer_shows_in_a_message_without_failing() -> None:
    with pytest.raises(SpecError) as info:
        validate_spec({"name": "j", "run": "x", "retries": 10**5000})
    assert "too large to show" in info.value.errors[0].message


# --- arrays -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "stored", "tasks"),
    [
        ("array: 3", 3, [0, 1, 2]),
        ('array: "3"', 3, [0, 1, 2]),  # a bare number is a count, as on the command line
        ("array: 0-4", "0-4", [0, 1, 2, 3, 4]),
        ("array: 0-9:3", "0-9:3", [0, 3, 6, 9]),
        ("array: 0-10:3", "0-9:3", [0, 3, 6, 9]),  # the last index the step reaches
        ("array: 1,5,7", "1,5,7", [1, 5, 7]),
        ("array: ' 1, 3-4 ,9 '", "1,3-4,9", [1, 3, 4, 9]),
        ("array: 5-5", "5-5", [5]),
        ("array: [5]", "5-5", [5]),  # one index, not a count of 5
        ("array: [2, 0]", "2,0", [2, 0]),
        ("array: 100000", 100000, None),
        ("array: 0-199999:2", "0-199998:2", None),
    ],
)
def test_array_counts_and_indices(body: str, stored: object, tasks: list[int] | None) -> None:
    spec = parse_job_yaml(job(body))
    assert spec.array == stored
    assert arrays.size(spec.array) == (len(tasks) if tasks else 100000)
    if tasks is not None:
        assert arrays.indices(spec.array) == tasks
    assert arrays.values(spec.array) is None
    dumped = spec.model_dump(mode="json", by_alias=True)
    assert dumped["array"] == stored and validate_spec(dumped) == spec  # the stored form reads back the same


def test_array_matrix_is_the_cross_product_last_key_fastest() -> None:
    spec = parse_job_yaml(job("array: {model: [a, b], task: [mmlu, gsm8k, arc], lr: 0.001}\nmax_parallel: 2"))
    assert spec.array == {"model": ["a", "b"], "task": ["mmlu", "gsm8k", "arc"], "lr": ["0.001"]}
    assert spec.max_parallel == 2 and arrays.size(spec.array) == 6 and arrays.indices(spec.array) == list(range(6))
    combos = list(arrays.values(spec.array) or [])
    assert [(v["model"], v["task"]) for v in combos] == [
        ("a", "mmlu"), ("a", "gsm8k"), ("a", "arc"), ("b", "mmlu"), ("b", "gsm8k"), ("b", "arc"),
    ]  # fmt: skip
    assert arrays.task_env(12, 4, 6, combos[4]) == {
        "COOP_ARRAY_ID": "12", "COOP_ARRAY_INDEX": "4", "COOP_ARRAY_SIZE": "6",
        "COOP_ARRAY_MODEL": "b", "COOP_ARRAY_TASK": "gsm8k", "COOP_ARRAY_LR": "0.001",
    }  # fmt: skip
    assert validate_spec(spec.model_dump(mode="json")) == spec
    task = spec.task_spec()
    assert task.array is None and task.max_parallel is None
    assert "array" not in task.model_dump(mode="json") and "max_parallel" not in task.model_dump(mode="json")


def test_array_values_become_text_as_env_values_do() -> None:
    spec = parse_job_yaml(job("array: {seed: [1, 2], flash: [true, false], lr: [0.0001], name: x}"))
    assert spec.array == {"seed": ["1", "2"], "flash": ["true", "false"], "lr": ["0.0001"], "name": ["x"]}


def test_a_job_without_array_stores_no_array_field() -> None:
    dumped = parse_job_yaml(job("")).model_dump(mode="json", by_alias=True)
    assert "array" not in dumped and "max_parallel" not in dumped


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ("array: 0", "array", "at least 1"),
        ("array: -3", "array", "at least 1"),
        ("array: 100001", "array", "more than an array may hold (100000)"),
        ("array: 0-100000", "array", "more tasks than an array may hold (100000)"),
        ("array: {a: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], b: " + str(list(range(10001))) + "}", "array.b", "100000"),
        ("array: {}", "array", "the matrix is empty"),
        ("array: {model: [a], task: []}", "array.task", "empty"),
        ("array: {model: [a, [b]]}", "array.model[1]", "got a list"),
        ("array: {model: [a, {b: 1}]}", "array.model[1]", "got a mapping"),
        ("array: {model: [a, null]}", "array.model[1]", "got null"),
        ("array: {model: {b: 1}}", "array.model", "got a mapping"),
        ("array: {lr: [.inf]}", "array.lr[0]", "finite"),
        ("array: {learning-rate: [1]}", "array.learning-rate", "environment variable"),
        ("array: {1st: [1]}", "array.1st", "environment variable"),
        ("array: {index: [1]}", "array.index", "COOP_ARRAY_INDEX"),
        ("array: {Model: [a], MODEL: [b]}", "array.MODEL", "COOP_ARRAY_MODEL"),
        ("array: true", "array", "got true"),
        ("array: 2.5", "array", "got 2.5"),
        ("array: [a, b]", "array", "whole numbers"),
        ("array: []", "array", "empty"),
        ("array: 9-3", "array", "ends before it starts"),
        ("array: 0-9:0", "array", "step of 0"),
        ("array: 1,2,2", "array", "index 2 is named twice"),
        ("array: 0-9,5", "array", "index 5 is named twice"),
        ("array: 0-99999999", "array", "largest allowed"),
        ("array: ten", "array", "not an index"),
        ("array: ''", "array", "no indices"),
        ("max_parallel: 2", "max_parallel", "without array"),
        ("array: 4\nmax_parallel: 0", "max_parallel", "greater than or equal to 1"),
        ("array: 4\nmax_parallel: many", "max_parallel", "valid integer"),
    ],
)
def test_bad_arrays_name_the_field_and_the_fix(body: str, field: str, says: str) -> None:
    errors = errors_of(job(body))
    assert errors[0].field == field, errors
    assert says in errors[0].message and errors[0].fix


def test_array_option_takes_slurms_forms() -> None:
    assert arrays.parse_option("0-99") == ("0-99", None)
    assert arrays.parse_option("0-99:2%10") == ("0-98:2", 10)
    assert arrays.parse_option("1,5,7") == ("1,5,7", None)
    assert arrays.parse_option("100") == (100, None)  # a count, as array: 100 in job.yaml
    for bad in ("0-99%x", "0", "%4", "a-b"):
        with pytest.raises(arrays.ArrayError):
            arrays.parse_option(bad)
