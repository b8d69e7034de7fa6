"""Can someone holding the weights tell who was in the training set? A loss-based membership test.

Each scan is encoded by the checkpoint's autoencoder, noised at fixed timesteps with fixed, seeded noise (the same
noise for every scan, so scans differ only by themselves), and denoised once by the UNet; its error against the
training target (the noise, or the velocity for a v-prediction model) is the membership score (Carlini et al.
2023; the loss attack SecMI and PIA refine). A model that has memorised its training scans denoises them better than
new scans of the same source. Errors are averaged per scan over the timesteps and per patient over the scans; the
test is AUROC of training scans against held-out scans (negated error: lower error = "member"), with a one-sided
p-value from permuting the patients' labels (a patient's scans move together; exact when the arrangements are
few), a bootstrap interval over patients when each side has at least ``MIN_RESAMPLED_GROUPS`` of them (with fewer,
resampling bounds nothing and no interval is given), and the true-positive rate at 1 % and 5 % false-positive
rate.

Calibrate only on held-out scans of the same source as the training scans (CopyMark, arXiv 2410.03640: such
attacks look strong against another data set for the wrong reason).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.common.config import Config, check_range
from core.common.errors import MemoScopeError
from core.detect.metrics import MIN_RESAMPLED_GROUPS

DEFAULT_TIMESTEPS = (25, 50, 100, 200)  # chosen on the demo checkpoints: see benchmarks/privacy_timesteps.py


@dataclass(frozen=True)
class MembershipConfig(Config):
    """How the membership test runs.

    Attributes:
        timesteps: the diffusion timesteps each scan is noised at (the same noise for every scan at each).
        seed: the noise.
        batch_size: scans per forward pass.
        bootstrap: resamples of the patients for the AUROC interval.
        permutations: arrangements of the patients' labels for the p-value (all of them when there are at most
            this many).
    """

    timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS
    seed: int = 0
    batch_size: int = 16
    bootstrap: int = 1000
    permutations: int = 2000

    def validate(self) -> None:
        if not self.timesteps:
            raise MemoScopeError("membership timesteps: give at least one diffusion timestep.")
        for t in self.timesteps:
            check_range("membership timestep", t, 0)
        check_range("membership batch_size", self.batch_size, 1)
        check_range("membership bootstrap", self.bootstrap, 10)
        check_range("membership permutations", self.permutations, 10)


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
        auroc: training scans against held-out scans by denoising error (0.5: this test cannot tell them apart).
        auroc_low, auroc_high: 95 % bootstrap interval over patients; ``None`` when a side has fewer than
            ``MIN_RESAMPLED_GROUPS`` patients.
        p_value: one-sided, from permuting the patients' labels: how often an arrangement of the same patients
            into two sets of these sizes scores an AUROC at least this high (``exact``: all arrangements).
        tpr_at_1, tpr_at_5: training scans found at a 1 % and a 5 % false-positive rate on held-out scans.
        n_train_patients, n_heldout_patients: the patients compared.
        timesteps, seed: how the scans were noised.
    """

    auroc: float
    auroc_low: float | None
    auroc_high: float | None
    tpr_at_1: float
    tpr_at_5: float
    n_train_patients: int
    n_heldout_patients: int
    timesteps: tuple[int, ...]
    seed: int
    p_value: float = 1.0
    exact: bool = False

    @property
    def smallest_p(self) -> float:
        """The smallest p-value these patient counts allow (one arrangement of all): with few patients even a
        perfect separation cannot reach 0.05."""
        return 1.0 / math.comb(self.n_train_patients + self.n_heldout_patients, self.n_train_patients)

    @property
    def leak_shown(self) -> bool:
        """A leak at the 5 % level: p <= 0.05 and, where there is an interval, its low end above chance."""
        return self.p_value <= 0.05 and (self.auroc_low is None or self.auroc_low > 0.5)

    def interval(self) -> str:
        """The AUROC with its interval, or the reason it has none."""
        if self.auroc_low is None or self.auroc_high is None:
            return f"{self.auroc:.2f} (no interval: fewer than {MIN_RESAMPLED_GROUPS} patients a side)"
        return f"{self.auroc:.2f} [{self.auroc_low:.2f}, {self.auroc_high:.2f}]"

    def sentence(self) -> str:
        """The plain-language reading a board can act on."""
        small = min(self.n_train_patients, self.n_heldout_patients)
        patients = f"{self.n_train_patients} training and {self.n_heldout_patients} held-out patients"
        interval = (
            f"95 % interval over patients {self.auroc_low:.2f}-{self.auroc_high:.2f}"
            if self.auroc_low is not None and self.auroc_high is not None
            else "too few patients for an interval"
        )
        head = (
            f"Given one training scan and one held-out patient's scan, someone holding the weights picks the training "
            f"scan {self.auroc:.0%} of the time by how well the model denoises it (AUROC {self.auroc:.2f}, 50 % is "
            f"guessing; {interval}; p = {self.p_value:.2g} from permuting {patients}; at a 1 % false-alarm rate "
            f"{self.tpr_at_1:.0%} of training scans are found, at 5 % {self.tpr_at_5:.0%})."
        )
        if self.leak_shown:
            head += " The weights leak who was in training."
            if small < 20:
                head += (
                    " Held-out patients scanned elsewhere than the training patients would also score apart: check "
                    "that they come from the training patients' source."
                )
        else:
            head += " No membership leak was shown by this test (a stronger attack might show one)."
            if self.smallest_p > 0.05:
                head += f" With {patients}, no arrangement can reach p = 0.05: this test cannot show a leak here."
            elif small < 20:
                head += f" With {small} patients on the smaller side this is weak evidence, not proof of no leak."
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


