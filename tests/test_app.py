"""The human-feedback app's API: sessions, painted maps, bad input, busy, restart, export, folder protocol."""

import io
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from pxpo.app.server import create_app
from pxpo.app.sessions import Session, SessionError, parse_painted_map, session_config
from pxpo.config import validate_config
from pxpo.rewards.human import decode_feedback, encode_feedback, feedback_name
from pxpo.images import to_pil
from pxpo.io import save_image
from pxpo.trainer import Trainer
from pxpo.world.architecture import build_tiny_pipeline

# `slow` marks the tests that train (a session, a Trainer); the pure ones are the fast tier

MODEL = "tiny-random"
BASE = "http://127.0.0.1:8000"  # the app serves loopback names only
OCTET = {"Content-Type": "application/octet-stream"}


def painted(width=64, height=64):
    values = np.zeros((height, width), dtype=np.int8)
    values[8:24, 4:20] = 2
    values[40:56, 40:60] = -2
    return values


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(tmp_path / "sessions", default_model=MODEL, timesteps_per_forward=20), base_url=BASE) as c:
        yield c


@pytest.mark.parametrize("k", [0, 21])
def test_timesteps_per_forward_out_of_range_is_refused(tmp_path, k):
    with pytest.raises(ValueError, match=f"timesteps_per_forward = {k}: expected 1 to 20"):
        create_app(tmp_path / "sessions", default_model=MODEL, timesteps_per_forward=k)


def start(client, name="s1", seed=3):
    response = client.post("/api/sessions", json={"name": name, "prompt": "nature landscape", "seed": seed})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow  # trains
def test_session_step_saves_image_map_metrics_and_checkpoint(client, tmp_path):
    state = start(client)
    assert (state["step"], state["width"], state["height"], state["history"]) == (0, 64, 64, [])
    assert client.get("/api/sessions").json() == [{"name": "s1", "model": MODEL, "prompt": "nature landscape", "step": 0}]
    image0 = client.get("/api/sessions/s1/image/0")
    assert image0.status_code == 200 and image0.headers["content-type"] == "image/png"

    values = painted()
    response = client.post("/api/sessions/s1/train?width=64&height=64", content=values.tobytes(), headers=OCTET)
    assert response.status_code == 200, response.text
    state = response.json()
    assert state["step"] == 1 and len(state["history"]) == 1
    assert state["history"][0]["feedback_mean"] == pytest.approx(values.mean())

    folder = tmp_path / "sessions" / "s1"
    np.testing.assert_array_equal(decode_feedback(Image.open(folder / "feedback" / "step_0000.feedback.png")), values)
    assert (folder / "checkpoints" / "epoch_0001" / "trainable.safetensors").is_file()
    assert (folder / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert client.get("/api/sessions/s1/image/1").status_code == 200
    assert client.get("/api/sessions/s1/image/2").status_code == 404
    assert client.get("/api/sessions").json() == [{"name": "s1", "model": MODEL, "prompt": "nature landscape", "step": 1}]

    layer = client.get("/api/sessions/s1/map/0")  # the previous map, as a transparent overlay
    assert layer.status_code == 200 and layer.headers["content-type"] == "image/png"
    rgba = np.asarray(Image.open(io.BytesIO(layer.content)))
    assert rgba.shape == (64, 64, 4)
    np.testing.assert_array_equal(rgba[..., 3] > 0, values != 0)  # opaque exactly where painted
    assert (rgba[values > 0][:, :3] == (0, 255, 0)).all() and (rgba[values < 0][:, :3] == (255, 0, 0)).all()
    assert client.get("/api/sessions/s1/map/1").status_code == 404  # step 1 has no map yet


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "x" * 65, "name with space"])
def test_session_names_cannot_leave_the_folder(client, tmp_path, name):
    response = client.post("/api/sessions", json={"name": name, "prompt": "p", "seed": 0})
    assert response.status_code == 400 and "session name" in response.json()["detail"]
    assert not (tmp_path / "evil").exists()
    assert client.get("/api/sessions/..evil").status_code == 400


