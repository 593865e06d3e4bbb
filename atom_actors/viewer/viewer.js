// The AT·OM viewer: the Sceau by touch, L'Essaim live, the operators' controls.
//
// Plain JavaScript (an ES module), no dependencies but the project's own client SDK
// (clients/js, which the API serves under /viewer/sdk/): the stream's decoding, reconnection and
// interpolation are the SDK's, so the project has one JavaScript decoder. It speaks CONTRACT.md
// §2 (the REST API, on this page's own origin) and §4 (the WebSocket, usually on another port),
// on the `delta` stream at the fps the operator picks (60, 30 or 20; `?fps=` sets the first).
// Where the WebSocket is:
//
//   1. `?ws=<url>` in the page's address, if given, and nothing else (ws://, wss://, http(s)://
//      or a path such as /ws/swarm on this origin);
//   2. otherwise two candidates, tried in turn until one opens, and the one that opened is kept
//      for every reconnect:
//        - ws(s)://<this host>:<WS port>/ws/swarm, where the WS port is `ws_port` from
//          GET /api/v1/health when the API gives it, else 8001;
//        - ws(s)://<this host and port>/ws/swarm, the same origin (a reverse proxy such as nginx).
//      A page served on the default port (80/443, so behind a proxy) tries the same origin first.
//
// A browser does not let a page see the HTTP status of a refused WebSocket handshake: a 401 looks
// like any other failure (close code 1006). So when a socket closes before it ever opened, the
// SDK asks the REST API whether the session still stands; a 401 there (the SDK's `unauthorized`)
// sends the page back to the Sceau.
//
// Watching needs only the Sceau. Commanding needs an operator's token (CONTRACT §2.3): it comes
// from the link `atom serve` prints (`#operator=<token>`, a fragment, which never reaches a server;
// the page takes it out of the address bar at once) or is pasted into the sign-in field, and is
// kept in this tab's sessionStorage. The page reads the token's payload to show its roles and to
// hide what they do not allow — for display only: the server verifies every command, and what it
// answers (401: expired or refused, 403: the role is missing) is said plainly.
import { connect as connectStream } from "/viewer/sdk/index.js";

