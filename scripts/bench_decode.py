#!/usr/bin/env python3
"""How long the SDK takes to decode a delta frame in headless Chromium (target: median <= 0.1 ms).

Starts ``atom serve``, opens its viewer page's origin in Debian's headless ``chromium`` (through
Playwright, as tests/test_viewer.py does), and in the page: imports the SDK the API serves
(``/viewer/sdk/index.js``), records ``--seconds`` of the delta stream (a total dispersal ordered
a second in, so the residuals are the stream's largest), then decodes the recorded chain (its
keyframe, then every delta) ``--passes`` times. ``performance.now()`` is coarse in a page that is
not cross-origin isolated (100 µs in Chromium), so each pass is timed whole and divided by its
frames; the figure is the median of the passes, with the slowest and fastest.

    .venv/bin/python scripts/bench_decode.py                 # 10 s of stream, 200 passes
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from atom_operator import operator_env, operator_headers  # noqa: E402
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update"]
TARGET_MS = 0.1

RECORD_AND_DECODE = """async ([ws, seconds, passes]) => {
  const { DeltaDecoder } = await import("/viewer/sdk/index.js");
  const messages = [];
  await new Promise((done, fail) => {
    const socket = new WebSocket(ws + "?encoding=delta");
    socket.binaryType = "arraybuffer";
    socket.onmessage = (m) => { if (typeof m.data !== "string") messages.push(m.data); };
    socket.onerror = () => fail(new Error("the stream did not open"));
    setTimeout(() => { socket.close(); done(); }, seconds * 1000);
  });
  const bytes = messages.reduce((a, m) => a + m.byteLength, 0);
  const perFrame = [];
  for (let pass = 0; pass < passes; pass++) {
    const decoder = new DeltaDecoder();
    const start = performance.now();
    for (const m of messages) decoder.decode(m);
    perFrame.push((performance.now() - start) / messages.length);
  }
  perFrame.sort((a, b) => a - b);
  return { frames: messages.length, bytes, median: perFrame[perFrame.length >> 1],
           min: perFrame[0], max: perFrame[perFrame.length - 1],
           userAgent: navigator.userAgent };
}"""


def start_atom() -> tuple[subprocess.Popen, str, str]:
    env = dict(os.environ, API_PORT="0", WS_PORT="0", WS_REQUIRE_SESSION="false",
               PYTHONUNBUFFERED="1", **operator_env())
    proc = subprocess.Popen([sys.executable, "-m", "atom_actors", "serve"], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 30
    for line in proc.stderr:
        found = re.search(r"serving: .*?api (http://\S+?)(?:,|$).*?ws (ws://\S+?)(?:,|$)", line)
        if found:
            threading.Thread(target=proc.stderr.read, daemon=True).start()   # keep it drained
            return proc, found.group(1), found.group(2)
        if time.monotonic() > deadline:
            break
    proc.kill()
    sys.exit("bench: atom serve did not start")


def post(url: str, body: dict, operator: dict[str, str]) -> dict:
    headers = {"content-type": "application/json", **operator}
    request = urllib.request.Request(url, method="POST", data=json.dumps(body).encode(),
                                     headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="of the stream to record")
    parser.add_argument("--passes", type=int, default=200)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    proc, api, ws = start_atom()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(api + "/")

            def disperse() -> None:
                post(f"{api}/api/v1/swarm/disperse", {"level": "total"},
                     operator_headers(os.environ))

            threading.Timer(1.0, disperse).start()
            result = page.evaluate(RECORD_AND_DECODE, [ws, args.seconds, args.passes])
            browser.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
    verdict = "ok" if result["median"] <= TARGET_MS else "ABOVE TARGET"
    print(f"\nDecoding the delta stream in headless Chromium ({result['userAgent'].split(' ')[-2]}),"
          f" load average {load:.1f} on {os.cpu_count()} cores")
    print(f"  {result['frames']} frames recorded ({args.seconds:g} s, a total dispersal in it), "
          f"{result['bytes'] / max(result['frames'], 1):.0f} B a frame on average")
    print(f"  per frame: median {result['median'] * 1000:.1f} µs over {args.passes} passes "
          f"(fastest pass {result['min'] * 1000:.1f} µs, slowest {result['max'] * 1000:.1f} µs); "
          f"target <= {TARGET_MS * 1000:.0f} µs: {verdict}")


if __name__ == "__main__":
    main()
