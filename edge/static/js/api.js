// Where the edge is and how to authenticate: the page's own origin, and a token from `?token=` (then
// removed from the address bar) or typed into the Token box, kept for this tab only.

const KEY = "tolk.token";
const url = new URL(location.href);
let token = url.searchParams.get("token") || sessionStorage.getItem(KEY) || "";
if (url.searchParams.has("token")) {
  sessionStorage.setItem(KEY, token);
  url.searchParams.delete("token");
  history.replaceState(null, "", url.pathname + url.search + url.hash);
}

export const api = {
  get token() { return token; },
  setToken(value) {
    token = value.trim();
    if (token) sessionStorage.setItem(KEY, token); else sessionStorage.removeItem(KEY);
  },
  /** A WebSocket URL on this origin; browsers cannot set headers on WebSockets, so the token rides in the query. */
  ws(path) {
    const u = new URL(path, location.href);
    u.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    if (token) u.searchParams.set("token", token);
    return u.href;
  },
  headers() { return token ? { Authorization: `Bearer ${token}` } : {}; },
  async fetch(path, init = {}) {
    const resp = await fetch(new URL(path, location.href), { ...init, headers: { ...this.headers(), ...(init.headers || {}) } });
    if (!resp.ok) throw await HttpError.from(resp);
    return resp;
  },
};

export class HttpError extends Error {
  static async from(resp) {
    let code = `http_${resp.status}`, message = resp.statusText;
    try {
      const body = await resp.json();
      code = body.error?.code || code;
      message = body.error?.message || message;
    } catch { /* not JSON */ }
    const err = new HttpError(message);
    err.status = resp.status;
    err.code = code;
    return err;
  }
}

/**
 * Reconnect delay after `attempt` failures in a row: 0.25 s doubling, at most 5 s, half of it random, so a
 * crowd of pages that lost the same edge does not come back as one wave.
 */
export function retryDelay(attempt) {
  const step = Math.min(5000, 250 * 2 ** Math.min(attempt, 20));
  return step / 2 + Math.random() * step / 2;
}

/** Why a close happened, for a person: the JSON error the server sent before closing wins. */
export function describeClose(ev, lastError) {
  if (lastError) return `${lastError.message} (${lastError.code})`;
  if (ev.code === 1006) return "connection lost";
  return ev.reason ? `${ev.reason} (${ev.code})` : `closed (${ev.code})`;
}
