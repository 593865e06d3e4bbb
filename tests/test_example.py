"""examples/react-three, for real: built (``npm ci``, ``tsc --strict``, ``vite build``) and run in
headless Chromium (WebGL through SwiftShader, its software renderer) against a real ``atom serve``
in its default layout (API and stream on two ports; the page on a third origin, listed in
CORS_ORIGINS). A 2-second press opens the Sceau; the agents are drawn and move; a dispersal
shows; a server restart ends the session ("session ended") and a new press brings the swarm back;
a page on an origin the server does not list is told so. Prints the bundle's size and the page's
frame rate. Screenshots in artifacts/example/."""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import os
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import sync_playwright

from tests.operators import OPERATOR_SECRET, bearer
from tests.servers import free_port, skip
from tests.test_viewer import CHROMIUM, CHROMIUM_ARGS, atom_serve

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "react-three"
ARTIFACTS = ROOT / "artifacts" / "example"
# WebGL without a GPU: Chromium's software renderer.
WEBGL_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]
BACKGROUND = np.array([0x0B, 0x0D, 0x17])
PRESS_S = 2.3
HUD_ROWS = 40


def build() -> dict[str, int]:
    """npm ci (when the lock file changed), then the type check and the build; the JavaScript
    bundle's bytes, raw and gzipped."""
    stamp = EXAMPLE / "node_modules" / ".package-lock.json"
    if not stamp.is_file() or (EXAMPLE / "package-lock.json").stat().st_mtime > stamp.stat().st_mtime:
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=EXAMPLE, check=True,
                       timeout=300)
    done = subprocess.run(["npm", "run", "build", "--silent"], cwd=EXAMPLE, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    scripts = list((EXAMPLE / "dist" / "assets").glob("*.js"))
    raw = sum(p.stat().st_size for p in scripts)
    return {"js_bytes": raw, "js_gzip_bytes": sum(len(gzip.compress(p.read_bytes())) for p in scripts)}


class Static(http.server.ThreadingHTTPServer):
    daemon_threads = True


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:   # no access log in the test's output
        pass


def serve_dist(port: int) -> Static:
    handler = functools.partial(Quiet, directory=str(EXAMPLE / "dist"))
    server = Static(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def canvas_shot(page, name: str) -> np.ndarray:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.locator("canvas").screenshot(path=str(path))
    # Below the HUD's line of text (its fps figure changes too): the swarm only.
    return np.asarray(Image.open(path).convert("RGB")).astype(int)[HUD_ROWS:]


def drawn(image: np.ndarray) -> np.ndarray:
    """Where something other than the background is."""
    return np.abs(image - BACKGROUND).sum(axis=2) > 60


def spread(image: np.ndarray) -> float:
    """How far the drawn pixels lie from their centre, on average (pixels)."""
    ys, xs = np.nonzero(drawn(image))
    return float(np.hypot(xs - xs.mean(), ys - ys.mean()).mean())


def press(page, seconds: float = PRESS_S) -> None:
    page.mouse.move(400, 300)
    page.mouse.down()
    time.sleep(seconds)
    page.mouse.up()


def post(api: str, path: str, body: dict, headers: dict[str, str]) -> int:
    request = urllib.request.Request(api + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status


def test_the_react_three_example_built_and_run_in_chromium(tmp_path):
    if not Path(CHROMIUM).exists():
        skip(f"{CHROMIUM} is missing: apt-get install -y chromium (scripts/test.sh installs it as root)")
    t0 = time.monotonic()
    sizes = build()
    built_s = time.monotonic() - t0
    static_port = free_port()
    origin = f"http://127.0.0.1:{static_port}"
    ports = {"API_PORT": str(free_port()), "WS_PORT": str(free_port())}
    settings = {**ports, "CORS_ORIGINS": json.dumps([origin]), "DISPERSAL_DWELL_S": "30",
                "SECRET_KEY": "k" * 40, "OPERATOR_JWT_SECRET": OPERATOR_SECRET}
    static = serve_dist(static_port)
    errors: list[str] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=[*CHROMIUM_ARGS, *WEBGL_ARGS])   # (Playwright gives it a fresh profile)
            page = browser.new_page(viewport={"width": 800, "height": 600})
            page.set_default_timeout(15_000)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            with atom_serve(tmp_path, **settings) as atom:
                url = f"{origin}/?api={atom.api}&ws={atom.ws}"
                page.goto(url)
                # A short touch opens nothing; a 2-second press opens the Sceau.
                press(page, 0.4)
                assert "Trop court" in page.get_by_test_id("note").inner_text()
                press(page)
                page.wait_for_selector("[data-testid=hud][data-state=live]")
                page.wait_for_function("window.atomExample.renderFps > 0")
                time.sleep(0.5)
                first = canvas_shot(page, "1-live")
                time.sleep(0.7)
                second = canvas_shot(page, "2-live-later")
                assert drawn(first).sum() > 2000, "the agents are drawn"
                # The agents move: the two frames differ where the swarm is.
                moved = (np.abs(first - second).sum(axis=2) > 60) & (drawn(first) | drawn(second))
                assert moved.sum() > 200, moved.sum()
                colours = {tuple(c) for c in first[drawn(first)][::7] // 32}
                assert len(colours) >= 6, f"coloured by sphere: {len(colours)} colours"
                time.sleep(2.0)
                fps = page.evaluate("window.atomExample.renderFps")

                # A dispersal shows: the agents fly out, and the page counts them.
                assert post(atom.api, "/api/v1/swarm/disperse", {"level": "total"}, bearer()) == 202
                page.wait_for_function("window.atomExample.dispersed >= 300")
                time.sleep(2.0)
                out = canvas_shot(page, "3-dispersed")
                assert spread(out) > 1.3 * spread(first), (spread(first), spread(out))

            # The server stopped: the page reconnects, but its session died with the server.
            with atom_serve(tmp_path, **settings) as atom:
                page.wait_for_selector("[data-testid=sceau][data-state=unauthorized]", timeout=30_000)
                assert "session ended" in page.get_by_test_id("note").inner_text()
                press(page)
                page.wait_for_selector("[data-testid=hud][data-state=live]")
                page.wait_for_function("window.atomExample.renderFps > 0")
                time.sleep(0.5)
                assert drawn(canvas_shot(page, "4-after-restart")).sum() > 2000

                # A page whose origin the server does not list is told so, not left to guess.
                other = browser.new_page()
                other.goto(f"http://localhost:{static_port}/?api={atom.api}&ws={atom.ws}")
                press(other)
                other.wait_for_function(
                    "document.querySelector('[data-testid=note]').innerText.includes('origin_not_allowed')")
                assert "CORS_ORIGINS" in other.get_by_test_id("note").inner_text()
            browser.close()
    finally:
        static.shutdown()
        static.server_close()
    assert not errors, errors
    print(f"\nexample: built in {built_s:.1f} s; bundle {sizes['js_bytes']} B, "
          f"{sizes['js_gzip_bytes']} B gzip; page at {fps} fps; load {os.getloadavg()[0]:.1f}")
