"""Figures: prompts as plain text, the reward curve's legend and ticks, which epochs the evolution grid shows."""

import pytest
from PIL import Image

import pxpo.plots
from pxpo.plots import describe_columns, pick_columns, plot_image_grid, plot_reward_curve


def test_prompts_with_dollar_signs_are_not_parsed_as_tex(tmp_path):
    title = "red $\\frac{$ taxi"  # invalid TeX between dollars: mathtext would raise
    metrics = [{"epoch": 0, "eval_reward_mean": -0.4}, {"epoch": 1, "reward_mean": -0.3, "reward_std": 0.1, "eval_reward_mean": -0.35}]
    plot_reward_curve(metrics, tmp_path / "curve.png", title=title)
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    plot_image_grid([[tmp_path / "img.png"]], ["seed 0"], ["epoch 0"], tmp_path / "grid.png", title=title)
    assert (tmp_path / "curve.png").stat().st_size > 0 and (tmp_path / "grid.png").stat().st_size > 0


@pytest.fixture
def drawn(monkeypatch):
    """The figures handed to save_figure (still open), instead of files."""
    figures = []
    monkeypatch.setattr(pxpo.plots, "save_figure", lambda fig, path: figures.append(fig))
    return figures


def test_the_reward_curve_names_its_bands_in_the_legend_and_ticks_whole_epochs(tmp_path, drawn):
    metrics = [{"epoch": 0, "eval_reward_mean": -0.40, "eval_reward_std": 0.12}]
    metrics += [{"epoch": e, "reward_mean": -0.3, "reward_std": 0.1, "eval_reward_mean": -0.35, "eval_reward_std": 0.1} for e in (1, 2)]
    plot_reward_curve(metrics, tmp_path / "curve.png", title="PXPO, reward blue_penalty, model pxpo-tiny")
    (ax,) = drawn[0].axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "training samples (± std over images)" in labels and "fixed eval seeds (± std over seeds)" in labels
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks  # a 2-epoch run: no 0.25, 0.5, ...


def test_every_epoch_is_a_column_up_to_the_limit_and_otherwise_evenly_spaced_with_first_and_last():
    assert pick_columns(range(9), 11) == list(range(9))  # an 8-epoch run: epochs 0-8, none left out (4 was)
    assert pick_columns(range(11), 11) == list(range(11))
    assert pick_columns(range(21), 11) == list(range(0, 21, 2))
    assert pick_columns(range(26), 11) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 25]
    for n in range(1, 60):
        picked = pick_columns(range(n), 11)
        assert len(picked) <= 11 and picked[0] == 0 and picked[-1] == n - 1 and picked == sorted(set(picked))


def test_a_grid_that_leaves_epochs_out_says_which_it_shows():
    assert describe_columns(range(9), range(9)) == ""
    assert describe_columns(pick_columns(range(21), 11), range(21)) == "epochs 0, 2, 4, ..., 20 of 0-20"
    assert describe_columns(pick_columns(range(26), 11), range(26)) == "epochs 0, 3, 6, ..., 24, 25 of 0-25"
    assert describe_columns([0, 5, 9], range(10)) == "epochs 0, 5, 9 of 0-9"


def test_captions_go_under_each_image(tmp_path, drawn):
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    grid = [[tmp_path / "img.png"] * 2] * 2
    plot_image_grid(grid, ["seed 0", "seed 1"], ["epoch 0", "epoch 1"], tmp_path / "grid.png", captions=[["-0.1", "0.2"], ["0.3", ""]])
    labels = [ax.get_xlabel() for ax in drawn[0].axes]
    assert labels == ["-0.1", "0.2", "0.3", ""]
