"""Wire models shared by the coordinator, the CLI and the agent (no SQLAlchemy here)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

# Re-exported: the CLI and the routes read the states here, with the wire models.
from coop.states import JOB_STATES as JOB_STATES
from coop.states import TERMINAL_STATES as TERMINAL_STATES
from coop.states import JobState as JobState

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]

# Bounds on every number the API takes: finite, and no more than is physically or sensibly possible,
# so that nothing overflows a database integer, a float sum, or the credit arithmetic.
MAX_ID = 2**31 - 1  # a database id: PostgreSQL's INTEGER (SQLite's would take 2**63 - 1)
MAX_OFFSET = 2**40  # a row offset or a byte offset in a log (ext4 refuses to seek past 2**44)
MAX_TFLOPS = 10_000.0  # dense bf16 TFLOP/s of one GPU (an H100 measures about 650), or of a node's CPUs
MAX_GPU_MEMORY_GB = 4096.0  # memory of one GPU
MAX_NODE_MEMORY_GB = 100_000.0  # RAM of one node (100 TB)
MAX_DISK_GB = 100_000_000.0  # disk of one node (100 PB)
MAX_GPU_INDEX = 1023
MAX_PID = 2**32 - 1
MIN_TEMPERATURE_C, MAX_TEMPERATURE_C = -273.15, 1000.0  # a GPU sensor's reading
MAX_POWER_W = 100_000.0  # a GPU's power draw
MAX_GPU_CAP = 1_000_000  # GPUs a member may hold at once
MAX_NODES = 64  # machines one gang job spans (job.yaml resources.nodes)
MAX_GRANT = 1_000_000_000.0  # credits in one grant (one credit: an hour of 100 TFLOP/s)
MAX_STORAGE_BYTES = 10**15  # a member's store quota (1 PB)
MAX_ARTIFACT_FILES = 10_000  # files in one output or checkpoint set (its manifest stays under the 2 MiB body cap)


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything Coop stores is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


class Strict(BaseModel):
    """A request body: unknown fields refused, no NaN or infinity in any number, and no NUL character
    in any text (PostgreSQL's text columns cannot hold one: the insert would fail, a 500)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if isinstance(value, str) and "\0" in value:
            raise ValueError("contains a NUL character (\\0); remove it")
        return value


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- jobs ---------------------------------------------------------------------------------------


class JobSubmit(Strict):
    spec: dict[str, Any] | str = Field(description="job.yaml as a mapping or as YAML text")
    workdir_sha256: Sha256 | None = Field(default=None, description="packed workdir uploaded to /v1/workdirs")


class JobOut(Out):
    id: int
    name: str
    kind: str
    state: str
    member: str
    gpus: int  # per node
    nodes: int = 1  # a gang's size
    priority: str
    preemptible: bool
    attempts: int
    retries: int = Field(description="attempts after its node was lost (a preemption never counts)")
    retries_on_failure: int = Field(default=0, description="attempts after the job failed on its own")
    reason: str | None
    exit_code: int | None
    submitted_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    array_id: int | None = Field(default=None, description="the array it is a task of (its id: its first task's)")
    array_index: int | None = Field(default=None, description="its index in the array (COOP_ARRAY_INDEX)")
    array_values: dict[str, str] | None = Field(default=None, description="its matrix values, by key")

    @model_validator(mode="before")
    @classmethod
    def _retries_on_failure_from_spec(cls, data: Any) -> Any:
        """Kept in the stored spec (no column of its own): read from there when the row has one."""
        if isinstance(data, dict) and "retries_on_failure" not in data and isinstance(data.get("spec"), dict):
            value = data["spec"].get("retries_on_failure", 0)
            return {**data, "retries_on_failure": value if type(value) is int and value >= 0 else 0}
        return data


class ArrayOut(Out):
    """A job array: its tasks are jobs (``GET /v1/arrays/{id}/tasks``); its state is made from theirs."""

    id: int = Field(description="the array's id: its first task's job id")
    name: str
    kind: str
    member: str
    gpus: int  # per task and node
    nodes: int = 1
    size: int = Field(description="tasks")
    max_parallel: int | None = Field(description="tasks that may run at once; null: no limit")
    state: str = Field(description="RUNNING while a task runs, PENDING while one waits, then SUCCEEDED if all did, "
                       "FAILED if any failed, else CANCELLED")  # fmt: skip
    counts: dict[str, int] = Field(description="tasks in each state")
    submitted_at: UtcDatetime


class ArrayDetail(ArrayOut):
    spec: dict[str, Any] = Field(description="as submitted, array: included")


class AttemptOut(Out):
    number: int
    state: str
    backend: str
    node_id: int | None  # a gang's rank 0
    pool_id: int | None
    backend_ref: str | None
    reason: str | None
    exit_code: int | None
    started_at: UtcDatetime
    finished_at: UtcDatetime | None
    gang: list[list[Any]] = Field(default_factory=list, description="a gang's [node id, [GPU indices]] by rank")


class EventOut(Out):
    at: UtcDatetime
    attempt: int | None
    from_state: str | None
    to_state: str
    reason: str


class JobDetail(JobOut):
    spec: dict[str, Any]
    workdir_sha256: str | None
    attempts_detail: list[AttemptOut]
    events: list[EventOut]
    outputs: list[ArtifactSetOut] = Field(default_factory=list, description="what each attempt sent back")


class LogChunk(BaseModel):
    data: str
    offset: int
    next_offset: int
    eof: bool = Field(description="true when the job is finished and nothing more will come")


# --- nodes --------------------------------------------------------------------------------------


class GpuSpec(Strict):
    index: int = Field(ge=0, le=MAX_GPU_INDEX)
    uuid: str | None = Field(default=None, max_length=128)
    name: str = Field(min_length=1, max_length=128)
    memory_gb: float = Field(gt=0, le=MAX_GPU_MEMORY_GB)
    compute_capability: float | None = Field(default=None, ge=0, le=100)
    driver_version: str | None = Field(default=None, max_length=32)
    cuda_version: str | None = Field(default=None, max_length=32)
    mig_mode: str | None = Field(default=None, max_length=16)


HEX_ID = r"^[0-9a-f]{64}$"  # a SHA-256 digest in lower-case hex


class NodeRegister(Strict):
    name: Name
    tier: Literal["consumer", "hpc"] = "consumer"
    network: Name | None = Field(default=None, description="a label for the network it sits on: gangs keep to one")
    cpus: int = Field(ge=1, le=100_000)
    memory_gb: float = Field(ge=0, le=MAX_NODE_MEMORY_GB)
    disk_gb: float = Field(default=0, ge=0, le=MAX_DISK_GB)
    os: str = Field(default="", max_length=128)
    python_version: str = Field(default="", max_length=32)
    ray_version: str | None = Field(default=None, max_length=32)
    tflops_per_gpu: float | None = Field(default=None, ge=0, le=MAX_TFLOPS)
    cpu_tflops: float | None = Field(default=None, ge=0, le=MAX_TFLOPS)
    gpus: list[GpuSpec] = Field(default_factory=list, max_length=64)
    # which machine this is, whatever its name (agent/identity.py; docs/agent.md "Which node a machine is")
    node_id: int | None = Field(
        default=None, ge=1, le=MAX_ID, description="the node this agent's state dir joined as before, if any"
    )
    hardware_id: str | None = Field(
        default=None, pattern=HEX_ID, description="HMAC-SHA256 (hex) of /etc/machine-id over the GPUs' UUIDs"
    )
    host_id: str | None = Field(default=None, pattern=HEX_ID, description="HMAC-SHA256 (hex) of /etc/machine-id")


class GpuTelemetry(Strict):
    """Bounds are wide (an agent must never be refused for a sensor's odd reading) but finite."""

    index: int = Field(ge=0, le=MAX_GPU_INDEX)
    utilization_pct: float | None = Field(default=None, ge=0, le=100)
    memory_used_gb: float | None = Field(default=None, ge=0, le=MAX_GPU_MEMORY_GB)
    temperature_c: float | None = Field(default=None, ge=MIN_TEMPERATURE_C, le=MAX_TEMPERATURE_C)
    power_w: float | None = Field(default=None, ge=0, le=MAX_POWER_W)


class ForeignProcess(Strict):
    pid: int = Field(ge=0, le=MAX_PID)
    name: str = Field(default="", max_length=256)
    gpu_index: int | None = Field(default=None, ge=0, le=MAX_GPU_INDEX)
    used_memory_gb: float | None = Field(default=None, ge=0, le=MAX_GPU_MEMORY_GB)


class Heartbeat(Strict):
    paused: bool = False
    gpus: list[GpuTelemetry] = Field(default_factory=list, max_length=64)
    foreign_processes: list[ForeignProcess] = Field(default_factory=list, max_length=256)


class GpuOut(Out):
    index: int
    uuid: str | None
    name: str
    model: str
    memory_gb: float
    compute_capability: float | None


class NodeOut(Out):
    id: int
    name: str
    member: str
    state: str
    paused: bool  # by its owner or from the coordinator: reclaim_reason says which
    coordinator_paused: bool = False  # paused through the API (coop node pause): only a resume there lifts it
    draining: bool
    approved: bool  # by an admin (coop admin node approve): until then no Ray token and no jobs
    reclaim: bool
    reclaim_reason: str | None
    tier: str
    network: str | None = None
    cpus: int
    memory_gb: float
    tflops_per_gpu: float | None
    cpu_tflops: float | None = None
    gpus: list[GpuOut]
    telemetry: dict[str, Any]
    registered_at: UtcDatetime
    last_heartbeat_at: UtcDatetime | None
    foreign_ray_work: int = 0  # Ray jobs, actors and task groups Coop did not start, seen here in the last check
    # state "retired": removed by an admin or its donor (coop admin node remove); kept for the ledger's history
    retired_at: UtcDatetime | None = None
    retired_by: str | None = None


class ForeignWorkOut(Out):
    """Work on the Ray cluster that Coop did not start (``coop admin foreign``)."""

    id: int
    kind: str  # job | actor | task
    ray_id: str
    ray_job_id: str | None
    node_id: int | None
    node: str  # the Coop node's name, "head" or "unknown"
    ray_node_id: str | None
    name: str
    first_seen: UtcDatetime
    last_seen: UtcDatetime
    gone_at: UtcDatetime | None


class NodeRegistered(NodeOut):
    """What an agent learns at registration: its node, and the Ray cluster to join (both Ray fields
    are None until an admin approved the node: the agent heartbeats, and registers again once it is)."""

    ray_address: str | None
    ray_auth_token: str | None
    heartbeat_interval_s: float
    # how the coordinator knew this machine: state_dir (the node id the agent kept), machine (its
    # machine-id and GPUs), gpus_changed (its machine-id and a GPU it had), name, or new
    matched_by: str = "name"
    note: str | None = None  # something the agent should log (a rename, a retired node replaced)


class NodeRemoved(NodeOut):
    """``POST /v1/nodes/{id}/remove``: the retired node, and the jobs that ran there (--force), which
    the next reconcile pass requeues as for a lost node."""

    requeued_jobs: list[int] = Field(default_factory=list)


# --- members, tokens, credit --------------------------------------------------------------------


class MemberCreate(Strict):
    name: Name
    share: float = Field(default=1.0, gt=0, le=1000)
    gpu_cap: int | None = Field(default=None, ge=0, le=MAX_GPU_CAP)
    admin: bool = Field(default=False, description="the member's first user is an admin")


class MemberOut(Out):
    id: int
    name: str
    share: float
    gpu_cap: int | None
    storage_bytes: int | None = Field(default=None, description="store quota; null: the coordinator's default")
    balance: float
    created_at: UtcDatetime


class MemberCreated(MemberOut):
    token: str = Field(description="the first user's token; shown once")


class QuotaUpdate(Strict):
    share: float | None = Field(default=None, gt=0, le=1000)
    gpu_cap: int | None = Field(default=None, ge=0, le=MAX_GPU_CAP, description="null removes the cap")
    storage_bytes: int | None = Field(
        default=None, ge=0, le=MAX_STORAGE_BYTES, description="artifact store quota; null: the coordinator's default"
    )


class GrantCreate(Strict):
    amount: float = Field(ge=-MAX_GRANT, le=MAX_GRANT, description="credits; negative to correct")
    note: str = Field(default="", max_length=500)


TokenKind = Literal["user", "agent"]


class TokenCreate(Strict):
    kind: TokenKind = "user"
    member: Name | None = Field(default=None, description="default: your own member (admins: any)")
    user: Name | None = Field(default=None, description="user tokens: the user (default: the member's first user)")
    name: str = Field(default="", max_length=64)


class TokenOut(Out):
    id: int
    prefix: str
    kind: str
    member: str
    user: str | None
    name: str
    created_at: UtcDatetime
    revoked_at: UtcDatetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="shown once; Coop keeps only its hash")