@pytest.mark.slow  # builds a session's Trainer
def test_bad_uploads_get_4xx_and_the_app_keeps_serving(client):
    start(client)
    url = "/api/sessions/s1/train"
    cases = [
        (f"{url}?width=32&height=32", np.zeros(32 * 32, np.int8).tobytes(), 400, "the image is 64x64"),
        (f"{url}?width=64&height=64", b"\x00" * 100, 400, "expected 4096"),
        (f"{url}?width=64&height=64", np.full(4096, 5, np.int8).tobytes(), 400, "values outside [-2, 0, 2] (e.g. 5)"),
        (f"{url}?width=64&height=64", b"\x00" * (4 * 2**20 + 1), 413, "the limit is"),
        ("/api/sessions/nobody/train?width=64&height=64", np.zeros(4096, np.int8).tobytes(), 404, "no session named 'nobody'"),
        (f"{url}?width=abc&height=64", b"", 422, ""),
    ]
    for path, body, status, message in cases:
        response = client.post(path, content=body, headers=OCTET)
        assert response.status_code == status, (path, response.text)
        assert message in response.text
    assert client.post("/api/sessions", json={"name": "s2", "prompt": "", "seed": 0}).status_code == 400
    assert client.post("/api/sessions", json={"name": "s2", "prompt": "p", "seed": -1}).status_code == 400
    for model in ("./nowhere", "no-such-model"):  # a bad model: one line naming it
        response = client.post("/api/sessions", json={"name": "s2", "prompt": "p", "seed": 0, "model": model})
        detail = response.json()["detail"]
        assert response.status_code == 400 and detail.startswith(f"model {model!r}") and "\n" not in detail and len(detail) < 200, detail
    assert not (client.app.state.manager.root / "s2").exists()
    assert client.get("/api/sessions/s1").json()["step"] == 0  # still serving, nothing trained


@pytest.mark.slow  # trains
def test_a_second_request_while_training_is_answered_busy(client):
    start(client)
    manager = client.app.state.manager
    assert manager.lock.acquire(blocking=False)  # as if a step were running
    try:
        response = client.post("/api/sessions/s1/train?width=64&height=64", content=painted().tobytes(), headers=OCTET)
        assert response.status_code == 409 and "busy" in response.json()["detail"]
        assert client.post("/api/sessions", json={"name": "s3", "prompt": "p", "seed": 0}).status_code == 409
    finally:
        manager.lock.release()
    assert client.post("/api/sessions/s1/train?width=64&height=64", content=painted().tobytes(), headers=OCTET).status_code == 200


@pytest.mark.slow  # trains
def test_restart_continues_the_session_where_it_stopped(tmp_path):
    sessions = tmp_path / "sessions"
    with TestClient(create_app(sessions, default_model=MODEL), base_url=BASE) as first:
        start(first)
        first.post("/api/sessions/s1/train?width=64&height=64", content=painted().tobytes(), headers=OCTET)
    saved_image = np.asarray(Image.open(sessions / "s1" / "eval" / "epoch_0001" / "seed_0003.png"))

    with TestClient(create_app(sessions, default_model=MODEL), base_url=BASE) as second:  # a new process would see the same
        assert second.get("/api/sessions/s1").json()["step"] == 1
        state = second.post("/api/sessions", json={"name": "s1"}).json()
        assert state["step"] == 1 and state["prompt"] == "nature landscape" and state["seed"] == 3
        session = second.app.state.manager.get("s1")
        # The restored weights regenerate exactly the image the person saw before the restart.
        regenerated = np.asarray(to_pil(session.trainer.eval_images(1)[0]))
        assert np.abs(regenerated.astype(int) - saved_image).max() <= 1
        assert second.post("/api/sessions/s1/train?width=64&height=64", content=painted().tobytes(), headers=OCTET).json()["step"] == 2
        export = second.post("/api/sessions/s1/export", json={}).json()
    assert Image.open(export["figure"]).size[0] > 100
    pipe = build_tiny_pipeline(0)
    pipe.load_lora_weights(export["lora"])  # the session is a normal run folder


