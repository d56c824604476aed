"""HTTP client for the coordinator, used by the CLI and the agent."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:  # not at run time: each job's wrapper imports this client, and pydantic's models cost 0.1 s
    from coop.schemas import Heartbeat, NodeRegister


class CoopError(Exception):
    """A failed call, with a message meant for a person."""

    def __init__(self, message: str, status: int | None = None, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.errors = errors or []

    def __str__(self) -> str:
        lines = [self.message]
        for e in self.errors:
            where = f"{e['field']}: " if e.get("field") else ""
            detail = e.get("message") or ""
            if detail and detail not in self.message:
                lines.append(f"  {where}{detail}")
            elif where:
                lines.append(f"  field: {e['field']}")
            if e.get("fix"):
                lines.append(f"  fix: {e['fix']}")
        return "\n".join(lines)


# --- TLS: the coordinator's certificate is always verified ------------------------------------------

CA_FIX = "give the PEM file of the CA that signed the coordinator's certificate (your admin has it: docs/deploy.md)"


def tls_verify(
    ca_file: str | Path | None = None, option: str = "--ca-file", ca_pem: str | None = None
) -> ssl.SSLContext | bool:
    """How a client verifies the coordinator: True (the public CAs httpx ships, for a certificate from
    Let's Encrypt and the like), or a context that trusts only the cooperative's own CA, from a PEM
    file (``ca_file``, named ``option`` in errors) or PEM text (``ca_pem``). Never False."""
    if ca_pem:
        try:
            return ssl.create_default_context(cadata=ca_pem)
        except (ssl.SSLError, ValueError) as exc:
            raise CoopError(f"{option} holds no usable CA certificate ({exc})", errors=[{"fix": CA_FIX}]) from None
    if not ca_file:
        return True
    path = Path(ca_file).expanduser()
    try:
        pem = path.read_text()
    except FileNotFoundError:
        reason = "no such file"
    except IsADirectoryError:
        reason = "a directory, not a PEM file"
    except (OSError, UnicodeDecodeError) as exc:
        reason = f"cannot read it ({exc.__class__.__name__}: {exc})"
    else:
        try:
            return ssl.create_default_context(cadata=pem)
        except (ssl.SSLError, ValueError):
            reason = "no PEM certificate in it"
    raise CoopError(f"{option} {path}: {reason}", errors=[{"fix": CA_FIX}])


def tls_failure(exc: BaseException) -> str | None:
    """The TLS reason behind a failed connection (an untrusted or misnamed certificate, a server that
    does not speak TLS), or None when it failed for another reason."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen.verify_message or str(seen)
        if isinstance(seen, ssl.SSLError):
            return seen.reason or str(seen)
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    return text if "CERTIFICATE_VERIFY_FAILED" in text or "SSL" in text else None


class CoopClient:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        ca_hint: str = "--ca-file",
    ) -> None:
        """``verify``: from ``tls_verify``; ``ca_hint``: how this program is given a CA file, for errors."""
        self.url = url.rstrip("/")
        self.ca_hint = ca_hint
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url + "/v1", headers=headers, timeout=timeout, transport=transport, verify=verify
        )

    def _tls_error(self, exc: BaseException) -> CoopError | None:
        reason = tls_failure(exc)
        if reason is None:
            return None
        if "WRONG_VERSION_NUMBER" in reason or "record layer" in reason or "packet length" in reason:
            return CoopError(
                f"the coordinator at {self.url} does not speak TLS on that port ({reason}): "
                "use http:// for a plain coordinator, or the https:// address of its reverse proxy"
            )
        return CoopError(
            f"the coordinator at {self.url} presented a certificate this machine does not trust ({reason}); "
            "nothing was sent",
            errors=[{"fix": f"if your cooperative runs its own CA, give its certificate with {self.ca_hint}"}],
        )

    def _scheme_hint(self, exc: httpx.HTTPError) -> str:
        """A plain-HTTP request to a port that speaks TLS gets no HTTP answer: say what to try."""
        if isinstance(exc, httpx.RemoteProtocolError) and self.url.startswith("http://"):
            https = "https://" + self.url.removeprefix("http://")
            return f"; if the coordinator serves TLS there (coop server --tls-cert, or a reverse proxy), use {https}"
        return ""

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CoopClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            if tls := self._tls_error(exc):
                raise tls from None
            raise CoopError(
                f"cannot reach the coordinator at {self.url}: is 'coop server' running there? "
                "Check the URL given to 'coop login' or in COOP_URL."
            ) from None
        except httpx.TimeoutException:
            raise CoopError(f"the coordinator at {self.url} did not answer in time; try again") from None
        except httpx.HTTPError as exc:
            raise CoopError(f"talking to the coordinator at {self.url} failed: {exc}{self._scheme_hint(exc)}") from None
        if resp.status_code >= 400:
            raise self._error(resp)
        if method == "HEAD" or not resp.content:
            return None
        return resp.json()

    @contextlib.contextmanager
    def stream(self, path: str, start: int = 0) -> Iterator[Iterator[bytes]]:
        """A GET's body as it arrives, from byte ``start`` on (a ``Range``: a download resuming)."""
        headers = {"Range": f"bytes={start}-"} if start else {}
        try:
            with self._http.stream("GET", path, headers=headers) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise self._error(resp)
                yield resp.iter_bytes(1 << 20)
        except httpx.HTTPError as exc:
            if tls := self._tls_error(exc):
                raise tls from None
            raise CoopError(f"the download from {self.url} was cut: {exc}") from None

    def _error(self, resp: httpx.Response) -> CoopError:
        try:
            body = resp.json()
        except ValueError:
            body = {}
        message = body.get("message") if isinstance(body, dict) else None
        errors = body.get("errors", []) if isinstance(body, dict) else []
        if resp.status_code == 401:
            message = (
                f"the coordinator refused the token ({message or 'unauthorized'}); "
                "run 'coop login' again or check COOP_TOKEN"
            )
        return CoopError(message or f"HTTP {resp.status_code} from {resp.request.url}", resp.status_code, errors)

    # --- jobs ---
    def has_workdir(self, sha256: str) -> bool:
        try:
            self.request("HEAD", f"/workdirs/{sha256}")
            return True
        except CoopError as exc:
            if exc.status == 404:
                return False
            raise

    def upload_workdir(self, sha256: str, data: bytes) -> Any:
        return self.request("PUT", f"/workdirs/{sha256}", content=data, headers={"Content-Type": "application/gzip"})

    def outputs(self, job_id: int, attempt: int | None = None) -> Any:
        params = {"attempt": attempt} if attempt else {}
        return self.request("GET", f"/jobs/{job_id}/outputs", params=params)

    def submit(self, spec: dict[str, Any] | str, workdir_sha256: str | None = None) -> Any:
        return self.request("POST", "/jobs", json={"spec": spec, "workdir_sha256": workdir_sha256})

    def jobs(
        self,
        states: list[str] | None = None,
        member: str | None = None,
        name: str | None = None,
        limit: int = 100,
        tasks: bool = True,
    ) -> Any:
        params: dict[str, Any] = {"limit": limit}
        if not tasks:
            params["tasks"] = "false"
        if states:
            params["state"] = states
        if member:
            params["member"] = member
        if name:
            params["name"] = name
        return self.request("GET", "/jobs", params=params)

    def job(self, job_id: int) -> Any:
        return self.request("GET", f"/jobs/{job_id}")

    def cancel(self, job_id: int) -> Any:
        return self.request("POST", f"/jobs/{job_id}/cancel")

    # --- arrays ---
    def submit_array(self, spec: dict[str, Any] | str, workdir_sha256: str | None = None) -> Any:
        return self.request("POST", "/arrays", json={"spec": spec, "workdir_sha256": workdir_sha256})

    def arrays(self, states: list[str] | None = None, member: str | None = None, limit: int = 100) -> Any:
        params: dict[str, Any] = {"limit": limit}
        if states:
            params["state"] = states
        if member:
            params["member"] = member
        return self.request("GET", "/arrays", params=params)

    def array(self, array_id: int) -> Any:
        return self.request("GET", f"/arrays/{array_id}")

    def array_tasks(self, array_id: int, states: list[str] | None = None, limit: int = 100_000) -> Any:
        params: dict[str, Any] = {"limit": limit}
        if states:
            params["state"] = states
        return self.request("GET", f"/arrays/{array_id}/tasks", params=params)

    def array_task(self, array_id: int, index: int) -> Any:
        return self.request("GET", f"/arrays/{array_id}/tasks/{index}")

    def cancel_array(self, array_id: int) -> Any:
        return self.request("POST", f"/arrays/{array_id}/cancel")

    def logs(self, job_id: int, offset: int = 0, attempt: int | None = None, rank: int = 0) -> Any:
        params: dict[str, Any] = {"offset": offset}
        if attempt:
            params["attempt"] = attempt
        if rank:
            params["rank"] = rank
        return self.request("GET", f"/jobs/{job_id}/logs", params=params)

    # --- nodes ---
    def nodes(self) -> Any:
        return self.request("GET", "/nodes")

    def foreign_work(self, gone: bool = False) -> Any:
        return self.request("GET", "/foreign-work", params={"gone": str(gone).lower()})

    def node_action(self, node_id: int, action: str) -> Any:
        return self.request("POST", f"/nodes/{node_id}/{action}")

    def approve_node(self, node_id: int) -> Any:
        return self.request("POST", f"/nodes/{node_id}/approve")

    def revoke_node(self, node_id: int) -> Any:
        return self.request("POST", f"/nodes/{node_id}/revoke")

    def register_node(self, req: NodeRegister) -> Any:
        return self.request("POST", "/nodes", json=req.model_dump(mode="json"))

    def heartbeat(self, node_id: int, hb: Heartbeat) -> Any:
        return self.request("POST", f"/nodes/{node_id}/heartbeat", json=hb.model_dump(mode="json"))

    def leave(self, node_id: int) -> Any:
        return self.request("POST", f"/nodes/{node_id}/leave")

    # --- members, tokens, credit ---
    def me(self) -> Any:
        return self.request("GET", "/me")

    def health(self) -> Any:
        return self.request("GET", "/health")

    def members(self) -> Any:
        return self.request("GET", "/members")

    def create_member(self, name: str, share: float = 1.0, gpu_cap: int | None = None, admin: bool = False) -> Any:
        return self.request("POST", "/members", json={"name": name, "share": share, "gpu_cap": gpu_cap, "admin": admin})

    def set_quota(self, member: str, **fields: Any) -> Any:
        return self.request("PUT", f"/members/{member}/quota", json=fields)

    def grant(self, member: str, amount: float, note: str = "") -> Any:
        return self.request("POST", f"/members/{member}/grants", json={"amount": amount, "note": note})

    def balance(self, member: str, history: bool = False, limit: int = 200) -> Any:
        return self.request("GET", f"/members/{member}/balance", params={"history": history, "limit": limit})

    def ledger_by_job(self, member: str) -> Any:
        return self.request("GET", f"/members/{member}/ledger/jobs")

    def ledger_by_day(self, member: str, days: int = 30) -> Any:
        return self.request("GET", f"/members/{member}/ledger/days", params={"days": days})

    def create_token(
        self, kind: str = "user", member: str | None = None, user: str | None = None, name: str = ""
    ) -> Any:
        return self.request("POST", "/tokens", json={"kind": kind, "member": member, "user": user, "name": name})

    def tokens(self) -> Any:
        return self.request("GET", "/tokens")

    def revoke_token(self, token_id: int) -> Any:
        return self.request("DELETE", f"/tokens/{token_id}")
