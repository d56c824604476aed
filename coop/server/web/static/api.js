// The coordinator's /v1 API, called with the member's own token (kept in sessionStorage: this tab only,
// gone when it closes, never in a URL). Everything the dashboard shows comes through here.
const KEY = "coop.token";
export const ROOT = document.documentElement.dataset.root || "";
export const UI = `${ROOT}/ui`;

export const session = {
  token: () => sessionStorage.getItem(KEY),
  save: (token) => sessionStorage.setItem(KEY, token),
  clear: () => sessionStorage.removeItem(KEY),
};

/** A login link carries the token in the URL's fragment (#token=...), which browsers never send to a
 * server nor in a Referer: move it to sessionStorage and take it out of the address bar at once. */
export function takeTokenFromFragment() {
  const match = /^#token=([^&]+)/.exec(location.hash);
  if (!match) return false;
  history.replaceState(history.state, "", location.pathname + location.search);
  session.save(decodeURIComponent(match[1]));
  return true;
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.code = body.error || "error";
    this.errors = Array.isArray(body.errors) ? body.errors : [];
  }
  get fix() {
    return this.errors.map((e) => e.fix).filter(Boolean).join(" ");
  }
}

let onUnauthorized = () => {};
export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

/** A JSON request to /v1; throws ApiError with the API's own message and fix. */
export async function api(path, { method = "GET", body, raw = false, token } = {}) {
  const headers = { Authorization: `Bearer ${token ?? session.token() ?? ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(`${ROOT}/v1${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch (err) {
    throw new ApiError(0, { error: "unreachable", message: `the coordinator did not answer: ${err.message}` });
  }
  if (!response.ok) {
    let data;
    try {
      data = await response.json();
    } catch {
      data = { error: `http_${response.status}`, message: `${response.status} ${response.statusText}` };
    }
    const error = new ApiError(response.status, data);
    if (response.status === 401 && token === undefined) onUnauthorized(error);
    throw error;
  }
  return raw ? response : response.json();
}

export const q = (params) => {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    for (const v of Array.isArray(value) ? value : [value]) if (v !== undefined && v !== null) query.append(key, v);
  }
  const text = query.toString();
  return text ? `?${text}` : "";
};
export const enc = encodeURIComponent;
