// The Coop dashboard: sign-in, navigation and the router. Pages are in jobs.js, balance.js, nodes.js
// and admin.js; each reads the /v1 API with the signed-in member's token and shows what it answers.
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { api, session, takeTokenFromFragment, whenUnauthorized, UI } from "./api.js";
import { html, Link, ErrorPage, Loading, navigate } from "./ui.js";
import { JobsPage, JobPage } from "./jobs.js";
import { BalancePage } from "./balance.js";
import { NodesPage } from "./nodes.js";
import { AdminPage } from "./admin.js";

takeTokenFromFragment(); // before anything else reads the URL

function route(pathname) {
  const path = pathname.startsWith(UI) ? pathname.slice(UI.length) || "/" : pathname;
  let m;
  if (path === "/" || path === "/jobs" || path === "/jobs/") return { page: "jobs" };
  if ((m = /^\/jobs\/([^/]+)\/?$/.exec(path))) return { page: "job", id: m[1] };
  if (/^\/balance\/?$/.test(path)) return { page: "balance" };
  if (/^\/nodes\/?$/.test(path)) return { page: "nodes" };
  if (/^\/admin\/?$/.test(path)) return { page: "admin" };
  if (/^\/login\/?$/.test(path)) return { page: "login" };
  return { page: "missing", path };
}

function Login({ onSignedIn, notice }) {
  const [token, setToken] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    const value = token.trim();
    if (!value) {
      setError({ message: "Paste your Coop token (it starts with coop_).", fix: "" });
      return;
    }
    setBusy(true);
    setError(null);
    try {
      const me = await api("/me", { token: value });
      if (me.kind !== "user") {
        setError({
          message: "This is an agent token: it registers a donor's machine and cannot sign in.",
          fix: "Use a user token ('coop admin token create' or your admin).",
        });
        return;
      }
      session.save(value);
      setToken("");
      onSignedIn(me);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return html`<main class="login">
    <h1><img src=${`${UI}/static/coop.svg`} alt="" width="32" height="32" /> Coop</h1>
    <p>Sign in with your Coop token: the one <code>coop login</code> uses.</p>
    ${notice && html`<p class="notice">${notice}</p>`}
    <form onSubmit=${submit} autocomplete="off">
      <label for="token">Token</label>
      <input
        id="token"
        name="token"
        type="password"
        value=${token}
        onInput=${(e) => setToken(e.target.value)}
        placeholder="coop_…"
        autofocus
      />
      <button type="submit" disabled=${busy}>Sign in</button>
    </form>
    ${error && html`<p class="problem" role="alert">${error.message}${error.fix ? ` — ${error.fix}` : ""}</p>`}
    <p class="small">
      The token stays in this tab's session storage: closing the tab signs you out. It never goes into a URL.
    </p>
  </main>`;
}

function Nav({ me, current, onSignOut }) {
  const item = (to, page, label) =>
    html`<li><${Link} to=${to} class=${current === page ? "current" : ""} aria-current=${current === page ? "page" : null}>${label}</${Link}></li>`;
  return html`<header class="top">
    <nav>
      <span class="brand"><img src=${`${UI}/static/coop.svg`} alt="" width="20" height="20" /> Coop</span>
      <ul>
        ${item("/", "jobs", me.role === "admin" ? "Jobs" : "My jobs")} ${item("/balance", "balance", "Balance")}
        ${item("/nodes", "nodes", "My nodes")} ${me.role === "admin" && item("/admin", "admin", "Admin")}
      </ul>
      <span class="who" data-role=${me.role}
        >${me.user || me.member} · ${me.member} · ${me.role}
        <button class="link" id="sign-out" onClick=${onSignOut}>Sign out</button></span
      >
    </nav>
  </header>`;
}

function App() {
  const [where, setWhere] = useState(route(location.pathname));
  const [me, setMe] = useState(null);
  const [notice, setNotice] = useState(null);
  const [checking, setChecking] = useState(Boolean(session.token()));

  useEffect(() => {
    const moved = () => setWhere(route(location.pathname));
    addEventListener("popstate", moved);
    whenUnauthorized((err) => {
      session.clear();
      setMe(null);
      setNotice(`Signed out: ${err.message}.`);
    });
    const check = () => {
      if (!session.token()) return;
      setChecking(true);
      api("/me")
        .then((who) => {
          if (who.kind !== "user") throw new Error("an agent token cannot sign in");
          setMe(who);
        })
        .catch((err) => {
          session.clear();
          setMe(null);
          setNotice(`Sign in again: ${err.message}.`);
        })
        .finally(() => setChecking(false));
    };
    // a login link opened in a tab that already shows the dashboard changes only the fragment
    const linked = () => takeTokenFromFragment() && check();
    addEventListener("hashchange", linked);
    check();
    return () => {
      removeEventListener("popstate", moved);
      removeEventListener("hashchange", linked);
    };
  }, []);

  useEffect(() => {
    document.title = me ? `Coop · ${where.page}` : "Coop · sign in";
  }, [where, me]);

  if (checking) return html`<${Loading} />`;
  if (!me)
    return html`<${Login}
      notice=${notice}
      onSignedIn=${(who) => {
        setNotice(null);
        setMe(who);
        if (where.page === "login") navigate("/");
      }}
    />`;

  const signOut = () => {
    session.clear();
    setMe(null);
    setNotice("Signed out.");
  };
  let page;
  switch (where.page) {
    case "jobs":
    case "login":
      page = html`<${JobsPage} me=${me} />`;
      break;
    case "job":
      page = html`<${JobPage} me=${me} id=${where.id} key=${where.id} />`;
      break;
    case "balance":
      page = html`<${BalancePage} me=${me} />`;
      break;
    case "nodes":
      page = html`<${NodesPage} me=${me} />`;
      break;
    case "admin":
      page = html`<${AdminPage} me=${me} />`;
      break;
    default:
      page = html`<${ErrorPage} error=${{ status: 404, message: `There is no page ${where.path}.`, fix: "" }} />`;
  }
  return html`<${Nav} me=${me} current=${where.page} onSignOut=${signOut} /><main class="page" data-page=${where.page}>${page}</main>`;
}

render(html`<${App} />`, document.getElementById("app"));
