// The REST API (CONTRACT.md §2) as a frontend and an operators' console use it: a Sceau session
// opened by the 2-second touch, and the operators' commands with a bearer token (§2.3), every
// refusal thrown as an ApiError carrying the contract's code.
//
//   const sceau = await openSession(apiBase);          // {session, expiresAt, api, …}
//   const client = connect(streamUrl, { session: sceau });
//   const ops = operator(apiBase, token);
//   try { await ops.disperse("partial"); } catch (e) { if (e.code === "brise_circuit_open") wait(e.retryAfter); }
//
// A browser hides why a cross-origin request failed (a refused Origin, a server that is down and a
// wrong address are all one TypeError). When the API's address answers a `no-cors` request (which
// a browser lets through without reading it), the server is up and what failed is this page's
// Origin: the error is then `origin_not_allowed`, with what to set.

export const API_PREFIX = "/api/v1";
const DEFAULT_SCEAU_MS = 2000;

/** A refused or failed REST call: `status` (0 when no answer), `code` (the contract's), `detail`. */
export class ApiError extends Error {
  constructor(status, code, detail, { fields = null, retryAfter = null, body = null } = {}) {
    super(`${code}: ${detail}`);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.fields = fields;           // 422: which field is wrong and why
    this.retryAfter = retryAfter;   // seconds, from Retry-After (423, 429, 503), else null
    this.body = body;
  }
}

function base(api) {
  return String(api).replace(/\/+$/, "");
}

function pageOrigin() {
  const here = globalThis.location;
  return here && typeof here.origin === "string" && here.origin !== "null" ? here.origin : null;
}

/**
 * Why `fetch` threw for `url`: `origin_not_allowed` when this is a page on another origin and the
 * server answers an opaque (`no-cors`) request, else `unreachable`.
 */
export async function explainFailure(url, error, fetchImpl = globalThis.fetch) {
  const origin = pageOrigin();
  let target = null;
  try { target = new URL(url).origin; } catch { /* a relative URL: same origin */ }
  if (origin && target && target !== origin && fetchImpl) {
    try {
      await fetchImpl(`${target}${API_PREFIX}/health`, { mode: "no-cors", cache: "no-store" });
      return new ApiError(0, "origin_not_allowed",
        `${target} answers but refuses this page's origin ${origin}: add it to the server's ` +
        "CORS_ORIGINS, or serve the page from the API's origin (a dev server's proxy of /api and /ws)");
    } catch { /* not reachable either */ }
  }
  return new ApiError(0, "unreachable", `${url}: ${error && error.message ? error.message : error}`);
}

function retryAfterOf(response) {
  const value = response.headers && response.headers.get ? response.headers.get("Retry-After") : null;
  if (value === null || value === undefined || value === "") return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return seconds;
  const when = Date.parse(value);
  return Number.isFinite(when) ? Math.max(0, Math.ceil((when - Date.now()) / 1000)) : null;
}

/**
 * One call to the API at `api` (its base URL: scheme, host and port): resolves with
 * `{status, body, headers}` on 2xx, throws {@link ApiError} otherwise. Options: `body` (JSON),
 * `session` (X-Sceau-Session), `token` (Authorization: Bearer), `idempotencyKey`, `fetch`, `signal`.
 */
export async function request(api, method, path, options = {}) {
  const fetchImpl = options.fetch || (globalThis.fetch && globalThis.fetch.bind(globalThis));
  if (!fetchImpl) throw new TypeError("no fetch: pass options.fetch");
  const url = `${base(api)}${path}`;
  const headers = { Accept: "application/json" };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  if (options.session) headers["X-Sceau-Session"] = options.session;
  if (options.token) headers.Authorization = `Bearer ${options.token}`;
  if (options.idempotencyKey) headers["Idempotency-Key"] = options.idempotencyKey;
  let response;
  try {
    response = await fetchImpl(url, {
      method, headers, signal: options.signal,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
    });
  } catch (error) {
    if (error && error.name === "AbortError") throw error;
    throw await explainFailure(url, error, fetchImpl);
  }
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (response.ok) return { status: response.status, body, headers: response.headers };
  const code = body && typeof body.error === "string" ? body.error : `http_${response.status}`;
  const detail = body && typeof body.detail === "string" ? body.detail : text.slice(0, 200) || response.statusText || "";
  throw new ApiError(response.status, code, detail,
    { fields: body && body.fields ? body.fields : null, retryAfter: retryAfterOf(response), body });
}

/**
 * Open a Sceau session (POST /api/v1/sceau/activate) for a touch of `durationMs` (at least the
 * server's SCEAU_DURATION, 2000 by default). Resolves with `{session, expiresAt, frequency, api}`:
 * pass it whole as `connect(url, { session })`, so the client knows which API to ask when the
 * stream refuses it (atom serve's default layout serves the API and the stream on two ports).
 */
export async function openSession(api, { durationMs = DEFAULT_SCEAU_MS, fetch, signal } = {}) {
  const { body } = await request(api, "POST", `${API_PREFIX}/sceau/activate`,
    { body: { duration_ms: Math.round(durationMs) }, fetch, signal });
  return { session: body.session, expiresAt: body.expires_at, frequency: body.frequency, api: base(api) };
}

/** Revoke a session (DELETE /api/v1/sceau/session); its streams end with 4401 within a second. */
export async function closeSession(api, session, { fetch } = {}) {
  const token = typeof session === "string" ? session : session.session;
  await request(api, "DELETE", `${API_PREFIX}/sceau/session`, { session: token, fetch });
}

/**
 * An operators' console's commands (CONTRACT §2, §2.3), each with `Authorization: Bearer <token>`.
 * Every method resolves with the answer's JSON body and throws {@link ApiError} on a refusal:
 * `operator_token_required`, `operator_token_invalid`, `role_required`, `mfa_required`,
 * `brise_circuit_open` (with `retryAfter`), `validation_error` (with `fields`), …
 * `reset()` resolves with the 202 body (`approvals`, `needed`) too while a quorum gathers.
 */
export function operator(api, token, { fetch } = {}) {
  const call = async (method, path, options = {}) =>
    (await request(api, method, `${API_PREFIX}${path}`, { token, fetch, ...options })).body;
  return {
    api: base(api),
    disperse(level, { sphere, idempotencyKey } = {}) {
      const body = sphere === undefined || sphere === null ? { level } : { level, sphere };
      return call("POST", "/swarm/disperse", { body, idempotencyKey });
    },
    regroup({ idempotencyKey } = {}) {
      return call("POST", "/swarm/regroup", { idempotencyKey });
    },
    retune(agent, frequency, { idempotencyKey } = {}) {
      return call("PUT", `/swarm/agents/${encodeURIComponent(agent)}/frequency`, { body: { frequency }, idempotencyKey });
    },
    reset() {
      return call("POST", "/safeguard/reset");
    },
    audit({ limit } = {}) {
      return call("GET", `/audit${limit === undefined ? "" : `?limit=${encodeURIComponent(limit)}`}`);
    },
    safeguard() {
      return call("GET", "/safeguard");
    },
  };
}
