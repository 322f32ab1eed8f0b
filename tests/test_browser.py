"""The page in a real browser (Debian's chromium driven by playwright): paint, train a step, see the result.

Needs /usr/bin/chromium (scripts/setup.sh installs it with apt-get). CI runs this test; it never skips there.
"""

import os
import shutil

import numpy as np
import pytest
from PIL import Image
from serving import serving

from pxpo.app.server import create_app
from pxpo.rewards.human import decode_feedback

pytestmark = pytest.mark.slow  # the full tier (CI); `pytest -m "not slow"` is the fast tier

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip

if not os.path.exists(CHROMIUM) and not os.environ.get("CI"):
    pytest.skip("no chromium here (scripts/setup.sh installs it); CI always runs this test", allow_module_level=True)


def serving_sessions(sessions):
    """The app serving ``sessions`` on a free loopback port (a context manager yielding its URL)."""
    # The page is under test, not the model; PXPO_APP_MODEL=pxpo-tiny for a screenshot worth looking at.
    return serving(create_app(sessions, default_model=os.environ.get("PXPO_APP_MODEL", "tiny-random")))


@pytest.fixture
def server(tmp_path):
    with serving_sessions(tmp_path / "sessions") as url:
        yield url, tmp_path / "sessions"


def stroke(page, box, x0, y0, x1, y1):
    """Drag the mouse across the canvas, from (x0, y0) to (x1, y1) in fractions of its size."""
    page.mouse.move(box["x"] + x0 * box["width"], box["y"] + y0 * box["height"])
    page.mouse.down()
    for t in np.linspace(0, 1, 12):
        page.mouse.move(box["x"] + (x0 + t * (x1 - x0)) * box["width"], box["y"] + (y0 + t * (y1 - y0)) * box["height"])
    page.mouse.up()


def start_session(p, tmp_path, url, name, viewport=(1280, 1200), mobile=False):
    """A fresh browser profile on the page; start session ``name`` ("nature landscape", seed 4) and wait for its image."""
    context = p.chromium.launch_persistent_context(str(tmp_path / f"profile-{name}"), executable_path=CHROMIUM, args=FLAGS, headless=True,
                                                 viewport={"width": viewport[0], "height": viewport[1]}, is_mobile=mobile,
                                                 has_touch=mobile)  # fmt: skip
    page = context.new_page()
    page.goto(url)
    page.fill("#session", name)
    page.fill("#prompt", "nature landscape")
    page.fill("#seed", "4")
    page.click("#start")
    page.wait_for_function("document.querySelector('#step').textContent === '0'", timeout=60_000)
    page.wait_for_function("document.querySelector('#image').naturalWidth > 0")
    return context, page


