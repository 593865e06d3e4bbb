"""The viewer page as a person uses it: a real ``atom serve``, Debian's headless Chromium, Playwright.

Time here is real (a browser cannot run on Trio's MockClock): every wait is bounded by Playwright's
timeouts or an explicit deadline, and the whole file takes about half a minute. Screenshots go to
``artifacts/viewer/`` (see the README); the pixel checks read those screenshots.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import expect, sync_playwright
from PIL import Image

from atom_actors.catalog import CATALOG
from tests.operators import OPERATOR_SECRET, token
from tests.servers import skip

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parent.parent
VIEWER = ROOT / "atom_actors" / "viewer"
SDK = ROOT / "clients" / "js" / "src"
ARTIFACTS = ROOT / "artifacts" / "viewer"
VIEWPORT = {"width": 1280, "height": 800}
STARTUP_S = 30
PAGE_TIMEOUT_MS = 10_000
OPERATOR_LINK = re.compile(r"atom: operator link \(both roles, for this process only\): (?P<url>http://\S+/#operator=\S+)")
TOKEN_IN_LINK = re.compile(r"#operator=\S+")
SERVING = re.compile(r"atom: serving: .*?api (?P<api>http://\S+?)(?:,|$).*?ws (?P<ws>ws://\S+?)(?:,|$)")
BACKGROUND = (0x0B, 0x0D, 0x17)      # viewer.js BACKGROUND

# The page needs the REST API and the WebSocket broadcaster, built on their own branches: until both
# are in the tree there is nothing to open the page against.
MISSING = [m for m in ("atom_actors.api", "atom_actors.broadcaster") if importlib.util.find_spec(m) is None]
needs_servers = pytest.mark.skipif(bool(MISSING), reason=f"not in this tree yet: {', '.join(MISSING)}")


# -- the files (no browser needed) -----------------------------------------------------------------

def test_page_loads_only_from_its_own_origin():
    """No CDN: the page names only /viewer/ files on the API's origin, and no file reaches out."""
    html = (VIEWER / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert set(refs) == {"/viewer/viewer.css", "/viewer/viewer.js", "data:,"}
    for name in ("index.html", "viewer.js", "viewer.css"):
        assert not re.search(r"https?://|@import", (VIEWER / name).read_text()), name
    # Its one import is the project's SDK, served from the same origin; the SDK imports itself only.
    imports = re.findall(r'^import .* from "([^"]+)";', (VIEWER / "viewer.js").read_text(), re.M)
    assert imports == ["/viewer/sdk/index.js"]
    for path in SDK.glob("*.js"):
        assert not re.search(r"https?://", path.read_text()), path
        for target in re.findall(r'from "([^"]+)"', path.read_text()):
            assert target.startswith("./") and (SDK / target).is_file(), (path, target)


# -- a real server and a real browser -------------------------------------------------------------

@dataclass
class Server:
    api: str
    ws: str
    proc: subprocess.Popen
    log: list[str]
    operator_link: str | None = field(default=None, repr=False)   # what `atom serve` alone prints: the viewer with a token of both roles

    def page_url(self) -> str:
        return f"{self.api}/?ws={self.ws}"

    def request(self, method: str, path: str, body: dict | None = None,
                token: str | None = None, bearer: str | None = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("X-Sceau-Session", token)
        if bearer:
            req.add_header("Authorization", f"Bearer {bearer}")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else {}
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    @property
    def operator_token(self) -> str:
        assert self.operator_link is not None, "this server printed no operator link"
        return self.operator_link.partition("#operator=")[2]

    def open_session(self, duration_ms: int = 2000) -> dict:
        status, data = self.request("POST", "/api/v1/sceau/activate", {"duration_ms": duration_ms})
        assert status == 201, data
        return {"token": data["session"], "expires_at": data["expires_at"]}


@contextmanager
def atom_serve(tmp_path: Path, **settings: str) -> Iterator[Server]:
    env = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME", "LANG")}
    env.update({"API_PORT": "0", "WS_PORT": "0", "SWARM_SEED": "7", "PYTHONUNBUFFERED": "1"}, **settings)
    proc = subprocess.Popen([sys.executable, "-m", "atom_actors", "serve"], env=env, cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    # A thread reads stderr line by line from the start (a chatty server never blocks on a full
    # pipe) and hands each line over; the wait for the "serving:" line is bounded by STARTUP_S.
    lines: queue.Queue[str | None] = queue.Queue()
    log: list[str] = []

    def read() -> None:
        for line in proc.stderr:
            log.append(TOKEN_IN_LINK.sub("#operator=<token>", line))   # the log shows in failures
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"atom serve did not say it was serving within {STARTUP_S} s: {log}") from None
            assert line is not None, f"atom serve exited {proc.wait()}: {log}"
            if "serving:" in line:
                match = SERVING.search(line)
                assert match is not None, f"atom serve names no API or no WebSocket URL: {line}"
                break
        server = Server(match["api"], match["ws"], proc, log)
        # Alone, with no operator settings, it prints the operator link on the next line.
        if "OPERATOR_JWT_SECRET" not in settings:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            link = OPERATOR_LINK.search(line or "")
            assert link is not None, "atom serve alone printed no operator link after its serving line"
            server.operator_link = link["url"]
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
        proc.stderr.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        skip(f"{CHROMIUM} is missing: apt-get install -y chromium (scripts/test.sh installs it as root)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    # Dispersed agents stay out for the whole dispersal check; the Brise-Circuit stays out of the way.
    with atom_serve(tmp_path_factory.mktemp("serve"), DISPERSAL_DWELL_S="30",
                    SAFEGUARD_MAX_TOTAL="50", SAFEGUARD_MAX_COMMANDS="200") as running:
        yield running


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory) -> Iterator[Server]:
    """A Sceau of 2.5 s, and a Brise-Circuit that opens on the second total dispersal."""
    with atom_serve(tmp_path_factory.mktemp("strict"), SCEAU_DURATION="2500",
                    SAFEGUARD_MAX_TOTAL="1", SAFEGUARD_COOLDOWN_S="30") as running:
        yield running


@pytest.fixture(scope="module")
def signed_server(tmp_path_factory) -> Iterator[Server]:
    """Operators' tokens signed with the tests' OPERATOR_JWT_SECRET; a Brise-Circuit that opens
    on the second total dispersal and closes when two guardians ask."""
    with atom_serve(tmp_path_factory.mktemp("signed"), SECRET_KEY="k" * 40,
                    OPERATOR_JWT_SECRET=OPERATOR_SECRET, SAFEGUARD_MAX_TOTAL="1",
                    SAFEGUARD_COOLDOWN_S="60", SAFEGUARD_RESET_QUORUM="2") as running:
        yield running


@pytest.fixture
def new_page(browser):
    """``new_page(session=None, touch=False)``: a fresh tab (own sessionStorage); with ``session``
    it starts as if the Sceau had already been opened in this tab."""
    contexts = []
    errors: list[str] = []

    def make(session: dict | None = None, touch: bool = False, operator: str | None = None):
        context = browser.new_context(viewport=VIEWPORT, has_touch=touch)
        contexts.append(context)
        if session is not None:
            context.add_init_script(
                f"sessionStorage.setItem('atom.sceau', {json.dumps(json.dumps(session))})")
        if operator is not None:   # as if this tab had signed in before (once: a sign-out stays)
            context.add_init_script(
                "if (!sessionStorage.getItem('test.seeded')) { sessionStorage.setItem('test.seeded', '1');"
                f" sessionStorage.setItem('atom.operator', {json.dumps(operator)}); }}")
        page = context.new_page()
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        return page

    yield make
    for context in contexts:
        context.close()
    assert not errors, f"the page threw: {errors}"


def shot(page, name: str, *, canvas: bool = False) -> np.ndarray:
    """Save a screenshot under artifacts/viewer/ and return it as an RGB array (the canvas only
    when ``canvas``)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = page.locator("#swarm") if canvas else page
    png = target.screenshot(path=ARTIFACTS / f"{name}.png")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def open_live(server: Server, new_page, frames: int = 20):
    """A tab with a session of its own, on the page, streaming."""
    page = new_page(session=server.open_session())
    page.goto(server.page_url())
    wait_live(page, frames=frames)
    return page


def wait_live(page, frames: int = 20) -> None:
    page.wait_for_selector("#conn[data-state=open]")
    page.wait_for_function(f"() => atomViewer.stats().framesRendered > {frames} && atomViewer.stats().framesReceived > {frames}")


# -- what the pixels say ----------------------------------------------------------------------------

def rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])


def pixels_of(image: np.ndarray, colour: np.ndarray, tolerance: int = 8) -> np.ndarray:
    """(K, 2) row/column coordinates of the pixels within ``tolerance`` of ``colour``."""
    return np.argwhere(np.abs(image - colour).max(axis=2) <= tolerance)


def particle_pixels(image: np.ndarray) -> np.ndarray:
    """Everything painted over the background: discs and rings."""
    return np.argwhere(np.abs(image - np.array(BACKGROUND)).sum(axis=2) > 60)


def spread(points: np.ndarray) -> float:
    """Root-mean-square distance of ``points`` from their centroid, in pixels."""
    return float(np.sqrt(((points - points.mean(axis=0)) ** 2).sum(axis=1).mean()))


def sphere_spreads(image: np.ndarray, min_pixels: int = 12) -> dict[str, float]:
    out = {}
    for sphere in CATALOG.spheres:
        points = pixels_of(image, rgb(sphere.color))
        if len(points) >= min_pixels:
            out[sphere.name] = spread(points)
    return out


# -- the Sceau ----------------------------------------------------------------------------------------

@needs_servers
def test_early_release_opens_nothing_and_says_why(server, new_page):
    page = new_page()
    activations = []
    page.on("request", lambda r: activations.append(r) if "/sceau/activate" in r.url else None)
    page.goto(server.page_url())
    page.mouse.move(300, 300)
    page.mouse.down()
    page.wait_for_timeout(600)
    page.mouse.up()
    message = page.locator("#sceau-message")
    assert re.search(r"Released after \d\.\d s: hold for 2\.0 s to open the Sceau\. Nothing was sent\.",
                     message.inner_text()), message.inner_text()
    shot(page, "sceau-early-release")
    assert activations == []
    assert page.evaluate("sessionStorage.getItem('atom.sceau')") is None
    assert page.locator("body").get_attribute("data-screen") == "sceau"


@needs_servers
def test_two_second_touch_opens_a_session_and_the_swarm(server, new_page):
    page = new_page(touch=True)
    page.goto(server.page_url())
    page.wait_for_function("() => window.atomViewer !== undefined")
    touch = page.context.new_cdp_session(page)
    with page.expect_response(lambda r: "/sceau/activate" in r.url, timeout=8000) as answered:
        started = time.monotonic()
        touch.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": 640, "y": 650}]})
        page.wait_for_timeout(1000)
        shot(page, "sceau-holding")
    opened_after = time.monotonic() - started
    touch.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    response = answered.value
    assert response.status == 201
    assert json.loads(response.request.post_data)["duration_ms"] >= 2000
    assert opened_after >= 1.95
    stored = json.loads(page.evaluate("sessionStorage.getItem('atom.sceau')"))
    assert stored["token"] == response.json()["session"]
    page.wait_for_selector("body[data-screen=essaim]")
    wait_live(page)
    assert page.locator("#stat-agents").inner_text() == "350"


# -- L'Essaim -------------------------------------------------------------------------------------------

@needs_servers
def test_particles_cluster_by_sphere_and_a_dispersal_spreads_them(server, new_page):
    page = new_page(session=server.open_session(), operator=server.operator_token)
    page.goto(server.page_url())
    wait_live(page, frames=30)
    page.wait_for_function("() => atomViewer.stats().dispersed === 0")
    assert page.locator("#legend li").count() == 15
    home = shot(page, "essaim-clusters", canvas=True)
    shot(page, "essaim-page")

    spheres = sphere_spreads(home)
    assert len(spheres) >= 13, f"sphere colours seen on the canvas: {sorted(spheres)}"
    whole = spread(particle_pixels(home))
    # Each sphere is a tight cluster of its own colour, far smaller than the swarm it belongs to.
    assert np.median(list(spheres.values())) < 0.4 * whole, (spheres, whole)

    page.click("[data-level=total]")
    page.wait_for_function("() => atomViewer.stats().dispersed === 350")
    assert "350 agents sent out" in page.locator("#command-result").inner_text()
    assert page.locator("#legend li[data-sphere=transport] .count").inner_text() == "50 out"
    page.wait_for_timeout(1500)   # the engine flies agents out in 1.2 s
    out = shot(page, "essaim-dispersed", canvas=True)
    assert spread(particle_pixels(out)) > 1.35 * whole
    # Dispersed agents are drawn as rings, not discs: far fewer pixels of the exact sphere colours.
    exact = sum(len(pixels_of(out, rgb(s.color), 2)) for s in CATALOG.spheres)
    exact_home = sum(len(pixels_of(home, rgb(s.color), 2)) for s in CATALOG.spheres)
    assert exact < 0.6 * exact_home, (exact, exact_home)

    page.click("#regroup")
    page.wait_for_function("() => atomViewer.stats().dispersed === 0")
    assert "called home" in page.locator("#command-result").inner_text()


@needs_servers
def test_live_figures_are_shown(server, new_page):
    page = open_live(server, new_page, frames=90)
    stats = page.evaluate("atomViewer.stats()")
    assert stats["streamFps"] > 20 and stats["renderFps"] > 20, stats
    assert 0 <= stats["latencyMs"] < 1000, stats
    assert re.fullmatch(r"\d+", page.locator("#stat-fps").inner_text())
    assert re.fullmatch(r"-?\d+\.\d", page.locator("#stat-latency").inner_text())
    # The stream's bandwidth beside its fps: the delta stream, a few hundred bytes a frame.
    assert 3 < float(page.locator("#stat-kbps").inner_text()) < 120, stats


@needs_servers
def test_the_delta_stream_draws_the_agents_and_they_move(server, new_page):
    page = open_live(server, new_page, frames=30)
    stats = page.evaluate("atomViewer.stats()")
    assert stats["encoding"] == "delta" and stats["keyframes"] == 1, stats
    where = "() => Array.from({length: 350}, (_, i) => atomViewer.stats().positionOf(i))"
    before, image = np.array(page.evaluate(where)), shot(page, "essaim-delta", canvas=True)
    assert len(sphere_spreads(image)) >= 13, "the agents are drawn in their spheres' colours"
    page.wait_for_timeout(1000)
    after = np.array(page.evaluate(where))
    assert before.shape == after.shape == (350, 3)
    assert np.abs(before).max() > 5, "positions from the stream, not zeros"
    moved = np.linalg.norm(after - before, axis=1)
    assert (moved > 0.01).sum() > 300, "nearly every agent moved in a second"
    assert page.evaluate("atomViewer.stats().keyframes") == 1, "deltas only, after the first"


@needs_servers
def test_the_operator_picks_the_streams_fps(server, new_page):
    page = open_live(server, new_page, frames=30)
    assert page.locator("#fps-select option").all_inner_texts() == ["60 fps", "30 fps", "20 fps"]
    page.select_option("#fps-select", "20")
    page.wait_for_function("() => atomViewer.stats().fps === 20 && atomViewer.stats().connections === 1"
                           " && atomViewer.stats().framesReceived > 60")
    assert "20 fps, delta" in page.locator("#events").inner_text()   # the new hello says so
    # One frame in three of the 60 fps tick: the seqs the page draws are at least 3 apart, and
    # mostly exactly 3 (a busy machine may make the fan-out miss a tick, and a decimated group then
    # takes the next frame: a gap of 4), and no more than 20 come a second.
    seqs = page.evaluate("""() => new Promise((done) => {
        const seen = [];
        const timer = setInterval(() => {
            const seq = atomViewer.stats().seq;
            if (seen[seen.length - 1] !== seq) seen.push(seq);
        }, 4);
        setTimeout(() => { clearInterval(timer); done(seen); }, 1500);
    })""")
    gaps = np.diff(seqs)
    assert len(seqs) >= 5 and gaps.min() >= 3 and np.median(gaps) == 3, seqs
    stats = page.evaluate("atomViewer.stats()")
    assert stats["streamFps"] <= 25, stats


@needs_servers
def test_a_dropped_socket_reconnects_and_says_so(server, new_page):
    page = new_page(session=server.open_session())
    page.goto(server.page_url())
    wait_live(page)
    # A client message over 4 KiB makes the server close this connection (1009): a real drop.
    page.evaluate("atomViewer.socket.send('x'.repeat(5000))")
    # The SDK's first retry comes after a random 0 to 0.5 s (full jitter): the banner may show for
    # a blink only, so the event log keeps the word.
    page.wait_for_function("() => atomViewer.stats().connections === 2")
    assert re.search(r"Connection to L'Essaim lost \(closed 1009.*\): reconnecting",
                     page.locator("#events").inner_text()), page.locator("#events").inner_text()
    page.locator("#conn-banner").wait_for(state="hidden")
    before = page.evaluate("atomViewer.stats().framesReceived")
    page.wait_for_function(f"() => atomViewer.stats().framesReceived > {before + 20}")


@needs_servers
def test_a_revoked_session_sends_the_page_back_to_the_sceau(server, new_page):
    session = server.open_session()
    page = new_page(session=session)
    page.goto(server.page_url())
    wait_live(page)
    status, _ = server.request("DELETE", "/api/v1/sceau/session", token=session["token"])
    assert status == 204
    # The server closes the stream at once (4401, session ended); the reconnect gets a 401.
    page.wait_for_selector("body[data-screen=sceau]")
    assert "session has ended" in page.locator("#sceau-message").inner_text()
    shot(page, "sceau-session-ended")
    assert page.evaluate("sessionStorage.getItem('atom.sceau')") is None


# -- the Brise-Circuit --------------------------------------------------------------------------------

@needs_servers
def test_a_hold_the_api_finds_too_short_shows_its_reason(strict_server, new_page):
    """The page holds for what it believes SCEAU_DURATION is (2 s here); the API wants 2.5 s and
    answers 400 sceau_too_short, whose reason the page shows."""
    page = new_page()
    page.route("**/api/v1/health", lambda route: route.fulfill(
        json={"status": "ok", "sceau_duration_ms": 2000}))
    page.goto(strict_server.page_url())
    page.mouse.move(300, 300)
    with page.expect_response(lambda r: "/sceau/activate" in r.url) as answered:
        page.mouse.down()
    page.mouse.up()
    assert answered.value.status == 400
    detail = answered.value.json()["detail"]
    message = page.locator("#sceau-message")
    expect(message).to_contain_text(f"The Sceau did not open: {detail}")
    assert page.locator("body").get_attribute("data-screen") == "sceau"
    assert page.evaluate("sessionStorage.getItem('atom.sceau')") is None


@needs_servers
def test_an_open_brise_circuit_shows_its_reason_and_counts_down_and_a_guardian_closes_it(strict_server, new_page):
    page = new_page(session=strict_server.open_session(2500), operator=strict_server.operator_token)
    page.goto(strict_server.page_url())
    wait_live(page)
    page.wait_for_selector("#safeguard[data-state=closed]")
    refused = None
    for _ in range(4):
        with page.expect_response(lambda r: "/swarm/disperse" in r.url) as answered:
            page.click("[data-level=total]")
        if answered.value.status == 423:
            refused = answered.value
            break
    assert refused is not None, "four total dispersals did not open the Brise-Circuit"
    detail = refused.json()["detail"]
    retry_after = int(refused.headers["retry-after"])

    notice = page.locator("#notice")
    notice.wait_for(state="visible")
    assert detail in notice.inner_text()
    shown = int(re.search(r"closes in (\d+) s", notice.inner_text())[1])
    assert retry_after - 2 <= shown <= retry_after
    page.wait_for_selector("#safeguard[data-state=open]")
    shot(page, "brise-circuit-open")
    # The countdown runs.
    page.wait_for_function(
        f"() => /closes in (\\d+) s/.exec(document.getElementById('notice').innerText)?.[1] < {shown}",
        timeout=3000)
    # The operator link's token is a guardian's too: the reset closes the circuit (a quorum of one).
    with page.expect_response(lambda r: "/safeguard/reset" in r.url) as answered:
        page.click("#reset")
    assert answered.value.status == 200
    expect(page.locator("#reset-result")).to_have_text("The Brise-Circuit is closed: commands pass again.")
    page.wait_for_selector("#safeguard[data-state=closed]")
    notice.wait_for(state="hidden")
    with page.expect_response(lambda r: "/swarm/regroup" in r.url) as answered:
        page.click("#regroup")
    assert answered.value.status == 202


# -- operators ------------------------------------------------------------------------------------------

def bearer_of(request) -> str | None:
    header = request.headers.get("authorization", "")
    return header.removeprefix("Bearer ") if header.startswith("Bearer ") else None


def holds_operator_token(page, expected: str | None) -> bool:
    """Whether this tab keeps ``expected`` (None: no token); compared in the page, so that no
    token ever shows in an assertion's message."""
    return page.evaluate("(t) => sessionStorage.getItem('atom.operator') === t", expected)


def visible_buttons(page) -> list[str]:
    return [b.inner_text().strip() for b in page.get_by_role("button").all()]


@needs_servers
def test_the_operator_link_shows_the_controls_and_a_dispersal_works(server, new_page):
    """The link `atom serve` prints, opened as printed: the controls of both roles, the token out
    of the address bar and kept in the tab, and a dispersal sent with it as the bearer."""
    secret = server.operator_token
    page = new_page(session=server.open_session())
    commands = []
    page.on("request", lambda r: commands.append(r) if re.search(r"/swarm/(disperse|regroup|agents/\d+/frequency)$", r.url) else None)
    page.goto(server.operator_link)
    wait_live(page)
    expect(page.locator("#commands")).to_be_visible()
    expect(page.locator("#guardian")).to_be_visible()
    expect(page.locator("#operator-roles .role")).to_have_text(["operator", "guardian"])
    expect(page.locator("#operator-signin")).to_be_hidden()
    assert "operator=" not in page.evaluate("location.href") and "operator=" not in page.url
    assert holds_operator_token(page, secret)
    shot(page, "operator-signed-in")
    # Every control within the column, none cut off at its right edge.
    side = page.locator("#side").bounding_box()
    for selector in ("[data-level=sectoral]", "#retune", "#reset", "#operator-signout"):
        box = page.locator(selector).bounding_box()
        assert side["x"] <= box["x"] and box["x"] + box["width"] <= side["x"] + side["width"], selector

    page.click("[data-level=partial]")
    page.wait_for_function("() => atomViewer.stats().dispersed === 70")
    expect(page.locator("#command-result")).to_have_text("partial dispersal: 70 agents sent out")
    assert len(commands) == 1 and bearer_of(commands[0]) == secret
    assert "x-sceau-session" not in commands[0].headers

    page.fill("#retune-agent", "3")
    page.fill("#retune-frequency", "440")
    page.click("#retune")
    expect(page.locator("#command-result")).to_contain_text("agent 3")
    expect(page.locator("#command-result")).to_contain_text("retuned to 440 Hz")
    status, agent = server.request("GET", "/api/v1/swarm/agents/3", token=server.open_session()["token"])
    assert status == 200 and agent["frequency"] == 440, agent

    page.click("#regroup")
    page.wait_for_function("() => atomViewer.stats().dispersed === 0")
    assert all(bearer_of(r) == secret for r in commands) and len(commands) == 3

    # The tab keeps the token across a reload; signing out takes the controls away.
    page.reload()
    wait_live(page)
    expect(page.locator("#commands")).to_be_visible()
    page.click("#operator-signout")
    expect(page.locator("#commands")).to_be_hidden()
    expect(page.locator("#guardian")).to_be_hidden()
    expect(page.locator("#operator-signin")).to_be_visible()
    assert holds_operator_token(page, None)


@needs_servers
def test_a_viewer_without_a_token_sees_the_swarm_and_no_buttons(server, new_page):
    page = open_live(server, new_page)
    assert page.locator("#stat-agents").inner_text() == "350"
    expect(page.locator("#legend li")).to_have_count(15)
    expect(page.locator("#operator-signin")).to_be_visible()
    # What a person can press: signing in as an operator, and closing the Sceau; no command.
    assert visible_buttons(page) == ["Sign in", "Close the Sceau"]
    for selector in ("[data-level=partial]", "[data-level=total]", "#regroup", "#retune", "#reset"):
        expect(page.locator(selector)).to_be_hidden()
    shot(page, "viewer-only")


@needs_servers
def test_an_expired_token_says_so(signed_server, new_page):
    expired = token(("operator", "guardian"), now=time.time() - 3600, ttl_s=600)
    page = new_page(session=signed_server.open_session())
    # From a link: the server refuses it (401), the page says it expired and offers no command.
    with page.expect_response(lambda r: r.url.endswith("/api/v1/safeguard") and bearer_of(r.request)) as checked:
        page.goto(f"{signed_server.page_url()}#operator={expired}")
    assert checked.value.status == 401
    wait_live(page)
    message = page.locator("#operator-message")
    expect(message).to_contain_text("Your operator token expired at")
    expect(message).to_contain_text("Sign in again")
    assert "operator=" not in page.evaluate("location.href")
    assert holds_operator_token(page, None)
    assert visible_buttons(page) == ["Sign in", "Close the Sceau"]
    shot(page, "operator-expired")

    # Pasted: a good token signs in; then one about to expire is said to have expired when it does.
    page.fill("#operator-token", token(("operator",), ttl_s=5))
    page.click("#operator-signin-button")
    expect(page.locator("#commands")).to_be_visible()
    expect(message).to_be_hidden()
    expect(page.locator("#operator-roles .role")).to_have_text(["operator"])
    expect(page.locator("#guardian")).to_be_hidden()
    expect(message).to_contain_text("Your operator token expired at", timeout=10_000)
    expect(page.locator("#commands")).to_be_hidden()
    expect(page.locator("#operator-signin")).to_be_visible()


@needs_servers
def test_a_refused_token_and_a_missing_role_are_said_plainly(signed_server, new_page):
    page = new_page(session=signed_server.open_session())
    page.goto(signed_server.page_url())
    wait_live(page)
    message = page.locator("#operator-message")
    # Signed with another key: 401, refused (it has not expired).
    page.fill("#operator-token", token(("operator",), secret="not-the-deployments-secret-0123456789"))
    page.click("#operator-signin-button")
    expect(message).to_contain_text("Your operator token was refused")
    expect(page.locator("#commands")).to_be_hidden()
    # The role where this server does not read it (it reads user_role): the page shows the
    # commands, the server refuses them with 403 role_required, and the page says why.
    page.fill("#operator-token", token(None, app_metadata={"roles": ["operator"]}))
    page.click("#operator-signin-button")
    expect(page.locator("#commands")).to_be_visible()
    with page.expect_response(lambda r: "/swarm/disperse" in r.url) as answered:
        page.click("[data-level=partial]")
    assert answered.value.status == 403 and answered.value.json()["error"] == "role_required"
    result = page.locator("#command-result")
    expect(result).to_contain_text("Refused (403): Your operator token lacks the role this needs.")
    expect(result).to_contain_text(answered.value.json()["detail"])
    assert page.evaluate("atomViewer.stats().dispersed") == 0


@needs_servers
def test_a_guardians_reset_counts_towards_the_quorum(signed_server, new_page):
    """SAFEGUARD_RESET_QUORUM=2: the page's guardian gets 202 and is told how many more are needed;
    a second guardian closes the circuit, which the page sees on the stream."""
    page = new_page(session=signed_server.open_session(),
                    operator=token(("guardian",), subject="guardian-a"))
    page.goto(signed_server.page_url())
    wait_live(page)
    expect(page.locator("#guardian")).to_be_visible()
    expect(page.locator("#commands")).to_be_hidden()
    commander = token(("operator",), subject="operator-c")
    statuses = [signed_server.request("POST", "/api/v1/swarm/disperse", {"level": "total"}, bearer=commander)[0]
                for _ in range(3)]
    assert 423 in statuses, statuses
    page.wait_for_selector("#safeguard[data-state=open]")
    with page.expect_response(lambda r: "/safeguard/reset" in r.url) as answered:
        page.click("#reset")
    assert answered.value.status == 202
    expect(page.locator("#reset-result")).to_contain_text("Your approval is counted: 1 of 2 guardians. 1 more within")
    assert page.locator("#safeguard").get_attribute("data-state") == "open"
    status, _ = signed_server.request("POST", "/api/v1/safeguard/reset",
                                      bearer=token(("guardian",), subject="guardian-b"))
    assert status == 200
    page.wait_for_selector("#safeguard[data-state=closed]")
    signed_server.request("POST", "/api/v1/swarm/regroup", bearer=commander)
