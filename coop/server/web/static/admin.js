// The admin's page: the pool at a glance, members and quotas, tokens, nodes to approve or retire,
// and a link to Grafana. Every call here is admin-only in the API: a member who opens it sees the 403.
import { useState } from "preact/hooks";
import { api, q, enc } from "./api.js";
import { html, usePoll, ErrorPage, Problem, Loading, Action, Badge, ago, credits, when, bytes } from "./ui.js";
import { status, gpuSummary, NodeActions, Telemetry } from "./nodes.js";

export function AdminPage({ me }) {
  const members = usePoll(() => api("/members"), 10000, []);
  const nodes = usePoll(() => api("/nodes"), 3000, []);
  const queue = usePoll(() => api(`/jobs${q({ state: ["PENDING", "RUNNING"], limit: 1000 })}`), 3000, []);
  const pools = usePoll(() => api("/pools"), 15000, []);
  const tokens = usePoll(() => api("/tokens"), 10000, []);
  const config = usePoll(() => api("/dashboard"), 0, []);
  if (!members.data && members.error) return html`<${ErrorPage} error=${members.error} what="The admin's page" />`;
  if (!members.data || !nodes.data || !queue.data) return html`<${Loading} />`;
  const grafana = config.data?.grafana_url;
  return html`<h1>Cooperative</h1>
    <p class="hint">
      ${grafana
        ? html`Trends and alerts: <a href=${grafana} target="_blank" rel="noopener noreferrer" id="grafana">Grafana</a>.`
        : html`Set <code>COOP_GRAFANA_URL</code> on the coordinator to link its Grafana here (docs/operations.md).`}
    </p>
    <${Problem} error=${nodes.error || queue.error || members.error} />
    <${Glance} nodes=${nodes.data} queue=${queue.data} pools=${pools} />
    <${Nodes} nodes=${nodes.data} reload=${nodes.reload} />
    <${Members} members=${members.data} reload=${members.reload} />
    <${Tokens} tokens=${tokens} members=${members.data} />`;
}

function Glance({ nodes, queue, pools }) {
  const live = nodes.filter((n) => n.state !== "left");
  const byStatus = {};
  for (const n of live) byStatus[status(n)] = (byStatus[status(n)] || 0) + n.gpus.length;
  const busy = queue.filter((j) => j.state === "RUNNING").reduce((s, j) => s + j.gpus * j.nodes, 0);
  const perMember = {};
  for (const j of queue) {
    const m = (perMember[j.member] ??= { PENDING: 0, RUNNING: 0, gpus: 0 });
    m[j.state] += 1;
    if (j.state === "RUNNING") m.gpus += j.gpus * j.nodes;
  }
  return html`<section id="glance">
    <h2>The pool at a glance</h2>
    <div class="cards">
      ${Object.entries(byStatus).map(
        ([s, g]) => html`<div class="card" data-status=${s}><span class="n">${g}</span> GPUs ${s}</div>`,
      )}
      <div class="card" data-status="busy"><span class="n">${busy}</span> GPUs running jobs</div>
      <div class="card"><span class="n">${queue.filter((j) => j.state === "PENDING").length}</span> jobs waiting</div>
    </div>
    <h3>Queue by member</h3>
    ${Object.keys(perMember).length === 0
      ? html`<p class="empty">Nothing waiting or running.</p>`
      : html`<table id="queue">
          <thead><tr><th>Member</th><th>Waiting</th><th>Running</th><th>GPUs in use</th></tr></thead>
          <tbody>
            ${Object.entries(perMember).map(
              ([m, c]) => html`<tr data-member=${m}><td>${m}</td><td>${c.PENDING}</td><td>${c.RUNNING}</td><td>${c.gpus}</td></tr>`,
            )}
          </tbody>
        </table>`}
    <h3>HPC pools</h3>
    <${Problem} error=${pools.error} />
    ${pools.data &&
    (pools.data.length === 0
      ? html`<p class="empty">No HPC pools (<code>coop admin pool add-slurm</code>).</p>`
      : html`<table id="pools">
          <thead><tr><th>Pool</th><th>Member</th><th>State</th><th>Running</th><th>Max jobs</th><th>Refreshed</th></tr></thead>
          <tbody>
            ${pools.data.map(
              (p) => html`<tr>
                <td>${p.name}</td><td>${p.member}</td><td><${Badge} state=${p.enabled ? p.state : "disabled"} title=${p.detail} /></td>
                <td>${p.running}</td><td>${p.max_jobs}</td><td>${ago(p.refreshed_at)}</td>
              </tr>`,
            )}
          </tbody>
        </table>`)}
  </section>`;
}

