"""PXPO and DDPO losses: DDPO is PXPO's special case, no cross-talk, PPO clipping."""

import pytest
import torch

from pxpo.losses import ddpo_loss, pxpo_loss

B, C, H, W = 3, 4, 8, 8


def gaussian_policy_log_prob(weight, x, sample, std=0.7):
    """A small differentiable policy: per-element log N(sample | conv(x; weight), std^2), [B, C, H, W]."""
    mean = torch.nn.functional.conv2d(x, weight, padding=1)
    return torch.distributions.Normal(mean, std).log_prob(sample)


def grads(loss, weight):
    (g,) = torch.autograd.grad(loss, weight, retain_graph=True)
    return g


def test_constant_maps_give_ddpo_gradient_at_ratio_one():
    torch.manual_seed(0)
    weight = torch.randn(C, C, 3, 3, requires_grad=True)
    x, sample = torch.randn(B, C, H, W), torch.randn(B, C, H, W)
    advantages = torch.tensor([1.5, -0.3, 0.8])
    log_prob = gaussian_policy_log_prob(weight, x, sample)
    old = log_prob.detach()  # on-policy: ratio = 1

    pxpo = pxpo_loss(log_prob, old, advantages.reshape(B, 1, 1, 1).expand(B, 1, H, W), clip_range=0.2)
    ddpo = ddpo_loss(log_prob.mean(dim=(1, 2, 3)), old.mean(dim=(1, 2, 3)), advantages, clip_range=1e-4)
    g_pxpo, g_ddpo = grads(pxpo.loss, weight), grads(ddpo.loss, weight)
    assert g_ddpo.abs().max() > 1e-3
    torch.testing.assert_close(g_pxpo, g_ddpo, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(pxpo.loss, ddpo.loss)


def test_zero_advantage_region_gets_exactly_zero_gradient():
    log_prob = torch.randn(B, C, H, W, requires_grad=True)
    advantages = torch.randn(B, 1, H, W)
    advantages[:, :, :, : W // 2] = 0.0  # left half: no feedback
    pxpo_loss(log_prob, log_prob.detach(), advantages, clip_range=0.2).loss.backward()
    assert torch.all(log_prob.grad[..., : W // 2] == 0)
    assert torch.all(log_prob.grad[..., W // 2 :] != 0)

    # DDPO, fed the same map's mean, pushes on every element: cross-talk.
    log_prob_ddpo = torch.randn(B, C, H, W, requires_grad=True)
    mean = log_prob_ddpo.mean(dim=(1, 2, 3))
    ddpo_loss(mean, mean.detach(), advantages.mean(dim=(1, 2, 3)), clip_range=1e-4).loss.backward()
    assert torch.all(log_prob_ddpo.grad[..., : W // 2] != 0)


def test_per_element_gradient_is_minus_advantage_over_count():
    log_prob = torch.randn(B, C, H, W, requires_grad=True)
    advantages = torch.randn(B, 1, H, W)
    pxpo_loss(log_prob, log_prob.detach(), advantages, clip_range=0.2).loss.backward()
    torch.testing.assert_close(log_prob.grad, -advantages.expand(B, C, H, W) / (B * C * H * W))


def test_clipping_against_a_direct_computation():
    torch.manual_seed(1)
    old = torch.randn(B, C, H, W)
    log_prob = (old + 0.3 * torch.randn(B, C, H, W)).requires_grad_()
    advantages = torch.randn(B, C, H, W)
    eps = 0.1
    out = pxpo_loss(log_prob, old, advantages, clip_range=eps)

    ratio = (log_prob.detach() - old).exp()
    expected = torch.where(
        advantages >= 0, -advantages * torch.minimum(ratio, torch.full_like(ratio, 1 + eps)),
        -advantages * torch.maximum(ratio, torch.full_like(ratio, 1 - eps)),
    ).mean()
    torch.testing.assert_close(out.loss.detach(), expected)
    torch.testing.assert_close(out.clipfrac, ((ratio - 1).abs() > eps).float().mean())
    torch.testing.assert_close(out.approx_kl, 0.5 * ((log_prob.detach() - old) ** 2).mean())

    out.loss.backward()
    # Elements whose ratio left the trust region in the advantage's direction get no gradient.
    frozen = ((advantages > 0) & (ratio > 1 + eps)) | ((advantages < 0) & (ratio < 1 - eps))
    assert frozen.any() and (~frozen).any()
    assert torch.all(log_prob.grad[frozen] == 0)
    assert torch.all(log_prob.grad[~frozen] != 0)


def test_shapes_are_checked():
    lp = torch.zeros(B, C, H, W)
    with pytest.raises(ValueError, match="advantages"):
        pxpo_loss(lp, lp, torch.zeros(B, 2, H, W), 0.1)
    with pytest.raises(ValueError, match=r"\[B, C, h, w\]"):
        pxpo_loss(lp[0], lp[0], torch.zeros(1, H, W), 0.1)
    with pytest.raises(ValueError, match=r"\[B\]"):
        ddpo_loss(lp, lp, torch.zeros(B), 1e-4)
    with pytest.raises(ValueError, match="clip_range = 0"):
        pxpo_loss(lp, lp, torch.zeros(B, 1, H, W), 0)


def test_kl_to_reference_is_the_gaussian_kl_per_element():
    from pxpo.losses import kl_to_reference

    mean, reference, std = torch.randn(B, C, H, W), torch.randn(B, C, H, W), torch.rand(B, 1, 1, 1) + 0.1
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, std.expand_as(mean)), torch.distributions.Normal(reference, std.expand_as(mean))
    ).mean()
    torch.testing.assert_close(kl_to_reference(mean, reference, std), expected)
    assert kl_to_reference(mean, mean, std) == 0