def test_parse_painted_map_directly():
    values = parse_painted_map(painted().tobytes(), 64, 64, (64, 64), 10_000)
    assert values.dtype == np.float32 and values.shape == (64, 64) and set(np.unique(values)) == {-2.0, 0.0, 2.0}
    with pytest.raises(SessionError):
        parse_painted_map(painted().tobytes(), 64, 64, (64, 64), 100)


def test_feedback_png_round_trip_and_paint_program_colours():
    values = painted().astype(np.float32)
    np.testing.assert_array_equal(decode_feedback(encode_feedback(values)), values)
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = (30, 200, 40)   # a painted green
    rgb[1, 1] = (220, 20, 10)   # a painted red
    rgb[2, 2] = (200, 200, 200)  # grey: no feedback
    decoded = decode_feedback(Image.fromarray(rgb))
    assert decoded[0, 0] == 2 and decoded[1, 1] == -2 and decoded[2, 2] == 0 and decoded.sum() == 0


@pytest.mark.slow  # trains
def test_folder_protocol_drives_training(tmp_path):
    exchange = tmp_path / "exchange"
    config = validate_config(
        {
            "model": {"pretrained": MODEL},
            "sample": {"prompts": ["nature landscape"], "single_image_seed": 5, "batch_size": 1, "num_steps": 4},
            "train": {"batch_size": 1},
            "advantage": {"normalization": "none"},
            "reward": {"name": "folder_feedback", "kwargs": {"directory": str(exchange), "timeout_seconds": 60, "poll_seconds": 0.05}},
            "eval": {"reward": False},
            "run": {"num_epochs": 2, "output_dir": str(tmp_path / "runs"), "name": "folder"},
        }
    )
    seen = []

    def annotator():  # a remote person: waits for each image, paints on it
        import time

        for step in (1, 2):
            image = exchange / f"{feedback_name(step)}.png"
            while not image.exists():
                time.sleep(0.05)
            seen.append(Image.open(image).size)
            encode_feedback(painted()).save(exchange / f"{feedback_name(step)}.feedback.png")

    thread = threading.Thread(target=annotator)
    thread.start()
    metrics = Trainer(config, progress=False).train()
    thread.join(timeout=60)
    assert seen == [(64, 64), (64, 64)]
    assert [m["epoch"] for m in metrics] == [0, 1, 2]
    assert metrics[1]["reward_mean"] == pytest.approx(painted().mean())


@pytest.mark.slow  # builds a Trainer
@pytest.mark.parametrize("noise", ["fixed", "fresh"])
def test_single_image_mode_trains_the_image_that_was_shown(tmp_path, noise):
    config = validate_config(
        {
            "model": {"pretrained": MODEL},
            "sample": {"prompts": ["nature landscape"], "single_image_seed": 11, "single_image_noise": noise, "batch_size": 1, "num_steps": 5},
            "train": {"batch_size": 1},
            "run": {"num_epochs": 1, "output_dir": str(tmp_path), "name": "one"},
        }
    )
    trainer = Trainer(config, progress=False)
    shown = trainer.eval_images(0)  # the image a person sees before training
    first, second = trainer.sample(1), trainer.sample(2)
    torch.testing.assert_close(first.images, shown)  # epoch 1 trains exactly that trajectory
    torch.testing.assert_close(second.latents[:, 0], first.latents[:, 0])  # the same initial noise every epoch
    # same weights: "fixed" step noise gives the same image again, "fresh" another draw from the same x_T
    assert torch.equal(second.latents[:, -1], first.latents[:, -1]) == (noise == "fixed")


def _single_image_trainer(tmp_path) -> Trainer:
    config = validate_config(
        {
            "model": {"pretrained": MODEL},
            "sample": {"prompts": ["nature landscape"], "single_image_seed": 3, "batch_size": 1, "num_steps": 4},
            "train": {"batch_size": 1, "learning_rate": 1e-2},
            "advantage": {"normalization": "none"},
            "reward": {"name": "painted"},
            "eval": {"reward": False},
            "run": {"num_epochs": 10, "output_dir": str(tmp_path), "name": "zero"},
        }
    )
    return Trainer(config, progress=False)