def _permutation_p(
    scores: npt.NDArray[np.float64],
    patient_of: npt.NDArray[np.int64],
    n_members: int,
    observed: float,
    config: MembershipConfig,
) -> tuple[float, bool]:
    """One-sided p-value of ``observed`` (AUROC) when the patients' labels are permuted: ``patient_of`` gives each
    scan's patient index (the first ``n_members`` patients are the members). Exact over all arrangements when
    there are at most ``config.permutations`` of them, else ``config.permutations`` random ones (+1 smoothing)."""
    n_patients = int(patient_of.max()) + 1
    total = math.comb(n_patients, n_members)
    exact = total <= config.permutations
    if exact:
        arrangements: Iterable[Sequence[int]] = itertools.combinations(range(n_patients), n_members)
    else:
        rng = np.random.default_rng(config.seed)
        arrangements = (rng.choice(n_patients, n_members, replace=False).tolist() for _ in range(config.permutations))
    hits = count = 0
    for members in arrangements:
        chosen = np.zeros(n_patients, bool)
        chosen[list(members)] = True
        member = chosen[patient_of]
        hits += auroc(scores[member], scores[~member]) >= observed - 1e-12
        count += 1
    return (hits / count, True) if exact else ((hits + 1) / (count + 1), False)


def membership_test(
    train_scores: npt.ArrayLike,
    train_patients: Sequence[str],
    heldout_scores: npt.ArrayLike,
    heldout_patients: Sequence[str],
    config: MembershipConfig,
) -> tuple[MembershipResult, dict[str, float]]:
    """AUROC of training against held-out scans, its one-sided p-value from permuting the patients' labels, its
    interval by a bootstrap over patients (a patient's scans are resampled together: scans of one person are not
    independent; only with at least ``MIN_RESAMPLED_GROUPS`` patients a side), TPR at 1 % / 5 % FPR, from per-scan
    scores where higher = more likely a member (the negated denoising error); also each patient's mean score (for
    the pseudonymous per-patient table)."""
    a, b = np.asarray(train_scores, np.float64), np.asarray(heldout_scores, np.float64)
    if set(train_patients) & set(heldout_patients):
        raise MemoScopeError("a patient is both in training and held out; the membership test needs them apart.")
    value = auroc(a, b)
    groups_a, groups_b = _by_patient(a, train_patients), _by_patient(b, heldout_patients)
    low = high = None
    if min(len(groups_a), len(groups_b)) >= MIN_RESAMPLED_GROUPS:
        rng = np.random.default_rng(config.seed)
        boot = [
            auroc(
                np.concatenate([groups_a[i] for i in rng.integers(0, len(groups_a), len(groups_a))]),
                np.concatenate([groups_b[i] for i in rng.integers(0, len(groups_b), len(groups_b))]),
            )
            for _ in range(config.bootstrap)
        ]
        low, high = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    groups = [*groups_a, *groups_b]
    scores = np.concatenate(groups)
    patient_of = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    p_value, exact = _permutation_p(scores, patient_of, len(groups_a), value, config)
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
        p_value,
        exact,
    )
    train_ids, train_mean = per_patient(a, train_patients)
    held_ids, held_mean = per_patient(b, heldout_patients)
    return result, dict(zip([*train_ids, *held_ids], [*train_mean.tolist(), *held_mean.tolist()], strict=True))
