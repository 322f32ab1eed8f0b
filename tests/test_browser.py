"""The page in a real browser (Debian's chromium driven by playwright): paint, train a step, see the result.

Needs /usr/bin/chromium (scripts/setup.sh installs it with apt-get). CI runs this test; it never skips there.
"""

import os
import shutil
from pathlib import Path

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


def open_page(p, tmp_path, url, name, viewport=(1280, 1200), mobile=False):
    """A fresh browser profile (``name``) on the page; the context and the page."""
    context = p.chromium.launch_persistent_context(str(tmp_path / f"profile-{name}"), executable_path=CHROMIUM, args=FLAGS, headless=True,
                                                 viewport={"width": viewport[0], "height": viewport[1]}, is_mobile=mobile,
                                                 has_touch=mobile)  # fmt: skip
    page = context.new_page()
    page.goto(url)
    return context, page


def screenshot(page, name, tmp_path):
    """Save a screenshot as NAME.png in $PXPO_SCREENSHOTS or in tmp_path. The docs' pictures (docs/images/app*.png):
    PXPO_APP_MODEL=pxpo-tiny PXPO_SCREENSHOTS=docs/images pytest tests/test_browser.py -k "paint_train or small_screens or first_screen"
    """
    page.screenshot(path=str(Path(os.environ.get("PXPO_SCREENSHOTS") or tmp_path) / f"{name}.png"))


def in_view(page, selector, size):
    """Whether the element is wholly on the first screen of a ``size`` viewport."""
    box = page.locator(selector).bounding_box()
    return box is not None and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= size[0] and box["y"] + box["height"] <= size[1]


def gap(page, a, b):
    """The distance in pixels between the boxes of two elements (0 when they touch or overlap)."""
    x, y = page.locator(a).bounding_box(), page.locator(b).bounding_box()
    dx = max(x["x"] - (y["x"] + y["width"]), y["x"] - (x["x"] + x["width"]), 0)
    dy = max(x["y"] - (y["y"] + y["height"]), y["y"] - (x["y"] + x["height"]), 0)
    return (dx**2 + dy**2) ** 0.5


def start_session(p, tmp_path, url, name, viewport=(1280, 1200), mobile=False):
    """A fresh browser profile on the page; start session ``name`` ("nature landscape", seed 4) and wait for its image."""
    context, page = open_page(p, tmp_path, url, name, viewport, mobile)
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
        context, page = start_session(p, tmp_path, url, "browser", viewport=(1280, 800))  # the whole canvas on screen

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
        page.wait_for_function("['before', 'after', 'difference'].every((id) => document.getElementById(id).complete)")
        assert page.locator("#difference-panel").is_visible() and page.evaluate(BROKEN_IMAGES) == []
        screenshot(page, "app", tmp_path)  # docs/images/app.png
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
        page.locator("button.session-link", has_text='again: "nature landscape", tiny-random, step 1').click()
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
        box = page.locator("#paint").bounding_box()
        if not mobile:
            page.click("#brush-plus")
            stroke(page, box, 0.15, 0.8, 0.55, 0.8)
            page.click("#brush-minus")
            stroke(page, box, 0.55, 0.3, 0.85, 0.3)
            screenshot(page, "app_800x600", tmp_path)  # painting, before the step
        else:  # a finger stroke paints, as the mouse does
            page.evaluate("""([x0, y, x1]) => {
                const canvas = document.querySelector('#paint');
                const fire = (type, x) => canvas.dispatchEvent(new PointerEvent(type, {clientX: x, clientY: y, pointerId: 1,
                    pointerType: 'touch', isPrimary: true, bubbles: true}));
                fire('pointerdown', x0); for (let i = 1; i <= 10; i++) fire('pointermove', x0 + (x1 - x0) * i / 10); fire('pointerup', x1);
            }""", [box["x"] + 0.2 * box["width"], box["y"] + 0.5 * box["height"], box["x"] + 0.8 * box["width"]])  # fmt: skip
            screenshot(page, "app_phone", tmp_path)
        assert page.locator("#difference-panel").is_hidden() and page.evaluate(BROKEN_IMAGES) == []  # no step yet
        page.click("#train")
        page.wait_for_function("document.querySelector('#step').textContent === '1'", timeout=120_000)
        see_where_it_changed(page, size, "small")
        context.close()
    if mobile:
        values = decode_feedback(Image.open(sessions / "small" / "feedback" / "step_0000.feedback.png"))
        assert (values > 0).sum() > 20 and abs(np.argwhere(values > 0)[:, 0].mean() - 32) < 6  # the stroke, mid-height