@pytest.mark.slow  # trains
def test_a_step_on_an_all_zero_map_leaves_the_weights_and_the_shown_image_exactly_as_they_were(tmp_path):
    from pxpo.models import trainable_state_dict

    trainer = _single_image_trainer(tmp_path)
    trainer.begin()
    image_0 = trainer.eval_images(0)
    trainer.step(1, metadata={"painted": painted()})  # a painted step: the weights move, and Adam now has momentum
    after_painted = {k: v.clone() for k, v in trainable_state_dict(trainer.denoiser).items()}
    image_1 = trainer.eval_images(1)
    assert not torch.equal(image_1, image_0)
    record = trainer.step(2, metadata={"painted": np.zeros_like(painted())})  # an all-zero map: nothing to learn
    assert record["loss"] == 0.0 and record["grad_norm"] == 0.0
    state = trainable_state_dict(trainer.denoiser)
    assert all(torch.equal(state[k], after_painted[k]) for k in after_painted)  # no momentum, no weight decay step
    torch.testing.assert_close(trainer.eval_images(2), image_1, rtol=0, atol=0)  # the shown image is unchanged
    trainer.step(3, metadata={"painted": painted()})
    assert not torch.equal(trainer.eval_images(3), image_1)  # feedback changes the model, and so the image


@pytest.mark.slow  # trains
def test_an_untrained_session_survives_a_restart_with_its_step_0(tmp_path):
    sessions = tmp_path / "sessions"
    with TestClient(create_app(sessions, default_model=MODEL), base_url=BASE) as first:
        start(first)  # opened, never trained
    metrics = (sessions / "s1" / "metrics.jsonl").read_text()
    with TestClient(create_app(sessions, default_model=MODEL), base_url=BASE) as second:
        state = second.post("/api/sessions", json={"name": "s1"}).json()
        assert state["step"] == 0 and second.get("/api/sessions/s1/image/0").status_code == 200
        assert (sessions / "s1" / "metrics.jsonl").read_text() == metrics  # epoch 0's record kept
        trained = second.post("/api/sessions/s1/train?width=64&height=64&step=0", content=painted().tobytes(), headers=OCTET)
        assert trained.status_code == 200 and trained.json()["step"] == 1
    assert (sessions / "s1" / "feedback" / "step_0000.feedback.png").is_file()
    assert not list((sessions / "s1" / "feedback").glob("step_-*"))


@pytest.mark.slow  # trains
def test_a_stale_map_gets_409_and_an_empty_map_is_refused(client):
    start(client)
    assert client.post("/api/sessions/s1/train?width=64&height=64&step=0", content=painted().tobytes(), headers=OCTET).status_code == 200
    stale = client.post("/api/sessions/s1/train?width=64&height=64&step=0", content=painted().tobytes(), headers=OCTET)
    assert stale.status_code == 409 and "painted on step 0, but the session is at step 1" in stale.json()["detail"]
    empty = client.post("/api/sessions/s1/train?width=64&height=64&step=1", content=bytes(64 * 64), headers=OCTET)
    assert empty.status_code == 400 and "paint something first" in empty.json()["detail"]
    assert client.get("/api/sessions/s1").json()["step"] == 1  # neither trained


@pytest.mark.slow  # builds a session's Trainer
def test_an_existing_session_is_not_silently_given_another_prompt_seed_or_model(client, tmp_path):
    start(client, seed=3)
    for change in ({"prompt": "a city"}, {"seed": 4}, {"model": "pxpo-tiny"}):
        response = client.post("/api/sessions", json={"name": "s1", "prompt": "nature landscape", "seed": 3, **change})
        assert response.status_code == 409 and "already exists with" in response.json()["detail"], response.text
    same = client.post("/api/sessions", json={"name": "s1", "prompt": " nature landscape ", "seed": 3, "model": MODEL})
    assert same.status_code == 200 and same.json()["prompt"] == "nature landscape"
    assert client.post("/api/sessions", json={"name": "s1"}).status_code == 200  # by name alone


