// Shared pieces: the html tag, polling, formatting, tables, badges and the error page.
import { h } from "preact";
import { useEffect, useRef, useState, useCallback } from "preact/hooks";
import htm from "htm";
import { UI } from "./api.js";

export const html = htm.bind(h);

/** Load with ``load()`` now and every ``everyMs`` after each answer (no overlapping requests); a
 * function for ``everyMs`` decides from the last data. Returns {data, error, reload}. */
export function usePoll(load, everyMs, deps = []) {
  const [state, setState] = useState({ data: undefined, error: undefined });
  const timer = useRef(null);
  const alive = useRef(true);
  const run = useCallback(async () => {
    clearTimeout(timer.current);
    let data;
    try {
      data = await load();
      if (alive.current) setState({ data, error: undefined });
    } catch (error) {
      if (alive.current) setState((s) => ({ data: s.data, error }));
    }
    const wait = typeof everyMs === "function" ? everyMs(data) : everyMs;
    if (alive.current && wait) timer.current = setTimeout(run, wait);
  }, deps);
  useEffect(() => {
    alive.current = true;
    setState({ data: undefined, error: undefined });
    run();
    return () => {
      alive.current = false;
      clearTimeout(timer.current);
    };
  }, [run]);
  return { ...state, reload: run };
}

export const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);

export function navigate(path) {
  history.pushState(null, "", `${UI}${path}`);
  dispatchEvent(new PopStateEvent("popstate"));
}

/** An in-app link: no reload, the token stays in this tab's sessionStorage. */
export function Link({ to, children, ...rest }) {
  const onClick = (e) => {
    if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey) return;
    e.preventDefault();
    navigate(to);
  };
  return html`<a href=${`${UI}${to}`} onClick=${onClick} ...${rest}>${children}</a>`;
}

export const Badge = ({ state, title }) =>
  html`<span class=${`badge s-${String(state).toLowerCase()}`} data-state=${state} title=${title}>${state}</span>`;

export function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

export function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
}

export function duration(fromIso, toIso) {
  if (!fromIso) return "";
  const s = Math.max(0, ((toIso ? new Date(toIso) : new Date()) - new Date(fromIso)) / 1000);
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

export const credits = (x) => (x ?? 0).toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 4 });
export const num = (x, digits = 1) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

export function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}

/** What the API said when it refused, as a page: its status, message and fix. */
export function ErrorPage({ error, what }) {
  const title = { 0: "Coordinator unreachable", 401: "Not signed in", 403: "Forbidden", 404: "Not found" }[
    error.status
  ];
  return html`<section class="error-page" data-status=${error.status} role="alert">
    <h1><span class="status">${error.status || "—"}</span> ${title || "Error"}</h1>
    ${what && html`<p class="what">${what}</p>`}
    <p class="message">${error.message}</p>
    ${error.fix && html`<p class="fix">${error.fix}</p>`}
    <p><${Link} to="/">Back to your jobs</${Link}></p>
  </section>`;
}

/** An error inline, above the data it failed to refresh. */
export const Problem = ({ error }) =>
  error ? html`<p class="problem" role="alert">${error.message}${error.fix ? ` — ${error.fix}` : ""}</p>` : null;

export const Loading = () => html`<p class="loading" aria-busy="true">Loading…</p>`;

/** A button that runs an async action, shows it busy, and reports a refusal next to itself. */
export function Action({ run, children, confirm, danger, ...rest }) {
  const [busy, setBusy] = useState(false);
  const [asking, setAsking] = useState(false);
  const [error, setError] = useState(null);
  const go = async () => {
    setAsking(false);
    setBusy(true);
    setError(null);
    try {
      await run();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  if (asking)
    return html`<span class="confirm"
      >${confirm}
      <button class="danger" onClick=${go}>Yes</button>
      <button onClick=${() => setAsking(false)}>No</button></span
    >`;
  return html`<span class="action"
    ><button class=${danger ? "danger" : ""} disabled=${busy} onClick=${confirm ? () => setAsking(true) : go} ...${rest}>
      ${children}</button
    >${error && html`<span class="problem" role="alert">${error.message}</span>`}</span
  >`;
}

/** Load uPlot (about 50 KB) only when a chart is drawn: the first page stays small. */
let uplot;
export function loadUPlot() {
  uplot ??= new Promise((resolve, reject) => {
    const css = document.createElement("link");
    css.rel = "stylesheet";
    css.href = `${UI}/static/vendor/uplot/uPlot.min.css`;
    document.head.append(css);
    const script = document.createElement("script");
    script.src = `${UI}/static/vendor/uplot/uPlot.iife.min.js`;
    script.onload = () => resolve(window.uPlot);
    script.onerror = () => reject(new Error("could not load the chart library"));
    document.head.append(script);
  });
  return uplot;
}
