"""The dashboard in a real browser (headless Chromium) against a real coordinator running jobs on a
real Ray cluster (fake GPUs): each role signs in and sees what the API lets it see.

One coordinator, one Ray cluster and one browser for the module. Members: ``rita`` (a researcher),
``dora`` (a donor: one node with one GPU), ``oscar`` (another member) and the admin. Screenshots of
every page go to test-artifacts/web/ for a reviewer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from coop.client import CoopClient, CoopError
from tests.api.helpers import node as node_registration
from tests.e2e.conftest import JOB_DIR, Coop, _coop, ray_cluster  # noqa: F401 (a fixture)
from tests.web.conftest import goto, screenshot, sign_in

pytestmark = pytest.mark.ray
GRAFANA = "https://grafana.coop.example/d/coop"
COOP = shutil.which("coop", path=str(Path(sys.executable).parent)) or "coop"


@pytest.fixture(scope="module")
def coop(ray_cluster: tuple[Any, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coop]:  # noqa: F811
    cluster, dashboard = ray_cluster
    before = os.environ.get("COOP_GRAFANA_URL")
    os.environ["COOP_GRAFANA_URL"] = GRAFANA  # read when the app is made
    try:
        made = _coop(cluster, dashboard, tmp_path_factory.mktemp("web"), None)
        c = next(made)
    finally:
        if before is None:
            os.environ.pop("COOP_GRAFANA_URL", None)
        else:
            os.environ["COOP_GRAFANA_URL"] = before
    for name in ("rita", "dora", "oscar"):
        TOKENS[name] = c.admin.create_member(name)["token"]
        c.members[name] = CoopClient(c.url, TOKENS[name])
    TOKENS["admin"] = c.admin.create_token(member="admin", name="web-tests")["token"]
    c.add_node("dora-box", "dora", gpus=1)
    yield c
    next(made, None)


TOKENS: dict[str, str] = {}


def token_of(_: Coop, member: str) -> str:
    return TOKENS[member]


def node_of(coop: Coop, node_id: int) -> dict[str, Any]:
    return coop.admin.request("GET", f"/nodes/{node_id}")  # type: ignore[no-any-return]


def cli_submit(coop: Coop, member: str, folder: Path, gate: Path) -> int:
    """``coop submit`` as a researcher runs it: the job file and its workdir, with COOP_URL/COOP_TOKEN."""
    folder.mkdir()
    shutil.copy(JOB_DIR / "job.py", folder / "job.py")
    spec = {
        "name": "web-steps",
        "run": f"{sys.executable} job.py",
        "resources": {"gpus": 1, "cpus": 1},
        "env": {"STEPS": "3", "STEP_S": "0.05", "GATE": str(gate)},
    }
    (folder / "job.yaml").write_text(json.dumps(spec))  # JSON is YAML
    env = {
        **os.environ,
        "COOP_URL": coop.url,
        "COOP_TOKEN": token_of(coop, member),
        "COOP_CONFIG_DIR": str(folder / ".config"),
    }
    done = subprocess.run(
        [COOP, "submit", "job.yaml", "--json"], cwd=folder, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout)["id"])


def test_sign_in_refuses_bad_tokens_and_a_login_link_keeps_the_token_out_of_urls(browser: Any, coop: Coop) -> None:
    page = browser.new_context().new_page()
    requests: list[str] = []
    loaded: dict[str, int] = {}
    page.on("request", lambda r: requests.append(r.url))
    page.on("response", lambda r: loaded.__setitem__(r.url, len(r.body())) if r.ok else None)
    page.goto(coop.url + "/")  # the coordinator's root leads to the dashboard
    expect(page.locator("#token")).to_be_visible()
    page.wait_for_load_state("networkidle")
    first_page = sum(loaded.values())
    assert first_page < 200_000, loaded
    assert not any("uPlot" in u for u in loaded), "the chart library loads only with a chart"
    screenshot(page, "01-sign-in")

    page.click("form button[type=submit]")
    expect(page.locator("main.login .problem")).to_contain_text("Paste your Coop token")
    page.fill("#token", "coop_not-a-token")
    page.click("form button[type=submit]")
    expect(page.locator("main.login .problem")).to_contain_text("unknown or revoked token")
    agent = coop.admin.create_token(kind="agent", member="dora")["token"]
    page.fill("#token", agent)
    page.click("form button[type=submit]")
    expect(page.locator("main.login .problem")).to_contain_text("agent token")
    assert page.evaluate("sessionStorage.length") == 0

    # a login link (make demo prints one): the token is in the fragment, which no request carries
    rita = token_of(coop, "rita")
    page.goto(f"{coop.url}/ui/#token={rita}")
    expect(page.locator("header.top .who")).to_contain_text("rita")
    assert "token" not in page.url and page.url.endswith("/ui/")
    assert page.evaluate("sessionStorage.getItem('coop.token')") == rita
    assert page.evaluate("history.length") >= 1 and rita not in page.evaluate("location.href")
    assert not [u for u in requests if rita in u], "the token went into a request's URL"
    expect(page.locator("header.top nav")).not_to_contain_text("Admin")  # a member's navigation

    page.click("#sign-out")
    expect(page.locator("#token")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    page.context.close()


def test_a_job_submitted_with_the_cli_goes_pending_running_succeeded_with_its_logs(
    browser: Any, coop: Coop, tmp_path: Path
) -> None:
    node = coop.nodes["dora-box"]
    donor = sign_in(browser, coop.url, token_of(coop, "dora"), "/ui/nodes")
    card = donor.locator(f'section.node[data-node-id="{node.id}"]')
    expect(card.locator(".badge")).to_have_text("online")
    card.locator('button[data-action="pause"]').click()  # the donor takes the node back for a while
    expect(card.locator(".badge")).to_have_text("paused")
    assert node_of(coop, node.id)["coordinator_paused"] is True
    screenshot(donor, "02-donor-nodes-paused")

    rita = sign_in(browser, coop.url, token_of(coop, "rita"), "/ui/balance")
    expect(rita.locator("#balance")).to_be_visible()
    spent = rita.locator('#balance-totals [data-kind="spent"]')
    spent_before = spent.inner_text()
    screenshot(rita, "03-balance-before")
    goto(rita, "/ui/")

    gate = tmp_path / "gate"
    job_id = cli_submit(coop, "rita", tmp_path / "job", gate)
    row = rita.locator(f'tr[data-job-id="{job_id}"]')
    expect(row).to_have_attribute("data-state", "PENDING")  # the only GPU is paused
    expect(row.locator(".reason")).to_contain_text("paused")  # the scheduler's waiting reason
    screenshot(rita, "04-jobs-pending")
    row.locator("a").click()
    job = rita.locator(f'article.job[data-job-id="{job_id}"]')
    expect(job).to_have_attribute("data-state", "PENDING")
    expect(rita.locator("#job-reason")).to_contain_text("1 matching node is paused")
    expect(rita.locator("#log-status")).to_contain_text("waiting for the job to start")
    screenshot(rita, "05-job-pending")

    card.locator('button[data-action="resume"]').click()
    expect(card.locator(".badge")).to_have_text("online")
    expect(job).to_have_attribute("data-state", "RUNNING", timeout=90_000)
    log = rita.locator("#log")
    expect(log).to_contain_text(f"job {job_id} attempt 1", timeout=60_000)  # shipped while it runs
    expect(log).to_contain_text("step 3")
    expect(rita.locator("#log-status")).to_contain_text("following attempt 1")
    expect(log).not_to_contain_text("done")  # it waits for the gate
    screenshot(rita, "06-job-running-logs")

    gate.touch()
    expect(job).to_have_attribute("data-state", "SUCCEEDED", timeout=90_000)
    expect(log).to_contain_text("done")
    expect(rita.locator("#log-status")).to_contain_text("complete")
    expect(rita.locator("#cancel")).to_have_count(0)
    assert log.inner_text().count("step 1\n") == 1, "each line once, as coop logs -f shows it"
    events = rita.locator("table.events")
    for state in ("PENDING", "RUNNING", "SUCCEEDED"):
        expect(events).to_contain_text(state)
    download_button = rita.locator('#outputs button[data-file="result.json"]')
    expect(download_button).to_be_visible(timeout=60_000)  # once the data plane has it
    with rita.expect_download() as download:
        download_button.click()
    result = json.loads(Path(download.value.path()).read_text())
    assert result == {"steps": 3, "attempt": 1, "resumed_from": 0}
    screenshot(rita, "07-job-succeeded")

    # the ledger charged the job: the balance page's chart and totals follow
    goto(rita, "/ui/balance")
    expect(spent).not_to_have_text(spent_before, timeout=60_000)
    chart = rita.locator("#balance-chart")
    expect(chart.locator("canvas")).to_have_count(1)
    assert int(chart.get_attribute("data-points") or 0) >= 1
    expect(rita.locator('#fairness [data-kind="used"]')).not_to_have_text("0.000 GPU-h")
    expect(rita.locator("table.by-job")).to_contain_text(f"#{job_id}")
    screenshot(rita, "08-balance-after")

    # the donor sees the guest job on its node, and what it earned there
    expect(card.locator(".guest-jobs")).to_contain_text(f"#{job_id} web-steps", timeout=60_000)
    expect(card.locator('[data-kind="earned"]')).not_to_contain_text("0.00 from guests")
    screenshot(donor, "09-donor-nodes-earned")
    for page in (rita, donor):
        assert page.console_log.errors == []
        page.context.close()


def test_a_member_cannot_open_another_members_job(browser: Any, coop: Coop) -> None:
    theirs = coop.submit("rita", "rita-private", env={"STEPS": "1"})
    oscar = sign_in(browser, coop.url, token_of(coop, "oscar"))
    expect(oscar.locator("p.empty")).to_contain_text("No jobs")  # rita's jobs are not in oscar's list
    oscar.goto(f"{coop.url}/ui/jobs/{theirs['id']}")  # a full load: the tab keeps its session
    error = oscar.locator(".error-page")
    expect(error).to_have_attribute("data-status", "403")
    expect(error).to_contain_text(f"job {theirs['id']} belongs to another member")
    expect(oscar.locator("body")).not_to_contain_text("rita-private")
    screenshot(oscar, "10-forbidden-job")
    goto(oscar, "/ui/admin")  # the admin's page, from a member: the API's 403 again
    expect(error).to_have_attribute("data-status", "403")
    screenshot(oscar, "11-forbidden-admin")
    goto(oscar, "/ui/jobs/not-a-number")
    expect(error).to_have_attribute("data-status", "404")
    # oscar's nodes page lists no one else's machine, and offers no pause for it
    goto(oscar, "/ui/nodes")
    expect(oscar.locator("main.page")).to_contain_text("oscar donates no machines")
    expect(oscar.locator("section.node")).to_have_count(0)
    assert oscar.console_log.errors == []
    oscar.context.close()


def test_the_admin_approves_nodes_sets_quotas_and_creates_and_revokes_tokens(browser: Any, coop: Coop) -> None:
    agent = CoopClient(coop.url, coop.admin.create_token(kind="agent", member="dora")["token"])
    waiting = agent.register_node(node_registration("dora-spare", gpus=2))
    assert waiting["approved"] is False
    admin = sign_in(browser, coop.url, TOKENS["admin"])
    expect(admin.locator("header.top nav")).to_contain_text("Admin")
    goto(admin, "/ui/admin")
    expect(admin.locator("#grafana")).to_have_attribute("href", GRAFANA)
    expect(admin.locator('#glance .card[data-status="online"]')).to_contain_text("1 GPUs online")
    expect(admin.locator('#glance .card[data-status="awaiting approval"]')).to_contain_text("2 GPUs")
    screenshot(admin, "12-admin")

    row = admin.locator(f'#nodes tr[data-node-id="{waiting["id"]}"]')
    expect(row.locator(".badge")).to_have_text("awaiting approval")
    row.locator('button[data-action="approve"]').click()
    expect(row.locator('button[data-action="revoke"]')).to_be_visible()
    assert node_of(coop, waiting["id"])["approved"] is True
    row.locator('button[data-action="revoke"]').click()  # retire it again: asks first
    row.locator(".confirm button.danger").click()
    expect(row.locator('button[data-action="approve"]')).to_be_visible()
    assert node_of(coop, waiting["id"])["approved"] is False

    member = admin.locator('#members tr[data-member="oscar"]')
    member.locator('input[name="share"]').fill("2.5")
    member.locator('input[name="gpu_cap"]').fill("3")
    member.locator('button[data-action="save-quota"]').click()
    expect(member).to_contain_text("saved")
    quota = next(m for m in coop.admin.members() if m["name"] == "oscar")
    assert (quota["share"], quota["gpu_cap"]) == (2.5, 3)
    member.locator('input[name="share"]').fill("zero")
    member.locator('button[data-action="save-quota"]').click()
    expect(member.locator(".problem")).to_contain_text("share must be a number above 0")

    tokens = admin.locator("#tokens")
    tokens.locator('select[name="member"]').select_option("oscar")
    tokens.locator('input[name="token-name"]').fill("web-test")
    tokens.locator('button[data-action="create-token"]').click()
    secret = tokens.locator("#new-token code").inner_text()
    assert CoopClient(coop.url, secret).me()["member"] == "oscar"
    screenshot(admin, "13-admin-token-created")
    (made,) = [t for t in coop.admin.tokens() if t["name"] == "web-test"]
    token_row = tokens.locator(f'tr[data-token-id="{made["id"]}"]')
    token_row.locator('button[data-action="revoke-token"]').click()
    token_row.locator(".confirm button.danger").click()
    expect(token_row).to_have_attribute("data-revoked", "yes")
    with pytest.raises(CoopError) as refused:
        CoopClient(coop.url, secret).me()
    assert refused.value.status == 401
    assert admin.console_log.errors == []
    admin.context.close()


def test_a_revoked_token_signs_the_tab_out(browser: Any, coop: Coop) -> None:
    made = coop.admin.create_token(member="oscar", name="short-lived")
    page = sign_in(browser, coop.url, made["token"])
    coop.admin.revoke_token(made["id"])
    expect(page.locator("#token")).to_be_visible()  # the next poll is refused: back to sign-in
    expect(page.locator("main.login .notice")).to_contain_text("unknown or revoked token")
    assert page.evaluate("sessionStorage.length") == 0
    page.context.close()
