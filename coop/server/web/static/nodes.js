// A donor's nodes: state, GPUs, calibrated TFLOP/s, telemetry, the guest jobs that ran on them and what
// each earned; pause/resume and drain/undrain.
import { api, enc } from "./api.js";
import { html, usePoll, ErrorPage, Problem, Loading, Action, Badge, ago, credits, num } from "./ui.js";

export function status(n) {
  if (n.state === "left") return "left";
  if (!n.approved) return "awaiting approval";
  if (n.state === "offline") return "offline";
  if (n.paused) return "paused";
  if (n.draining) return "draining";
  return n.state;
}

export function Telemetry({ node }) {
  const gpus = node.telemetry?.gpus || [];
  if (!gpus.length) return html`<span class="small">no GPU telemetry</span>`;
  return html`<ul class="telemetry">
    ${gpus.map(
      (g) => html`<li>
        GPU ${g.index}: ${num(g.utilization_pct, 0)} % busy, ${num(g.memory_used_gb, 1)} GB used,
        ${num(g.temperature_c, 0)} °C, ${num(g.power_w, 0)} W
      </li>`,
    )}
  </ul>`;
}

export const gpuSummary = (n) => {
  if (!n.gpus.length) return "no GPUs";
  const models = {};
  for (const g of n.gpus) models[`${g.model} ${g.memory_gb} GB`] = (models[`${g.model} ${g.memory_gb} GB`] || 0) + 1;
  return Object.entries(models)
    .map(([m, c]) => `${c} × ${m}`)
    .join(", ");
};

export function NodeActions({ node, reload }) {
  const act = (action) => async () => {
    await api(`/nodes/${node.id}/${action}`, { method: "POST" });
    await reload();
  };
  return html`<span class="actions">
    ${node.coordinator_paused
      ? html`<${Action} run=${act("resume")} data-action="resume">Resume</${Action}>`
      : html`<${Action} run=${act("pause")} data-action="pause" title="Stop new jobs and preempt running ones">Pause</${Action}>`}
    ${node.draining
      ? html`<${Action} run=${act("undrain")} data-action="undrain">Undrain</${Action}>`
      : html`<${Action} run=${act("drain")} data-action="drain" title="No new jobs; running ones finish">Drain</${Action}>`}
  </span>`;
}

export function NodesPage({ me }) {
  const nodes = usePoll(() => api("/nodes"), 3000, []);
  const ledger = usePoll(() => api(`/members/${enc(me.member)}/balance?history=true&limit=10000`), 10000, []);
  const byJob = usePoll(() => api(`/members/${enc(me.member)}/ledger/jobs`), 10000, []);
  if (!nodes.data && nodes.error) return html`<${ErrorPage} error=${nodes.error} />`;
  if (!nodes.data) return html`<${Loading} />`;
  const mine = nodes.data.filter((n) => n.member === me.member);
  const names = Object.fromEntries((byJob.data || []).filter((r) => r.job_id).map((r) => [r.job_id, r.job_name]));
  const perNode = {};
  for (const e of ledger.data?.history || []) {
    if (!e.node_id) continue;
    const p = (perNode[e.node_id] ??= { earned: 0, idle: 0, jobs: new Set() });
    if (e.kind === "earn") {
      p.earned += e.amount;
      if (e.job_id) p.jobs.add(e.job_id);
    } else if (e.kind === "idle") p.idle += e.amount;
  }
  return html`<h1>My nodes</h1>
    <p class="hint">The machines ${me.member} donates (<code>coop-agent join</code>). Pause stops new jobs and preempts
      running guests; drain lets them finish. The agent's own pause (<code>coop-agent pause</code>) shows here too.</p>
    <${Problem} error=${nodes.error || ledger.error} />
    ${mine.length === 0
      ? html`<p class="empty">${me.member} donates no machines yet: see docs/agent.md to join one.</p>`
      : mine.map((n) => {
          const p = perNode[n.id] || { earned: 0, idle: 0, jobs: new Set() };
          return html`<section class="node" data-node-id=${n.id} data-node=${n.name}>
            <h2>${n.name} <${Badge} state=${status(n)} /></h2>
            ${n.reclaim_reason && html`<p class="reason">${n.reclaim_reason}</p>`}
            <${NodeActions} node=${n} reload=${nodes.reload} />
            <dl class="facts">
              <dt>GPUs</dt><dd>${gpuSummary(n)}</dd>
              <dt>Calibrated</dt><dd>${n.tflops_per_gpu ? `${num(n.tflops_per_gpu, 1)} TFLOP/s per GPU` : "not calibrated"}</dd>
              <dt>CPU, memory</dt><dd>${n.cpus} cores, ${num(n.memory_gb, 0)} GB</dd>
              <dt>Tier</dt><dd>${n.tier}${n.network ? `, network ${n.network}` : ""}</dd>
              <dt>Last heartbeat</dt><dd>${ago(n.last_heartbeat_at)}</dd>
              <dt>Telemetry</dt><dd><${Telemetry} node=${n} /></dd>
              <dt>Earned</dt><dd data-kind="earned">${credits(p.earned)} from guests' jobs, ${credits(p.idle)} idle</dd>
              <dt>Guest jobs</dt>
              <dd class="guest-jobs">${p.jobs.size
                ? [...p.jobs].sort((a, b) => b - a).map((j) => html`<span class="chip">#${j} ${names[j] || ""}</span> `)
                : "none yet"}</dd>
              ${n.foreign_ray_work ? html`<dt>Foreign Ray work</dt><dd>${n.foreign_ray_work}</dd>` : ""}
            </dl>
          </section>`;
        })}`;
}
