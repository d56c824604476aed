// The member's balance over time (spent, earned, idle) from the ledger, and its share of the pool
// against its contribution.
import { useEffect, useRef } from "preact/hooks";
import { api, enc } from "./api.js";
import { html, usePoll, ErrorPage, Problem, Loading, credits, num, bytes, loadUPlot, Link } from "./ui.js";

const HISTORY = 10000; // the API's most entries per request

/** Cumulative series from ledger entries (the API gives them newest first). */
export function series(entries) {
  const sorted = [...entries].sort((a, b) => new Date(a.at) - new Date(b.at) || a.id - b.id);
  const t = [], balance = [], spent = [], earned = [], idle = [];
  const sum = { balance: 0, spent: 0, earned: 0, idle: 0, grant: 0 };
  for (const e of sorted) {
    sum.balance += e.amount;
    if (e.kind === "spend") sum.spent += -e.amount;
    else if (e.kind === "earn") sum.earned += e.amount;
    else if (e.kind === "idle") sum.idle += e.amount;
    else if (e.kind === "grant") sum.grant += e.amount;
    const at = new Date(e.at).getTime() / 1000;
    if (t.length && t[t.length - 1] === at) {
      balance.pop(); spent.pop(); earned.pop(); idle.pop(); t.pop();
    }
    t.push(at); balance.push(sum.balance); spent.push(sum.spent); earned.push(sum.earned); idle.push(sum.idle);
  }
  return { data: [t, balance, spent, earned, idle], sum };
}

function Chart({ data }) {
  const box = useRef(null);
  const plot = useRef(null);
  useEffect(() => {
    let gone = false;
    loadUPlot().then((uPlot) => {
      if (gone || !box.current) return;
      const width = Math.max(320, box.current.clientWidth || 800);
      if (plot.current) {
        plot.current.setData(data);
        return;
      }
      plot.current = new uPlot(
        {
          width,
          height: 280,
          scales: { x: { time: true } },
          axes: [{}, { label: "credits" }],
          series: [
            {},
            { label: "balance", stroke: "#1f5fbf", width: 2 },
            { label: "spent", stroke: "#c0392b" },
            { label: "earned", stroke: "#1e8449" },
            { label: "idle", stroke: "#9a7d0a", dash: [6, 4] },
          ],
        },
        data,
        box.current,
      );
    });
    return () => {
      gone = true;
    };
  }, [data]);
  useEffect(() => () => plot.current?.destroy(), []);
  return html`<div class="chart" ref=${box} id="balance-chart" data-points=${data[0].length}></div>`;
}