class LedgerEntryOut(Out):
    id: int
    at: UtcDatetime
    amount: float
    kind: str
    job_id: int | None
    node_id: int | None
    note: str


class Balance(BaseModel):
    member: str
    balance: float
    history: list[LedgerEntryOut] | None = None
    storage_used_bytes: int = Field(default=0, description="outputs and checkpoints held in the artifact store")
    storage_quota_bytes: int = Field(default=0, description="how much the member may hold there")


class LedgerJobTotal(BaseModel):
    """A member's ledger summed per job and kind: what each job cost or earned, in one row."""

    job_id: int | None = Field(description="null for credit that belongs to no job (grants, idle capacity)")
    job_name: str | None
    kind: str
    amount: float
    gpu_hours: float
    entries: int


class LedgerDayTotal(BaseModel):
    """A member's ledger for one UTC day, one kind and one job (idle credit: one node; grants: one note)."""

    day: str = Field(description="YYYY-MM-DD, UTC")
    kind: str = Field(description="spend, earn, own, idle or grant")
    job_id: int | None
    job_name: str | None
    counterpart: str | None = Field(
        description="spend: the donors it ran on; earn: the member whose job ran; own, idle: the node"
    )
    nodes: list[str] = Field(description="the nodes of its entries")
    amount: float
    gpu_hours: float
    entries: int
    first_at: UtcDatetime
    last_at: UtcDatetime
    note: str | None = Field(description="grants: their note (grants of one day and note are summed), else null")


