"""Tiny smoke runs of the benchmark scripts, so that they keep working (benchmarks are not tests)."""

import ast
import json
import py_compile
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the full tier (CI); `pytest -m "not slow"` is the fast tier

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
MODULES = {"_common", "measures"}  # what scripts share; everything else in benchmarks/ is a script
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if p.stem not in MODULES)


def run(script, *args, cwd=ROOT):
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def assert_provenance(result: dict, script: str):
    """Every result carries its command line, wall time and machine."""
    assert result["command"].startswith(f"python benchmarks/{script}") and result["seconds"] > 0 and result["machine"]


def test_scripts_share_the_harness_and_import_no_other_script():
    for path in SCRIPTS:
        tree = ast.parse(path.read_text())
        imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) and getattr(n, "module", None) != "__future__"]
        first = imports[0]
        assert isinstance(first, ast.Import) and first.names[0].name == "_common", f"{path.name}: import _common first (before torch)"
        local = {a.name for n in imports if isinstance(n, ast.Import) for a in n.names} | {n.module for n in imports if isinstance(n, ast.ImportFrom)}
        siblings = {p.stem for p in SCRIPTS}
        assert not local & siblings, f"{path.name} imports another script: {local & siblings}"


def test_speed_smoke(tmp_path):
    out = tmp_path / "speed.md"
    stdout = run("speed.py", "--model", "tiny-random", "--samples", "2", "--train-batch-size", "2", "--steps", "2", "--epochs", "1", "--out", str(out))
    report = out.read_text()
    assert "Time per epoch: ddpo / pxpo" in stdout and "denoiser_forward_sampling" in report and "Command: `python benchmarks/speed.py" in report
    # the hooks saw the models' compute: every model part was timed (the blue penalty's reward is plain arithmetic)
    row = next(line for line in report.splitlines() if line.startswith("| pxpo |")).split("|")[1:-1]
    parts = dict(zip(["algorithm", "total", "per_sample", "sampling", "vae", "reward", "training", "backward", "optimizer", "other"], row))
    assert all(float(parts[k]) > 0 for k in ("sampling", "vae", "training", "backward", "optimizer")), parts