export function BalancePage({ me }) {
  const name = enc(me.member);
  const bal = usePoll(() => api(`/members/${name}/balance?history=true&limit=${HISTORY}`), 5000, []);
  const member = usePoll(() => api(`/members/${name}`), 30000, []);
  const byJob = usePoll(() => api(`/members/${name}/ledger/jobs`), 10000, []);
  const nodes = usePoll(() => api("/nodes"), 15000, []);
  if (!bal.data && bal.error) return html`<${ErrorPage} error=${bal.error} />`;
  if (!bal.data) return html`<${Loading} />`;
  const { data, sum } = series(bal.data.history || []);
  return html`<h1>Balance of ${me.member}</h1>
    <${Problem} error=${bal.error} />
    <p class="big" id="balance">${credits(bal.data.balance)} <span class="small">credits</span></p>
    <p class="hint">One credit is one hour of 100 measured TFLOP/s. Jobs spend, donated GPUs earn what guests' jobs spend
      on them, and idle donated GPUs earn a little.</p>
    <table class="totals" id="balance-totals">
      <tr><th>Spent</th><td data-kind="spent">${credits(sum.spent)}</td>
          <th>Earned</th><td data-kind="earned">${credits(sum.earned)}</td>
          <th>Idle</th><td data-kind="idle">${credits(sum.idle)}</td>
          <th>Grants</th><td data-kind="grant">${credits(sum.grant)}</td></tr>
    </table>
    ${data[0].length
      ? html`<${Chart} data=${data} />`
      : html`<p class="empty" id="balance-chart" data-points="0">No ledger entries yet: the chart starts with your first job or
          donated GPU.</p>`}
    ${(bal.data.history || []).length >= HISTORY &&
    html`<p class="small">The chart shows your latest ${HISTORY} ledger entries; the balance is the sum of all.</p>`}
    <h2>Your share against your contribution</h2>
    <${Fairness} me=${me} member=${member.data} byJob=${byJob.data} nodes=${nodes.data} />
    <p class="small">Storage: ${bytes(bal.data.storage_used_bytes)} of ${bytes(bal.data.storage_quota_bytes)} in the
      artifact store.</p>
    <h2>By job</h2>
    <${Problem} error=${byJob.error} />
    ${byJob.data &&
    html`<table class="by-job">
      <thead><tr><th>Job</th><th>Name</th><th>Kind</th><th>Credits</th><th>GPU-hours</th></tr></thead>
      <tbody>
        ${byJob.data.map(
          (r) => html`<tr>
            <td>${r.job_id ? (r.kind === "earn" ? `#${r.job_id}` : html`<${Link} to=${`/jobs/${r.job_id}`}>#${r.job_id}</${Link}>`) : ""}</td>
            <td>${r.job_name || (r.kind === "idle" ? "idle capacity" : r.kind === "grant" ? "grants" : "")}</td>
            <td>${r.kind}</td><td>${credits(r.amount)}</td><td>${num(r.gpu_hours, 3)}</td>
          </tr>`,
        )}
      </tbody>
    </table>`}`;
}

/** What the member gave the pool and took from it, in GPU-hours and in GPUs, from what the API shows it. */
function Fairness({ me, member, byJob, nodes }) {
  if (!byJob || !nodes) return html`<${Loading} />`;
  const hours = (kind) => byJob.filter((r) => r.kind === kind).reduce((s, r) => s + r.gpu_hours, 0);
  const used = hours("spend"), own = hours("own"), given = hours("earn"), idle = hours("idle");
  const counted = nodes.filter((n) => n.approved && n.state !== "left");
  const gpus = (list) => list.reduce((s, n) => s + n.gpus.length, 0);
  const tflops = (list) => list.reduce((s, n) => s + n.gpus.length * (n.tflops_per_gpu || 0), 0);
  const mine = counted.filter((n) => n.member === me.member);
  const poolGpus = gpus(counted), myGpus = gpus(mine);
  const poolTf = tflops(counted), myTf = tflops(mine);
  const pct = (a, b) => (b > 0 ? `${((100 * a) / b).toFixed(1)} %` : "–");
  const most = Math.max(used, given, 1e-9);
  const bar = (value, cls) => html`<span class=${`bar ${cls}`} style=${{ width: `${(100 * value) / most}%` }}></span>`;
  return html`<div class="fairness" id="fairness">
    <p>
      You contribute <strong id="my-gpus">${myGpus}</strong> of the pool's ${poolGpus} approved GPUs
      (${pct(myGpus, poolGpus)}; ${pct(myTf, poolTf)} of its calibrated TFLOP/s).
      ${member && html`Your fair-share weight is <strong>${member.share}</strong>${member.gpu_cap !== null ? `, capped at ${member.gpu_cap} GPUs at once` : ""}.`}
    </p>
    <table class="bars">
      <tr><th>Others' GPUs you used</th><td>${bar(used, "used")}</td><td data-kind="used">${num(used, 3)} GPU-h</td></tr>
      <tr><th>Your GPUs others used</th><td>${bar(given, "given")}</td><td data-kind="given">${num(given, 3)} GPU-h</td></tr>
      <tr><th>Your GPUs, your jobs</th><td></td><td>${num(own, 3)} GPU-h</td></tr>
      <tr><th>Your GPUs idle, lendable</th><td></td><td>${num(idle, 3)} GPU-h</td></tr>
    </table>
    <p class="small">
      The ledger keeps this even: what you use of others' GPUs you pay for in credits, and what they use of yours you earn.
      Other members' figures are theirs to see (an admin sees every member's balance).
    </p>
  </div>`;
}
