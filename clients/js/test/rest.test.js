// The REST helpers against real `atom serve` processes: the Sceau session, typed errors, the
// operators' console (CONTRACT §2, §2.3), and what the stream client does with a session that is
// dead or an Origin that is refused, in atom serve's default layout (API and stream on two ports).
import assert from "node:assert/strict";
import { createHmac, randomUUID } from "node:crypto";
import { test } from "node:test";

import WebSocket from "ws";

import { ApiError, closeSession, connect, openSession, operator, request } from "../src/index.js";
import { next, startAtom, until } from "./atom.js";

const FAST = { initialMs: 50, maxMs: 200, stableMs: 60_000 };
const SECRET = "s".repeat(48);

/** What a browser's WebSocket shows of a refused handshake: a close 1006, and no status. */
class BrowserLikeWebSocket extends WebSocket {
  constructor(url) {
    super(url);
    this.on("error", () => {});
  }
  set onerror(_listener) { /* a browser's error event says nothing */ }
  get onerror() { return null; }
}

/** An HS256 access token as an identity provider would sign it (CONTRACT §2.3, OPERATOR_JWT_SECRET). */
function mint(roles, { ttlS = 300, subject = randomUUID() } = {}) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const head = b64({ alg: "HS256", typ: "JWT" });
  const claims = b64({ sub: subject, aud: "authenticated", iat: now, exp: now + ttlS, user_role: roles });
  const signature = createHmac("sha256", SECRET).update(`${head}.${claims}`).digest("base64url");
  return `${head}.${claims}.${signature}`;
}

async function refusal(promise) {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ApiError, String(error));
    return error;
  }
  assert.fail("expected an ApiError");
}

test("openSession gives a session the API and the stream accept; refusals carry the contract's code", async () => {
  const atom = await startAtom({ WS_REQUIRE_SESSION: "true" });
  try {
    const sceau = await openSession(atom.api);
    assert.match(sceau.session, /^v1\./);
    assert.equal(sceau.api, atom.api);
    assert.ok(sceau.expiresAt > Date.now() / 1000);
    const { body } = await request(atom.api, "GET", "/api/v1/swarm", { session: sceau.session });
    assert.equal(body.agents, 350);

    let error = await refusal(openSession(atom.api, { durationMs: 500 }));
    assert.deepEqual([error.status, error.code], [400, "sceau_too_short"]);
    error = await refusal(request(atom.api, "GET", "/api/v1/swarm"));
    assert.deepEqual([error.status, error.code], [401, "sceau_session_required"]);
    error = await refusal(request(atom.api, "GET", "/api/v1/swarm/agents?status=asleep", { session: sceau.session }));
    assert.deepEqual([error.status, error.code], [422, "validation_error"]);
    assert.ok(error.fields && error.fields.status, JSON.stringify(error.body));
    error = await refusal(request("http://127.0.0.1:9", "GET", "/api/v1/health"));
    assert.deepEqual([error.status, error.code], [0, "unreachable"]);

    await closeSession(atom.api, sceau);
    error = await refusal(request(atom.api, "GET", "/api/v1/swarm", { session: sceau.session }));
    assert.deepEqual([error.status, error.code], [401, "sceau_session_invalid"]);
  } finally {
    await atom.stop();
  }
});

test("a dead session stops the client as `unauthorized` with no `api` option (default layout, browser-like socket)", async () => {
  const atom = await startAtom({ WS_REQUIRE_SESSION: "true" });
  try {
    assert.notEqual(new URL(atom.api).port, new URL(atom.ws).port, "the API and the stream on two ports");
    const sceau = await openSession(atom.api);
    await closeSession(atom.api, sceau);
    // The handshake is refused (401) and the socket says only 1006: the client asks the API the
    // session came from (not the stream's origin, which is the WebSocket server here).
    const client = connect(atom.ws, { session: sceau, WebSocket: BrowserLikeWebSocket, backoff: FAST });
    const states = [];
    client.on("state", (s) => states.push(s));
    await until(() => client.state === "unauthorized", 10_000, "unauthorized");
    assert.equal(client.reason, "the API says the session is no longer valid");
    assert.equal(client.stats.connections, 0);
    assert.ok(states.length <= 3, JSON.stringify(states));

    // Node's `ws` reads the 401 itself: no need to ask.
    const direct = connect(atom.ws, { session: sceau.session, WebSocket, backoff: FAST, fetch: null });
    await until(() => direct.state === "unauthorized", 10_000, "unauthorized (ws)");
    assert.equal(direct.reason, "the stream refused the session (HTTP 401)");
  } finally {
    await atom.stop();
  }
});

