// tools/loadclient.js, the load client of the benchmarks, the soak and the chaos run: SDK clients
// that measure, and that reconnect (with jitter) when the server goes away and comes back.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { freePort, startAtom } from "./atom.js";

const TOOL = join(dirname(fileURLToPath(import.meta.url)), "..", "tools", "loadclient.js");

function load(url, args) {
  const proc = spawn(process.execPath, [TOOL, "--url", url, ...args], { stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  const lines = [];
  proc.stdout.setEncoding("utf8");
  proc.stdout.on("data", (chunk) => {
    out += chunk;
    lines.push(...chunk.split("\n").filter(Boolean));
  });
  const done = new Promise((ok) => proc.on("exit", (code) => ok(code)));
  return { lines, done, get out() { return out; } };
}

test("fps, gaps, latency and bytes of a delta stream; reconnects through a server restart", async () => {
  const ports = { API_PORT: String(await freePort()), WS_PORT: String(await freePort()) };
  let atom = await startAtom({ ...ports, WS_REQUIRE_SESSION: "false" });
  try {
    const run = load(`${atom.ws}?encoding=delta&fps=30`, ["--clients", "4", "--seconds", "12",
      "--ramp-ms", "100", "--warmup-ms", "300", "--backoff-ms", "100", "--backoff-max-ms", "300", "--report-every-s", "1"]);
    while (!run.lines.some((l) => l.startsWith("# window start"))) await new Promise((ok) => setTimeout(ok, 50));
    await new Promise((ok) => setTimeout(ok, 1000));
    await atom.stop();
    atom = await startAtom({ ...ports, WS_REQUIRE_SESSION: "false" });
    assert.equal(await run.done, 0, run.out);
    const result = JSON.parse(run.lines.at(-1));
    assert.equal(result.connected, 4, run.out);
    assert.equal(result.encoding, "delta");
    assert.ok(result.fps_mean > 5 && result.fps_mean <= 31, run.out);
    assert.ok(result.bytes_per_frame > 100 && result.bytes_per_frame < 2200, run.out);
    assert.ok(result.wire_bytes_per_frame >= result.bytes_per_frame, run.out);
    assert.ok(result.lat_samples > 0 && result.lat_p50_ms !== null, run.out);
    assert.ok(result.gap_max_ms > 500, "the restart shows as a gap");
    assert.ok(result.closes >= 4 && result.reconnects >= 4, run.out);
    assert.ok(result.keyframes >= 8, "a keyframe per connection");
    assert.equal(result.bad_frames, 0);
    assert.ok(Object.keys(result.why).some((why) => why.includes("server shutting down")), JSON.stringify(result.why));
    assert.ok(run.lines.filter((l) => l.startsWith("# progress ")).length >= 4, run.out);
  } finally {
    await atom.stop();
  }
});