def see_where_it_changed(page, size, name):
    """After a step: the "where it changed" panel beside before and after, its image loaded, the step's numbers under it
    (the session's own), all within the screen's width (no sideways scrolling)."""
    page.wait_for_function("document.querySelector('#difference').complete && document.querySelector('#difference').naturalWidth === 64")
    assert page.locator("#difference-panel").is_visible() and page.locator("#difference").get_attribute("data-step") == "1"
    change = page.evaluate(f"fetch('/api/sessions/{name}').then((r) => r.json()).then((s) => s.change)")
    assert change["step"] == 1 and change["painted"] is not None and change["elsewhere"] is not None
    numbers = page.locator("#difference-numbers").text_content()
    assert numbers == f"changed {change['painted']:.3f} where painted, {change['elsewhere']:.3f} elsewhere", numbers
    assert page.evaluate("document.documentElement.scrollWidth") <= size[0]
    for selector in ("#before", "#after", "#difference", "#difference-numbers"):
        page.locator(selector).scroll_into_view_if_needed()
        box = page.locator(selector).bounding_box()
        assert box["width"] > 50 and box["x"] >= 0 and box["x"] + box["width"] <= size[0], (selector, box)
    assert page.evaluate(BROKEN_IMAGES) == []


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
        other.wait_for_function("document.querySelector('#difference').dataset.step === '1'")  # and where step 1 changed it
        assert other.locator("#difference-panel").is_visible() and "step 0, as painted" in other.locator("#before-caption").text_content()

        page.click("#export")
        page.wait_for_function("document.querySelector('#export-figure').complete && document.querySelector('#export-figure').naturalWidth > 0",
                               timeout=60_000)  # fmt: skip
        assert page.locator("#lora-path").text_content().endswith("lora")
        context.close()
    assert (sessions / "both" / "feedback_evolution.png").is_file()
    assert not (sessions / "both" / "feedback" / "step_0001.feedback.png").exists()  # the stale map trained nothing


BROKEN_IMAGES = "Array.from(document.images).filter((i) => i.checkVisibility() && !(i.complete && i.naturalWidth > 0)).map((i) => i.id)"


@pytest.mark.parametrize(("size", "mobile"), [((1280, 800), False), ((800, 600), False), ((390, 844), True)])
def test_the_first_screen_says_what_to_do_with_the_form_in_view_and_no_broken_image(server, tmp_path, size, mobile):
    from playwright.sync_api import sync_playwright

    url, _ = server
    with sync_playwright() as p:
        context, page = open_page(p, tmp_path, url, "first", viewport=size, mobile=mobile)
        page.wait_for_function("document.querySelector('#sessions').textContent === 'none yet'")
        intro = page.locator("#intro")
        assert intro.is_visible() and in_view(page, "#intro", size)
        text = intro.text_content().lower()
        assert all(word in text for word in ("start", "name", "prompt", "seed")), text
        for field in ("#session", "#model", "#prompt", "#seed", "#start"):  # the form on the first screen, no scrolling
            assert in_view(page, field, size), field
        assert page.evaluate(BROKEN_IMAGES) == []  # no broken-image icon, no alt text in its place
        assert page.locator("#stage").is_hidden() and page.locator("#train").is_hidden()  # nothing to paint on yet
        assert page.evaluate("document.documentElement.scrollWidth") <= size[0]
        if size == (800, 600):
            screenshot(page, "app_start", tmp_path)  # docs/images/app_start.png
        else:
            page.screenshot(path=str(tmp_path / "first.png"))
        context.close()


