#!/usr/bin/env python3
"""Drives web/index.html in headless Chromium through WebDriver (chromedriver), with the
Python standard library only; run by web/test.sh, which builds the page and the fixtures.

1. the page finds a WebGPU adapter;
2. the in-page checks: every GPU kernel the segmenter uses, and a width-reduced network
   (whole, and in bands within a memory budget), against the crate's CPU reference compiled
   into the same WebAssembly module;
3. bad weights give a message in words;
4. end to end: weights and an image loaded through the page's own file inputs, the overlay
   drawn, and the labels equal to the native `dilated segment` labels of the same image and
   weights (read from its PNG);
5. optionally a screenshot of the page.

Exits non-zero with a message on the first failure.
"""

import argparse
import base64
import json
import shutil
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib


class Failure(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriver:
    def __init__(self, driver, chromium, width=1280, height=1100):
        self.port = free_port()
        self.process = subprocess.Popen(
            [driver, f"--port={self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        for _ in range(100):
            try:
                self.call("GET", "/status")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        else:
            raise Failure(f"{driver} did not start")
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--enable-unsafe-webgpu",
                            "--disable-dev-shm-usage",
                            f"--window-size={width},{height}",
                        ],
                    },
                }
            }
        }
        self.session = self.call("POST", "/session", caps)["sessionId"]
        self.call("POST", self.path("/timeouts"), {"script": 900_000})

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=1000) as r:
                return json.loads(r.read())["value"]
        except urllib.error.HTTPError as e:
            detail = json.loads(e.read()).get("value", {})
            raise Failure(f"WebDriver {method} {path}: {detail.get('message', detail)}")

    def path(self, p):
        return f"/session/{self.session}{p}"

    def go(self, url):
        self.call("POST", self.path("/url"), {"url": url})

    def js(self, script, *args):
        return self.call("POST", self.path("/execute/sync"), {"script": script, "args": list(args)})

    def js_async(self, script, *args):
        return self.call(
            "POST", self.path("/execute/async"), {"script": script, "args": list(args)}
        )

    def element(self, css):
        found = self.call("POST", self.path("/element"), {"using": "css selector", "value": css})
        return next(iter(found.values()))

    def send_keys(self, css, text):
        self.call("POST", self.path(f"/element/{self.element(css)}/value"), {"text": text})

    def click(self, css):
        self.call("POST", self.path(f"/element/{self.element(css)}/click"), {})

    def screenshot(self, out):
        png = base64.b64decode(self.call("GET", self.path("/screenshot")))
        with open(out, "wb") as f:
            f.write(png)

    def quit(self):
        try:
            self.call("DELETE", self.path(""))
        except Exception:
            pass
        self.process.terminate()
        self.process.wait(10)


def wait_state(wd, states, timeout):
    """Waits until body[data-state] is one of `states`; returns it."""
    end = time.time() + timeout
    while time.time() < end:
        s = wd.js("return document.body.dataset.state")
        if s in states:
            return s
        time.sleep(0.2)
    raise Failure(f"the page stayed in state {s!r} for {timeout} s (waiting for {states})")


def page_error(wd):
    return wd.js("return document.getElementById('error').textContent")


