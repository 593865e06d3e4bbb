// The client's life against real `atom serve` processes: back after a server restart, and
// stopped for good (`unauthorized`) once its session is revoked.
import assert from "node:assert/strict";
import { test } from "node:test";

import WebSocket from "ws";

import { connect } from "../src/index.js";
import { freePort, next, startAtom, until } from "./atom.js";

// Short delays so the test does not wait out the real ones (0.5 s doubling to 10 s).
const FAST = { initialMs: 100, maxMs: 400, stableMs: 60_000 };

test("a client reconnects after the server restarts, and resyncs from the new hello", async () => {
  const ports = { API_PORT: String(await freePort()), WS_PORT: String(await freePort()) };
  let atom = await startAtom({ ...ports, WS_REQUIRE_SESSION: "false" });
  const client = connect(atom.ws, { WebSocket, backoff: FAST });
  const states = [];
  client.on("state", ({ state, reason }) => states.push(`${state}: ${reason}`));
  const frames = [];   // (a server's messages may come in one read: every frame event is kept)
  client.on("frame", ({ t, keyframe }) => frames.push({ t, keyframe, connection: client.stats.connections }));
  try {
    await next(client, "hello");
    const first = await next(client, "frame");
    await atom.stop();
    await until(() => client.state === "reconnecting", 10_000, "reconnecting");
    await until(() => states.some((s) => s.startsWith("reconnecting: closed 1001")), 1000, "the server's 1001");
    // Listen before the restart: the client may reconnect, and get its hello, before
    // startAtom has read the new server's "serving" line.
    const helloAgain = next(client, "hello", () => true, 30_000);
    atom = await startAtom({ ...ports, WS_REQUIRE_SESSION: "false" });
    const hello = await helloAgain;
    assert.equal(hello.agents, 350);
    await until(() => frames.filter((f) => f.connection === 2).length >= 10, 10_000, "frames again");
    assert.equal(client.state, "live");
    assert.equal(client.stats.connections, 2);
    const again = frames.filter((f) => f.connection === 2);
    assert.deepEqual(again.map((f) => f.keyframe), [true, ...Array(again.length - 1).fill(false)],
      "a new connection starts with a keyframe, then deltas");
    assert.ok(again[0].t > first.t);
    assert.equal(states[0], "live: ");
    assert.equal(states.filter((s) => s === "live: ").length, 2, states.join("\n"));
  } finally {
    client.close();
    await atom.stop();
  }
  assert.equal(client.state, "closed");
});

test("a revoked session stops the client with `unauthorized` instead of retrying forever", async () => {
  const atom = await startAtom({ WS_REQUIRE_SESSION: "true" });
  try {
    const session = await atom.openSession();
    const client = connect(atom.ws, { session, api: atom.api, WebSocket, backoff: FAST });
    await next(client, "frame");
    assert.equal((await atom.request("DELETE", "/api/v1/sceau/session", { session })).status, 204);
    // Whether the server closes the stream itself (4401) or the next handshake is refused (a
    // browser sees only a close 1006, so the client asks the API): the client must end here.
    // A message over 4 KiB makes the server drop this connection (1009) if it is still open.
    if (client.socket) client.socket.send("x".repeat(5000));
    await until(() => client.state === "unauthorized", 20_000, "unauthorized");
    assert.match(client.reason, /session/);
    const connections = client.stats.connections;
    await new Promise((ok) => setTimeout(ok, 1500));
    assert.equal(client.state, "unauthorized");
    assert.equal(client.stats.connections, connections, "no more attempts");
    assert.equal(client.socket, null);
  } finally {
    await atom.stop();
  }
});

test("a session refused from the start is unauthorized at once", async () => {
  const atom = await startAtom({ WS_REQUIRE_SESSION: "true" });
  try {
    const client = connect(atom.ws, { session: "v1.forged.token", api: atom.api, WebSocket, backoff: FAST });
    const { state, reason } = await next(client, "state", (s) => s.state === "unauthorized", 10_000);
    assert.equal(state, "unauthorized");
    // Node's ws reads the refusal's 401 itself (a browser's socket cannot: rest.test.js has that case).
    assert.match(reason, /refused the session \(HTTP 401\)/);
    assert.equal(client.stats.connections, 0);
  } finally {
    await atom.stop();
  }
});
