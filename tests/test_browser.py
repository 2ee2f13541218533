"""The app in a real browser: Debian's chromium drives `streamlit run app.py` on a free port.

Every page is visited and must render without an exception; a real recording is uploaded on the
Classify page and the prediction and its attribution must appear. Full-page screenshots (1280 px
wide) of every page go to ``tests/artifacts/screenshots/`` (git-ignored), or to the folder named by
``ASCA_SCREENSHOT_DIR``: ``ASCA_SCREENSHOT_DIR=docs/screenshots`` refreshes the README's.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from workbench.state import GENERIC_ERROR

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("ASCA_SCREENSHOT_DIR") or ROOT / "tests" / "artifacts" / "screenshots").resolve()
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
IDLE = "[data-testid=stApp][data-test-script-state=notRunning]"
RECORDING = "fsdd/recordings/0_george_0.wav"
# Streamlit scrolls inside its main section, so a full-page shot needs the window as tall as it.
CONTENT_HEIGHT = """() => {
  const block = document.querySelector('[data-testid=stMainBlockContainer]');
  const main = document.querySelector('[data-testid=stMain]');
  return Math.ceil(Math.max(block ? block.getBoundingClientRect().height + 140 : 0,
                            main ? main.scrollHeight : 0, 700));
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_run, demo_run):
    """``streamlit run app.py`` on a free loopback port; its runs folder holds the session's tiny
    run and the demo preset's run (the newest, so the pages open on it)."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is not installed (scripts/setup.sh test installs Debian's chromium)")
    runs = tmp_path_factory.mktemp("browser-runs")
    shutil.copytree(tiny_run, runs / tiny_run.name)
    shutil.copytree(demo_run, runs / "demo")
    (runs / "demo" / "config.yaml").touch()  # runs are listed newest first
    port = _free_port()
    env = dict(os.environ, ASCA_RUNS_DIR=str(runs), ASCA_CACHE_DIR=str(tmp_path_factory.getbasetemp() / "asca-cache"))
    log = tmp_path_factory.mktemp("browser-log") / "streamlit.txt"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                "app.py",
                "--server.port",
                str(port),
                "--server.address",
                "127.0.0.1",
                "--server.headless",
                "true",
                "--browser.gatherUsageStats",
                "false",
                "--server.fileWatcherType",
                "none",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        server_log = log.read_text(errors="replace")
        if "Traceback" in server_log:
            print(server_log)


@pytest.fixture(scope="module")
def browser_page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(240_000)
        yield page
        browser.close()


def settle(page) -> None:
    """Wait until the script has run to its end (a fresh server first shows only a skeleton)."""
    page.wait_for_selector(IDLE)
    page.wait_for_timeout(800)  # a rerun triggered by the first render (fragments, widgets)
    page.wait_for_selector(IDLE)


def check_clean(page) -> None:
    assert page.locator("[data-testid=stException]").count() == 0
    text = page.inner_text("body")
    assert "Traceback" not in text
    assert GENERIC_ERROR not in text
    assert page.locator("[data-testid=stAlertContentError]").count() == 0, text


def screenshot(page, name: str) -> Path:
    from PIL import Image

    SHOTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1280, "height": page.evaluate(CONTENT_HEIGHT)})
    page.wait_for_timeout(1500)  # plotly redraws at the new size
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    # a 256-colour palette keeps the committed screenshots small
    Image.open(path).convert("RGB").quantize(colors=256).save(path, optimize=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    return path


def visit(page, server: str, path: str, title: str) -> None:
    page.goto(f"{server}/{path}")
    settle(page)
    page.get_by_role("heading", name=title).first.wait_for()
    check_clean(page)


def test_every_page_renders_in_chromium(browser_page, server, shared_data):
    page = browser_page
    visit(page, server, "", "Data")
    assert page.locator(".js-plotly-plot").count() >= 5  # counts, durations, wave, spectrogram, tokens
    screenshot(page, "data")

    visit(page, server, "augment", "Augment")
    page.get_by_role("tab", name="Whole pipeline").click()
    settle(page)
    check_clean(page)
    screenshot(page, "augment")

    visit(page, server, "train", "Train")
    assert page.get_by_text("finished").count() >= 1
    page.get_by_text("New training run").click()  # show the form in the screenshot
    page.get_by_role("button", name="Start training").wait_for()
    check_clean(page)
    screenshot(page, "train")

    visit(page, server, "runs", "Runs")
    assert page.locator(".js-plotly-plot").count() >= 3  # curves, per-class AP, confusion
    screenshot(page, "runs")
    page.get_by_role("tab", name="Layout ablation").click()
    settle(page)
    check_clean(page)

    visit(page, server, "attention", "Attention")
    assert page.locator(".js-plotly-plot").count() >= 4
    screenshot(page, "attention")

    visit(page, server, "classify", "Classify")
    page.locator("[data-testid=stFileUploader] input[type=file]").set_input_files(str(shared_data / RECORDING))
    page.get_by_text("Listen to the explanation").wait_for()
    settle(page)
    page.locator(".js-plotly-plot", has_text="Integrated gradients for").wait_for()
    check_clean(page)
    assert page.locator("[data-testid=stDataFrame]").count() >= 1  # the top-k table
    screenshot(page, "classify")


def test_clicking_the_attention_map_moves_the_query(browser_page, server):
    page = browser_page
    visit(page, server, "attention", "Attention")
    column = page.locator("input[type=range][aria-label='Query time column']")
    assert column.input_value() != "0"
    plot = page.locator(".js-plotly-plot").first
    plot.scroll_into_view_if_needed()
    box = plot.locator(".nsewdrag").first.bounding_box()
    x, y = box["x"] + box["width"] * 0.04, box["y"] + box["height"] * 0.5  # the first time column
    page.mouse.move(x, y)
    page.mouse.click(x, y)
    page.wait_for_timeout(500)
    settle(page)
    check_clean(page)
    assert column.input_value() == "0"


# ----------------------------------------------------------------------------- the review loop
REVIEW_SEGMENT = 3.0  # seconds: one demo call or one spoken digit per segment
REVIEW_LAYOUT = {  # "voice" (a spoken digit) is a sound the demo model was never taught
    "dawn.wav": ["trill", "voice", "buzz", "voice"],
    "noon.wav": ["voice", "rising_chirp", "voice", "warble"],
    "dusk.wav": ["two_note", "voice", "click_train", "voice"],
}


def _review_folder(folder: Path, shared_data: Path) -> dict[tuple[str, float], str]:
    """Long recordings of demo calls and spoken digits back to back; the known label of every
    window that starts on a segment boundary, by (file, start)."""
    import numpy as np
    import soundfile as sf

    from asca_core.audio import load_audio
    from asca_core.data.demo import make_clip

    digits = sorted((shared_data / "fsdd" / "recordings").glob("*_jackson_*.wav"))
    n = int(REVIEW_SEGMENT * 16000)
    folder.mkdir(parents=True, exist_ok=True)
    truth, used = {}, 0
    rng = np.random.default_rng(0)
    for r, (name, labels) in enumerate(REVIEW_LAYOUT.items()):
        parts = []
        for i, label in enumerate(labels):
            if label == "voice":
                voice = load_audio(digits[used], 16000)[: n - 1600]
                used += 1
                segment = (0.002 * rng.standard_normal(n)).astype(np.float32)
                segment[800 : 800 + voice.size] += 0.8 * voice / (np.abs(voice).max() + 1e-9)
            else:
                segment = make_clip(label, 11, 10 * r + i)[0]
            parts.append(segment)
            truth[(name, REVIEW_SEGMENT * i)] = label
        sf.write(folder / name, np.concatenate(parts), 16000, subtype="PCM_16")
    return truth


def _current(page) -> tuple[str, float, float]:
    """File, start and end of the detection the Review page shows."""
    import re

    text = page.inner_text("body")
    found = re.search(r"(\S+\.wav), (-?[\d.]+)–(-?[\d.]+) s", text)
    assert found, text[:2000]
    return found.group(1), float(found.group(2)), float(found.group(3))


def _predicted(page) -> str:
    """The label the Review page predicts for the detection it shows."""
    return page.locator("[data-testid=stMetric]", has_text="Predicted").inner_text().strip().splitlines()[-1].strip()


def _saved(folder: Path) -> dict[tuple[str, float, float], tuple[str, str]]:
    """Decided rows of the folder's review manifest: (file, start, end) -> (label, decision)."""
    import csv

    with open(folder / "review.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {(r["file"], float(r["start"]), float(r["end"])): (r["label"], r["decision"]) for r in rows if r["decision"]}


def test_review_relabel_retrain_and_compare_in_chromium(browser_page, server, shared_data, tmp_path_factory):
    """The whole loop: review detections in long recordings, relabel the spoken digits (a sound
    the model does not know) as "voice" with the keyboard and the buttons, retrain from the review
    with a short budget on exactly the accepted and relabelled spans, and the Runs page compares
    the two models; the retrained one has the class the first could not name."""
    pytest.importorskip("asca_core.review", reason="the review core (asca_core.review) is not installed")
    import csv
    import json

    from fixtures_app import wait_for_run

    from asca_core.inference import Classifier

    folder = tmp_path_factory.mktemp("review-field")
    truth = _review_folder(folder, shared_data)
    page = browser_page
    visit(page, server, "review", "Review")
    box = page.locator("input[aria-label='Folder of recordings']")
    box.fill(str(folder))
    box.press("Enter")
    page.get_by_text("Listen to the explanation").wait_for()
    settle(page)
    page.get_by_text("“None of these” first").click()
    settle(page)
    threshold = page.locator("input[aria-label='Detection threshold']")
    threshold.fill("1")  # every window on its own: what the model makes of a voice does not merge spans
    threshold.press("Enter")
    settle(page)
    check_clean(page)

    made: dict[tuple[str, float, float], tuple[str, str]] = {}
    for _ in range(40):
        name, start, end = _current(page)
        one_segment = abs(end - start - REVIEW_SEGMENT) < 0.01  # not a span across two segments
        label = truth.get((name, start)) if one_segment else None
        if label == "voice":
            page.locator("input[aria-label='or a new label']").fill("voice")
            page.get_by_role("button", name="Relabel").click()
            made[(name, start, end)] = ("voice", "relabel")
        else:
            predicted = _predicted(page)
            page.get_by_role("heading", name="Review").first.click()  # keys go to the page, not a field
            page.keyboard.press("a" if label else "x")  # accept a call, reject a window across two
            made[(name, start, end)] = (predicted, "accept" if label else "reject")
        settle(page)
        check_clean(page)
        assert _saved(folder) == made  # every decision is in the manifest the moment it is made
        if "pending" not in page.locator("[data-testid=stMetric]", has_text="Decision").inner_text():
            break  # every detection has a decision: the page stays on a reviewed one
    assert len(made) >= 10
    assert sum(decision == ("voice", "relabel") for decision in made.values()) >= 4
    assert f"{len(made)} of {len(made)} reviewed" in page.inner_text("body")  # each detection decided once
    screenshot(page, "review")

    budget = page.locator("input[aria-label='Budget (minutes)']")
    budget.fill("1")
    budget.press("Enter")
    settle(page)
    page.get_by_role("button", name="Retrain from review").click()
    page.get_by_text("Retraining as").wait_for()
    settle(page)
    check_clean(page)
    name = page.locator("[data-testid=stAlertContentSuccess]").inner_text().split("Retraining as")[1].split(":")[0]
    runs = next(p for p in tmp_path_factory.getbasetemp().glob("browser-runs*") if (p / "demo").is_dir())
    info = wait_for_run(runs / name.strip(), lambda i: not i.active and i.state != "unknown", timeout=900)
    assert info.state == "finished", info.error

    visit(page, server, "runs", "Runs")
    page.get_by_text("Before and after review").wait_for()
    check_clean(page)
    page.get_by_text("acc after").first.wait_for()  # the before/after table on the parent's test set

    before = Classifier.from_run(runs / "demo", device="cpu")
    after = Classifier.from_run(info.path, device="cpu")
    assert "voice" not in before.labels and "voice" in after.labels
    with open(json.loads((info.path / "job.json").read_text())["review_dataset"], newline="") as handle:
        trained = {
            (Path(r["file"]).name, float(r["start"]), float(r["end"])): r["label"]
            for r in csv.DictReader(handle)
            if r["origin"] == "review"
        }
    kept = {span: label for span, (label, decision) in made.items() if decision != "reject"}
    assert trained == kept  # the new run trained on exactly the accepted and relabelled spans