{
  const DEFAULT_SCEAU_MS = 2000;     // SCEAU_DURATION, unless GET /api/v1/health says otherwise
  const DEFAULT_WS_PORT = 8001;      // WS_PORT, likewise
  const WS_PATH = "/ws/swarm";
  const SESSION_KEY = "atom.sceau";
  const OPERATOR_KEY = "atom.operator";
  const ROLES = ["operator", "guardian"];   // operator: disperse, regroup, retune; guardian: reset
  const FPS_CHOICES = [60, 30, 20];  // offered when they divide the server's TICK_HZ
  const STATUS_CODES = { active: 0, dispersed: 1, regrouping: 2 };

  // The view: the swarm sits on a shell of radius ~18 world units, orbits reach ~5 and a dispersed
  // agent flies up to 20 further out. VIEW_RADIUS at the depth of the origin fills 90 % of the
  // stage's half-size, so a total dispersal stays (mostly) in sight.
  const VIEW_RADIUS = 40;
  const CAMERA_DISTANCE = 140;
  const PARTICLE_RADIUS = 0.55;      // world units
  const YAW_RAD_S = 0.09;            // the slow turn of the whole swarm
  const PITCH_RAD = 0.38;
  const BACKGROUND = "#0b0d17";

  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const config = { sceauMs: DEFAULT_SCEAU_MS, wsPort: DEFAULT_WS_PORT };
  let session = loadSession();       // {token, expires_at} or null
  let operator = null;               // {token, roles, exp} or null: see "Operators" below

  // ---------------------------------------------------------------------------------------------
  // The REST API

  // Resolves to {ok, status, data, error, detail, retryAfterS}; never throws. A 401 on any call
  // made with a session means that session is gone: back to the Sceau. With `as: "operator"` the
  // call carries the operator's token as its bearer credential instead (and a 401 is the token's,
  // not the session's); `token` checks a token not yet kept.
  async function api(method, path, body, { as = "viewer", token } = {}) {
    const headers = { Accept: "application/json" };
    const bearer = as === "operator" ? (token || (operator && operator.token)) : null;
    const withSession = bearer === null && session !== null;
    if (bearer !== null) headers.Authorization = `Bearer ${bearer}`;
    else if (withSession) headers["X-Sceau-Session"] = session.token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method, headers, cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      return { ok: false, status: 0, error: "unreachable", detail: "The API does not answer." };
    }
    let data = null;
    try { data = await response.json(); } catch (err) { /* 204, or not JSON */ }
    const result = { ok: response.ok, status: response.status, data, headers: response.headers };
    if (!response.ok) {
      result.error = (data && data.error) || `http_${response.status}`;
      result.detail = (data && data.detail) || `The API answered ${response.status}.`;
      result.retryAfterS = parseRetryAfter(response.headers.get("Retry-After"));
      if (response.status === 401 && withSession) sessionEnded(result.detail);
    }
    return result;
  }

  function parseRetryAfter(value) {
    if (!value) return null;
    if (/^\s*\d+\s*$/.test(value)) return Number(value);
    const when = Date.parse(value);     // the HTTP-date form
    return Number.isNaN(when) ? null : Math.max(0, Math.ceil((when - Date.now()) / 1000));
  }

  async function loadServerHints() {
    const health = await api("GET", "/api/v1/health");
    const data = health.ok && health.data ? health.data : {};
    if (Number.isInteger(data.sceau_duration_ms) && data.sceau_duration_ms >= 0) config.sceauMs = data.sceau_duration_ms;
    if (Number.isInteger(data.ws_port) && data.ws_port > 0) config.wsPort = data.ws_port;
    $("sceau-duration").textContent = seconds(config.sceauMs);
  }

  // ---------------------------------------------------------------------------------------------
  // Session storage (per tab: sessionStorage)

  function loadSession() {
    try {
      const stored = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
      if (stored && typeof stored.token === "string" && stored.token) return stored;
    } catch (err) { /* storage disabled or garbage: no session */ }
    return null;
  }

  function saveSession(value) {
    session = value;
    try {
      if (value) sessionStorage.setItem(SESSION_KEY, JSON.stringify(value));
      else sessionStorage.removeItem(SESSION_KEY);
    } catch (err) { /* storage disabled: the session lives as long as the page */ }
  }

  let expiryTimer = 0;

  function sessionEnded(reason) {
    if (session === null && document.body.dataset.screen === "sceau") return;
    saveSession(null);
    clearTimeout(expiryTimer);
    leaveEssaim();
    showSceau(`Your Sceau session has ended (${reason.replace(/\.$/, "")}). Hold again to reopen it.`);
  }

  // ---------------------------------------------------------------------------------------------
  // The Sceau: press and hold anywhere

  const sceauScreen = $("sceau");
  const ring = $("sceau-progress");
  const RING_LENGTH = 2 * Math.PI * 52;
  const hold = { active: false, pointerId: null, start: 0, frame: 0, opening: false };

  function showSceau(message, ok = false) {
    document.body.dataset.screen = "sceau";
    setRing(0);
    sceauScreen.classList.remove("holding", "opened");
    sceauMessage(message || "", ok);
  }

  function sceauMessage(text, ok = false) {
    const el = $("sceau-message");
    el.textContent = text;
    el.classList.toggle("ok", ok);
  }

  function setRing(progress) {
    ring.style.strokeDashoffset = String(RING_LENGTH * (1 - progress));
    ring.style.opacity = progress > 0 ? "1" : "0";   // a round cap would leave a dot at zero
    $("sceau-time").textContent = `${seconds(progress * config.sceauMs)} s`;
  }

  function beginHold(pointerId) {
    if (hold.active || hold.opening) return;
    hold.active = true;
    hold.pointerId = pointerId;
    hold.start = performance.now();
    sceauScreen.classList.remove("released", "opened");
    sceauScreen.classList.add("holding");
    sceauMessage("");
    hold.frame = requestAnimationFrame(tickHold);
  }

  function tickHold(now) {
    if (!hold.active) return;
    const held = now - hold.start;
    setRing(Math.min(1, held / config.sceauMs));
    if (held >= config.sceauMs) {
      // The ring is full: open now, without waiting for the finger to lift.
      endHold();
      openSession(held);
      return;
    }
    hold.frame = requestAnimationFrame(tickHold);
  }

  function endHold() {
    hold.active = false;
    hold.pointerId = null;
    cancelAnimationFrame(hold.frame);
    sceauScreen.classList.remove("holding");
  }

  function releaseHold(interrupted) {
    if (!hold.active) return;
    const held = performance.now() - hold.start;
    endHold();
    sceauScreen.classList.add("released");
    setRing(0);
    const why = interrupted ? "The touch was interrupted" : `Released after ${seconds(held)} s`;
    sceauMessage(`${why}: hold for ${seconds(config.sceauMs)} s to open the Sceau. Nothing was sent.`);
  }

  async function openSession(held) {
    hold.opening = true;
    sceauMessage("Opening…", true);
    const result = await api("POST", "/api/v1/sceau/activate", { duration_ms: Math.ceil(held) });
    hold.opening = false;
    if (!result.ok) {
      setRing(0);
      const wait = result.retryAfterS ? ` Try again in ${result.retryAfterS} s.` : "";
      sceauMessage(`The Sceau did not open: ${result.detail}${wait}`);
      return;
    }
    const token = (result.data && result.data.session) || result.headers.get("X-Sceau-Session");
    saveSession({ token, expires_at: result.data ? result.data.expires_at : null });
    sceauScreen.classList.add("opened");
    enterEssaim();
  }

  sceauScreen.addEventListener("pointerdown", (e) => {
    if (!e.isPrimary || (e.pointerType === "mouse" && e.button !== 0)) return;
    e.preventDefault();
    try { sceauScreen.setPointerCapture(e.pointerId); } catch (err) { /* pointer already gone */ }
    beginHold(e.pointerId);
  });
  sceauScreen.addEventListener("pointerup", (e) => { if (e.pointerId === hold.pointerId) releaseHold(false); });
  sceauScreen.addEventListener("pointercancel", (e) => { if (e.pointerId === hold.pointerId) releaseHold(true); });
  sceauScreen.addEventListener("contextmenu", (e) => e.preventDefault());  // a long press is not a right click
  // The ring is a button, so the Sceau can be held from the keyboard too (Space or Enter).
  $("sceau-ring").addEventListener("keydown", (e) => {
    if ((e.key === " " || e.key === "Enter") && !e.repeat) { e.preventDefault(); beginHold("key"); }
  });
  $("sceau-ring").addEventListener("keyup", (e) => {
    if ((e.key === " " || e.key === "Enter") && hold.pointerId === "key") { e.preventDefault(); releaseHold(false); }
  });
  $("sceau-ring").addEventListener("click", (e) => e.preventDefault());

  // ---------------------------------------------------------------------------------------------
  // L'Essaim: the WebSocket

  const swarm = {
    n: 0,
    spheres: [],          // [{name, count, first_agent, color}]
    sphereOf: new Uint8Array(0),
    status: new Uint8Array(0),
    pos: new Float32Array(0),     // the newest positions drawn, x y z per agent
    sx: new Float32Array(0), sy: new Float32Array(0), sr: new Float32Array(0),
    hasFrame: false,
    seq: -1,
    legendDirty: true,
  };
  // The stream: one SDK client at a time, on the candidate URL that worked (`sticky`).
  const link = { client: null, sticky: null, index: 0, timer: 0, countdown: 0,
    fps: Number(params.get("fps")) || FPS_CHOICES[0] };
  const meter = { received: 0, receivedWindow: 0, rendered: 0, renderedWindow: 0, windowStart: 0,
    bytesWindow: 0, streamFps: 0, renderFps: 0, kbytesPerS: 0, latencyMs: null, drawMs: 0 };

  function wsCandidates() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const explicit = params.get("ws");
    if (explicit) {
      const url = new URL(explicit, location.href);
      if (url.protocol === "http:") url.protocol = "ws:";
      if (url.protocol === "https:") url.protocol = "wss:";
      return [url.href];
    }
    const onPort = `${scheme}//${location.hostname}:${config.wsPort}${WS_PATH}`;
    const sameOrigin = `${scheme}//${location.host}${WS_PATH}`;
    return location.port === "" ? [sameOrigin, onPort] : [onPort, sameOrigin];
  }

  function connect() {
    clearTimeout(link.timer);
    clearInterval(link.countdown);
    if (session === null) return;
    const candidates = wsCandidates();
    const url = link.sticky || candidates[link.index % candidates.length];
    const client = connectStream(url, { session: session.token, encoding: "delta", fps: link.fps,
      api: location.origin });
    link.client = client;
    setConn(meter.received === 0 ? "connecting" : "reconnecting");
    client.on("state", (change) => onState(client, url, candidates.length, change));
    client.on("hello", onHello);
    client.on("frame", onFrame);
    client.on("event", onEvent);
  }

  function onState(client, url, candidates, { state, reason, attempt, retryInMs }) {
    if (link.client !== client) return;
    if (state === "live") {
      link.sticky = url;
      clearInterval(link.countdown);
      setConn("open");
      banner(null);
    } else if (state === "unauthorized") {
      sessionEnded(reason);
    } else if (state === "reconnecting") {
      setConn("reconnecting");
      if (retryInMs === undefined) return;           // the SDK is asking the API about the session
      const opened = client.stats.connections > 0;
      if (!opened && link.sticky === null && candidates > 1) {
        // This candidate never answered: try the other one, after the SDK's delay.
        client.close();
        link.index += 1;
        link.timer = setTimeout(connect, retryInMs);
      }
      const lost = opened ? `Connection to L'Essaim lost (${reason})` : "L'Essaim does not answer";
      if (attempt === 1) logEvent(`${lost}: reconnecting`);   // the banner may last a blink
      const due = performance.now() + retryInMs;
      const show = () => {
        const left = Math.max(0, due - performance.now());
        banner(left > 0 ? `${lost}: reconnecting in ${seconds(left)} s (attempt ${attempt})…`
          : `${lost}: reconnecting (attempt ${attempt})…`);
      };
      show();
      clearInterval(link.countdown);
      link.countdown = setInterval(show, 100);
    }
  }

  function disconnect() {
    clearTimeout(link.timer);
    clearInterval(link.countdown);
    const client = link.client;
    link.client = null;
    if (client) client.close("leaving");
  }

  function setConn(state) {
    const el = $("conn");
    el.dataset.state = state;
    el.textContent = state === "open" ? "live" : state;
  }

  function banner(text) {
    const el = $("conn-banner");
    el.hidden = text === null;
    if (text !== null) el.textContent = text;
  }

  function onFrame({ seq, t }) {
    meter.received += 1;
    const ms = Date.now() - t * 1000;
    meter.latencyMs = meter.latencyMs === null ? ms : meter.latencyMs + 0.1 * (ms - meter.latencyMs);
    swarm.seq = seq;
    swarm.hasFrame = true;
  }

  function onHello(hello) {
    const n = hello.agents | 0;
    if (n !== swarm.n) {
      swarm.n = n;
      swarm.sphereOf = new Uint8Array(n);
      swarm.status = new Uint8Array(n);
      swarm.pos = new Float32Array(n * 3);
      swarm.sx = new Float32Array(n);
      swarm.sy = new Float32Array(n);
      swarm.sr = new Float32Array(n);
      swarm.hasFrame = false;
    }
    swarm.spheres = hello.spheres || [];
    swarm.spheres.forEach((s, k) => swarm.sphereOf.fill(k, s.first_agent, s.first_agent + s.count));
    swarm.status.fill(0);
    for (const agent of hello.roster || []) {
      if (agent.id >= 0 && agent.id < n) swarm.status[agent.id] = STATUS_CODES[agent.status] || 0;
    }
    buildLegend();
    buildFpsChoices(hello.tick_hz, hello.fps);
    $("stat-agents").textContent = String(n);
    logEvent(`hello: ${n} agents, ${swarm.spheres.length} spheres, ${hello.fps} fps, ${hello.encoding}`);
  }

  function onEvent(msg) {
    switch (msg.event) {
      case "agent.status":
        if (msg.agent >= 0 && msg.agent < swarm.n) {
          swarm.status[msg.agent] = STATUS_CODES[msg.status] || 0;
          swarm.legendDirty = true;
        }
        break;
      case "swarm.dispersal":
        logEvent(`${msg.level} dispersal${msg.sphere ? ` of ${msg.sphere}` : ""}: ${msg.count} agents`);
        break;
      case "swarm.regroup":
        logEvent(`regroup: ${msg.count} agents called home`);
        break;
      case "safeguard":
        logEvent(`Brise-Circuit ${msg.state}${msg.reason ? `: ${msg.reason}` : ""}`);
        showSafeguard(msg);
        break;
      default:
        break;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // L'Essaim: drawing. One requestAnimationFrame loop; it parses only the newest frame, projects
  // into arrays made once, and draws one path per sphere and status.

  const canvas = $("swarm");
  const ctx = canvas.getContext("2d", { alpha: false });
  let loop = 0;

  function resizeCanvas() {
    const ratio = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const h = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  }

  // The positions to draw: the SDK's, interpolated between the frames received (it renders a
  // 20 fps stream smoothly at 60 fps, about 2.5 stream frames behind).
  function takePositions() {
    const client = link.client;
    if (client === null || !swarm.hasFrame) return;
    const pos = client.interpolate();
    if (pos.length === swarm.pos.length) swarm.pos = pos;
  }

  function render(now) {
    loop = requestAnimationFrame(render);
    const started = performance.now();
    resizeCanvas();
    takePositions();
    draw(now);
    meter.drawMs += 0.05 * (performance.now() - started - meter.drawMs);
    meter.rendered += 1;
    if (now - meter.windowStart >= 500) updateStats(now);
    if (swarm.legendDirty) updateLegend();
  }

  function draw(now) {
    const w = canvas.width, h = canvas.height;
    ctx.fillStyle = BACKGROUND;
    ctx.fillRect(0, 0, w, h);
    if (!swarm.hasFrame) {
      ctx.fillStyle = "#8a90a8";
      ctx.font = `${Math.round(14 * (window.devicePixelRatio || 1))}px system-ui, sans-serif`;
      ctx.textAlign = "center";
      ctx.fillText("waiting for L'Essaim…", w / 2, h / 2);
      return;
    }
    const yaw = (now / 1000) * YAW_RAD_S;
    const cy = Math.cos(yaw), sy = Math.sin(yaw), cp = Math.cos(PITCH_RAD), sp = Math.sin(PITCH_RAD);
    const half = Math.min(w, h) / 2;
    const focal = (0.9 * half * CAMERA_DISTANCE) / VIEW_RADIUS;
    const minR = window.devicePixelRatio || 1;
    const { pos, sx, sy: py, sr, n } = swarm;
    for (let i = 0, j = 0; i < n; i++, j += 3) {
      const x = pos[j], y = pos[j + 1], z = pos[j + 2];
      const x1 = x * cy + z * sy;                  // turn around the vertical axis
      const z1 = z * cy - x * sy;
      const y2 = y * cp - z1 * sp;                 // then tilt towards the viewer
      const z2 = y * sp + z1 * cp;
      const depth = CAMERA_DISTANCE - z2;
      if (depth < 1) { sr[i] = 0; continue; }      // behind the camera
      const s = focal / depth;
      sx[i] = w / 2 + x1 * s;
      py[i] = h / 2 - y2 * s;
      sr[i] = Math.max(minR, PARTICLE_RADIUS * s);
    }
    const line = Math.max(1, 1.3 * minR);
    for (const sphere of swarm.spheres) {
      const end = sphere.first_agent + sphere.count;
      // Active agents: solid discs in their sphere's colour.
      ctx.beginPath();
      for (let i = sphere.first_agent; i < end; i++) {
        if (swarm.status[i] !== 0 || sr[i] === 0) continue;
        ctx.moveTo(sx[i] + sr[i], py[i]);
        ctx.arc(sx[i], py[i], sr[i], 0, 2 * Math.PI);
      }
      ctx.fillStyle = sphere.color;
      ctx.fill();
      // Dispersed agents: hollow rings, a little larger; regrouping ones: the same, fainter.
      for (let status = 1; status <= 2; status++) {
        ctx.beginPath();
        let any = false;
        for (let i = sphere.first_agent; i < end; i++) {
          if (swarm.status[i] !== status || sr[i] === 0) continue;
          const r = sr[i] * 1.25;
          ctx.moveTo(sx[i] + r, py[i]);
          ctx.arc(sx[i], py[i], r, 0, 2 * Math.PI);
          any = true;
        }
        if (any) {
          ctx.globalAlpha = status === 1 ? 1 : 0.5;
          ctx.strokeStyle = sphere.color;
          ctx.lineWidth = line;
          ctx.stroke();
          ctx.globalAlpha = 1;
        }
      }
    }
  }

  function updateStats(now) {
    const span = (now - meter.windowStart) / 1000;
    if (meter.windowStart > 0) {
      meter.renderFps = (meter.rendered - meter.renderedWindow) / span;
      meter.streamFps = (meter.received - meter.receivedWindow) / span;
    }
    const bytes = link.client ? link.client.stats.bytes : 0;
    if (meter.windowStart > 0) meter.kbytesPerS = Math.max(0, bytes - meter.bytesWindow) / span / 1000;
    meter.windowStart = now;
    meter.renderedWindow = meter.rendered;
    meter.receivedWindow = meter.received;
    meter.bytesWindow = bytes;
    const live = link.client !== null && link.client.state === "live";
    $("stat-fps").textContent = meter.renderFps.toFixed(0);
    $("stat-stream").textContent = live ? meter.streamFps.toFixed(0) : "0";
    $("stat-kbps").textContent = live ? meter.kbytesPerS.toFixed(1) : "0";
    $("stat-latency").textContent = meter.latencyMs === null ? "–" : meter.latencyMs.toFixed(1);
    $("stat-draw").textContent = meter.drawMs.toFixed(2);
  }

  // ---------------------------------------------------------------------------------------------
  // The legend, the sphere select and the event log

  function buildLegend() {
    const legend = $("legend");
    const select = $("sphere-select");
    const chosen = select.value;
    legend.replaceChildren();
    select.replaceChildren(new Option("whole swarm", ""));
    for (const sphere of swarm.spheres) {
      const item = document.createElement("li");
      item.dataset.sphere = sphere.name;
      item.title = `${sphere.name}: ${sphere.count} agents (click to aim the operators' controls at it)`;
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = sphere.color;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = sphere.name.replace(/_/g, " ");
      const count = document.createElement("span");
      count.className = "count";
      item.append(swatch, name, count);
      item.addEventListener("click", () => {
        select.value = select.value === sphere.name ? "" : sphere.name;
        markSelected();
      });
      legend.append(item);
      select.append(new Option(sphere.name.replace(/_/g, " "), sphere.name));
    }
    select.value = swarm.spheres.some((s) => s.name === chosen) ? chosen : "";
    markSelected();
    swarm.legendDirty = true;
  }

  // The stream's fps: the operator's choice among FPS_CHOICES that divide TICK_HZ; a change
  // reconnects at the new rate.
  function buildFpsChoices(tickHz, fps) {
    const select = $("fps-select");
    const choices = FPS_CHOICES.filter((f) => f <= tickHz && tickHz % f === 0);
    if (!choices.includes(fps)) choices.push(fps);
    select.replaceChildren(...choices.map((f) => new Option(`${f} fps`, String(f))));
    select.value = String(fps);
  }

  $("fps-select").addEventListener("change", (e) => {
    const fps = Number(e.target.value);
    if (!Number.isInteger(fps) || fps === link.fps) return;
    link.fps = fps;
    disconnect();
    connect();
  });

  function markSelected() {
    const chosen = $("sphere-select").value;
    for (const item of $("legend").children) item.classList.toggle("selected", item.dataset.sphere === chosen);
  }
  $("sphere-select").addEventListener("change", markSelected);

  function updateLegend() {
    swarm.legendDirty = false;
    const items = $("legend").children;
    let total = 0;
    swarm.spheres.forEach((sphere, k) => {
      let out = 0;
      for (let i = sphere.first_agent; i < sphere.first_agent + sphere.count; i++) if (swarm.status[i] !== 0) out++;
      total += out;
      const count = items[k] && items[k].lastChild;
      if (!count) return;
      count.textContent = out ? `${out} out` : String(sphere.count);
      count.classList.toggle("out", out > 0);
    });
    $("stat-dispersed").textContent = String(total);
  }

  function logEvent(text) {
    const list = $("events");
    const item = document.createElement("li");
    item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
    list.prepend(item);
    while (list.children.length > 5) list.lastChild.remove();
  }

  // ---------------------------------------------------------------------------------------------
  // Operators: the token, its roles, what the page offers with them

  // The token's payload, read for display only (the server verifies the signature and the claims):
  // null when it is not a JWT this page can read.
  function payloadOf(token) {
    const parts = token.split(".");
    if (parts.length !== 3) return null;
    try {
      const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
      const bytes = Uint8Array.from(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0));
      const payload = JSON.parse(new TextDecoder().decode(bytes));
      return payload && typeof payload === "object" ? payload : null;
    } catch (err) {
      return null;
    }
  }

  // The roles a payload names. Which claim holds them is the server's setting
  // (OPERATOR_ROLES_CLAIM: `user_role`, or a dotted path such as `app_metadata.roles`), unknown
  // here: any claim whose value is (or lists) `operator` or `guardian` counts, except
  // `user_metadata`, which users edit themselves and the server never reads roles from.
  function rolesOf(payload) {
    const found = new Set();
    const walk = (value, depth) => {
      if (depth > 4 || value === null) return;
      if (typeof value === "string") { if (ROLES.includes(value)) found.add(value); return; }
      if (Array.isArray(value)) { value.forEach((v) => walk(v, depth + 1)); return; }
      if (typeof value === "object") {
        for (const [key, v] of Object.entries(value)) if (key !== "user_metadata") walk(v, depth + 1);
      }
    };
    if (payload) walk(payload, 0);
    return ROLES.filter((r) => found.has(r));
  }

  function operatorFrom(token) {
    const payload = payloadOf(token);
    const exp = payload && Number.isFinite(payload.exp) ? payload.exp : null;
    return { token, roles: rolesOf(payload), exp, readable: payload !== null };
  }

  // `#operator=<token>` in the address: taken at once, and the address bar keeps no trace of it
  // (history.replaceState: no new history entry, no reload).
  function tokenFromFragment() {
    const hash = location.hash.replace(/^#/, "");
    if (!hash) return null;
    const fragment = new URLSearchParams(hash);
    const token = fragment.get("operator");
    if (token === null) return null;
    fragment.delete("operator");
    const rest = fragment.toString();
    history.replaceState(history.state, "", `${location.pathname}${location.search}${rest ? `#${rest}` : ""}`);
    return token.trim() || null;
  }

  function loadOperator() {
    try {
      const token = sessionStorage.getItem(OPERATOR_KEY);
      if (token) return operatorFrom(token);
    } catch (err) { /* storage disabled: no token */ }
    return null;
  }

  function keepOperator(value) {
    operator = value;
    try {
      if (value) sessionStorage.setItem(OPERATOR_KEY, value.token);
      else sessionStorage.removeItem(OPERATOR_KEY);
    } catch (err) { /* storage disabled: the token lives as long as the page */ }
  }

  let operatorTimer = 0;

  // What the page shows for `operator`: the sign-in field or who is signed in, and only the
  // controls its roles allow.
  function showOperator() {
    const roles = operator ? operator.roles : [];
    $("operator-signin").hidden = operator !== null;
    $("operator-who").hidden = operator === null;
    for (const el of document.querySelectorAll("[data-role]")) el.hidden = !roles.includes(el.dataset.role);
    clearTimeout(operatorTimer);
    if (operator === null) return;
    const list = $("operator-roles");
    if (roles.length) {
      list.replaceChildren(...roles.map((role) => {
        const pill = document.createElement("span");
        pill.className = "role";
        pill.dataset.roleName = role;
        pill.textContent = role;
        return pill;
      }));
    } else {
      list.textContent = "no role this page knows (operator, guardian): nothing to command";
    }
    const expiry = $("operator-expiry");
    if (operator.exp !== null) {
      const ms = operator.exp * 1000 - Date.now();
      expiry.textContent = `Token valid until ${new Date(operator.exp * 1000).toLocaleString()}.`;
      // When the token runs out, say so (the server will refuse it from then on anyway).
      if (ms > 0 && ms < 2 ** 31) operatorTimer = setTimeout(() => operatorRefused(null), ms + 1000);
    } else {
      expiry.textContent = "";
    }
  }

  function operatorMessage(text) {
    const el = $("operator-message");
    el.hidden = text === null;
    el.textContent = text === null ? "" : text;
  }

  function expired(value) {
    return value !== null && value.exp !== null && value.exp * 1000 <= Date.now();
  }

  // A 401 for the operator's token (or its expiry seen here): the token is of no more use. The
  // controls go, the reason is said, and the sign-in field is back.
  function operatorRefused(detail) {
    if (operator === null) return;
    const gone = operator;
    keepOperator(null);
    showOperator();
    const why = expired(gone)
      ? `Your operator token expired at ${new Date(gone.exp * 1000).toLocaleTimeString()}.`
      : `Your operator token was refused${detail ? ` (${detail.replace(/\.$/, "")})` : ""}.`;
    operatorMessage(`${why} Sign in again with a valid token to command the swarm.`);
  }

  // Sign in with `token`: the server is asked whether it verifies (GET /api/v1/safeguard takes an
  // operator's bearer token as well as a session), then the page offers what its roles allow.
  async function signIn(token) {
    const candidate = operatorFrom(token);
    operatorMessage(null);
    const check = await api("GET", "/api/v1/safeguard", undefined, { as: "operator", token });
    if (check.status === 401 || check.status === 403) {
      keepOperator(candidate);
      operatorRefused(check.detail);
      return false;
    }
    keepOperator(candidate);
    showOperator();
    if (!check.ok) operatorMessage(`The API could not check this token now (${check.detail}); the next command will tell.`);
    else if (!candidate.roles.length) operatorMessage("This token verifies but carries neither role: operator (commands) nor guardian (reset).");
    return true;
  }

  function signOut() {
    keepOperator(null);
    showOperator();
    operatorMessage(null);
    $("command-result").textContent = "";
    $("reset-result").textContent = "";
  }

  $("operator-signin").addEventListener("submit", async (e) => {
    e.preventDefault();
    const field = $("operator-token");
    const token = field.value.trim();
    if (!token) { operatorMessage("Paste an operator's access token first."); return; }
    const button = $("operator-signin-button");
    button.disabled = true;
    const ok = await signIn(token);
    button.disabled = false;
    if (ok) field.value = "";
  });
  $("operator-signout").addEventListener("click", signOut);
  // An operator link opened in a tab that is already on the page.
  window.addEventListener("hashchange", () => {
    const token = tokenFromFragment();
    if (token !== null) signIn(token);
  });

  // What a refusal of an operator's command says, in the element `out`. Returns true when it was
  // the token's (401) or the role's (403) fault.
  function refusedForOperator(result, out) {
    if (result.status === 401) {
      operatorRefused(result.detail);
      out.textContent = "";
      return true;
    }
    if (result.status === 403) {
      const role = result.error === "mfa_required"
        ? "This needs a multi-factor sign-in (aal2): sign in again with it"
        : "Your operator token lacks the role this needs";
      out.textContent = `Refused (403): ${role}. ${result.detail}`;
      out.classList.add("bad");
      return true;
    }
    return false;
  }

  // ---------------------------------------------------------------------------------------------
  // Operators' controls and the Brise-Circuit

  const safeguard = { state: "unknown", reason: "", closesAt: 0, timer: 0 };
  const notice = { closesAt: 0, detail: "", timer: 0 };

  async function command(method, path, body, describe) {
    const buttons = document.querySelectorAll("#commands button");
    buttons.forEach((b) => { b.disabled = true; });
    const result = await api(method, path, body, { as: "operator" });
    buttons.forEach((b) => { b.disabled = false; });
    const out = $("command-result");
    if (result.ok) {
      out.textContent = describe(result.data || {});
      out.classList.remove("bad");
      showNotice(null);
    } else if (result.status === 423) {
      out.textContent = "";
      showNotice(result.detail, result.retryAfterS);
      refreshSafeguard();
    } else if (!refusedForOperator(result, out)) {
      out.textContent = `Refused (${result.status || "no answer"}): ${result.detail}`;
      out.classList.add("bad");
    }
  }

  for (const button of document.querySelectorAll("[data-level]")) {
    button.addEventListener("click", () => {
      const sphere = $("sphere-select").value || undefined;
      command("POST", "/api/v1/swarm/disperse", { level: button.dataset.level, sphere },
        (d) => `${d.level} dispersal${d.sphere ? ` of ${d.sphere}` : ""}: ${d.dispersed} agents sent out`);
    });
  }
  $("regroup").addEventListener("click", () => {
    command("POST", "/api/v1/swarm/regroup", undefined, (d) => `regroup: ${d.regrouped} agents called home`);
  });
  $("retune-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = Number($("retune-agent").value);
    const frequency = Number($("retune-frequency").value);
    command("PUT", `/api/v1/swarm/agents/${encodeURIComponent(id)}/frequency`, { frequency },
      (d) => `agent ${d.id}${d.name ? ` (${d.name})` : ""} retuned to ${d.frequency} Hz`);
  });

  // The reset: a guardian's act. With a quorum (SAFEGUARD_RESET_QUORUM) the first guardians get a
  // 202 with the approvals so far; the circuit closes with the last one.
  $("reset").addEventListener("click", async () => {
    const button = $("reset");
    const out = $("reset-result");
    button.disabled = true;
    const result = await api("POST", "/api/v1/safeguard/reset", undefined, { as: "operator" });
    button.disabled = false;
    out.classList.remove("bad");
    if (result.status === 202 && result.data) {
      const d = result.data;
      const more = Math.max(0, d.needed - d.approvals);
      out.textContent = `Your approval is counted: ${d.approvals} of ${d.needed} guardians. `
        + `${more} more within ${Math.ceil(d.expires_in_s)} s close the Brise-Circuit.`;
    } else if (result.ok) {
      out.textContent = "The Brise-Circuit is closed: commands pass again.";
      if (result.data) showSafeguard(result.data);
      showNotice(null);
    } else if (!refusedForOperator(result, out)) {
      out.textContent = `Refused (${result.status || "no answer"}): ${result.detail}`;
      out.classList.add("bad");
    }
  });
  $("leave").addEventListener("click", async () => {
    if (session !== null) await api("DELETE", "/api/v1/sceau/session");
    saveSession(null);
    leaveEssaim();
    showSceau("The Sceau is closed.", true);
  });

  // A 423: the API's reason, and the time until the Brise-Circuit lets a command through again.
  function showNotice(detail, retryAfterS) {
    const el = $("notice");
    clearInterval(notice.timer);
    if (detail === null) { el.hidden = true; return; }
    notice.detail = detail;
    notice.closesAt = retryAfterS === null || retryAfterS === undefined ? 0 : Date.now() + retryAfterS * 1000;
    const paint = () => {
      const text = document.createElement("span");
      text.textContent = `Refused (423): ${notice.detail}`;
      const countdown = document.createElement("span");
      countdown.className = "countdown";
      countdown.textContent = countdownText(notice.closesAt);
      el.replaceChildren(text, countdown);
      if (notice.closesAt && Date.now() >= notice.closesAt) clearInterval(notice.timer);
    };
    el.hidden = false;
    paint();
    if (notice.closesAt) notice.timer = setInterval(paint, 250);
  }

  function countdownText(closesAt) {
    if (!closesAt) return "The Brise-Circuit is open.";
    const left = Math.ceil((closesAt - Date.now()) / 1000);
    return left > 0 ? `The Brise-Circuit closes in ${left} s.` : "The Brise-Circuit lets one command through now.";
  }

  async function refreshSafeguard() {
    const result = await api("GET", "/api/v1/safeguard");
    if (result.ok && result.data) showSafeguard(result.data);
  }

  // From GET /api/v1/safeguard or a `safeguard` event: {state, reason?, retry_after_s?}.
  function showSafeguard(data) {
    const el = $("safeguard");
    safeguard.state = data.state || "unknown";
    safeguard.reason = data.reason || "";
    const retry = Number(data.retry_after_s);
    if (safeguard.state !== "open") safeguard.closesAt = 0;
    else if (Number.isFinite(retry) && retry >= 0) safeguard.closesAt = Date.now() + retry * 1000;
    else if (notice.closesAt) safeguard.closesAt = notice.closesAt;
    el.dataset.state = safeguard.state;
    $("safeguard-state").textContent = safeguard.state.replace("_", "-");
    clearInterval(safeguard.timer);
    const paint = () => {
      const parts = [];
      if (safeguard.state === "closed") parts.push("Commands pass.");
      if (safeguard.state === "half_open") parts.push("The next command is a test: it closes the circuit or opens it again.");
      if (safeguard.state === "open") {
        parts.push(safeguard.reason ? `${safeguard.reason.replace(/\.$/, "")}.` : "Swarm-changing commands are refused.");
        parts.push(countdownText(safeguard.closesAt));
      }
      $("safeguard-text").textContent = parts.join(" ");
      if (safeguard.state === "open" && safeguard.closesAt && Date.now() >= safeguard.closesAt) {
        clearInterval(safeguard.timer);
        refreshSafeguard();
      }
    };
    paint();
    if (safeguard.state === "open" && safeguard.closesAt) safeguard.timer = setInterval(paint, 250);
  }

  // ---------------------------------------------------------------------------------------------
  // Screens

  function enterEssaim() {
    document.body.dataset.screen = "essaim";
    banner(null);
    clearTimeout(expiryTimer);
    if (session && Number.isFinite(session.expires_at)) {
      const ms = session.expires_at * 1000 - Date.now();
      // setTimeout takes at most 2^31 − 1 ms; a longer session is checked again by the API anyway.
      if (ms < 2 ** 31) expiryTimer = setTimeout(() => sessionEnded("it expired"), Math.max(0, ms));
    }
    cancelAnimationFrame(loop);
    meter.windowStart = 0;
    loop = requestAnimationFrame(render);
    connect();
    refreshSafeguard();
  }

  function leaveEssaim() {
    disconnect();
    cancelAnimationFrame(loop);
    clearInterval(safeguard.timer);
    clearInterval(notice.timer);
    showNotice(null);
    swarm.hasFrame = false;
  }

  function seconds(ms) {
    return (Math.max(0, ms) / 1000).toFixed(1);
  }

  // A handle for tests and for operators at the console: read-only figures and the live socket.
  window.atomViewer = Object.freeze({
    get socket() { return link.client ? link.client.socket : null; },
    stats: () => ({
      screen: document.body.dataset.screen, wsUrl: link.sticky,
      connections: link.client ? link.client.stats.connections : 0,
      encoding: link.client && link.client.hello ? link.client.hello.encoding : null,
      fps: link.fps, keyframes: link.client ? link.client.stats.keyframes : 0,
      bytesReceived: link.client ? link.client.stats.bytes : 0,
      framesReceived: meter.received, framesRendered: meter.rendered, seq: swarm.seq,
      renderFps: meter.renderFps, streamFps: meter.streamFps, kbytesPerS: meter.kbytesPerS,
      latencyMs: meter.latencyMs, drawMs: meter.drawMs,
      dispersed: swarm.status.reduce((a, s) => a + (s !== 0), 0),
      // The positions drawn, for tests: where agent i is on the canvas (pixels), and in the world.
      screenOf: (i) => [swarm.sx[i], swarm.sy[i]],
      positionOf: (i) => Array.from(swarm.pos.subarray(3 * i, 3 * i + 3)),
    }),
  });

  // The operator's token: a fragment wins over what this tab kept. Taken before anything else, so
  // that the address bar holds it as briefly as possible.
  {
    const fromLink = tokenFromFragment();
    operator = loadOperator();
    showOperator();
    if (fromLink !== null) signIn(fromLink);
    else if (expired(operator)) operatorRefused(null);
  }

  loadServerHints().then(() => {
    if (session !== null) enterEssaim();
    else showSceau("");
  });
  setRing(0);
}