function Nodes({ nodes, reload }) {
  const order = (n) => (n.approved ? 1 : 0);
  const sorted = [...nodes].filter((n) => n.state !== "left").sort((a, b) => order(a) - order(b) || a.id - b.id);
  const decide = (n, action) => async () => {
    await api(`/nodes/${n.id}/${action}`, { method: "POST" });
    await reload();
  };
  return html`<section id="nodes">
    <h2>Nodes</h2>
    <p class="hint">A new node runs nothing until approved; revoking retires it from scheduling (jobs running there go on).</p>
    <table>
      <thead><tr><th>Node</th><th>Donor</th><th>Status</th><th>GPUs</th><th>TFLOP/s</th><th>Heartbeat</th><th>Telemetry</th><th></th></tr></thead>
      <tbody>
        ${sorted.map(
          (n) => html`<tr data-node-id=${n.id} data-node=${n.name}>
            <td>${n.name}</td><td>${n.member}</td><td><${Badge} state=${status(n)} title=${n.reclaim_reason} /></td>
            <td>${gpuSummary(n)}</td><td>${n.tflops_per_gpu ?? "–"}</td><td>${ago(n.last_heartbeat_at)}</td>
            <td><${Telemetry} node=${n} /></td>
            <td class="actions">
              ${n.approved
                ? html`<${Action} run=${decide(n, "revoke")} confirm=${`Retire ${n.name} from scheduling?`} danger data-action="revoke">Revoke</${Action}>`
                : html`<${Action} run=${decide(n, "approve")} data-action="approve">Approve</${Action}>`}
              <${NodeActions} node=${n} reload=${reload} />
            </td>
          </tr>`,
        )}
      </tbody>
    </table>
  </section>`;
}

function Members({ members, reload }) {
  return html`<section id="members">
    <h2>Members and quotas</h2>
    <table>
      <thead><tr><th>Member</th><th>Balance</th><th>Share</th><th>GPU cap</th><th>Store quota</th><th>Since</th><th></th></tr></thead>
      <tbody>
        ${members.map((m) => html`<${MemberRow} key=${m.id} member=${m} reload=${reload} />`)}
      </tbody>
    </table>
  </section>`;
}

function MemberRow({ member, reload }) {
  const [share, setShare] = useState(String(member.share));
  const [cap, setCap] = useState(member.gpu_cap === null ? "" : String(member.gpu_cap));
  const [note, setNote] = useState(null);
  const save = async () => {
    const body = { share: Number(share), gpu_cap: cap.trim() === "" ? null : Number(cap) };
    if (!(body.share > 0)) throw new Error("share must be a number above 0");
    if (body.gpu_cap !== null && !(Number.isInteger(body.gpu_cap) && body.gpu_cap >= 0))
      throw new Error("GPU cap must be a whole number of GPUs, or empty for none");
    await api(`/members/${enc(member.name)}/quota`, { method: "PUT", body });
    setNote("saved");
    await reload();
  };
  return html`<tr data-member=${member.name}>
    <td>${member.name}</td><td>${credits(member.balance)}</td>
    <td><input name="share" size="5" value=${share} onInput=${(e) => { setShare(e.target.value); setNote(null); }} /></td>
    <td><input name="gpu_cap" size="4" value=${cap} placeholder="none" onInput=${(e) => { setCap(e.target.value); setNote(null); }} /></td>
    <td>${member.storage_bytes === null ? "default" : bytes(member.storage_bytes)}</td>
    <td>${when(member.created_at)}</td>
    <td><${Action} run=${save} data-action="save-quota">Save</${Action}> ${note && html`<span class="small ok">${note}</span>`}</td>
  </tr>`;
}

function Tokens({ tokens, members }) {
  const [kind, setKind] = useState("user");
  const [member, setMember] = useState(members[0]?.name || "");
  const [name, setName] = useState("");
  const [created, setCreated] = useState(null);
  const create = async () => {
    const made = await api("/tokens", { method: "POST", body: { kind, member, name } });
    setCreated(made);
    setName("");
    await tokens.reload();
  };
  const revoke = (t) => async () => {
    await api(`/tokens/${t.id}`, { method: "DELETE" });
    await tokens.reload();
  };
  return html`<section id="tokens">
    <h2>Tokens</h2>
    <div class="form-row">
      <label>Kind <select name="kind" value=${kind} onChange=${(e) => setKind(e.target.value)}>
        <option value="user">user</option><option value="agent">agent (a donor's machine)</option></select></label>
      <label>Member <select name="member" value=${member} onChange=${(e) => setMember(e.target.value)}>
        ${members.map((m) => html`<option value=${m.name}>${m.name}</option>`)}</select></label>
      <label>Name <input name="token-name" value=${name} maxlength="64" onInput=${(e) => setName(e.target.value)} placeholder="laptop" /></label>
      <${Action} run=${create} data-action="create-token">Create token</${Action}>
    </div>
    ${created &&
    html`<p class="secret" id="new-token">
      New ${created.kind} token for ${created.member}: <code>${created.token}</code>
      <span class="small">shown once: Coop keeps only its hash.</span>
      <button onClick=${() => setCreated(null)}>Done</button>
    </p>`}
    <${Problem} error=${tokens.error} />
    ${tokens.data &&
    html`<table>
      <thead><tr><th>Id</th><th>Prefix</th><th>Kind</th><th>Member</th><th>User</th><th>Name</th><th>Created</th><th>Revoked</th><th></th></tr></thead>
      <tbody>
        ${tokens.data.map(
          (t) => html`<tr data-token-id=${t.id} data-revoked=${t.revoked_at ? "yes" : "no"}>
            <td>${t.id}</td><td><code>${t.prefix}</code></td><td>${t.kind}</td><td>${t.member}</td><td>${t.user || ""}</td>
            <td>${t.name}</td><td>${when(t.created_at)}</td><td>${when(t.revoked_at)}</td>
            <td>${!t.revoked_at && html`<${Action} run=${revoke(t)} confirm="Revoke this token?" danger data-action="revoke-token">Revoke</${Action}>`}</td>
          </tr>`,
        )}
      </tbody>
    </table>`}
  </section>`;
}
