"""Can someone holding the weights tell who was in the training set? A loss-based membership test.

Each scan is encoded by the checkpoint's autoencoder, noised at fixed timesteps with fixed, seeded noise (the same
noise for every scan, so scans differ only by themselves), and denoised once by the UNet; its error against the
training target (the noise, or the velocity for a v-prediction model) is the membership score (Carlini et al.
2023; the loss attack SecMI and PIA refine). A model that has memorised its training scans denoises them better than
new scans of the same source. Errors are averaged per scan over the timesteps and per patient over the scans; the
test is AUROC of training patients against held-out patients (negated error: lower error = "member"), with a
bootstrap interval over patients, and the true-positive rate at 1 % and 5 % false-positive rate.

Calibrate only on held-out scans of the same source as the training scans (CopyMark, arXiv 2410.03640: such
attacks look strong against another data set for the wrong reason).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.common.config import Config, check_range
from core.common.errors import MemoScopeError

DEFAULT_TIMESTEPS = (25, 50, 100, 200)  # chosen on the demo checkpoints: see benchmarks/privacy_timesteps.py


@dataclass(frozen=True)
class MembershipConfig(Config):
    """How the membership test runs.

    Attributes:
        timesteps: the diffusion timesteps each scan is noised at (the same noise for every scan at each).
        seed: the noise.
        batch_size: scans per forward pass.
        bootstrap: resamples of the patients for the AUROC interval.
    """

    timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS
    seed: int = 0
    batch_size: int = 16
    bootstrap: int = 1000

    def validate(self) -> None:
        if not self.timesteps:
            raise MemoScopeError("membership timesteps: give at least one diffusion timestep.")
        for t in self.timesteps:
            check_range("membership timestep", t, 0)
        check_range("membership batch_size", self.batch_size, 1)
        check_range("membership bootstrap", self.bootstrap, 10)


def denoising_errors(
    ldm: object,
    images: npt.NDArray[np.float32],
    config: MembershipConfig,
    device: str = "cpu",
) -> npt.NDArray[np.float64]:
    """``(N, T)``: each scan's mean squared denoising error at each timestep (the UNet's training loss on it).

    ``images``: ``(N, 1, *S)`` in the checkpoint's preprocessing, [-1, 1]. The noise at timestep ``t`` is drawn once
    from ``config.seed`` and ``t`` on the CPU and shared by every scan, so the result does not depend on the batch
    size or the device beyond floating-point rounding.
    """
    import torch

    from core.generative.ldm import LDM, build_scheduler

    if not isinstance(ldm, LDM):
        raise TypeError("denoising_errors needs a loaded LDM (core.generative.ldm.load_ldm)")
    scheduler = build_scheduler(ldm.config)
    last = int(scheduler.num_train_timesteps) - 1
    if any(t > last for t in config.timesteps):
        raise MemoScopeError(
            f"membership timesteps {config.timesteps}: this checkpoint's schedule has timesteps 0..{last}."
        )
    velocity = scheduler.prediction_type == "v_prediction"
    torch_device = torch.device(device)
    ae, unet = ldm.autoencoder.to(torch_device).eval(), ldm.unet.to(torch_device).eval()
    noises = {
        t: torch.randn(ldm.config.latent_shape, generator=torch.Generator().manual_seed(config.seed * 10_000 + t))
        for t in config.timesteps
    }
    out = np.empty((len(images), len(config.timesteps)), np.float64)
    with torch.inference_mode():
        for start in range(0, len(images), config.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + config.batch_size])).to(torch_device)
            latents = ae.encode_stage_2_inputs(x) * ldm.config.scale_factor
            for j, t in enumerate(config.timesteps):
                noise = noises[t].to(torch_device).expand_as(latents)
                steps = torch.full((len(x),), t, dtype=torch.long, device=torch_device)
                noisy = scheduler.add_noise(original_samples=latents, noise=noise, timesteps=steps)
                target = scheduler.get_velocity(latents, noise, steps) if velocity else noise
                error = (unet(noisy, timesteps=steps).float() - target.float()) ** 2
                out[start : start + len(x), j] = error.flatten(1).mean(1).double().cpu().numpy()
    ae.cpu()
    unet.cpu()
    return out


@dataclass(frozen=True)
class MembershipResult(Config):
    """The membership test's result.

    Attributes:
        auroc: training scans against held-out scans by denoising error (0.5: cannot tell).
        auroc_low, auroc_high: 95 % bootstrap interval over patients.
        tpr_at_1, tpr_at_5: training scans found at a 1 % and a 5 % false-positive rate on held-out scans.
        n_train_patients, n_heldout_patients: the patients compared.
        timesteps, seed: how the scans were noised.
    """

    auroc: float
    auroc_low: float
    auroc_high: float
    tpr_at_1: float
    tpr_at_5: float
    n_train_patients: int
    n_heldout_patients: int
    timesteps: tuple[int, ...]
    seed: int

    @property
    def advantage(self) -> float:
        """How much better than chance a holder of the weights tells training patients from others: 2 * AUROC - 1
        (0: chance, 1: always), clipped at 0."""
        return max(0.0, 2 * self.auroc - 1)

    def sentence(self) -> str:
        """The plain-language reading a board can act on."""
        small = min(self.n_train_patients, self.n_heldout_patients)
        head = (
            f"Someone holding the weights could tell a training scan from a new patient's scan of the same source "
            f"{self.advantage:.0%} of the time better than chance (AUROC {self.auroc:.2f}, 95 % interval over "
            f"patients {self.auroc_low:.2f}-{self.auroc_high:.2f}; at a 1 % false-alarm rate {self.tpr_at_1:.0%} of "
            f"training scans are found, at 5 % {self.tpr_at_5:.0%})."
        )
        if self.auroc_low <= 0.5:
            head += " The interval includes chance: no membership leak was shown."
            if small < 20:
                head += f" With {small} patients on the smaller side this is weak evidence, not proof of no leak."
        elif small < 20:
            head += (
                f" With {small} patients on the smaller side the interval is wide, and patients of another scanner or "
                "site than the training patients would also score apart: check that the held-out patients come from "
                "the training patients' source."
            )
        return head


def per_patient(scores: npt.ArrayLike, patients: Sequence[str]) -> tuple[list[str], npt.NDArray[np.float64]]:
    """Each patient's mean score, patients in first-seen order."""
    values = np.asarray(scores, np.float64)
    order = list(dict.fromkeys(patients))
    index = {p: i for i, p in enumerate(order)}
    groups = np.array([index[p] for p in patients])
    sums = np.bincount(groups, weights=values, minlength=len(order))
    counts = np.bincount(groups, minlength=len(order))
    return order, sums / counts


