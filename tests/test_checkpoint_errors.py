"""A checkpoint that cannot be written (a full disk) is an OSError naming the file; the older checkpoint stays."""

import errno
import resource

import pytest
import torch
from safetensors.torch import load_file

import pxpo.run_folder
from pxpo.run_folder import RunFolder


def _save(run: RunFolder, epoch: int) -> None:
    weights = {"w": torch.full((64, 64), float(epoch))}
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(64, 64))])
    run.save_checkpoint(epoch, weights, optimizer, {}, keep=2)


def test_a_full_disk_is_an_os_error_naming_the_checkpoint_file(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    run = RunFolder(tmp_path / "run")
    _save(run, 1)

    def full(tensors, path, *args, **kwargs):  # what safetensors raises on ENOSPC
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(pxpo.run_folder, "save_file", full)
    with pytest.raises(OSError) as info:
        _save(run, 2)
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == (
        f"[Errno 28] No space left on device while writing the checkpoint: '{run.checkpoint_path(2) / 'trainable.safetensors'}'"
    )
    assert run.list_checkpoints() == [run.checkpoint_path(1)]
    assert load_file(run.checkpoint_path(1) / "trainable.safetensors")["w"][0, 0] == 1.0  # intact


def test_a_real_write_error_from_safetensors_is_an_os_error(tmp_path):
    run = RunFolder(tmp_path / "run")
    _save(run, 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # files may not grow past 4 KiB: EFBIG (Python ignores SIGXFSZ)
    try:
        with pytest.raises(OSError) as info:
            _save(run, 2)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert info.value.errno == errno.EFBIG and "epoch_0002" in str(info.value) and "\n" not in str(info.value)
    assert run.list_checkpoints() == [run.checkpoint_path(1)]
