// A client of L'Essaim: one WebSocket, decoded, kept alive, and interpolated for rendering.
//
//   const client = connect("wss://atom.example/ws/swarm", { session: token });
//   client.on("frame", ({ seq, t, positions }) => …);
//   requestAnimationFrame(function draw() { const p = client.interpolate(); …; requestAnimationFrame(draw); });
//
// States: connecting → live ⇄ reconnecting → … and, for good, unauthorized (the session is gone)
// or closed (client.close()). A browser cannot see the HTTP status of a refused handshake (it is
// a close 1006 like any other), so when a socket closes before its hello the client asks the REST
// API whether the session still stands (GET /api/v1/safeguard with X-Sceau-Session): a 401 there
// means unauthorized; anything else, another attempt. Which API: `options.api`, else the one the
// session was opened on (a session from openSession() carries it), else the stream's origin.
// Node's `ws` says the refused handshake's status in its error: 401 ends it at once, 403 is told
// as `origin_not_allowed`.

import { DeltaDecoder, FrameError, decodeFrame } from "./protocol.js";
import { explainFailure } from "./rest.js";

export const DEFAULT_BACKOFF = Object.freeze({ initialMs: 500, maxMs: 10_000, stableMs: 60_000 });
export const SESSION_CLOSE_CODE = 4401;
const HISTORY = 8;                  // frames kept for interpolation
const CLOCK_SAMPLES = 64;           // arrivals over which the clock offset is the smallest seen
const SESSION_CHECK_PATH = "/api/v1/safeguard";

/**
 * The delay before reconnect attempt `attempt` (0, 1, 2, …): full jitter over an exponential
 * ceiling, uniform in [0, min(maxMs, initialMs × 2^attempt)).
 */
export function backoffDelay(attempt, { initialMs, maxMs } = DEFAULT_BACKOFF, random = Math.random) {
  return random() * Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
}

/** The REST API's base URL for a stream URL: the same origin (a deployment behind one proxy). */
export function apiFromStreamUrl(url) {
  const u = new URL(url);
  u.protocol = u.protocol === "wss:" ? "https:" : "http:";
  return u.origin;
}

/**
 * Positions between the frames of `history` (oldest first, each {t, positions}) at time `at`
 * (server seconds), linearly; clamped to the oldest and newest frames. Written into `out`.
 */
export function interpolateFrames(history, at, out) {
  if (history.length === 0) return null;
  const newest = history[history.length - 1];
  if (!out || out.length !== newest.positions.length) out = new Float32Array(newest.positions.length);
  if (at >= newest.t || history.length === 1) {
    out.set(newest.positions);
    return out;
  }
  if (at <= history[0].t) {
    out.set(history[0].positions);
    return out;
  }
  let k = history.length - 1;
  while (k > 0 && history[k - 1].t > at) k--;
  const a = history[k - 1], b = history[k];
  if (a.positions.length !== b.positions.length) {
    out.set(b.positions);
    return out;
  }
  const f = (at - a.t) / (b.t - a.t);
  const pa = a.positions, pb = b.positions;
  for (let i = 0; i < out.length; i++) out[i] = pa[i] + (pb[i] - pa[i]) * f;
  return out;
}

export class SwarmClient {
  /** Use {@link connect}. */
  constructor(url, options = {}) {
    const WebSocketImpl = options.WebSocket || globalThis.WebSocket;
    if (typeof WebSocketImpl !== "function") {
      throw new TypeError("no WebSocket implementation: pass options.WebSocket (in Node 20: the `ws` package's WebSocket)");
    }
    this.url = url;
    this.options = {
      encoding: "delta",
      backoff: { ...DEFAULT_BACKOFF, ...(options.backoff || {}) },
      random: Math.random,
      fetch: globalThis.fetch ? globalThis.fetch.bind(globalThis) : null,
      ...options,
    };
    this.options.backoff = { ...DEFAULT_BACKOFF, ...(options.backoff || {}) };
    // A session from openSession() is {session, api, …}: its token, and the API it came from.
    const sceau = options.session;
    if (sceau && typeof sceau === "object") {
      this.options.session = sceau.session;
      if (!options.api && sceau.api) this.options.api = sceau.api;
    }
    this._WebSocket = WebSocketImpl;
    this.state = "connecting";
    this.reason = "";
    this.hello = null;
    this.roster = [];
    this.spheres = [];
    this.positions = new Float32Array(0);
    this.seq = -1;
    this.t = 0;
    this.socket = null;
    this.stats = { frames: 0, keyframes: 0, bytes: 0, connections: 0, reconnects: 0 };
    this._listeners = new Map();
    this._refusal = null;           // the HTTP status of a refused handshake, when it can be read
    this._code = null;              // why it keeps failing, when known (origin_not_allowed)
    this._delta = new DeltaDecoder();
    this._history = [];
    this._spare = [];
    this._offsets = [];
    this.clockOffset = null;        // local seconds − server seconds, at best (smallest latency)
    this._attempt = 0;
    this._timer = null;
    this._stableTimer = null;
    this._interpolated = null;
    this._open();
  }

