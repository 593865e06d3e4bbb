#!/usr/bin/env node
// The project's load client: N subscribers of L'Essaim in one Node process, each a real SDK client
// (`connect()` of ../src: the handshake, every encoding's decoder, reconnects with full jitter),
// so the load is what a frontend does. It measures, over a window after every client is open:
// delivered fps per client, the gaps between frames, latency (arrival minus the frame header's
// server time: run it on the server's machine), bytes a frame (payload, and on the wire) and the
// reconnects. The benchmarks, the soak and the chaos run start it (scripts/).
//
//   node tools/loadclient.js --url 'ws://127.0.0.1:8001/ws/swarm?encoding=delta&session=…'
//        --clients 100 --seconds 12 [--ramp-ms 2000] [--warmup-ms 1000] [--connect-timeout-ms 60000]
//        [--deflate 0|1] [--report-every-s 60] [--backoff-ms 500] [--backoff-max-ms 10000]
//
// `encoding`, `fps` and `session` are read from the URL's query (the SDK's default encoding is
// delta). `--deflate 1` offers permessage-deflate as browsers do (the server declines it).
// Prints '# …' progress lines ('# progress {json}' every --report-every-s), then ONE JSON line of
// results on stdout, then exits. Memory is bounded whatever the window: gaps and latencies go
// into fixed histograms (0.05 ms bins up to 10 s).
import { performance } from "node:perf_hooks";

import WebSocket from "ws";

import { connect } from "../src/index.js";

const opt = {
  url: "ws://127.0.0.1:8001/ws/swarm", clients: 100, seconds: 12, "ramp-ms": 2000, "warmup-ms": 1000,
  "connect-timeout-ms": 60000, deflate: 0, "report-every-s": 0, "backoff-ms": 500, "backoff-max-ms": 10000,
};
for (let i = 2; i < process.argv.length; i += 2) {
  const key = process.argv[i].replace(/^--/, "");
  if (!(key in opt)) {
    console.error(`loadclient: unknown option --${key}`);
    process.exit(2);
  }
  opt[key] = process.argv[i + 1];
}
const N = +opt.clients, SECONDS = +opt.seconds, RAMP = +opt["ramp-ms"], WARMUP = +opt["warmup-ms"];
const REPORT_S = +opt["report-every-s"];
const DEFLATE = String(opt.deflate) === "1";
const nowMs = () => performance.timeOrigin + performance.now();   // Unix ms, sub-ms resolution

const target = new URL(opt.url);
const options = { encoding: target.searchParams.get("encoding") || "delta", backoff: { initialMs: +opt["backoff-ms"], maxMs: +opt["backoff-max-ms"] } };
if (target.searchParams.get("fps")) options.fps = Number(target.searchParams.get("fps"));
if (target.searchParams.get("session")) options.session = target.searchParams.get("session");
for (const key of ["encoding", "fps", "session"]) target.searchParams.delete(key);

/** Milliseconds in bins of 0.05 ms up to 10 s (beyond: the last bin), and the true maximum. */
class Histogram {
  constructor() { this.bins = new Uint32Array(200_001); this.count = 0; this.max = 0; }
  add(ms) {
    if (!(ms >= 0)) ms = 0;
    this.bins[Math.min(this.bins.length - 1, Math.round(ms * 20))] += 1;
    this.count += 1;
    if (ms > this.max) this.max = ms;
  }
  pct(p) {
    if (!this.count) return null;
    if (p >= 100) return +this.max.toFixed(2);
    const rank = Math.floor((p / 100) * this.count);
    let seen = 0;
    for (let i = 0; i < this.bins.length; i++) {
      seen += this.bins[i];
      if (seen > rank) return +(i / 20).toFixed(2);
    }
    return +this.max.toFixed(2);
  }
}

const clients = [];
let gaps = new Histogram(), lats = new Histogram();
let measuring = false, ending = false, connectMs = null;
const totals = { errors: 0, closes: 0, badFrames: 0, unauthorized: 0, why: {} };

