"""Several rewards in one run: the weighted sum of their heatmaps, each term kept for logging."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pxpo.config import RewardTerm
from pxpo.rewards.registry import RewardFn, RewardOutput, check_reward_output, load_reward


@dataclass
class Term:
    """One reward of a weighted sum: a built reward, its weight and the name it is logged under."""

    name: str
    weight: float
    fn: RewardFn


class WeightedReward:
    """``fn(images, prompts, metadata) = sum_i weight_i * reward_i(images, prompts, metadata)``, maps [B, H, W].

    A scalar reward takes part as its constant map (the registered scalar rewards return one; wrap your
    own with ``pxpo.rewards.scalar_as_heatmap``). Returns a RewardOutput whose ``terms`` hold each term's
    unweighted pixel mean per image ([B] tensors, by name), for logging; it judges the union of what its terms judge.
    """

    def __init__(self, terms: Sequence[Term]) -> None:
        if not terms:
            raise ValueError("a weighted reward needs at least one term")
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"reward terms {names}: each term needs its own name (set 'label' to tell two apart)")
        self.terms = list(terms)

    @property
    def name(self) -> str:
        return " + ".join(f"{t.weight:g} * {t.name}" for t in self.terms)

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        outputs = [check_reward_output(term.fn(images, prompts, metadata), images, term.name).to(images.device) for term in self.terms]
        total = sum(term.weight * output.heatmaps for term, output in zip(self.terms, outputs))
        means = {term.name: output.heatmaps.mean(dim=(1, 2)) for term, output in zip(self.terms, outputs)}
        judged = [output.judged for output in outputs]  # the union; a term that judges everything makes it everything
        union = None if any(j is None for j in judged) else torch.stack(judged).any(dim=0)
        return RewardOutput(total, means, union)


def weighted_reward(terms: Sequence[RewardTerm | dict]) -> WeightedReward:
    """Build a WeightedReward from config terms (``RewardTerm``s, or dicts of their fields: ``{"name": ..., "weight": ...,
    "kwargs": {...}, "label": ...}``; the defaults are RewardTerm's)."""
    terms = [t if isinstance(t, RewardTerm) else RewardTerm.model_validate(t) for t in terms]
    return WeightedReward([Term(t.label or t.name, t.weight, load_reward(t.name, **t.kwargs)) for t in terms])


def build_reward(name: str, kwargs: dict | None = None, terms: Sequence[RewardTerm | dict] = ()) -> RewardFn:
    """The reward a config names: ``name`` with ``kwargs`` (registered or 'module:factory'), or the weighted sum of ``terms``."""
    return weighted_reward(terms) if terms else load_reward(name, **(kwargs or {}))
