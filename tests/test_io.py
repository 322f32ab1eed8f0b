"""Atomic writes: the old content survives a failure, nothing temporary is left, modes are plain."""

import os
import stat

import pytest

from pxpo.io import atomic_directory, atomic_file, atomic_write_text, is_leftover


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_have_the_modes_plain_writes_have(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    (tmp_path / "plain_dir").mkdir()
    atomic_write_text(tmp_path / "a.txt", "x")
    with atomic_file(tmp_path / "b.png") as tmp:
        tmp.write_bytes(b"x")
    with atomic_directory(tmp_path / "lora") as tmp:
        (tmp / "w.safetensors").write_bytes(b"x")
    assert mode(plain) != 0o600  # (a umask of 077 would make this test meaningless)
    assert mode(tmp_path / "a.txt") == mode(tmp_path / "b.png") == mode(plain)  # not mkstemp's 0600
    assert mode(tmp_path / "lora") == mode(tmp_path / "plain_dir")  # not mkdtemp's 0700


def test_a_failed_write_keeps_the_old_content_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    folder = tmp_path / "lora"
    with atomic_directory(folder) as tmp:
        (tmp / "w").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(folder) as tmp:
            (tmp / "w").write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old" and (folder / "w").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora", "metrics.json"]


@pytest.mark.slow  # a subprocess holds the lock
def test_a_run_folder_has_one_writer_across_processes(tmp_path):
    import subprocess
    import sys

    from pxpo.run_folder import RunFolder, RunFolderBusy

    holder = subprocess.Popen(
        [sys.executable, "-c", f"from pxpo.run_folder import RunFolder; RunFolder({str(tmp_path / 'run')!r}).lock(); print('held', flush=True); input()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=f"is being written by process {holder.pid}"):
            RunFolder(tmp_path / "run").lock()
    finally:
        holder.kill()  # the kernel releases the lock of a killed process
        holder.wait()
    RunFolder(tmp_path / "run").lock()
    RunFolder(tmp_path / "run").lock()  # again in the same process: a no-op
    assert RunFolder(tmp_path / "run").is_empty()  # only the lock: a re-run may use the folder


def test_every_temporary_name_the_writers_make_is_recognised_as_a_crash_leftover(tmp_path):
    seen = []
    for target in ("seed_0000.png", "metrics.jsonl"):
        with atomic_file(tmp_path / target) as tmp:
            seen.append(tmp.name)
            tmp.write_bytes(b"x")
    folder = tmp_path / "lora"
    with atomic_directory(folder) as tmp:
        seen.append(tmp.name)
    assert seen and all(is_leftover(name) for name in seen), seen
    assert not any(is_leftover(p.name) for p in tmp_path.iterdir())  # what they leave on success is kept
    assert not is_leftover(".lock") and not is_leftover("metrics.jsonl") and not is_leftover(".hidden")