@pytest.mark.slow  # builds a session's Trainer
def test_names_seeds_and_prompts_are_checked_before_anything_is_written(client, tmp_path):
    assert client.post("/api/sessions", json={"name": "nl\n", "prompt": "p", "seed": 1}).status_code == 400
    big = client.post("/api/sessions", json={"name": "big", "prompt": "nature landscape", "seed": 2**64})
    assert big.status_code == 400 and "expected a whole number from 0 to" in big.json()["detail"]
    assert not (tmp_path / "sessions" / "big").exists() and not (tmp_path / "sessions" / "nl\n").exists()
    tex = client.post("/api/sessions", json={"name": "tex", "prompt": "a $\\frac{$ lake", "seed": 1})  # prompts are plain text
    assert tex.status_code == 200 and tex.json()["step"] == 0


@pytest.mark.slow  # trains
def test_cross_site_requests_and_other_host_names_are_refused(client, tmp_path):
    start(client)
    assert client.get("/api/sessions", headers={"Host": "evil.example"}).status_code == 403  # DNS rebinding
    evil = client.post("/api/sessions/s1/train?width=64&height=64&step=0", content=painted().tobytes(),
                       headers={**OCTET, "Origin": "http://evil.example"})  # fmt: skip
    assert evil.status_code == 403
    simple = client.post("/api/sessions/s1/train?width=64&height=64&step=0", content=painted().tobytes(), headers={"Content-Type": "text/plain"})
    assert simple.status_code == 415  # a type a form could send without a preflight
    assert client.get("/api/sessions/s1").json()["step"] == 0  # nothing was trained
    same = client.post("/api/sessions/s1/train?width=64&height=64&step=0", content=painted().tobytes(),
                       headers={**OCTET, "Origin": BASE})  # fmt: skip
    assert same.status_code == 200


@pytest.mark.slow  # trains
def test_every_route_taking_a_step_answers_404_naming_the_valid_steps(client):
    start(client)
    assert client.get("/api/sessions/s1/painted/0").status_code == 404  # nothing painted yet
    assert "no difference yet" in client.get("/api/sessions/s1/difference/1").json()["detail"]
    none_yet = client.get("/api/sessions/s1/map/0").json()["detail"]
    assert "no painted map yet" in none_yet, none_yet
    client.post("/api/sessions/s1/train?width=64&height=64&step=0", content=painted().tobytes(), headers=OCTET)
    for route, bad_steps, valid, good in [("image", (-1, 2, 99999), "images of steps 0 to 1", 0),
                                          ("painted", (-1, 1, 2, 99999), "painted maps of step 0", 0),
                                          ("map", (-1, 1, 2, 99999), "painted maps of step 0", 0),
                                          ("difference", (-1, 0, 2, 99999), "differences of step 1", 1)]:  # fmt: skip
        for step in bad_steps:
            response = client.get(f"/api/sessions/s1/{route}/{step}")
            assert response.status_code == 404, (route, step, response.text)
            detail = response.json()["detail"]
            assert detail.startswith(f"step {step}:") and valid in detail, (route, step, detail)
        assert client.get(f"/api/sessions/s1/{route}/{good}").status_code == 200


def test_a_prompt_or_model_that_is_not_encodable_text_is_refused_naming_the_field(client, tmp_path):
    json_type = {"Content-Type": "application/json"}
    for field, body in [("prompt", b'{"name": "sur", "prompt": "a \\ud800 lake", "seed": 1}'),
                        ("model", b'{"name": "sur", "prompt": "a lake", "seed": 1, "model": "\\udfff"}')]:  # fmt: skip
        response = client.post("/api/sessions", content=body, headers=json_type)  # a lone surrogate: valid JSON, not text
        detail = response.json()["detail"]
        assert response.status_code == 400 and detail.startswith(f"{field}: not encodable text") and "surrogate" in detail, detail
    assert not (tmp_path / "sessions" / "sur").exists()


