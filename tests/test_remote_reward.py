"""Heatmap rewards over HTTP: the protocol round trip, and the failures a client must name."""

import pytest
import torch
from serving import serving

from pxpo.rewards import RewardError, load_reward
from pxpo.rewards.remote import create_reward_app, decode_request, encode_request


def wrong_shape():
    """A reward that returns maps of the wrong size (for the tests)."""
    return lambda images, prompts, metadata: torch.zeros(len(images), 8, 8)


def test_a_request_decodes_to_what_was_encoded():
    images = torch.rand(3, 3, 16, 16)
    prompts, metadata = ["a", "b", "c"], [{"seed": 1}, {"seed": 2}, {"epoch": 3}]
    back = decode_request(encode_request(images, prompts, metadata))
    assert torch.equal(back[0], images) and back[1] == prompts and back[2] == metadata


@pytest.mark.slow  # serves
def test_round_trip_equals_the_local_reward():
    images = torch.rand(3, 3, 16, 16)
    prompts, metadata = ["a", "b", "c"], [{"seed": 1}, {"seed": 2}, {"epoch": 3}]
    local = load_reward("blue_penalty")
    with serving(create_reward_app("blue_penalty")) as url:
        remote = load_reward("http", url=url)
        answer = remote(images, prompts, metadata)
        torch.testing.assert_close(answer.heatmaps, local(images, prompts, metadata), rtol=0, atol=0)
        assert answer.judged is None  # the blue penalty judges every pixel: no judged map travels
        compact = load_reward("http", url=url, image_dtype="uint8")
        torch.testing.assert_close(compact(images, prompts, metadata).heatmaps, local(images, prompts, metadata), rtol=0, atol=0.5 / 255)


@pytest.mark.slow  # serves
def test_a_judged_map_travels_with_the_heatmaps():
    images = torch.rand(2, 3, 64, 64)
    local = load_reward("segmentation", classes={"hair": -1.0})(images, ["a", "b"], [{}, {}])
    with serving(create_reward_app("segmentation", {"classes": {"hair": -1.0}})) as url:
        answer = load_reward("http", url=url)(images, ["a", "b"], [{}, {}])
    torch.testing.assert_close(answer.heatmaps, local.heatmaps, rtol=0, atol=0)
    assert answer.judged is not None and torch.equal(answer.judged, local.judged)


@pytest.mark.slow  # serves
def test_a_server_whose_reward_fails_answers_500_and_the_client_names_it():
    with serving(create_reward_app("test_remote_reward:wrong_shape")) as url:
        reward = load_reward("http", url=url, retries=0)
        with pytest.raises(RewardError, match=r"answered 500: reward 'test_remote_reward:wrong_shape' returned shape \[2, 8, 8\]"):
            reward(torch.rand(2, 3, 16, 16), ["a", "b"], [{}, {}])


@pytest.mark.slow  # serves
def test_a_server_answering_the_wrong_shape_is_caught_by_the_client():
    from fastapi import FastAPI
    from fastapi.responses import Response
    from safetensors.torch import save

    rogue = FastAPI()

    @rogue.post("/v1/reward")
    def score() -> Response:
        return Response(save({"heatmaps": torch.zeros(2, 4, 4)}), media_type="application/octet-stream")

    with serving(rogue) as url:
        with pytest.raises(RewardError, match=r"returned shape \[2, 4, 4\]: expected \[2, 16, 16\]"):
            load_reward("http", url=url)(torch.rand(2, 3, 16, 16), ["a", "b"], [{}, {}])


@pytest.mark.slow  # serves
def test_a_bad_request_gets_400():
    import urllib.error
    import urllib.request

    with serving(create_reward_app("blue_penalty")) as url:
        request = urllib.request.Request(url + "/v1/reward", data=b"not safetensors", method="POST",
                                         headers={"Content-Type": "application/octet-stream"})  # urllib's default is a form: 415
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        assert info.value.code == 400 and b"not a safetensors file" in info.value.read()


@pytest.mark.slow  # serves and trains
def test_a_server_that_dies_mid_run_stops_training_with_a_clear_error(make_config):
    from pxpo.trainer import Trainer
    from pxpo.world.architecture import build_tiny_pipeline

    with serving(create_reward_app("blue_penalty")) as url:
        config = make_config(reward={"name": "http", "kwargs": {"url": url, "retries": 1, "backoff": 0.01, "timeout": 5.0}},
                             sample={"num_steps": 2, "batch_size": 2}, train={"batch_size": 2}, eval={"seeds": [0]}, run={"num_epochs": 2})  # fmt: skip
        trainer = Trainer(config, pipeline=build_tiny_pipeline(0), progress=False)
        trainer.begin()
        trainer.step(1)
    with pytest.raises(RewardError, match=f"reward server {url}/v1/reward could not be reached after 2 tries"):
        trainer.step(2)
    assert [m["epoch"] for m in trainer.run.read_metrics()] == [0, 1]  # epoch 2 wrote nothing


def test_serve_reward_refuses_a_reward_it_cannot_build(capsys):
    from pxpo.cli import main

    assert main(["serve-reward", "no_such_reward", "--port", "1"]) == 2
    assert "'no_such_reward': not a registered reward" in capsys.readouterr().err
