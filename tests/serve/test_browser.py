"""The web page in headless Chromium (playwright, the system's /usr/bin/chromium): submit a prompt, watch the
progress bar finish, see the video play and the result appear in the gallery."""

import os

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def page():
  if not os.path.exists(CHROMIUM):
    pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
  sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
  with sync_api.sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    yield browser.new_page()
    browser.close()


def test_submit_prompt_and_video_plays(page, live_url):
  errors = []
  page.on("pageerror", lambda e: errors.append(str(e)))
  page.goto(live_url + "/")
  page.wait_for_function("document.getElementById('model-info').textContent.startsWith('tiny')", timeout=10_000)
  page.fill("#prompt", "a paper boat on a pond")
  page.fill("#seed", "3")
  page.click("#submit")
  page.wait_for_function("""() => { const v = document.getElementById('player');
      return v.src.endsWith('.mp4') && v.readyState >= 2; }""", timeout=120_000)
  assert page.eval_on_selector("#progress", "p => p.value") == 1
  assert page.text_content("#status") == "done"
  page.eval_on_selector("#player", "v => v.play()")   # muted, so allowed without a gesture
  page.wait_for_function("document.getElementById('player').currentTime > 0", timeout=20_000)
  width, height, error = page.eval_on_selector("#player", "v => [v.videoWidth, v.videoHeight, v.error]")
  assert (width, height, error) == (48, 32, None)
  assert "a paper boat on a pond" in page.text_content("#caption")
  job_id = page.eval_on_selector("#player", "v => v.dataset.job")
  page.wait_for_selector(f".item.succeeded[data-job='{job_id}'] video", timeout=10_000)
  assert errors == []


def test_invalid_input_shows_the_field(page, live_url):
  page.goto(live_url + "/")
  page.wait_for_function("document.getElementById('model-info').textContent.startsWith('tiny')", timeout=10_000)
  page.fill("#prompt", "too many frames")
  page.fill("#frames", "13")   # 4k+1, so the browser lets it through; above the server's max_frames
  page.click("#submit")
  page.wait_for_selector("#errors li", timeout=10_000)
  assert page.text_content("#errors li").startswith("frames: frames=13 exceeds this server's max_frames")
  assert page.text_content("#status") == "refused (422)"