@pytest.mark.slow  # builds a session's Trainer
def test_the_session_list_names_each_model_and_opening_says_whether_it_was_created(client):
    assert client.get("/api/config").json()["default_model"] == MODEL
    first = client.post("/api/sessions", json={"name": "s1", "prompt": "nature landscape", "seed": 3})
    assert first.json()["created"] is True and first.json()["model"] == MODEL
    again = client.post("/api/sessions", json={"name": "s1", "prompt": "nature landscape", "seed": 3, "model": MODEL})
    assert again.json()["created"] is False and again.json()["step"] == 0
    assert client.get("/api/sessions").json() == [{"name": "s1", "model": MODEL, "prompt": "nature landscape", "step": 0}]


def test_opening_a_session_by_name_that_does_not_exist_says_so(client, tmp_path):
    response = client.post("/api/sessions", json={"name": "gone"})  # a reload or link after the folder was removed
    assert response.status_code == 404 and response.json()["detail"].startswith("no session named 'gone'")
    assert not (tmp_path / "sessions" / "gone").exists()


def test_every_state_changing_request_declaring_a_body_over_the_limit_is_refused_before_it_is_read(tmp_path):
    """Not only the map upload: opening a session (JSON) and exporting too; the body is never read (TestClient sends the
    header as declared, with a short body: the app answers from the header alone)."""
    with TestClient(create_app(tmp_path / "sessions", default_model=MODEL, max_upload_bytes=1000), base_url=BASE) as client:
        for path, kind in (("/api/sessions", "application/json"), ("/api/sessions/s1/export", "application/json"),
                           ("/api/sessions/s1/train?width=64&height=64", "application/octet-stream")):  # fmt: skip
            response = client.post(path, content=b"{}", headers={"Content-Type": kind, "Content-Length": str(3 * 2**30)})
            assert response.status_code == 413 and "a body of 3221225472 bytes: the limit is 1000" in response.text, (path, response.text)
        bad = client.post("/api/sessions", content=b"{}", headers={"Content-Type": "application/json", "Content-Length": "lots"})
        assert bad.status_code == 400 and "Content-Length 'lots'" in bad.text
    assert not (tmp_path / "sessions" / "s1").exists()


class _Config:
    """What a Session reads of its trainer, for a session folder built by hand (no model, no Trainer: the fast tier)."""

    def __init__(self, folder):
        self.config = session_config(MODEL, "nature landscape", 3, folder)


def hand_made_session(client, name, images, maps):
    """A session folder on disk with ``images`` (uint8 [H, W, 3], one per step) and ``maps`` ({step: map painted on it}),
    served by the app as if it had trained those steps."""
    manager = client.app.state.manager
    folder = manager.root / name
    session = Session(folder, _Config(folder))
    for step, image in enumerate(images):
        save_image(Image.fromarray(image), session.image_path(step))
    for step, values in maps.items():
        save_image(encode_feedback(values), session.feedback_path(step))
    session.run.write_metrics([{"epoch": 0}] + [{"epoch": e, "reward_mean": float(np.mean(maps.get(e - 1, 0))), "train_seconds": 1.0,
                                                 "sample_seconds": 0.5} for e in range(1, len(images))])  # fmt: skip
    manager.sessions[name] = session
    return folder