def read_png_rgb(path):
    """Pixels of an 8-bit RGB or RGBA, non-interlaced PNG (what `dilated segment` writes)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise Failure(f"{path} is not a PNG")
    pos, idat = 8, b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    if depth != 8 or colour not in (2, 6) or interlace:
        raise Failure(f"{path}: only 8-bit RGB(A) non-interlaced PNGs are read here")
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, [tuple(r[x * bpp : x * bpp + 3]) for r in rows for x in range(w)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    ap.add_argument("--driver", default="chromedriver")
    ap.add_argument("--image", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--caffemodel", help="the same weights as a .caffemodel, read in the page")
    ap.add_argument("--bad-weights", required=True)
    ap.add_argument("--native-labels", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--divisor", required=True)
    ap.add_argument("--tile", required=True)
    ap.add_argument("--min-agreement", type=float, default=0.999)
    ap.add_argument("--screenshot")
    a = ap.parse_args()

    wd = WebDriver(a.driver, a.chromium)
    try:
        t0 = time.time()
        wd.go(a.url)
        if wait_state(wd, ("ready", "error"), 120) == "error":
            raise Failure(f"the page could not start: {page_error(wd)}")
        adapter = wd.js("return document.getElementById('adapter').textContent")
        print(f"page ready ({time.time() - t0:.1f} s): {adapter}")

        t0 = time.time()
        checks = wd.js_async(
            "const done = arguments[arguments.length - 1];"
            "window.dilated.checks().then(done, e => done({error: e.message || String(e)}));"
        )
        if isinstance(checks, dict):
            raise Failure(f"in-page checks failed to run: {checks['error']}")
        for c in checks:
            mark = "ok " if c["ok"] else "FAIL"
            bands = f", {c['bands']} bands" if "bands" in c else ""
            print(f"  {mark} {c['name']}: max |GPU - CPU| {c['max_abs_error']:.3g} (tolerance {c['tolerance']:.3g}){bands}")
        bad = [c["name"] for c in checks if not c["ok"]]
        if bad:
            raise Failure(f"WebGPU results differ from the CPU reference: {', '.join(bad)}")
        if not any(c.get("bands", 1) > 1 for c in checks):
            raise Failure("no in-page check ran a plan in bands")
        print(f"in-page checks passed ({len(checks)}, {time.time() - t0:.1f} s)")

        # Form settings shared by the runs below.
        wd.js(
            "document.getElementById('model').value = arguments[0];"
            "document.getElementById('divisor').value = arguments[1];"
            "document.getElementById('tile').value = arguments[2];",
            a.model, a.divisor, a.tile,
        )
        wd.send_keys("#image", os.path.abspath(a.image))

        # Bad weights: a message in words, no crash.
        wd.send_keys("#weights", os.path.abspath(a.bad_weights))
        wd.click("#run")
        if wait_state(wd, ("done", "error"), 120) != "error":
            raise Failure("garbage weights were accepted")
        message = page_error(wd)
        if not message.strip():
            raise Failure("garbage weights gave no message")
        print(f"bad weights refused: {message}")

        # End to end with real (random, seeded) weights from a file, as safetensors and, when
        # given, as a .caffemodel parsed in the page: both must give the native labels.
        w, h, pixels = read_png_rgb(a.native_labels)
        for weights in [a.weights] + ([a.caffemodel] if a.caffemodel else []):
            wd.js("document.getElementById('weights').value = '';")
            wd.send_keys("#weights", os.path.abspath(weights))
            t0 = time.time()
            wd.click("#run")
            if wait_state(wd, ("done", "error"), 900) == "error":
                raise Failure(f"segmenting in the page with {weights} failed: {page_error(wd)}")
            status = wd.js("return document.getElementById('status').textContent")
            print(f"page segmented the image with {os.path.basename(weights)} ({time.time() - t0:.1f} s): {status}")
            got = wd.js(
                "const d = window.dilated;"
                "return {w: d.width, h: d.height, labels: d.labels,"
                " palette: Array.from(d.prepared.palette()),"
                " drawn: document.getElementById('overlay').width,"
                " legend: document.querySelectorAll('#legend li').length};"
            )
            if (got["w"], got["h"]) != (w, h):
                raise Failure(f"page labels are {got['w']}x{got['h']}, native {w}x{h}")
            if got["drawn"] != w or got["legend"] == 0:
                raise Failure("the overlay or the legend was not drawn")
            layer_rows = wd.js(
                "return Array.from(document.querySelectorAll('#timings tr'))"
                ".map(r => r.textContent).filter(t => t.startsWith('layer '));"
            )
            if not any("conv1_1" in r for r in layer_rows) or not any("ms" in r for r in layer_rows):
                raise Failure(f"no per-layer timings in the page: {layer_rows[:3]}")
            print(f"per-layer timings shown: {len(layer_rows)} layers, e.g. {layer_rows[0]}")
            pal = got["palette"]
            colour_of = {i: tuple(pal[3 * i : 3 * i + 3]) for i in range(len(pal) // 3)}
            same = sum(colour_of.get(l) == p for l, p in zip(got["labels"], pixels))
            agreement = same / (w * h)
            print(f"labels agree with native `dilated segment` on {same} of {w * h} pixels ({100 * agreement:.3f}%)")
            if agreement < a.min_agreement:
                raise Failure(f"agreement {agreement:.4f} is below {a.min_agreement}")
        if a.screenshot:
            wd.screenshot(a.screenshot)
            print(f"wrote {a.screenshot}")
    finally:
        wd.quit()


if __name__ == "__main__":
    try:
        main()
    except Failure as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
