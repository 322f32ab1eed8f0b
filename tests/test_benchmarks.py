"""Tiny smoke runs of the benchmark scripts, so that they keep working (benchmarks are not tests)."""

import json
import py_compile
import subprocess
import sys
from pathlib import Path
import pytest

pytestmark = pytest.mark.slow  # the full tier (CI); `pytest -m "not slow"` is the fast tier

ROOT = Path(__file__).resolve().parents[1]


def run(script, *args, cwd=ROOT):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_speed_smoke(tmp_path):
    out = tmp_path / "speed.md"
    stdout = run("speed.py", "--model", "tiny-random", "--samples", "2", "--train-batch-size", "2", "--steps", "2", "--epochs", "1", "--out", str(out))
    assert "PXPO / scalar time per epoch" in stdout and "denoiser_forward_sampling" in out.read_text()


def test_speed_smoke_flow_family(tmp_path):
    out = tmp_path / "speed.md"
    stdout = run("speed.py", "--model", "tiny-random-sd3", "--samples", "4", "--group-size", "2", "--train-batch-size", "2",
                 "--steps", "2", "--epochs", "1", "--out", str(out))
    assert "PXPO / scalar time per epoch" in stdout and "`tiny-random-sd3`" in out.read_text()


def test_flow_sample_efficiency_smoke(tmp_path):
    run("flow_sample_efficiency.py", "--tasks", "blue", "--seeds", "1", "--lrs", "1e-2", "--epochs", "1", "--num-steps", "2",
        "--samples", "2", "--group-size", "2", "--eval-seeds", "1", "--model", "tiny-random-sd3", "--out", str(tmp_path))
    report = (tmp_path / "flow_sample_efficiency.md").read_text()
    assert "## blue" in report and "group_location" in report and (tmp_path / "flow_sample_efficiency_blue.png").is_file()
    raw = json.loads((tmp_path / "flow_sample_efficiency_blue.json").read_text())
    assert {(r["method"], r["normalization"], r["kl_coef"]) for r in raw} == {
        (m, n, k) for m in ("pxpo", "ddpo") for n, k in (("group", 0.0), ("batch", 0.0), ("group_location", 0.0), ("group", 0.1))
    }


def test_clip_range_smoke(tmp_path):
    out = tmp_path / "clip.md"
    run("clip_range.py", "--lrs", "1e-3", "--samples", "2", "--steps", "2", "--out", str(out))
    assert "PXPO clipfrac @0.002" in out.read_text()


def test_sample_efficiency_smoke(tmp_path):
    stdout = run("sample_efficiency.py", "--tasks", "blue", "two", "--seeds", "1", "--lrs", "1e-2", "--epochs", "1",
                 "--num-steps", "2", "--samples", "2", "--out", str(tmp_path))
    report = (tmp_path / "sample_efficiency.md").read_text()
    assert "## blue" in report and "## two" in report and (tmp_path / "sample_efficiency_two.png").is_file(), stdout
    raw = json.loads((tmp_path / "sample_efficiency_blue.json").read_text())
    assert {r["method"] for r in raw} == {"pxpo", "ddpo"} and all(len(r["reward"]) == 2 for r in raw)


def test_two_objectives_seeds_smoke(tmp_path):
    fast = ["sample.num_steps=2", "train.timesteps_per_forward=2", "run.num_epochs=1"]
    run("two_objectives_seeds.py", "--seeds", "0", "--draws", "2", *[a for o in fast for a in ("--set", o)], "--out", str(tmp_path))
    report = (tmp_path / "two_objectives_seeds.md").read_text()
    assert "| 0 | " in report and "of 1 |" in report
    stored = json.loads((tmp_path / "two_objectives_seeds.json").read_text())
    (entry,) = stored.values()
    assert set(entry["rows"][0]) == {"seed", "start", "more_trees", "more_lake"}


def test_peer_trl_pxpo_side_smoke_and_runner_compiles():
    # The TRL side needs its own 300 MB venv (.venv-trl); CI runs pxpo's side and checks the runner compiles.
    stdout = run("peer_trl.py", "--child", "pxpo", "--model", "tiny-random", "--samples", "2", "--train-batch-size", "2",
                 "--steps", "2", "--epochs", "1", "--timesteps-per-forward", "2")
    assert '"seconds"' in stdout
    py_compile.compile(str(ROOT / "benchmarks" / "trl_runner.py"), doraise=True)


def test_two_objectives_smoke(tmp_path):
    run("two_objectives.py", "--set", "sample.num_steps=2", "--set", "train.timesteps_per_forward=2", "--set", "run.num_epochs=1",
        "--draws", "2", "--output-dir", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"))
    report = (tmp_path / "docs" / "human_feedback_results.md").read_text()
    assert "| 1 |" in report and (tmp_path / "docs" / "images" / "two_objectives_images.png").is_file(), report
