"""``pxpo sample``: bad options refused before any model is loaded, a run's base model loaded as it was trained."""

from pxpo.cli import main


def test_sample_refuses_bad_options_before_loading_and_a_run_without_weights(tmp_path, capsys, monkeypatch):
    import pxpo.models

    loaded = []
    real = pxpo.models.load_pipeline
    monkeypatch.setattr(pxpo.models, "load_pipeline", lambda *a, **k: loaded.append(a) or real(*a, **k))
    for args, message in [
        (["--num-steps", "0"], "--num-steps 0: expected at least 1"),
        (["--out", "x.xyz"], "--out 'x.xyz': expected a file name ending in .png"),
        (["--eta", "1.5"], "--eta 1.5: expected a number in (0, 1]"),
    ]:
        assert main(["sample", "tiny-random", "--prompt", "p", *args]) == 2
        assert message in capsys.readouterr().err
    assert loaded == []  # refused before any model was loaded
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text('[model]\npretrained = "tiny-random"\n')  # a run folder whose weights were never written
    assert main(["sample", str(run), "--prompt", "p", "--out", str(tmp_path / "x.png")]) == 2
    assert "has no trained weights (no lora/): nothing to sample" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_sample_loads_a_run_s_base_model_as_it_was_trained_also_from_a_single_file(tmp_path, capsys, monkeypatch):
    import pxpo.models

    checkpoint, architecture = tmp_path / "model.safetensors", tmp_path / "architecture"
    checkpoint.write_bytes(b"")
    architecture.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(f'[model]\npretrained = "{checkpoint}"\nsingle_file_config = "{architecture}"\n')
    calls = []

    def load_pipeline(name, **kwargs):  # records how the base model is asked for, then stops the command
        calls.append((name, kwargs))
        raise ValueError("stop here")

    monkeypatch.setattr(pxpo.models, "load_pipeline", load_pipeline)
    assert main(["sample", str(run), "--prompt", "p", "--out", str(tmp_path / "x.png")]) == 2
    assert calls == [(str(checkpoint), {"single_file_config": str(architecture)})]
    assert "stop here" in capsys.readouterr().err
