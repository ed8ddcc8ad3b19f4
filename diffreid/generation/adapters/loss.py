"""Fine-Grain-Specific Prior Preservation Loss (Diffusion-ReID eq. 1) and its pieces."""
from __future__ import annotations

import torch


def training_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet must predict, by the scheduler's prediction_type."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(f"scheduler prediction_type {kind!r}: expected epsilon, v_prediction or sample")


def timestep_weights(scheduler, timesteps: torch.Tensor, weighting: str, gamma: float = 5.0) -> torch.Tensor:
    """w_t of eq. 1: 1 (uniform) or min-SNR-gamma, expressed for the scheduler's prediction target."""
    if weighting == "uniform":
        return torch.ones(timesteps.shape, device=timesteps.device)
    if weighting != "snr":
        raise ValueError(f"weighting {weighting!r}: expected 'uniform' or 'snr'")
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas / (1 - alphas)
    clipped = torch.clamp(snr, max=gamma)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return clipped / snr
    if kind == "v_prediction":
        return clipped / (snr + 1)
    return clipped


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    per_sample = ((pred.float() - target.float()) ** 2).flatten(1).mean(1)
    return (weights * per_sample).mean()


def prior_preservation_loss(noise_pred_inst: torch.Tensor, target_inst: torch.Tensor,
                            noise_pred_prior: torch.Tensor | None, target_prior: torch.Tensor | None,
                            weights_inst: torch.Tensor, weights_prior: torch.Tensor | None,
                            lam: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 1: w_t ||pred(x_t, c) - target||^2 on identity images + lambda w_t' ||pred(x_crs,t', c_LPE*) - target||^2
    on attribute-reference images. The paper writes it in x-prediction form; any prediction type is the same
    loss up to the weighting. Without reference images (None) only the first term is returned."""
    instance = weighted_mse(noise_pred_inst, target_inst, weights_inst)
    if noise_pred_prior is None or noise_pred_prior.shape[0] == 0:
        return instance, {"instance": float(instance.detach()), "prior": 0.0}
    prior = weighted_mse(noise_pred_prior, target_prior, weights_prior)
    total = instance + lam * prior
    return total, {"instance": float(instance.detach()), "prior": float(prior.detach())}