function track() {
  const c = { client: null, msgs: 0, bytes: 0, wire: 0, last: 0, prevSeq: null, firstSeq: null, lastSeq: null,
    produced: 0, opened: false, settled: false, connected: false, sockets: new Set(), wireClosed: 0 };
  // The SDK constructs its sockets with a URL only: this class adds ws's options and counts
  // every message's payload and the TCP bytes under it.
  class CountingWebSocket extends WebSocket {
    constructor(url) {
      super(url, { perMessageDeflate: DEFLATE, skipUTF8Validation: true });
      // The TCP bytes under it, kept when it closes (a reconnect opens another).
      this.on("upgrade", (response) => { this.tcp = response.socket; c.sockets.add(this); });
      this.on("close", () => {
        if (this.tcp) c.wireClosed += this.tcp.bytesRead;
        c.sockets.delete(this);
      });
      this.on("message", (data, isBinary) => {
        if (measuring && (isBinary || !/"type"\s*:\s*"(hello|event)"/.test(Buffer.from(data).toString("latin1", 0, 64)))) {
          c.bytes += data.byteLength;   // an ArrayBuffer (the SDK asks for them) or a Buffer
        }
      });
      this.on("error", () => {});
    }
  }
  c.client = connect(target.href, { ...options, WebSocket: CountingWebSocket });
  c.client.on("frame", ({ seq, t }) => {
    const now = nowMs();
    if (measuring) {
      c.msgs += 1;
      if (c.last) gaps.add(now - c.last);
      lats.add(now - t * 1000);
      if (c.firstSeq === null) c.firstSeq = seq;
      // Frames the server composed for this stream meanwhile: seq counts ticks, a stream at
      // fps < TICK_HZ gets one every TICK_HZ / fps.
      const hello = c.client.hello, step = hello ? Math.max(1, hello.tick_hz / hello.fps) : 1;
      c.produced += c.prevSeq === null ? 1 : Math.max(1, Math.round(((seq - c.prevSeq) >>> 0) / step));
      c.lastSeq = seq;
    }
    c.prevSeq = seq;
    c.last = now;
  });
  c.client.on("state", ({ state, reason, attempt }) => {
    if (state === "live") {
      c.opened = c.settled = c.connected = true;
      c.prevSeq = null;         // a new connection: seq may start anywhere (another engine)
    } else if (state === "reconnecting" && attempt !== undefined) {
      // One scheduled retry per failure: a live stream lost, or an attempt that never got live.
      if (!ending) {
        if (c.connected) totals.closes += 1;
        else totals.errors += 1;
        const why = reason.replace(/\d+(\.\d+)?s?\b/g, "N").slice(0, 80);   // by kind, not by number
        if (why in totals.why || Object.keys(totals.why).length < 8) totals.why[why] = (totals.why[why] || 0) + 1;
        if (reason.startsWith("undecodable frame")) totals.badFrames += 1;
      }
      c.connected = false;
      c.settled = true;     // (c.last stays: the time to the next frame is a gap)
    } else if (state === "unauthorized") {
      totals.unauthorized += 1;
      c.settled = true;
    }
  });
  clients.push(c);
}

const rx = (c) => [...c.sockets].reduce((a, s) => a + s.tcp.bytesRead, c.wireClosed);
const r2 = (x) => (x == null || !Number.isFinite(x) ? null : +x.toFixed(2));

