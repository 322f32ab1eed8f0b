"""A hub id that cannot be fetched (offline, or the hub unreachable) stops in one line that says what to do."""

import logging

import pytest

from pxpo.models import load_pipeline, load_segmenter

MADE_UP = "made-up-org/no-such-model-pxpo"


@pytest.fixture
def offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def unreachable(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens


@pytest.mark.parametrize("load", [load_pipeline, load_segmenter])
def test_a_hub_id_offline_is_one_line_with_what_to_do(offline, load, capsys, caplog):
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError) as info:
        load(MADE_UP)
    message = str(info.value)
    assert "\n" not in message
    assert f"hub id {MADE_UP!r} cannot be fetched offline" in message and "HF_HUB_OFFLINE" in message
    assert "local folder" in message and "network" in message
    assert "does not appear to have a file named" not in message
    out = capsys.readouterr()
    assert "Retry" not in out.out + out.err + caplog.text and "local_dir_use_symlinks" not in out.err


def test_a_hub_id_with_the_hub_unreachable_is_one_line_without_retries(unreachable, capsys, caplog):
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError) as info:
        load_pipeline(MADE_UP)
    message = str(info.value)
    assert "\n" not in message
    assert "cannot be reached" in message and "http://127.0.0.1:9" in message and "local folder" in message
    out = capsys.readouterr()
    assert "Retrying" not in out.out + out.err + caplog.text