def test_speed_smoke_flow_family(tmp_path):
    out = tmp_path / "speed.md"
    stdout = run("speed.py", "--model", "tiny-random-sd3", "--samples", "4", "--group-size", "2", "--train-batch-size", "2",
                 "--steps", "3", "--epochs", "1", "--algorithms", "pxpo", "pxawm", "pxpo+kl", "--tweak", "pxpo+kl=train.kl_coef=0.1",
                 "--set", "sample.sde_window=[1, 2]", "--out", str(out))  # fmt: skip
    report = out.read_text()
    assert "Time per epoch: pxawm / pxpo" in stdout and "`tiny-random-sd3`" in report and "| pxawm |" in report and "| pxpo+kl |" in report
    assert "with sample.sde_window=[1, 2]" in report and "pxpo+kl with train.kl_coef=0.1" in report
    done = subprocess.run([sys.executable, str(BENCHMARKS / "speed.py"), "--tweak", "ddpo+x=train.kl_coef=0.1"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "--tweak 'ddpo+x=train.kl_coef=0.1': expected LABEL=SECTION.KEY=VALUE with LABEL one of --algorithms" in done.stderr


def test_flow_sample_efficiency_smoke(tmp_path):
    run("flow_sample_efficiency.py", "--tasks", "blue", "--seeds", "0", "--lrs", "1e-2", "--epochs", "1", "--num-steps", "2",
        "--samples", "2", "--group-size", "2", "--eval-seeds", "1", "--model", "tiny-random-sd3", "--out", str(tmp_path))
    report = (tmp_path / "flow_sample_efficiency.md").read_text()
    assert "## blue" in report and "group_location" in report and (tmp_path / "flow_sample_efficiency_blue.png").is_file()
    assert "Command: `python benchmarks/flow_sample_efficiency.py --tasks blue" in report
    stored = json.loads((tmp_path / "flow_sample_efficiency_blue.json").read_text())
    assert_provenance(stored, "flow_sample_efficiency.py")
    assert {(r["method"], r["normalization"], r["kl_coef"]) for r in stored["runs"]} == {
        (m, n, k) for m in ("pxpo", "ddpo") for n, k in (("group", 0.0), ("batch", 0.0), ("group_location", 0.0), ("group", 0.1))
    }


def test_clip_range_smoke(tmp_path):
    out = tmp_path / "clip.md"
    run("clip_range.py", "--lrs", "1e-3", "--samples", "2", "--steps", "2", "--out", str(out))
    assert "PXPO clipfrac @0.002" in out.read_text()
    stored = json.loads(out.with_suffix(".json").read_text())
    assert_provenance(stored, "clip_range.py")
    assert {r["step"] for r in stored["rows"]} == {"pxpo", "ddpo"}


def test_sample_efficiency_smoke(tmp_path):
    stdout = run("sample_efficiency.py", "--tasks", "blue", "two", "--seeds", "0", "--lrs", "1e-2", "--epochs", "1",
                 "--num-steps", "2", "--samples", "2", "--out", str(tmp_path))
    report = (tmp_path / "sample_efficiency.md").read_text()
    assert "## blue" in report and "## two" in report and (tmp_path / "sample_efficiency_two.png").is_file(), stdout
    stored = json.loads((tmp_path / "sample_efficiency_blue.json").read_text())
    assert_provenance(stored, "sample_efficiency.py")
    assert {r["method"] for r in stored["runs"]} == {"pxpo", "ddpo"} and all(len(r["reward"]) == 2 for r in stored["runs"])


def test_two_objectives_seeds_smoke(tmp_path):
    fast = ["sample.num_steps=2", "train.timesteps_per_forward=2", "run.num_epochs=1"]
    run("two_objectives_seeds.py", "--seeds", "0", "--draws", "2", *[a for o in fast for a in ("--set", o)], "--out", str(tmp_path))
    report = (tmp_path / "two_objectives_seeds.md").read_text()
    assert "| 0 | " in report and "of 1 |" in report
    stored = json.loads((tmp_path / "two_objectives_seeds.json").read_text())
    (entry,) = stored.values()
    assert_provenance(entry, "two_objectives_seeds.py")
    assert set(entry["rows"][0]) == {"seed", "start", "more_trees", "more_lake"}


def test_peer_trl_pxpo_side_smoke_and_runner_compiles():
    # The TRL side needs its own 300 MB venv (.venv-trl); CI runs pxpo's side and checks the runner compiles.
    stdout = run("peer_trl.py", "--child", "pxpo", "--model", "tiny-random", "--samples", "2", "--train-batch-size", "2",
                 "--steps", "2", "--epochs", "1", "--timesteps-per-forward", "2")
    assert '"seconds"' in stdout
    py_compile.compile(str(BENCHMARKS / "trl_runner.py"), doraise=True)


def test_two_objectives_smoke(tmp_path):
    run("two_objectives.py", "--set", "sample.num_steps=2", "--set", "train.timesteps_per_forward=2", "--set", "run.num_epochs=1",
        "--draws", "2", "--output-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "docs"))
    report = (tmp_path / "docs" / "human_feedback_results.md").read_text()
    assert "| 1 |" in report and (tmp_path / "docs" / "images" / "two_objectives_images.png").is_file(), report


def test_painted_step_change_smoke(tmp_path):
    out = tmp_path / "painted"
    run("painted_step_change.py", "--seeds", "0", "--steps", "1", "--model", "tiny-random", "--modes", "fixed",
        "--set", "sample.num_steps=2", "--set", "train.timesteps_per_forward=2", "--out", str(out))
    report = out.with_suffix(".md").read_text()
    assert "fixed (the app)" in report and "2 denoising steps" in report and out.with_suffix(".png").is_file(), report
    stored = json.loads(out.with_suffix(".json").read_text())
    assert_provenance(stored, "painted_step_change.py")
    assert [r["map"] for r in stored["rows"]] == ["painted", "all zero"]


def test_paper_experiments_smoke(tmp_path):
    fast = ["run.num_epochs=1", "sample.num_steps=2", "train.timesteps_per_forward=2", "sample.batch_size=2", "train.batch_size=2", "eval.seeds=[0]"]
    run("paper_experiments.py", "--only", "blue_penalty", *[a for o in fast for a in ("--set", o)],
        "--output-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "docs"))
    report = (tmp_path / "docs" / "experiments.md").read_text()
    assert "| 1. colour feedback" in report and "(1 fixed seeds; 2 reward queries" in report
    assert (tmp_path / "docs" / "images" / "blue_penalty_evolution.png").is_file()
    assert_provenance(json.loads((tmp_path / "docs" / "experiments.json").read_text())["blue_penalty"], "paper_experiments.py")


def test_world_quality_smoke(tmp_path):
    run("world_quality.py", "--samples", "2", "--steps", "2", "--renders", "4", "--models", "pxpo-tiny", "--out", str(tmp_path))
    report = (tmp_path / "world.md").read_text()
    assert "2 samples per prompt, 2 steps" in report and "**mean**" in report and (tmp_path / "images" / "world_samples.png").is_file()


def test_locality_smoke_and_report_from_rows(tmp_path):
    out = tmp_path / "loc"
    run("locality.py", "--seeds", "0", "--models", "pxpo-tiny-flow", "--tasks", "painted", "hair", "--painted-steps", "1",
        "--epochs", "1", "--eval-seeds", "1", "--base-coefs", "1", "--sampling-coefs", "--late", "0.5", "--regional", "0.03",
        "--set", "sample.num_steps=4", "--set", "train.timesteps_per_forward=2", "--out", str(out))  # fmt: skip
    result = json.loads(out.with_suffix(".json").read_text())
    assert_provenance(result, "locality.py")
    methods = ("scalar", "pxpo", "base 1", "pxpo, last 50% of steps", "pxpo, regional, lr 0.03", "pxpo, regional, last 50%, lr 0.03")
    assert {(e["task"], e["method"]) for e in result["summary"]} == {(task, method) for task in ("painted", "hair") for method in methods}
    painted = next(e for e in result["summary"] if e["task"] == "painted" and e["method"] == "pxpo")
    assert painted["inside"][0] > 0 and painted["outside"][0] > 0
    again = tmp_path / "again"
    run("locality.py", "--rows", str(out.with_suffix(".json")), "--out", str(again))  # a report from stored rows alone
    assert json.loads(again.with_suffix(".json").read_text())["summary"] == result["summary"]
    assert out.with_suffix(".png").stat().st_size > 0 and "## painted, pxpo-tiny-flow" in again.with_suffix(".md").read_text()


def _time_to(curve, threshold, key):
    """Hand-written reference: the first crossing of ``threshold`` by the eval reward, linear between epochs."""
    if curve[0]["eval_reward"] >= threshold:
        return curve[0][key]
    for a, b in zip(curve, curve[1:]):
        if b["eval_reward"] >= threshold:
            return a[key] + (threshold - a["eval_reward"]) / (b["eval_reward"] - a["eval_reward"]) * (b[key] - a[key])
    return None


def test_time_to_reward_smoke_flow(tmp_path):
    # The tiny task's baseline is TRL (its own venv): CI runs the flow task, every method, 1 seed, 2 epochs.
    run("time_to_reward.py", "--tasks", "flow", "--seeds", "0", "--epochs", "2", "--steps", "2", "--eval-seeds", "2",
        "--model-flow", "tiny-random-sd3", "--tweak", "awm=train.learning_rate=1e-3", "--out", str(tmp_path))  # fmt: skip
    report = (tmp_path / "time_to_reward_flow.md").read_text()
    assert "Command: `python benchmarks/time_to_reward.py --tasks flow" in report and "awm=train.learning_rate=1e-3" in report
    assert (tmp_path / "time_to_reward_flow.png").stat().st_size > 0 and "World-quality score" in report
    stored = json.loads((tmp_path / "time_to_reward_flow.json").read_text())
    assert_provenance(stored, "time_to_reward.py")
    runs = {method: seeds["0"] for method, seeds in stored["runs"].items()}
    assert set(runs) == {"pxpo", "pxpo_window", "pxawm", "grpo", "awm"}
    # one evaluation for all: before training every method scores the same base model on the same seeds
    assert len({(c[0]["eval_reward"], c[0]["quality"]) for c in runs.values()}) == 1
    assert stored["threshold"] == runs["grpo"][-1]["eval_reward"]  # the baseline's final reward (one seed)
    for method, curve in runs.items():
        assert [e["epoch"] for e in curve] == [0, 1, 2] and [e["queries"] for e in curve] == [0, 8, 16]
        assert curve[0]["elapsed"] == 0 and all(b["elapsed"] > a["elapsed"] for a, b in zip(curve, curve[1:]))  # timed epochs
        summary = stored["methods"][method]
        for key, field in (("elapsed", "seconds"), ("queries", "queries")):
            expected = _time_to(curve, stored["threshold"], key)
            assert summary[field][0] == (None if expected is None else pytest.approx(expected))