function summary(inWindow, t0, cpu0) {
  const secs = (nowMs() - t0) / 1000, cpu = process.cpuUsage(cpu0);
  const fps = inWindow.map((c) => c.msgs / secs);
  const sum = (f) => inWindow.reduce((a, c) => a + f(c), 0);
  const msgs = sum((c) => c.msgs), bytes = sum((c) => c.bytes), wire = sum((c) => Math.max(0, rx(c) - c.rx0));
  const seqd = inWindow.filter((c) => c.firstSeq !== null);
  const produced = sum((c) => c.produced), delivered = sum((c) => (c.firstSeq === null ? 0 : c.msgs));
  const seqSpan = seqd.length ? Math.max(...seqd.map((c) => c.lastSeq)) - Math.min(...seqd.map((c) => c.firstSeq)) : null;
  return {
    url: opt.url.replace(/session=[^&]*/, "session=…"), encoding: options.encoding, clients: N, connected: inWindow.length,
    connect_ms: connectMs, seconds: r2(secs), extensions: [...(inWindow[0]?.sockets || [])][0]?.extensions || "none",
    fps_mean: r2(fps.reduce((a, b) => a + b, 0) / (fps.length || 1)), fps_min: r2(fps.length ? Math.min(...fps) : 0),
    server_tick_fps: seqSpan == null ? null : r2((seqSpan + 1) / secs),   // (one engine's seq)
    skipped_frac: produced ? +(1 - delivered / produced).toFixed(4) : null,
    gap_p50_ms: gaps.pct(50), gap_p99_ms: gaps.pct(99), gap_max_ms: gaps.pct(100),
    lat_p50_ms: lats.pct(50), lat_p99_ms: lats.pct(99), lat_max_ms: lats.pct(100), lat_samples: lats.count,
    bytes_per_frame: msgs ? Math.round(bytes / msgs) : null, wire_bytes_per_frame: msgs ? Math.round(wire / msgs) : null,
    wire_mbytes_per_s: r2(wire / secs / 1e6),
    errors: totals.errors, closes: totals.closes, why: totals.why, bad_frames: totals.badFrames, unauthorized: totals.unauthorized,
    reconnects: sum((c) => c.client.stats.reconnects), keyframes: sum((c) => c.client.stats.keyframes),
    client_cpu_cores: r2((cpu.user + cpu.system) / 1e6 / secs),
  };
}

function startWindow() {
  const inWindow = clients.filter((c) => c.opened);
  console.log(`# window start: ${inWindow.length}/${N} open`);
  for (const c of inWindow) { c.msgs = 0; c.bytes = 0; c.produced = 0; c.firstSeq = null; c.rx0 = rx(c); }
  const t0 = nowMs(), cpu0 = process.cpuUsage();
  measuring = true;
  let progress = null;
  if (REPORT_S > 0) {
    let since = { t0, cpu0, marks: new Map(inWindow.map((c) => [c, c.msgs])) };
    progress = setInterval(() => {
      const secs = (nowMs() - since.t0) / 1000;
      const fps = inWindow.map((c) => (c.msgs - since.marks.get(c)) / secs);
      const live = clients.filter((c) => c.client.state === "live").length;
      console.log(`# progress ${JSON.stringify({ at_s: r2((nowMs() - t0) / 1000), live, fps_mean: r2(fps.reduce((a, b) => a + b, 0) / (fps.length || 1)),
        fps_min: r2(Math.min(...fps)), lat_p99_ms: lats.pct(99), reconnects: clients.reduce((a, c) => a + c.client.stats.reconnects, 0) })}`);
      since = { t0: nowMs(), cpu0: process.cpuUsage(), marks: new Map(inWindow.map((c) => [c, c.msgs])) };
    }, REPORT_S * 1000);
  }
  setTimeout(() => {
    clearInterval(progress);
    const result = summary(inWindow, t0, cpu0);
    measuring = false;
    ending = true;
    console.log("# window end");
    console.log(JSON.stringify(result));
    for (const c of clients) c.client.close("the window is over");
    setTimeout(() => process.exit(0), 200);
  }, SECONDS * 1000);
}

for (let i = 0; i < N; i++) setTimeout(track, (i * RAMP) / N);
// Measure WARMUP ms after every client is live or has failed once (or after the connect timeout).
const tStart = nowMs();
(function waitReady() {
  const done = clients.length === N && clients.every((c) => c.settled);
  if (done || nowMs() - tStart > +opt["connect-timeout-ms"]) {
    connectMs = Math.round(nowMs() - tStart);
    console.log(`# connect phase ${done ? "done" : "TIMED OUT"} after ${connectMs} ms`);
    setTimeout(startWindow, WARMUP);
  } else setTimeout(waitReady, 50);
})();