def test_the_difference_view_shows_where_a_step_changed_the_image_with_the_painted_outline(client):
    rng = np.random.default_rng(0)
    before = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    after = before.copy()
    after[10:30, 5:25, 0] = np.clip(before[10:30, 5:25, 0].astype(int) + 90, 0, 255)  # a change overlapping the + region
    after[50, 2, 1] = before[50, 2, 1] + 1 if before[50, 2, 1] < 255 else 254  # the smallest change there is: one level, one channel
    values = painted()
    values[0:6, 30:40] = 2  # a region at the image's top edge
    folder = hand_made_session(client, "hand", [before, after, after], {0: values})  # step 2 changed nothing, unpainted

    response = client.get("/api/sessions/hand/difference/1")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == "no-store"
    assert (folder / "feedback" / "step_0001.difference.png").read_bytes() == response.content  # cached beside the maps
    assert [p.name for p in (folder / "feedback").iterdir() if p.name.startswith(".")] == []  # written atomically
    rgb = np.asarray(Image.open(io.BytesIO(response.content)))
    assert rgb.shape == (64, 64, 3)

    # the outline: each painted region's inner border, in the map's colours; not along the image's edge
    def ring(top, bottom, left, right, edge_top=False):
        mask = np.zeros((64, 64), bool)
        mask[top:bottom, left:right] = True
        mask[top + 1 : bottom - 1, left + 1 : right - 1] = False
        if edge_top:
            mask[top, left + 1 : right - 1] = False
        return mask

    green, red = (rgb == (0, 255, 0)).all(axis=2), (rgb == (255, 0, 0)).all(axis=2)
    np.testing.assert_array_equal(green, ring(8, 24, 4, 20) | ring(0, 6, 30, 40, edge_top=True))
    np.testing.assert_array_equal(red, ring(40, 56, 40, 60))

    # elsewhere grey on the fixed scale: unchanged pixels black, changed ones not
    change = np.abs(after.astype(np.float64) - before.astype(np.float64)).mean(axis=2) / 255
    shown = ~(green | red)
    assert (rgb[shown][:, 0] == rgb[shown][:, 1]).all() and (rgb[shown][:, 1] == rgb[shown][:, 2]).all()
    grey = rgb[..., 0].astype(int)
    assert (grey[shown & (change == 0)] == 0).all() and (grey[shown & (change > 0)] > 0).all()
    assert grey[50, 2] > 0 and change[50, 2] == pytest.approx(1 / 765)
    np.testing.assert_allclose(grey[shown], np.minimum(change[shown] / 0.25, 1) * 255, atol=0.51)

    # the numbers under it: the mean change inside the painted pixels and outside them, for the last step ...
    state = client.get("/api/sessions/hand").json()
    assert state["step"] == 2 and state["change"] == {"step": 2, "painted": None, "elsewhere": 0.0, "painted_fraction": 0.0}
    numbers = client.app.state.manager.get("hand").change(1)
    inside = values != 0
    assert numbers["painted"] == pytest.approx(change[inside].mean(), abs=1e-6)
    assert numbers["elsewhere"] == pytest.approx(change[~inside].mean(), abs=1e-6)
    assert numbers["painted_fraction"] == pytest.approx(inside.mean()) and numbers["painted"] > numbers["elsewhere"] > 0

    # ... and a step with no painted map still gets its difference, without an outline: here, all black
    unpainted = np.asarray(Image.open(io.BytesIO(client.get("/api/sessions/hand/difference/2").content)))
    assert unpainted.shape == (64, 64, 3) and (unpainted == 0).all()

    for step in (0, 3, -1):
        response = client.get(f"/api/sessions/hand/difference/{step}")
        detail = response.json()["detail"]
        assert response.status_code == 404 and detail.startswith(f"step {step}:") and "differences of steps 1 to 2" in detail, detail
    assert client.get("/api/sessions/nobody/difference/1").status_code == 404


_FRESH_PROCESS_RACE = """
import sys, threading
from pathlib import Path
from pxpo.app.sessions import SessionManager
from pxpo.config import load_config

root = Path(sys.argv[1])
SessionManager(root)
errors = []

def run(work):
    try:
        work()
    except Exception as error:
        errors.append(repr(error))

def import_trainer():  # what opening a session does first
    from pxpo.trainer import Trainer

threads = [threading.Thread(target=run, args=(lambda: load_config(root / "s1" / "config.toml"),)),  # what the session list does
           threading.Thread(target=run, args=(import_trainer,))]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(errors)
"""


@pytest.mark.slow  # a fresh interpreter
def test_a_fresh_app_reopening_a_session_while_listing_them_imports_the_trainer_safely(tmp_path):
    """A restarted app, a page reloaded on its session: the session list and the session's Trainer import at once, in two
    threads. Before the manager imported the trainer's modules up front, diffusers' lazy imports raced (ImportError)."""
    folder = tmp_path / "sessions" / "s1"
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(session_config(MODEL, "nature landscape", 3, folder).to_toml())
    command = [sys.executable, "-c", _FRESH_PROCESS_RACE, str(tmp_path / "sessions")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
