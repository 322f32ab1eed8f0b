"""Figures treat prompts as plain text."""

from PIL import Image

from pxpo.plots import plot_image_grid, plot_reward_curve


def test_prompts_with_dollar_signs_are_not_parsed_as_tex(tmp_path):
    title = "red $\\frac{$ taxi"  # invalid TeX between dollars: mathtext would raise
    metrics = [{"epoch": 0, "eval_reward_mean": -0.4}, {"epoch": 1, "reward_mean": -0.3, "reward_std": 0.1, "eval_reward_mean": -0.35}]
    plot_reward_curve(metrics, tmp_path / "curve.png", title=title)
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    plot_image_grid([[tmp_path / "img.png"]], ["seed 0"], ["epoch 0"], tmp_path / "grid.png", title=title)
    assert (tmp_path / "curve.png").stat().st_size > 0 and (tmp_path / "grid.png").stat().st_size > 0