def auroc(members: npt.ArrayLike, others: npt.ArrayLike) -> float:
    """P(member score > other score) + half the ties (Mann-Whitney U / (m n))."""
    from scipy.stats import mannwhitneyu

    a, b = np.asarray(members, np.float64), np.asarray(others, np.float64)
    if len(a) == 0 or len(b) == 0:
        raise MemoScopeError("the membership test needs training and held-out patients.")
    return float(mannwhitneyu(a, b, alternative="two-sided").statistic / (len(a) * len(b)))


def tpr_at_fpr(members: npt.ArrayLike, others: npt.ArrayLike, fpr: float) -> float:
    """The share of members scoring above the threshold that at most ``fpr`` of the others exceed."""
    a, b = np.asarray(members, np.float64), np.sort(np.asarray(others, np.float64))
    allowed = int(np.floor(fpr * len(b)))  # others allowed above the threshold
    threshold = b[len(b) - allowed - 1] if allowed < len(b) else -np.inf
    return float(np.mean(a > threshold))


def _by_patient(scores: npt.NDArray[np.float64], patients: Sequence[str]) -> list[npt.NDArray[np.float64]]:
    order = list(dict.fromkeys(patients))
    labels = np.asarray(patients)
    return [scores[labels == p] for p in order]


def membership_test(
    train_scores: npt.ArrayLike,
    train_patients: Sequence[str],
    heldout_scores: npt.ArrayLike,
    heldout_patients: Sequence[str],
    config: MembershipConfig,
) -> tuple[MembershipResult, dict[str, float]]:
    """AUROC of training against held-out scans, its interval by a bootstrap over patients (a patient's scans are
    resampled together: scans of one person are not independent), TPR at 1 % / 5 % FPR, from per-scan scores
    where higher = more likely a member (the negated denoising error); also each patient's mean score (for the
    pseudonymous per-patient table)."""
    a, b = np.asarray(train_scores, np.float64), np.asarray(heldout_scores, np.float64)
    if set(train_patients) & set(heldout_patients):
        raise MemoScopeError("a patient is both in training and held out; the membership test needs them apart.")
    value = auroc(a, b)
    groups_a, groups_b = _by_patient(a, train_patients), _by_patient(b, heldout_patients)
    rng = np.random.default_rng(config.seed)
    boot = [
        auroc(
            np.concatenate([groups_a[i] for i in rng.integers(0, len(groups_a), len(groups_a))]),
            np.concatenate([groups_b[i] for i in rng.integers(0, len(groups_b), len(groups_b))]),
        )
        for _ in range(config.bootstrap)
    ]
    low, high = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    result = MembershipResult(
        value,
        low,
        high,
        tpr_at_fpr(a, b, 0.01),
        tpr_at_fpr(a, b, 0.05),
        len(groups_a),
        len(groups_b),
        tuple(config.timesteps),
        config.seed,
    )
    train_ids, train_mean = per_patient(a, train_patients)
    held_ids, held_mean = per_patient(b, heldout_patients)
    return result, dict(zip([*train_ids, *held_ids], [*train_mean.tolist(), *held_mean.tolist()], strict=True))