  /** Calls `listener(detail)` on `event` (hello, frame, event, state); returns a function that stops it. */
  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(listener);
    return () => this.off(event, listener);
  }

  off(event, listener) {
    const set = this._listeners.get(event);
    if (set) set.delete(listener);
  }

  /** Stop for good (state `closed`). */
  close(reason = "closed by the client") {
    if (this.state === "closed" || this.state === "unauthorized") return;
    this._stop("closed", reason);
  }

  /** The stream's frame interval, in seconds (from the hello). */
  get frameInterval() {
    return this.hello ? 1 / this.hello.fps : 1 / 60;
  }

  /** The interpolation delay in seconds: options.interpolationDelay, else 2.5 frame intervals. */
  get delay() {
    return this.options.interpolationDelay ?? 2.5 * this.frameInterval;
  }

  /** The server's clock now, as far as this client can tell (its clock minus the smallest latency). */
  serverNow(localSeconds = Date.now() / 1000) {
    return this.clockOffset === null ? localSeconds : localSeconds - this.clockOffset;
  }

  /**
   * Positions at `renderTime − delay`, between the frames received (linear), as a Float32Array
   * this client reuses. `renderTime` is on the server's clock, in seconds; by default now.
   */
  interpolate(renderTime = this.serverNow(), delay = this.delay) {
    this._interpolated = interpolateFrames(this._history, renderTime - delay, this._interpolated);
    return this._interpolated || this.positions;
  }

  // -- inside -----------------------------------------------------------------------------------

  _emit(event, detail) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(detail);
      } catch (err) {
        // A listener's error is its own: report it without breaking the stream.
        setTimeout(() => { throw err; });
      }
    }
  }

  _setState(state, reason = "", retry = null) {
    if (this.state === state && this.reason === reason && retry === null) return;
    this.state = state;
    this.reason = reason;
    const detail = { state, reason };
    if (this._code) detail.code = this._code;
    this._emit("state", retry === null ? detail : { ...detail, ...retry });
  }

  _streamUrl() {
    const u = new URL(this.url);
    u.searchParams.set("encoding", this.options.encoding);
    if (this.options.fps) u.searchParams.set("fps", String(this.options.fps));
    if (this.options.session) u.searchParams.set("session", this.options.session);
    return u.href;
  }

  _open() {
    clearTimeout(this._timer);
    this._timer = null;
    let ws;
    try {
      ws = new this._WebSocket(this._streamUrl());
    } catch (err) {
      this._stop("closed", `cannot open ${this.url}: ${err.message}`);
      return;
    }
    ws.binaryType = "arraybuffer";
    this.socket = ws;
    let greeted = false;
    this._refusal = null;
    ws.onmessage = (message) => {
      if (this.socket !== ws) return;
      const data = message.data;
      if (typeof data === "string") {
        this.stats.bytes += data.length;
        let parsed;
        try {
          parsed = JSON.parse(data);
        } catch (err) {
          return;                   // not ours to judge: §4 text messages are JSON
        }
        if (parsed.type === "hello") {
          greeted = true;
          this._onHello(parsed);
        } else if (parsed.type === "frame") {
          this._onFrame(data);
        } else if (parsed.type === "event") {
          this._onEvent(parsed);
        }
        return;
      }
      this.stats.bytes += data.byteLength;
      this._onFrame(data);
    };
    ws.onclose = (event) => {
      if (this.socket !== ws) return;
      this.socket = null;
      clearTimeout(this._stableTimer);
      this._closed(event.code, event.reason || "", greeted);
    };
    // A close follows every error. Node's `ws` names a refused handshake's status in the error
    // ("Unexpected server response: 401"); a browser's says nothing.
    ws.onerror = (event) => {
      const said = /server response: (\d{3})/.exec(String(event && (event.message || (event.error && event.error.message))));
      if (said && this.socket === ws) this._refusal = Number(said[1]);
    };
  }

  _onHello(hello) {
    this.hello = hello;
    this.spheres = hello.spheres || [];
    this.roster = (hello.roster || []).map((agent) => ({ ...agent }));
    const n = (hello.agents | 0) * 3;
    if (this.positions.length !== n) this.positions = new Float32Array(n);
    this._delta.reset();
    this._history = [];
    this._offsets = [];
    this.stats.connections += 1;
    this._code = null;
    if (this.stats.connections > 1) this.stats.reconnects += 1;
    // The attempt count starts afresh once a connection has been live for a stable minute.
    clearTimeout(this._stableTimer);
    this._stableTimer = setTimeout(() => { this._attempt = 0; }, this.options.backoff.stableMs);
    this._setState("live");
    this._emit("hello", hello);
  }

  _onFrame(data) {
    let frame;
    try {
      frame = decodeFrame(data, this._delta, this._takeSpare());
    } catch (err) {
      if (!(err instanceof FrameError)) throw err;
      // A frame we cannot decode: our chain is lost. Start afresh on a new connection.
      this._drop(`undecodable frame: ${err.message}`);
      return;
    }
    if (frame.keyframe) this.stats.keyframes += 1;
    this.stats.frames += 1;
    this.seq = frame.seq;
    this.t = frame.t;
    if (this.positions.length !== frame.positions.length) this.positions = new Float32Array(frame.positions.length);
    this.positions.set(frame.positions);
    this._remember(frame.t, frame.positions);
    this._emit("frame", { seq: frame.seq, t: frame.t, positions: this.positions, keyframe: !!frame.keyframe });
  }

  _takeSpare() {
    return this._spare.length ? this._spare.pop() : null;
  }

  _remember(t, positions) {
    const local = Date.now() / 1000;
    this._offsets.push(local - t);
    if (this._offsets.length > CLOCK_SAMPLES) this._offsets.shift();
    this.clockOffset = Math.min(...this._offsets);
    const last = this._history[this._history.length - 1];
    if (last && t <= last.t) this._history = [];   // time went back (another engine): start over
    this._history.push({ t, positions });
    if (this._history.length > HISTORY) this._spare.push(this._history.shift().positions);
  }

  _onEvent(event) {
    const agent = Number.isInteger(event.agent) ? this.roster[event.agent] : undefined;
    if (agent && agent.id === event.agent) {
      if (event.event === "agent.status" && typeof event.status === "string") agent.status = event.status;
      if (event.event === "agent.frequency" && typeof event.frequency === "number") agent.frequency = event.frequency;
    }
    this._emit("event", event);
  }

  _drop(reason) {
    const ws = this.socket;
    if (ws) {
      this.socket = null;
      try { ws.close(1000, "resync"); } catch (err) { /* already closing */ }
    }
    this._closed(1000, reason, true);
  }

  _closed(code, reason, greeted) {
    if (this.state === "closed" || this.state === "unauthorized") return;
    if (code === SESSION_CLOSE_CODE) {
      this._stop("unauthorized", reason || "session ended");
      return;
    }
    this._code = null;
    let why = `closed ${code}${reason ? ` (${reason})` : ""}`;
    const refusal = greeted ? null : this._refusal;
    if (refusal === 401 && this.options.session) {
      this._stop("unauthorized", "the stream refused the session (HTTP 401)");
      return;
    }
    if (refusal === 403) {
      this._code = "origin_not_allowed";
      why = "the stream refused this client's Origin (HTTP 403): add it to the server's CORS_ORIGINS";
    } else if (refusal) {
      why = `the stream refused the handshake (HTTP ${refusal})`;
    }
    if (!greeted && this.options.session && !refusal) {
      // Refused before any hello: perhaps the session is gone (the browser hides the 401).
      this._setState("reconnecting", why);
      this._checkSession().then(({ dead, code, detail }) => {
        if (this.state !== "reconnecting" || this.socket !== null) return;   // closed meanwhile
        if (dead) this._stop("unauthorized", "the API says the session is no longer valid");
        else {
          this._code = code;
          this._schedule(code ? `${why}; ${detail}` : why);
        }
      });
      return;
    }
    this._schedule(why);
  }

  /** Whether the API says the session is dead; else, when it can tell, why it cannot be asked. */
  async _checkSession() {
    const fetch = this.options.fetch;
    if (!fetch) return { dead: false, code: null };
    const api = this.options.api || apiFromStreamUrl(this.url);
    const url = `${api.replace(/\/$/, "")}${SESSION_CHECK_PATH}`;
    try {
      const response = await fetch(url, {
        headers: { "X-Sceau-Session": this.options.session, Accept: "application/json" },
      });
      return { dead: response.status === 401, code: null };
    } catch (err) {
      // The API does not answer, or (in a browser) refuses this page's Origin: keep trying, and
      // say which when it can be told (only of an API we were given: the stream's own origin
      // is another server in atom serve's default layout).
      if (!this.options.api) return { dead: false, code: null };
      const why = await explainFailure(url, err, fetch);
      return why.code === "origin_not_allowed" ? { dead: false, code: why.code, detail: why.detail } : { dead: false, code: null };
    }
  }

  _schedule(reason) {
    if (this.state === "closed" || this.state === "unauthorized") return;
    const delay = backoffDelay(this._attempt, this.options.backoff, this.options.random);
    this._attempt += 1;
    this._setState("reconnecting", reason, { attempt: this._attempt, retryInMs: delay });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._open(), delay);
  }

  _stop(state, reason) {
    clearTimeout(this._timer);
    clearTimeout(this._stableTimer);
    const ws = this.socket;
    this.socket = null;
    if (ws) {
      try { ws.close(1000, "bye"); } catch (err) { /* already closed */ }
    }
    this._setState(state, reason);
  }
}

/**
 * Subscribe to L'Essaim at `url` (ws(s)://host/ws/swarm). Options: `session` (the Sceau token),
 * `encoding` ("delta"), `fps` (a divisor of the server's TICK_HZ), `WebSocket` (an
 * implementation, for Node 20: the `ws` package), `api` (the REST API's base URL, for the session
 * check; default the stream's origin), `backoff` ({initialMs, maxMs, stableMs}),
 * `interpolationDelay` (seconds).
 */
export function connect(url, options = {}) {
  return new SwarmClient(url, options);
}
