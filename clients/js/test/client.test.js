// The client's state machine with a scripted WebSocket (no server): what it does on each close.
// The real-server cases (restart, revocation, drops) are in reconnect.test.js and stream.test.js.
import assert from "node:assert/strict";
import { test } from "node:test";

import { connect } from "../src/index.js";

function fakeSockets() {
  const opened = [];
  class FakeSocket {
    constructor(url) {
      this.url = url;
      this.onmessage = this.onclose = this.onerror = null;
      opened.push(this);
    }
    close() { this.closed = true; }
    send() {}
    hello() { this.onmessage({ data: JSON.stringify({ type: "hello", agents: 1, fps: 20, tick_hz: 60, encoding: "delta", spheres: [], roster: [{ id: 0, status: "active" }] }) }); }
    drop(code, reason = "") { this.onclose({ code, reason }); }
  }
  return { FakeSocket, opened };
}

const tick = (ms = 0) => new Promise((ok) => setTimeout(ok, ms));

test("the stream URL carries encoding, fps and session", () => {
  const { FakeSocket, opened } = fakeSockets();
  const client = connect("ws://h:1/ws/swarm", { WebSocket: FakeSocket, session: "v1.a.b", fps: 20 });
  assert.equal(opened[0].url, "ws://h:1/ws/swarm?encoding=delta&fps=20&session=v1.a.b");
  assert.equal(client.state, "connecting");
  client.close();
  assert.equal(client.state, "closed");
  assert.ok(opened[0].closed);
});

test("4401 ends it as unauthorized; other closes reconnect with a growing backoff", async () => {
  const { FakeSocket, opened } = fakeSockets();
  const states = [];
  const client = connect("ws://h:1/ws/swarm", { WebSocket: FakeSocket, random: () => 0.5,
    backoff: { initialMs: 4, maxMs: 20 } });
  client.on("state", (s) => states.push(s));
  opened[0].hello();
  assert.equal(client.state, "live");
  assert.equal(client.delay, 2.5 / 20);
  opened[0].drop(1001, "server shutting down");
  assert.deepEqual(states.at(-1), { state: "reconnecting", reason: "closed 1001 (server shutting down)", attempt: 1, retryInMs: 2 });
  await tick(10);
  assert.equal(opened.length, 2);
  opened[1].drop(1006);     // refused, no session to ask about: just again, later
  assert.equal(states.at(-1).retryInMs, 4);
  await tick(10);
  opened[2].hello();
  client.on("event", () => {});
  opened[2].onmessage({ data: JSON.stringify({ type: "event", event: "agent.status", agent: 0, status: "dispersed" }) });
  assert.equal(client.roster[0].status, "dispersed");
  opened[2].drop(4401, "session ended");
  assert.deepEqual(states.at(-1), { state: "unauthorized", reason: "session ended" });
  await tick(30);
  assert.equal(opened.length, 3, "no attempt after unauthorized");
});

test("a refused handshake asks the API: 401 is unauthorized, anything else another try", async () => {
  const { FakeSocket, opened } = fakeSockets();
  const asked = [];
  let status = 503;
  const fetch = async (url, init) => { asked.push([url, init.headers["X-Sceau-Session"]]); return { status }; };
  const client = connect("wss://atom.example/ws/swarm", { WebSocket: FakeSocket, session: "tok", fetch,
    backoff: { initialMs: 1, maxMs: 1 } });
  opened[0].drop(1006);
  assert.equal(client.state, "reconnecting");
  await tick(10);
  assert.deepEqual(asked, [["https://atom.example/api/v1/safeguard", "tok"]]);
  assert.equal(opened.length, 2, "the API still knows the session: try again");
  status = 401;
  opened[1].drop(1006);
  await tick(10);
  assert.equal(client.state, "unauthorized");
  assert.equal(opened.length, 2);
});

test("close() while the API is being asked stays closed", async () => {
  const { FakeSocket, opened } = fakeSockets();
  let answer;
  const fetch = () => new Promise((ok) => { answer = ok; });
  const client = connect("ws://h:1/ws/swarm", { WebSocket: FakeSocket, session: "tok", fetch, api: "http://h:2" });
  opened[0].drop(1006);
  client.close();
  answer({ status: 401 });
  await tick(5);
  assert.equal(client.state, "closed");
  assert.equal(opened.length, 1);
});