test("a refused Origin is told apart from a server that is down", async () => {
  const atom = await startAtom({ WS_REQUIRE_SESSION: "false" });
  try {
    class FromElsewhere extends WebSocket {
      constructor(url) { super(url, { origin: "http://localhost:5173" }); }
    }
    const client = connect(atom.ws, { WebSocket: FromElsewhere, backoff: FAST });
    const state = await next(client, "state", (s) => s.state === "reconnecting" && s.code === "origin_not_allowed");
    assert.match(state.reason, /Origin \(HTTP 403\).*CORS_ORIGINS/);
    client.close();
    // The same client from a listed origin streams.
    const fine = connect(atom.ws, { WebSocket, backoff: FAST });
    await next(fine, "frame");
    fine.close();
  } finally {
    await atom.stop();
  }
});

test("operator(): disperse, regroup, retune, reset and audit with a bearer token; each refusal's code", async () => {
  const atom = await startAtom({ OPERATOR_JWT_SECRET: SECRET, SAFEGUARD_MAX_TOTAL: "1", SAFEGUARD_COOLDOWN_S: "30" });
  try {
    const both = operator(atom.api, mint(["operator", "guardian"]));
    const dispersed = await both.disperse("partial", { idempotencyKey: "first" });
    assert.deepEqual([dispersed.level, dispersed.dispersed], ["partial", 70]);
    assert.deepEqual(await both.disperse("partial", { idempotencyKey: "first" }), dispersed, "the same key, the same answer");
    const sphere = await both.disperse("sectoral", { sphere: "transport" });
    assert.deepEqual([sphere.sphere, sphere.dispersed], ["transport", 25]);
    const agent = await both.retune(3, 440);
    assert.deepEqual([agent.id, agent.frequency], [3, 440]);
    assert.equal(typeof (await both.regroup()).regrouped, "number");

    let error = await refusal(both.disperse("everything"));
    assert.deepEqual([error.status, error.code], [422, "validation_error"]);
    assert.ok(error.fields.level, JSON.stringify(error.body));
    error = await refusal(operator(atom.api, "").regroup());
    assert.deepEqual([error.status, error.code], [401, "operator_token_required"]);
    error = await refusal(operator(atom.api, "not.a.token").regroup());
    assert.deepEqual([error.status, error.code], [401, "operator_token_invalid"]);
    error = await refusal(operator(atom.api, mint(["operator"])).reset());
    assert.deepEqual([error.status, error.code], [403, "role_required"]);
    assert.match(error.detail, /guardian/);
    error = await refusal(operator(atom.api, mint(["guardian"])).regroup());
    assert.deepEqual([error.status, error.code], [403, "role_required"]);

    // Beyond SAFEGUARD_MAX_TOTAL the Brise-Circuit opens: 423 with the seconds to wait.
    await both.disperse("total");
    error = await refusal(both.disperse("total"));
    assert.deepEqual([error.status, error.code], [423, "brise_circuit_open"]);
    assert.ok(error.retryAfter >= 1 && error.retryAfter <= 30, String(error.retryAfter));
    error = await refusal(both.regroup());
    assert.equal(error.code, "brise_circuit_open");
    const reset = await both.reset();
    assert.equal(reset.state, "closed");
    assert.equal((await both.safeguard()).state, "closed");

    const audit = await both.audit({ limit: 50 });
    const kinds = new Set(audit.records.map((r) => r.kind));
    for (const kind of ["dispersal", "regroup", "retune", "safeguard"]) assert.ok(kinds.has(kind), [...kinds].join());
    const mine = audit.records.filter((r) => r.kind === "dispersal");
    assert.ok(mine.every((r) => r.role === "operator" && /^[0-9a-f]{16}$/.test(r.operator)), JSON.stringify(mine[0]));
    assert.equal(typeof audit.chain.records, "number");
  } finally {
    await atom.stop();
  }
});
