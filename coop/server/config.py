"""Coordinator settings, read from ``COOP_*`` environment variables.

Built by :func:`load_settings` (never at import time) so tests and the CLI can
build their own.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COOP_", extra="ignore")

    data_dir: Path = Field(default=Path(".coop-data"), description="SQLite file, workdirs and logs live here")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default: SQLite in data_dir")
    host: str = "127.0.0.1"
    port: int = 8470
    max_workdir_mb: float = Field(default=64, gt=0, description="largest packed workdir accepted")
    max_workdir_expanded_mb: float | None = Field(
        default=None, gt=0, description="largest workdir once unpacked; default: 10x max_workdir_mb"
    )
    max_workdir_entries: int = Field(default=100_000, ge=1, description="most files and folders in one workdir")
    max_workdir_check_s: float = Field(
        default=30, gt=0, description="longest an upload's archive check or a launch's unpacking may take"
    )
    heartbeat_interval_s: float = Field(default=5, gt=0)
    missed_heartbeats_offline: int = Field(default=3, ge=1)
    ray_address: str | None = Field(default=None, description="Ray head (host:port) that agents join")
    ray_dashboard_url: str | None = Field(default=None, description="Ray Jobs API (http://head:8265); None: no Ray")
    instance: str = Field(
        default="coop",
        pattern=r"^[a-z0-9][a-z0-9-]{0,30}$",
        description="prefix of backend job ids; distinct per coordinator sharing one Ray cluster",
    )
    scheduler_interval_s: float = Field(default=1.0, gt=0)
    pool_refresh_s: float = Field(default=30.0, gt=0, description="how often HPC pools are asked what they offer")
    pool_poll_s: float = Field(default=5.0, gt=0, description="at most one squeue per HPC pool this often")
    foreign_work_interval_s: float = Field(
        default=15.0, ge=0, description="how often the Ray cluster is checked for work Coop did not start; 0: never"
    )
    log_ship_interval_s: float = Field(
        default=2.0, gt=0, description="how often running jobs' output is copied to data_dir/logs (coop logs -f)"
    )
    ledger_interval_s: float = Field(default=30.0, gt=0)
    preempt_grace_s: float = Field(default=60.0, ge=0, description="SIGTERM, then SIGKILL after this long")
    checkpoint_root: str | None = Field(
        default=None,
        description="a folder every node mounts, for COOP_CHECKPOINT_DIR; unset: a folder of the attempt's own "
        "on its node, restored from the artifact store (nothing shared needed)",
    )
    store_url: str | None = Field(
        default=None, description="artifact store: s3://bucket/prefix, or unset for data_dir/store on this disk"
    )
    store_endpoint_url: str | None = Field(default=None, description="an S3-compatible server's URL (not AWS)")
    max_artifact_gb: float = Field(default=50, gt=0, description="largest single output or checkpoint file")
    storage_quota_gb: float = Field(default=200, ge=0, description="a member's store quota unless an admin sets one")
    artifact_ttl_days: float = Field(
        default=30, ge=0, description="outputs (and ended jobs' checkpoints) older than this are deleted; 0: kept"
    )
    checkpoint_sync_s: float = Field(
        default=300, ge=10, description="a running job's checkpoint dir is sent to the store at most this often"
    )
    reclaim_wait_s: float = Field(default=600, ge=0, description="wait before a positive balance may reclaim")
    min_runtime_s: float = Field(default=600, ge=0, description="run time before a job may be reclaimed")
    fair_share_half_life_h: float = Field(default=168, gt=0, description="decay of past usage (7 days)")
    idle_credit_rate: float = Field(default=0.25, ge=0, le=1, description="credit rate of idle donated capacity")
    ray_auth_token: str | None = Field(default=None, description="Ray token (RAY_AUTH_MODE=token) for agents")
    token_cache_s: float = Field(
        default=2.0,
        ge=0,
        description="how long a worker process trusts a token it looked up (a revocation is immediate in the"
        " process that made it, and within this bound in other workers); 0: every request asks the database",
    )
    metrics_token: SecretStr | None = Field(
        default=None, description="bearer token Prometheus must send to /metrics; unset: /metrics is open"
    )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'coop.db').resolve()}"

    @property
    def workdir_dir(self) -> Path:
        return self.data_dir / "workdirs"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def transfer_key_path(self) -> Path:
        """The secret attempts' transfer credentials are derived from (made on first start)."""
        return self.data_dir / "transfer.key"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def max_workdir_bytes(self) -> int:
        return int(self.max_workdir_mb * 1024 * 1024)

    @property
    def max_workdir_expanded_bytes(self) -> int:
        mb = self.max_workdir_expanded_mb if self.max_workdir_expanded_mb is not None else 10 * self.max_workdir_mb
        return int(mb * 1024 * 1024)


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
