// A real `atom serve` for the SDK's tests: a child process on free ports (or on given ones, to be
// restarted in place), its API and stream URLs read from its "serving:" line.
import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
// scripts/test.sh says which Python runs the project; by hand, the repository's .venv.
export const PYTHON = process.env.ATOM_PYTHON || join(ROOT, ".venv", "bin", "python");
const STARTUP_MS = 30_000;
const SERVING = /atom: serving: .*?api (http:\/\/\S+?)(?:,|$).*?ws (ws:\/\/\S+?)(?:,|$)/m;

export async function freePort() {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.on("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

/** Start `atom serve` with `settings` (environment names); resolves once it serves. */
export async function startAtom(settings = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (k !== k.toUpperCase() || ["PATH", "HOME", "LANG"].includes(k)) env[k] = v;
  Object.assign(env, {
    API_PORT: "0", WS_PORT: "0", API_HOST: "127.0.0.1", SWARM_SEED: "7", PYTHONUNBUFFERED: "1",
    SECRET_KEY: "x".repeat(40), ...settings,
  });
  const proc = spawn(PYTHON, ["-m", "atom_actors", "serve"], {
    cwd: mkdtempSync(join(tmpdir(), "atom-sdk-")), env, stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  const exited = new Promise((ok) => proc.on("exit", (code, signal) => ok(code ?? signal)));
  const urls = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`atom serve did not serve within ${STARTUP_MS} ms:\n${log}`)), STARTUP_MS);
    proc.stderr.setEncoding("utf8");
    proc.stderr.on("data", (chunk) => {
      log += chunk;
      const found = SERVING.exec(log);
      if (found) {
        clearTimeout(timer);
        ok({ api: found[1], ws: found[2] });
      }
    });
    proc.on("exit", (code) => {
      clearTimeout(timer);
      fail(new Error(`atom serve exited ${code}:\n${log}`));
    });
  });
  return {
    ...urls,
    get log() { return log; },
    /** The embedded default's operator token (both roles), from the link `atom serve` prints. */
    get operatorToken() {
      const found = /#operator=([A-Za-z0-9_.-]+)/.exec(log);
      if (!found) throw new Error(`atom serve printed no operator link:\n${log}`);
      return found[1];
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGINT");
      const timer = setTimeout(() => proc.kill("SIGKILL"), 15_000);
      await exited;
      clearTimeout(timer);
    },
    async request(method, path, { body, session, token } = {}) {
      const headers = { "Content-Type": "application/json" };
      if (session) headers["X-Sceau-Session"] = session;
      if (token) headers.Authorization = `Bearer ${token}`;
      const response = await fetch(urls.api + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
      const text = await response.text();
      return { status: response.status, body: text ? JSON.parse(text) : null };
    },
    async openSession() {
      const { status, body } = await this.request("POST", "/api/v1/sceau/activate", { body: { duration_ms: 2000 } });
      if (status !== 201) throw new Error(`no session: ${status} ${JSON.stringify(body)}`);
      return body.session;
    },
  };
}

/** Resolves when `predicate()` is true (polled), rejects after `ms`. */
export async function until(predicate, ms = 15_000, what = "a condition") {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((ok) => setTimeout(ok, 20));
  }
}

/** Resolves with the next `event` of `client` satisfying `filter`. */
export function next(client, event, filter = () => true, ms = 15_000) {
  return new Promise((ok, fail) => {
    const timer = setTimeout(() => { stop(); fail(new Error(`no ${event} within ${ms} ms`)); }, ms);
    const stop = client.on(event, (detail) => {
      if (!filter(detail)) return;
      clearTimeout(timer);
      stop();
      ok(detail);
    });
  });
}