class Me(BaseModel):
    member: str
    member_id: int
    user: str | None
    role: str
    kind: str


class Health(BaseModel):
    status: str
    version: str
    database: str


# --- artifacts (the data plane) -----------------------------------------------------------------

ArtifactKind = Literal["output", "checkpoint"]


def _relative_path(value: str) -> str:
    """A file's place inside an output or checkpoint folder: relative, and never leaving it."""
    parts = value.split("/")
    if value.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError("must be a relative path inside the folder (no leading '/', no '.', '..' or empty parts)")
    return value


RelativePath = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_relative_path)]


class ArtifactFileIn(Strict):
    path: RelativePath
    size: int = Field(ge=0, le=MAX_OFFSET)
    sha256: Sha256


class ArtifactSetIn(Strict):
    """What an attempt is about to send: every file of its output or checkpoint folder."""

    kind: ArtifactKind
    files: list[ArtifactFileIn] = Field(max_length=MAX_ARTIFACT_FILES)


class ArtifactSetBegun(BaseModel):
    set_id: int
    needed: list[str] = Field(description="the SHA-256 of each file the store does not hold yet: send these")


class UploadProgress(BaseModel):
    received: int = Field(description="bytes of this blob the coordinator holds: send the rest from here")


class ArtifactFileOut(Out):
    id: int
    path: str
    size: int
    sha256: str


class ArtifactSetOut(Out):
    id: int
    attempt: int
    kind: str
    files: int
    bytes: int
    completed_at: UtcDatetime | None
    items: list[ArtifactFileOut] = Field(default_factory=list)


class InputPlan(BaseModel):
    folder: str = Field(description="under $COOP_INPUT_DIR")
    job_id: int
    outputs: ArtifactSetOut


class TransferPlan(BaseModel):
    """What an attempt's wrapper puts in place before the job starts."""

    job_id: int
    attempt: int
    checkpoint: ArtifactSetOut | None = Field(description="the job's last checkpoint sync, restored first")
    inputs: list[InputPlan] = Field(default_factory=list, description="earlier jobs' outputs (inputs: in job.yaml)")
    checkpoint_sync_s: float
