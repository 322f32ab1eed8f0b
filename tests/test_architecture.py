"""The tiny SD-architecture pipeline built in code: deterministic, loadable through diffusers."""

import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPTokenizer

from pxpo.models import load_pipeline
from pxpo.world.architecture import VOCABULARY, build_tiny_pipeline, build_tokenizer


def test_tokenizer_is_deterministic_with_one_token_per_word(tmp_path):
    first, second = build_tokenizer(), build_tokenizer()
    assert first.get_vocab() == second.get_vocab()
    for word in VOCABULARY:
        assert first.convert_ids_to_tokens(first(word).input_ids) == ["<|startoftext|>", f"{word}</w>", "<|endoftext|>"]
    # Unknown words still tokenise, into a known ending and single characters.
    assert first.convert_ids_to_tokens(first("zebra").input_ids)[1:-1] == ["z", "e", "b", "r", "a</w>"]
    first.save_pretrained(tmp_path)
    assert CLIPTokenizer.from_pretrained(tmp_path)("red taxi").input_ids == first("red taxi").input_ids


def test_saved_pipeline_round_trips_through_from_pretrained(tmp_path):
    pipe = build_tiny_pipeline(seed=1)
    pipe.save_pretrained(tmp_path / "tiny")
    loaded = load_pipeline(str(tmp_path / "tiny"))
    assert isinstance(loaded, StableDiffusionPipeline)

    def run(p):
        return p("nature landscape", num_inference_steps=3, eta=1.0, output_type="pt", generator=torch.Generator().manual_seed(0)).images

    torch.testing.assert_close(run(pipe), run(loaded))
    assert sum(p.numel() for p in pipe.unet.parameters()) < 5_000_000