def test_errors_appear_next_to_their_cause_and_clear_when_it_goes(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, _ = server
    size = (800, 600)
    with sync_playwright() as p:
        context, page = open_page(p, tmp_path, url, "errors", viewport=size)
        page.fill("#session", "errors")
        page.fill("#seed", "-1")
        page.click("#start")  # refused: the seed
        page.wait_for_function("document.querySelector('#session-status').textContent.includes('seed -1')", timeout=30_000)
        assert page.locator("#session-status").is_visible() and gap(page, "#session-status", "#start") < 60
        assert "seed" not in (page.locator("#status").text_content() or "")
        page.fill("#seed", "4")  # editing the form clears its error
        assert page.locator("#session-status").text_content() == ""

        page.click("#start")
        page.wait_for_function("document.querySelector('#step').textContent === '0'", timeout=60_000)
        page.wait_for_function("document.querySelector('#image').complete && document.querySelector('#image').naturalWidth > 0")
        assert page.evaluate(BROKEN_IMAGES) == [] and page.locator("#before-after").is_hidden()  # no step yet: no before/after
        page.click("#train")  # nothing painted
        page.wait_for_function("document.querySelector('#status').textContent.includes('paint something first')", timeout=30_000)
        assert page.locator("#status").is_visible() and gap(page, "#status", "#train") < 60 and in_view(page, "#status", size)
        stroke(page, page.locator("#paint").bounding_box(), 0.2, 0.5, 0.8, 0.5)  # painting clears the empty-map error
        assert "paint something first" not in page.locator("#status").text_content()
        context.close()


def test_the_form_shows_the_apps_model_and_reopening_a_session_says_so(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, _ = server
    with sync_playwright() as p:
        context, page = open_page(p, tmp_path, url, "model")
        page.wait_for_function("document.querySelector('#model').value !== ''")
        assert page.locator("#model").input_value() == "tiny-random"  # the app's default model (GET /api/config)
        context.close()
        context, page = start_session(p, tmp_path, url, "land")
        page.goto(url)  # a new page: the same name, prompt and seed reopen the session, and the page says so
        page.wait_for_function("document.querySelector('button.session-link') !== null")
        assert "tiny-random" in page.locator("button.session-link").text_content()  # the list names each session's model
        page.fill("#session", "land")
        assert "exists" in page.locator("#name-hint").text_content()
        page.fill("#prompt", "nature landscape")
        page.fill("#seed", "4")
        page.click("#start")
        page.wait_for_function("document.querySelector('#step').textContent === '0'", timeout=60_000)
        page.wait_for_function("/reopened session land: model tiny-random, step 0/i.test(document.querySelector('#status').textContent)")
        page.fill("#model", "pxpo-tiny")  # another model under the same name: refused next to the form, nothing switched
        page.click("#start")
        page.wait_for_function("document.querySelector('#session-status').textContent.includes('already exists with model')", timeout=30_000)
        assert gap(page, "#session-status", "#start") < 60
        context.close()


def test_a_fast_drag_leaves_a_continuous_stroke_and_the_plot_labels_its_axes(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, sessions = server
    with sync_playwright() as p:
        context, page = start_session(p, tmp_path, url, "fast", viewport=(1280, 800))
        box = page.locator("#paint").bounding_box()
        page.fill("#size", "4")
        page.mouse.move(box["x"] + 0.1 * box["width"], box["y"] + 0.5 * box["height"])
        page.mouse.down()
        page.mouse.move(box["x"] + 0.9 * box["width"], box["y"] + 0.5 * box["height"], steps=1)  # one event across the image
        page.mouse.move(box["x"] + 0.9 * box["width"], box["y"] + 0.1 * box["height"], steps=1)  # and one up
        page.mouse.up()
        on_screen = page.evaluate("""() => { const c = document.querySelector('#paint'), y = Math.floor(c.height / 2);
            return Array.from(c.getContext('2d').getImageData(0, y, c.width, 1).data).filter((v, i) => i % 4 === 3 && v > 0).length; }""")
        assert on_screen >= 48
        page.click("#train")
        page.wait_for_function("document.querySelector('#step').textContent === '1'", timeout=120_000)
        plot = page.locator("#reward-plot")
        assert plot.get_attribute("data-x-label") == "step" and plot.get_attribute("data-y-label") == "mean painted feedback"
        assert plot.get_attribute("data-x-ticks") == "1"
        context.close()
    values = decode_feedback(Image.open(sessions / "fast" / "feedback" / "step_0000.feedback.png"))
    band = (values[30:34] > 0).any(axis=0)  # the horizontal segment, rows ~32
    assert band[8:57].all(), np.flatnonzero(~band[8:57]) + 8
    column = (values[:, 55:60] > 0).any(axis=1)  # the vertical one, columns ~57
    assert column[8:31].all(), np.flatnonzero(~column[8:31]) + 8
    assert values[45:, :].sum() == 0 and values[:, :4].sum() == 0  # and nothing else


def test_the_reward_plot_has_whole_number_step_ticks(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, _ = server
    with sync_playwright() as p:
        context, page = open_page(p, tmp_path, url, "plot")
        for steps in (1, 2, 7, 37, 150):
            ticks = page.evaluate("""(n) => {
                drawPlot(Array.from({length: n}, (_, i) => ({step: i, feedback_mean: Math.sin(i) / 10})));
                return document.querySelector('#reward-plot').dataset.xTicks; }""", steps)  # fmt: skip
            values = [float(t) for t in (ticks or "").split(",") if t]
            assert values and all(v == int(v) for v in values) and values == sorted(set(values)), (steps, ticks)
            assert 1 <= values[0] and values[-1] <= steps and len(values) <= 10 and (len(values) >= 2 or steps == 1), (steps, ticks)
        context.close()