def test_paint_train_step_and_see_the_new_image(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, sessions = server
    with sync_playwright() as p:
        context, page = start_session(p, tmp_path, url, "browser")  # 1280 x 1200: the whole canvas on screen

        box = page.locator("#paint").bounding_box()
        page.fill("#size", "8")
        page.click("#brush-plus")
        stroke(page, box, 0.15, 0.2, 0.35, 0.2)       # a + stroke, top left
        page.click("#brush-minus")
        stroke(page, box, 0.6, 0.75, 0.85, 0.75)      # a - stroke, bottom right
        page.click("#train")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('Training')", timeout=5_000)
        page.wait_for_function("document.querySelector('#step').textContent === '1'", timeout=120_000)
        page.wait_for_function("document.querySelector('#image').dataset.step === '1' && document.querySelector('#image').complete")
        assert page.locator("#reward-plot").get_attribute("data-points") == "1"
        assert "Step 1 done" in page.locator("#status").text_content()
        page.wait_for_function("document.querySelector('button.session-link').textContent.endsWith('step 1')")  # the list follows
        page.screenshot(path=os.environ.get("PXPO_SCREENSHOT") or str(tmp_path / "app.png"))  # docs/images/app.png
        context.close()

    values = decode_feedback(Image.open(sessions / "browser" / "feedback" / "step_0000.feedback.png"))
    assert values.shape == (64, 64)
    plus, minus = np.argwhere(values > 0), np.argwhere(values < 0)
    assert len(plus) > 20 and len(minus) > 20
    assert plus[:, 0].mean() < 20 and plus[:, 1].mean() < 30          # rows ~13, columns ~16
    assert minus[:, 0].mean() > 40 and minus[:, 1].mean() > 35        # rows ~48, columns ~46
    assert values[0, 63] == 0 and values[63, 0] == 0 and values[32, 32] == 0
    first, second = (np.asarray(Image.open(sessions / "browser" / "eval" / f"epoch_{e:04d}" / "seed_0004.png")) for e in (0, 1))
    assert first.shape == second.shape == (64, 64, 3)


def test_reload_restores_the_session_and_existing_sessions_are_clickable(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, sessions = server
    with sync_playwright() as p:
        context, page = start_session(p, tmp_path, url, "again")
        assert "session=again" in page.url
        box = page.locator("#paint").bounding_box()
        page.click("#brush-plus")
        stroke(page, box, 0.2, 0.5, 0.8, 0.5)
        page.click("#train")
        page.wait_for_function("document.querySelector('#status').textContent.match(/Training one step\\.\\.\\. \\d+ s/)", timeout=30_000)
        page.wait_for_function("document.querySelector('#step').textContent === '1'", timeout=120_000)
        page.reload()  # the URL names the session: the page reopens it at its step
        page.wait_for_function("document.querySelector('#step').textContent === '1'", timeout=60_000)
        assert page.locator("#prompt").input_value() == "nature landscape"
        page.goto(url)  # no session in the URL: pick it from the list (name, prompt and step count)
        page.locator("button.session-link", has_text='again: "nature landscape", step 1').click()
        page.wait_for_function("document.querySelector('#step').textContent === '1'", timeout=60_000)
        assert page.locator("#previous-map").is_hidden()  # the previous map on demand only
        page.check("#show-previous")
        page.wait_for_function("document.querySelector('#previous-map').complete && document.querySelector('#previous-map').naturalWidth === 64")
        assert page.locator("#previous-map").is_visible()
        page.uncheck("#show-previous")
        assert page.locator("#previous-map").is_hidden()
        context.close()


def test_an_untrained_session_survives_a_restart_and_a_stopped_app_is_named(tmp_path):
    from playwright.sync_api import sync_playwright

    sessions = tmp_path / "sessions"
    with sync_playwright() as p:
        with serving_sessions(sessions) as url:
            context, page = start_session(p, tmp_path, url, "untrained")  # opened, never trained
        box = page.locator("#paint").bounding_box()
        page.click("#brush-plus")
        stroke(page, box, 0.2, 0.5, 0.8, 0.5)
        page.click("#train")  # the app is gone
        page.wait_for_function("document.querySelector('#status').textContent.includes('The pxpo app is not running')", timeout=30_000)
        with serving_sessions(sessions) as url:  # restarted on the same sessions folder
            page.goto(f"{url}/?session=untrained")
            page.wait_for_function("document.querySelector('#step').textContent === '0'", timeout=60_000)
            page.wait_for_function("document.querySelector('#image').complete && document.querySelector('#image').naturalWidth === 64")
            box = page.locator("#paint").bounding_box()
            stroke(page, box, 0.2, 0.5, 0.8, 0.5)
            page.click("#train")
            page.wait_for_function("document.querySelector('#step').textContent === '1'", timeout=120_000)
        context.close()
    assert (sessions / "untrained" / "feedback" / "step_0000.feedback.png").is_file()
    assert not list((sessions / "untrained" / "feedback").glob("step_-*"))
    assert len((sessions / "untrained" / "metrics.jsonl").read_text().splitlines()) == 2  # step 0's record kept, step 1 added


@pytest.mark.parametrize(("size", "mobile"), [((800, 600), False), ((390, 844), True)])
def test_image_and_train_button_fit_small_screens_and_touch_paints(server, tmp_path, size, mobile):
    from playwright.sync_api import sync_playwright

    url, sessions = server
    with sync_playwright() as p:
        context, page = start_session(p, tmp_path, url, "small", viewport=size, mobile=mobile)
        page.evaluate("window.scrollTo(0, 0)")
        stage, train = page.locator("#stage").bounding_box(), page.locator("#train").bounding_box()
        for box in (stage, train):  # both wholly on the first screen
            assert box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= size[0] and box["y"] + box["height"] <= size[1], box
        assert page.evaluate("document.documentElement.scrollWidth") <= size[0]  # no sideways scrolling
        if mobile:  # a finger stroke paints, as the mouse does
            box = page.locator("#paint").bounding_box()
            page.evaluate("""([x0, y, x1]) => {
                const canvas = document.querySelector('#paint');
                const fire = (type, x) => canvas.dispatchEvent(new PointerEvent(type, {clientX: x, clientY: y, pointerId: 1,
                    pointerType: 'touch', isPrimary: true, bubbles: true}));
                fire('pointerdown', x0); for (let i = 1; i <= 10; i++) fire('pointermove', x0 + (x1 - x0) * i / 10); fire('pointerup', x1);
            }""", [box["x"] + 0.2 * box["width"], box["y"] + 0.5 * box["height"], box["x"] + 0.8 * box["width"]])  # fmt: skip
            page.click("#train")
            page.wait_for_function("document.querySelector('#step').textContent === '1'", timeout=120_000)
        context.close()
    if mobile:
        values = decode_feedback(Image.open(sessions / "small" / "feedback" / "step_0000.feedback.png"))
        assert (values > 0).sum() > 20 and abs(np.argwhere(values > 0)[:, 0].mean() - 32) < 6  # the stroke, mid-height


def test_before_after_export_stale_tab_and_empty_map(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, sessions = server
    with sync_playwright() as p:
        context, page = start_session(p, tmp_path, url, "both")
        page.click("#train")  # nothing painted
        page.wait_for_function("document.querySelector('#status').textContent.includes('paint something first')", timeout=30_000)
        assert page.locator("#step").text_content() == "0"

        other = context.new_page()  # a second tab on the same session, still showing step 0
        other.goto(f"{url}/?session=both")
        other.wait_for_function("document.querySelector('#step').textContent === '0'", timeout=60_000)

        box = page.locator("#paint").bounding_box()
        page.click("#brush-minus")
        stroke(page, box, 0.2, 0.8, 0.8, 0.8)
        page.click("#train")
        page.wait_for_function("document.querySelector('#step').textContent === '1'", timeout=120_000)
        page.wait_for_function("document.querySelector('#before').complete && document.querySelector('#before').naturalWidth > 0")
        assert page.locator("#before-after").is_visible() and "step 0, as painted" in page.locator("#before-caption").text_content()
        painted_pixels = page.evaluate("""() => { const c = document.querySelector('#paint');
            return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data).filter((v, i) => i % 4 === 3 && v > 0).length; }""")
        assert painted_pixels == 0  # the strokes were cleared after the step

        other_box = other.locator("#paint").bounding_box()
        stroke(other, other_box, 0.2, 0.2, 0.8, 0.2)
        other.click("#train")  # painted on step 0, which is no longer current
        other.wait_for_function("document.querySelector('#status').textContent.includes('painted on step 0')", timeout=60_000)
        other.wait_for_function("document.querySelector('#step').textContent === '1'", timeout=30_000)  # it now shows step 1

        page.click("#export")
        page.wait_for_function("document.querySelector('#export-figure').complete && document.querySelector('#export-figure').naturalWidth > 0",
                               timeout=60_000)  # fmt: skip
        assert page.locator("#lora-path").text_content().endswith("lora")
        context.close()
    assert (sessions / "both" / "feedback_evolution.png").is_file()
    assert not (sessions / "both" / "feedback" / "step_0001.feedback.png").exists()  # the stale map trained nothing
