"""Second stage of the copy call: align each retrieved candidate to its query, then score the aligned overlap.

Retrieval (the contrastive embedding, optionally merged with a blurred-pixel search) proposes ``k``
training scans per query; verification decides. For each candidate it searches small rigid rotations
(2D: about the image centre; 3D: about each axis in turn), finds the translation within ``max_shift`` by
FFT cross-correlation of the band-passed images, and scores the aligned pair on the central overlap that
every allowed shift keeps:

- ``structure``: Pearson correlation of the band-passed images (difference of Gaussians,
  ``fine_sigma`` - ``coarse_sigma`` voxels). It ignores linear intensity changes, most noise and
  slight blur, and the overall head shape that every scan shares; the copy decision uses it.
- ``pixel``: Pearson correlation of the aligned images themselves (the pixel-space cross-check).

Everything is batched torch on the given device (resampling with MONAI's ``AffineTransform``,
filtering with MONAI's separable Gaussian), so a GPU verifies thousands of pairs per second. The
same code scores the null (validation -> training, between different patients) and the synthetic
samples, so the threshold is calibrated on exactly the statistic it is applied to.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from core.common.config import Config, check_range
from core.detect.search import Neighbors, NeighborTables, SearchConfig, make_index
from core.io.preprocessing import DEFAULT_SIZE

if TYPE_CHECKING:  # torch and MONAI load when something is verified, not when a study's results are read
    import torch


REFERENCE_SIDE = DEFAULT_SIZE  # the grid VerifyConfig's sigmas and batch are stated for: the default embedding size
DEFAULT_VERIFY_SIDE = {2: 256, 3: 64}  # the largest grid a scan verifies on by default (``--verify-size``)


class MatchMethod(StrEnum):
    """How a scan decides that a synthetic sample copies a training scan."""

    PAPER = "paper"  # as in Dar et al.: the contrastive embedding's correlation decides
    VERIFIED = "verified"  # retrieval by embedding (+ blurred pixels), then aligned structure correlation decides


@dataclass(frozen=True)
class VerifyConfig(Config):
    """Retrieval and verification settings.

    Attributes:
        candidates: embedding neighbours verified per query.
        pixel_candidates: further candidates from a blurred-pixel search (0: embedding only); they catch
            copies the embedding ranks low (large shifts, strong blur).
        max_angle, angle_step: rotation search in degrees, ``-max_angle..max_angle`` (2D: in-plane).
        angle_step_3d: the step in 3D, where each axis is searched in turn (8 deg at 4 deg steps: 13 orientations).
        max_shift: largest translation searched, as a fraction of each side.
        max_scale, scale_step: zoom search, ``1 - max_scale .. 1 + max_scale`` in steps (0: none). It runs at the
            best rotation found at scale 1 (a zoom scores every rotation alike), so it costs ``2 max_scale /
            scale_step`` more transforms per pair, not that many times the rotations.
        fine_sigma, coarse_sigma: the band-pass (voxels of a 64 px / 32-voxel grid): below ``fine_sigma`` is noise
            and the blur a generator adds; above ``coarse_sigma`` is the head shape all scans share. On a finer
            verification grid ``coarse_sigma`` grows with the grid and ``fine_sigma`` stays at its voxels.
        batch_pairs: aligned pairs per batch at that grid (bounds memory: about ``batch_pairs x orientations``
            images); a finer grid takes proportionally fewer.
        max_size: the largest side, per axis, of the grid verification, the pixel checks and Review use: the scans'
            own resolution up to this (0: the default, 256 px in 2D and 64 voxels in 3D), never below the
            embedding's size.
    """

    candidates: int = 5
    pixel_candidates: int = 5
    max_angle: float = 8.0
    angle_step: float = 2.0
    angle_step_3d: float = 4.0
    max_shift: float = 0.1
    max_scale: float = 0.1
    scale_step: float = 0.05
    fine_sigma: float = 1.0
    coarse_sigma: float = 4.0
    batch_pairs: int = 64
    max_size: int = 0

    def validate(self) -> None:
        check_range("candidates", self.candidates, 1)
        check_range("pixel_candidates", self.pixel_candidates, 0)
        check_range("max_angle", self.max_angle, 0.0, 45.0)
        check_range("angle_step", self.angle_step, 0.1, 45.0)
        check_range("angle_step_3d", self.angle_step_3d, 0.1, 45.0)
        check_range("max_shift", self.max_shift, 0.0, 0.45)
        check_range("max_scale", self.max_scale, 0.0, 0.3)
        check_range("scale_step", self.scale_step, 0.005, 0.3)
        check_range("fine_sigma", self.fine_sigma, 0.0)
        check_range("coarse_sigma", self.coarse_sigma, self.fine_sigma + 1e-6)
        check_range("batch_pairs", self.batch_pairs, 1)
        check_range("max_size", self.max_size, 0)

    def grid_side(self, spatial_dims: int, embedding_side: int, native_side: int) -> int:
        """The verification grid's side: the scans' own (``native_side``) up to ``max_size`` (or the default), never
        below the embedding's."""
        cap = self.max_size or DEFAULT_VERIFY_SIDE[spatial_dims]
        return max(embedding_side, min(cap, native_side))

    def scales(self) -> list[float]:
        """The zooms searched besides 1 (the candidate magnified by each to match its query), nearest first."""
        n = int(math.floor(self.max_scale / self.scale_step + 1e-9))
        return [round(1.0 + sign * i * self.scale_step, 6) for i in range(1, n + 1) for sign in (-1.0, 1.0)]

    def angles(self, spatial_dims: int = 2) -> list[float]:
        step = self.angle_step if spatial_dims == 2 else self.angle_step_3d
        n = int(math.floor(self.max_angle / step + 1e-9))
        return [0.0] + [s * i * step for i in range(1, n + 1) for s in (-1.0, 1.0)]


@dataclass(frozen=True)
class Alignment:
    """How a candidate was moved onto its query: rotation (degrees, about ``axis``), zoom (``scale``, about the
    centre, applied with the rotation) and shift (voxels)."""

    axis: int
    angle: float
    shift: tuple[int, ...]
    scale: float = 1.0

    def label(self) -> str:
        moved = [f"rotated {self.angle:+g} deg" + (f" about axis {self.axis}" if self.axis >= 0 else "")] * bool(
            self.angle
        )
        if self.scale != 1.0:
            moved.append(f"scaled x{self.scale:g}")
        if any(self.shift):
            moved.append("shifted " + ",".join(f"{s:+d}" for s in self.shift) + " px")
        return "; ".join(moved) or "not moved"


@dataclass(frozen=True)
class Verified:
    """Verification of ``(Q, C)`` query/candidate pairs, best first per query.

    Attributes:
        neighbors: ``structure`` scores (the decision score) and the database rows, sorted best first.
        retrieval: the embedding correlation of each pair (NaN for a pixel-search candidate not in the
            embedding's list).
        pixel: Pearson correlation of the aligned images.
        alignments: the alignment found for each pair.
    """

    neighbors: Neighbors
    retrieval: npt.NDArray[np.float32]
    pixel: npt.NDArray[np.float32]
    alignments: list[list[Alignment]]

    @property
    def best(self) -> npt.NDArray[np.float32]:
        return self.neighbors.best


def _orientations(spatial_dims: int, config: VerifyConfig) -> list[tuple[int, float]]:
    """(axis, angle) pairs: 2D rotates in-plane (axis -1); 3D about each axis in turn (identity once)."""
    angles = config.angles(spatial_dims)
    if spatial_dims == 2:
        return [(-1, a) for a in angles]
    return [(-1, 0.0)] + [(axis, a) for axis in range(3) for a in angles if a]


def _rotation_matrix(spatial_dims: int, axis: int, degrees: float, scale: float = 1.0) -> torch.Tensor:
    """Homogeneous (d+1, d+1) rotation (and zoom by ``scale``) about the image centre (MONAI ``AffineTransform``,
    zero-centred, pull: an output voxel reads the input at the matrix times its position).

    The sign follows ``scipy.ndimage.rotate(image, degrees)`` in 2D, so an alignment reads as the move applied; a
    ``scale`` above 1 magnifies the image (reads it at positions divided by the scale).
    """
    import torch

    t = -math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    m = torch.eye(spatial_dims + 1, dtype=torch.float32)
    if not (spatial_dims == 3 and axis < 0):
        i, j = (0, 1) if spatial_dims == 2 else [a for a in range(3) if a != axis]
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    m[:spatial_dims, :spatial_dims] /= scale
    return m


def band_pass(images: torch.Tensor, fine_sigma: float, coarse_sigma: float) -> torch.Tensor:
    """Difference of Gaussians (``fine_sigma`` - ``coarse_sigma`` voxels) with edge-replicating borders:
    ``(B, 1, *S)`` -> same shape."""
    dims = images.ndim - 2

    def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
        import torch
        from monai.networks.layers import separable_filtering
        from monai.networks.layers.convutils import gaussian_1d

        if sigma <= 0:
            return x
        kernel = gaussian_1d(torch.tensor(sigma), truncated=3.0, normalize=True).to(x)
        return separable_filtering(x, [kernel] * dims, mode="replicate")

    return blur(images, fine_sigma) - blur(images, coarse_sigma)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of ``(B, V)`` tensors; 0 where either row is constant."""
    import torch

    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    denom = torch.sqrt((a * a).sum(dim=1) * (b * b).sum(dim=1))
    return torch.where(denom > 0, (a * b).sum(dim=1) / denom.clamp_min(1e-12), torch.zeros_like(denom))


class Verifier:
    """Aligns and scores pairs of same-sized images on one device (see the module docstring)."""

    def __init__(self, shape: tuple[int, ...], config: VerifyConfig | None = None, device: str = "cpu") -> None:
        import torch
        from monai.networks.layers import AffineTransform

        self.config = config or VerifyConfig()
        self.shape = tuple(int(s) for s in shape)
        self.dims = len(self.shape)
        if self.dims not in (2, 3):
            raise ValueError(f"verification needs 2D or 3D images, got shape {self.shape}")
        self.device = torch.device(device)
        # on a grid finer than the reference the fine cut-off stays at one voxel (finer detail now counts) while the
        # coarse one grows with the grid, so the head shape every scan shares is removed at the same physical scale
        scale = max(1.0, max(self.shape) / REFERENCE_SIDE[self.dims])
        self.coarse_sigma = self.config.coarse_sigma * scale
        # pairs per batch shrink with the grid, so a batch holds about as many voxels as at the reference size
        self.batch = max(
            1, int(self.config.batch_pairs * REFERENCE_SIDE[self.dims] ** self.dims / math.prod(self.shape))
        )
        self.orientations = _orientations(self.dims, self.config)
        self.scales = self.config.scales()
        matrices = torch.stack([_rotation_matrix(self.dims, axis, a) for axis, a in self.orientations])
        self._matrices = matrices.to(self.device)
        zoom = torch.ones(len(self.scales), self.dims + 1, dtype=torch.float32)
        zoom[:, : self.dims] = 1.0 / torch.tensor(self.scales, dtype=torch.float32)[:, None]
        self._zooms = torch.diag_embed(zoom).to(self.device)  # (Z, d+1, d+1): applied after the rotation
        self._warp = AffineTransform(
            spatial_size=self.shape, normalized=False, padding_mode="border", align_corners=True, zero_centered=True
        )
        self._grids = self._sampling_grids(self._matrices)  # (O, *S, d): one per orientation, reused for every pair
        self.margin = tuple(int(math.ceil(self.config.max_shift * s)) for s in self.shape)
        # allowed shifts: |shift| <= margin along each axis (cross-correlation peaks elsewhere are ignored)
        grids = torch.meshgrid(*[torch.fft.fftfreq(s, 1.0 / s) for s in self.shape], indexing="ij")
        allowed = torch.ones(self.shape, dtype=torch.bool)
        for g, m in zip(grids, self.margin, strict=True):
            allowed &= g.abs() <= m
        self._allowed = allowed.to(self.device)
        self._crop = tuple(slice(m, s - m) for m, s in zip(self.margin, self.shape, strict=True))

    def _sampling_grids(self, matrices: torch.Tensor) -> torch.Tensor:
        """The grids MONAI's ``AffineTransform`` would build for ``matrices`` (computed once, not per pair)."""
        import torch
        from monai.networks.utils import to_norm_affine

        theta = to_norm_affine(matrices, self.shape, self.shape, align_corners=True, zero_centered=True)
        reverse = torch.arange(self.dims - 1, -1, -1, device=theta.device)
        theta[:, : self.dims] = theta[:, reverse]
        theta[:, :, : self.dims] = theta[:, :, reverse]
        size = [len(matrices), 1, *self.shape]
        return torch.nn.functional.affine_grid(theta[:, : self.dims], size, align_corners=True)

    def _rotate(self, images: torch.Tensor, orientation: torch.Tensor) -> torch.Tensor:
        """Resample ``(B, 1, *S)`` images, each at its orientation index, with border padding."""
        return self._resample(images, self._grids[orientation])

    @staticmethod
    def _resample(images: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.nn.functional.grid_sample(
            images, grids, mode="bilinear", padding_mode="border", align_corners=True
        )

    def _best_shift(self, q_band: torch.Tensor, m_band: torch.Tensor, repeat: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each moved band-passed candidate's best allowed shift onto its query (FFT cross-correlation) and the
        structure score there: ``m_band`` holds ``repeat`` moved versions per query, query-major."""
        import torch

        dims = tuple(range(2, 2 + self.dims))
        q_spec = torch.fft.rfftn(q_band, dim=dims).repeat_interleave(repeat, dim=0)
        cross = q_spec * torch.conj(torch.fft.rfftn(m_band, dim=dims))
        surface = torch.fft.irfftn(cross, s=self.shape, dim=dims)[:, 0]  # circular cross-correlation
        surface = surface.masked_fill(~self._allowed, -math.inf)
        flat = surface.reshape(len(surface), -1).argmax(dim=1)
        shift = torch.stack(torch.unravel_index(flat, self.shape), dim=1)  # (P*R, d) in [0, s)
        sizes = torch.tensor(self.shape, device=shift.device)
        shift = torch.where(shift > sizes // 2, shift - sizes, shift)
        q_crop = self._crop_of(q_band).repeat_interleave(repeat, dim=0)
        return _pearson(q_crop, self._shifted_crop(m_band, shift)), shift

    def _align_scores(
        self, q_raw: torch.Tensor, q_band: torch.Tensor, d_raw: torch.Tensor, d_band: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Best orientation, zoom and shift of each candidate onto its query: scores (P,), pixel (P,), orientation
        (P,), zoom (P,: 0 for none, else 1 + index into ``scales``), shift (P, d).

        First every rotation at scale 1, then every zoom at the best rotation. The band-passed candidate is moved
        (a Gaussian band-pass commutes with rotation; with a zoom, nearly: the band shifts by the zoom's few per
        cent), so each image is filtered once per call; the query's spectrum is taken once per pair.
        """
        import torch

        p, o = len(q_raw), len(self.orientations)
        orientation = torch.arange(o, device=q_raw.device).repeat(p)  # (P*O,), orientation fastest
        m_band = self._rotate(d_band.repeat_interleave(o, dim=0), orientation)  # (P*O, 1, *S)
        structure, shifts = self._best_shift(q_band, m_band, o)
        structure = structure.reshape(p, o)
        score, best = structure.max(dim=1)
        shift = shifts[torch.arange(p, device=best.device) * o + best]
        zoom = torch.zeros(p, dtype=torch.long, device=best.device)
        matrices = self._matrices[best]  # (P, d+1, d+1): the final move of each pair
        if self.scales:
            z = len(self.scales)
            zoomed = (self._zooms[None] @ matrices[:, None]).reshape(p * z, self.dims + 1, self.dims + 1)
            grids = self._sampling_grids(zoomed)
            scored, zoom_shifts = self._best_shift(q_band, self._resample(d_band.repeat_interleave(z, dim=0), grids), z)
            scored = scored.reshape(p, z)
            zoom_score, zoom_best = scored.max(dim=1)
            better = zoom_score > score
            rows = torch.arange(p, device=best.device) * z + zoom_best
            score = torch.where(better, zoom_score, score)
            shift = torch.where(better[:, None], zoom_shifts[rows], shift)
            zoom = torch.where(better, zoom_best + 1, zoom)
            matrices = torch.where(better[:, None, None], zoomed[rows], matrices)
        moved = self._resample(d_raw, self._sampling_grids(matrices))
        pixel = _pearson(self._crop_of(q_raw), self._shifted_crop(moved, shift))
        return score, pixel, best, zoom, shift

    def _band(self, images: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Band-pass every image once, in batches on the device."""
        import torch

        out = np.empty_like(images)
        step = self.batch
        for start in range(0, len(images), step):
            batch = torch.from_numpy(images[start : start + step]).to(self.device)
            out[start : start + step] = band_pass(batch, self.config.fine_sigma, self.coarse_sigma).cpu().numpy()
        return out

    def _crop_of(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, 0][(slice(None), *self._crop)].flatten(1)

    def _shifted_crop(self, images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """The central crop of each image rolled by its shift (``torch.roll`` per row, vectorised): ``(B, V)``."""
        import torch

        index: list[torch.Tensor] = []
        for axis, (size, m) in enumerate(zip(self.shape, self.margin, strict=True)):
            k = torch.arange(m, size - m, device=images.device)
            rolled = (k[None, :] - shift[:, axis : axis + 1]) % size  # (B, n_axis)
            view = [len(images)] + [1] * self.dims
            view[1 + axis] = len(k)
            index.append(rolled.reshape(view))
        batch = torch.arange(len(images), device=images.device).reshape([-1] + [1] * self.dims)
        return images[:, 0][tuple([batch, *index])].flatten(1)

    def score(
        self, queries: npt.ArrayLike, database: npt.ArrayLike, candidates: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], list[list[Alignment]]]:
        """Align ``database[candidates[q, c]]`` onto ``queries[q]``: structure and pixel ``(Q, C)``, alignments."""
        import torch

        q_images = np.asarray(queries, dtype=np.float32)
        d_images = np.asarray(database, dtype=np.float32)
        cand = np.asarray(candidates, dtype=np.int64)
        if q_images.shape[2:] != self.shape or d_images.shape[2:] != self.shape:
            raise ValueError(f"images must be (N, 1, *{self.shape}); got {q_images.shape} and {d_images.shape}")
        n_q, n_c = cand.shape
        pairs_q = np.repeat(np.arange(n_q), n_c)
        pairs_d = cand.ravel()
        structure = np.empty(n_q * n_c, np.float32)
        pixel = np.empty(n_q * n_c, np.float32)
        orient = np.empty(n_q * n_c, np.int64)
        zooms = np.empty(n_q * n_c, np.int64)
        shifts = np.empty((n_q * n_c, self.dims), np.int64)
        # only the database rows some query retrieved are read and band-passed: a large (memory-mapped)
        # training set costs its candidates, not its size
        used, d_local = np.unique(pairs_d, return_inverse=True)
        d_used = np.array(d_images[used])
        q_band, d_band = self._band(q_images), self._band(d_used)
        step = self.batch

        def batch(array: npt.NDArray[np.float32], rows: npt.NDArray[np.int64]) -> torch.Tensor:
            return torch.from_numpy(np.array(array[rows])).to(self.device)

        for start in range(0, len(pairs_q), step):
            sl = slice(start, start + step)
            q, d = pairs_q[sl], d_local[sl]
            with torch.no_grad():
                s, px, o, z, sh = self._align_scores(
                    batch(q_images, q), batch(q_band, q), batch(d_used, d), batch(d_band, d)
                )
            structure[sl], pixel[sl] = s.cpu().numpy(), px.cpu().numpy()
            orient[sl], zooms[sl], shifts[sl] = o.cpu().numpy(), z.cpu().numpy(), sh.cpu().numpy()
        scale_of = [1.0, *self.scales]
        alignments = [
            [
                Alignment(
                    *self.orientations[int(orient[i * n_c + c])],
                    tuple(int(v) for v in shifts[i * n_c + c]),
                    scale_of[int(zooms[i * n_c + c])],
                )
                for c in range(n_c)
            ]
            for i in range(n_q)
        ]
        return structure.reshape(n_q, n_c), pixel.reshape(n_q, n_c), alignments

    def apply(self, image: npt.ArrayLike, alignment: Alignment) -> npt.NDArray[np.float32]:
        """Move one ``(*S)`` image by ``alignment`` (for showing the aligned overlay)."""
        import torch

        x = torch.from_numpy(np.asarray(image, dtype=np.float32))[None, None].to(self.device)
        theta = _rotation_matrix(self.dims, alignment.axis, alignment.angle, alignment.scale)[None].to(self.device)
        moved = self._warp(x, theta)[0, 0]
        return torch.roll(moved, alignment.shift, tuple(range(self.dims))).cpu().numpy()


def _centred(x: torch.Tensor) -> torch.Tensor:
    """``(B, 1, *S)`` images moved so that each one's intensity centre of mass (above its own minimum) sits at the
    grid's centre, with the minimum as background: a shifted copy then gives the same picture."""
    import torch

    dims = x.ndim - 2
    weight = x - x.flatten(2).amin(-1).view(-1, 1, *([1] * dims))
    mass = weight.flatten(1).sum(1).clamp_min(1e-12)
    theta = torch.zeros(len(x), dims, dims + 1, dtype=x.dtype)
    theta[:, :, :dims] = torch.eye(dims, dtype=x.dtype)
    for axis in range(dims):  # affine_grid's coordinates run from the last axis to the first, in [-1, 1]
        side = x.shape[2 + axis]
        where = (torch.arange(side, dtype=x.dtype) + 0.5) / side * 2.0 - 1.0
        profile = weight.sum(dim=[2 + a for a in range(dims) if a != axis]).flatten(1)
        theta[:, dims - 1 - axis, dims] = (profile * where).sum(1) / mass
    grid = torch.nn.functional.affine_grid(theta, list(weight.shape), align_corners=False)
    return torch.nn.functional.grid_sample(weight, grid, padding_mode="zeros", align_corners=False)


def pixel_descriptors(images: npt.ArrayLike, size: int = 16, chunk: int = 1024) -> npt.NDArray[np.float32]:
    """Blurred, downsampled pixels as vectors (the pixel retrieval's embedding): ``(N, size**d)``, computed
    ``chunk`` images at a time (a memory-mapped set is read, never held whole).

    Each descriptor is centred on its intensity centre of mass, so a copy moved by a few voxels keeps it: on the
    16k-image scale benchmark (``benchmarks/scale_scan.py``), uncentred descriptors kept the source of 5 of 45
    shifted copies in their top 5, centred ones 44 of 45. The verifier searches shifts, but it cannot verify a
    source that retrieval never proposes.
    """
    import torch

    x = np.asarray(images, dtype=np.float32)
    pooled = torch.nn.functional.adaptive_avg_pool2d if x.ndim == 4 else torch.nn.functional.adaptive_avg_pool3d
    parts = [
        _centred(pooled(torch.from_numpy(np.array(x[start : start + chunk])), size)).flatten(1).numpy()
        for start in range(0, len(x), chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, size ** (x.ndim - 2)), np.float32)


def candidate_lists(
    query_vectors: npt.ArrayLike,
    database_vectors: npt.ArrayLike,
    query_images: npt.ArrayLike,
    database_images: npt.ArrayLike,
    config: VerifyConfig,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The rows to verify per query (embedding top ``candidates`` merged with pixel top ``pixel_candidates``,
    filled from further embedding neighbours so every row has the same number of distinct rows), and the
    embedding correlation of each."""
    n_db = len(np.asarray(database_vectors))
    width = min(config.candidates + config.pixel_candidates, n_db)
    emb = make_index(database_vectors, SearchConfig(k=width)).search(query_vectors)
    extra = (
        make_index(pixel_descriptors(database_images), SearchConfig(k=config.pixel_candidates))
        .search(pixel_descriptors(query_images))
        .index
        if config.pixel_candidates
        else np.zeros((len(emb.index), 0), np.int64)
    )
    out = np.empty((len(emb.index), width), np.int64)
    retrieval = np.full((len(emb.index), width), np.nan, np.float32)
    for q in range(len(out)):
        first = emb.index[q, : config.candidates].tolist()
        merged = list(dict.fromkeys(itertools.chain(first, extra[q].tolist(), emb.index[q].tolist())))[:width]
        out[q] = merged
        known = dict(zip(emb.index[q].tolist(), emb.similarity[q].tolist(), strict=True))
        retrieval[q] = [known.get(r, np.nan) for r in merged]
    return out, retrieval


QUERY_CHUNK = 4096  # queries verified together (their images and band-passed copies are in memory at once)


class _VerifyStage:
    """Verification as a Ray stage (see :mod:`core.common.cluster`): the database images arrive once per worker
    (through Ray's object store); ``run`` verifies one chunk of queries against their candidate rows."""

    def __init__(
        self, shape: tuple[int, ...], config: VerifyConfig, device: str, database: npt.NDArray[np.float32]
    ) -> None:
        from core.common.devices import resolve_device

        self.verifier = Verifier(shape, config, str(resolve_device(device)))
        self.database = database

    def run(
        self, batch: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], list[list[Alignment]]]:
        queries, rows = batch
        return self.verifier.score(queries, self.database, rows)


def verify(
    query_vectors: npt.ArrayLike,
    database_vectors: npt.ArrayLike,
    query_images: npt.ArrayLike,
    database_images: npt.ArrayLike,
    k: int,
    config: VerifyConfig | None = None,
    device: str = "cpu",
    ray: str = "",
    workers: int = 0,
    chunk: int = QUERY_CHUNK,
) -> Verified:
    """Retrieve candidates, verify each, and keep the ``k`` best verified per query (best first).

    Queries are verified ``chunk`` at a time (memory follows the chunk, not the synthetic set); with ``ray``
    (``local`` or a cluster address) the chunks go to Ray workers, each holding the database images once.
    """
    config = config or VerifyConfig()
    q_images = np.asarray(query_images, dtype=np.float32)
    rows, retrieval = candidate_lists(query_vectors, database_vectors, q_images, database_images, config)
    # a chunk holds its queries and their candidates, twice (raw and band-passed): fewer on a finer grid
    grid = math.prod(q_images.shape[2:]) / REFERENCE_SIDE[q_images.ndim - 2] ** (q_images.ndim - 2)
    chunk = max(1, int(chunk / max(1.0, grid)))
    chunks = [slice(start, start + chunk) for start in range(0, len(q_images), chunk)]
    if ray:
        from core.common.cluster import map_batches

        init = (q_images.shape[2:], config, "auto", np.asarray(database_images, dtype=np.float32))
        batches = ((np.array(q_images[c]), rows[c]) for c in chunks)
        parts = list(map_batches(_VerifyStage, init, batches, ray, workers))
    else:
        verifier = Verifier(q_images.shape[2:], config, device)
        parts = [verifier.score(np.array(q_images[c]), database_images, rows[c]) for c in chunks]
    structure = np.concatenate([p[0] for p in parts])
    pixel = np.concatenate([p[1] for p in parts])
    alignments = [a for p in parts for a in p[2]]
    order = np.argsort(-structure, axis=1, kind="stable")[:, : min(k, rows.shape[1])]
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    return Verified(
        Neighbors(np.clip(take(structure), -1.0, 1.0).astype(np.float32), take(rows)),
        take(retrieval),
        take(pixel),
        [[alignments[q][int(c)] for c in order[q]] for q in range(len(order))],
    )


def best_match(
    method: MatchMethod,
    query_vectors: npt.ArrayLike,
    database_vectors: npt.ArrayLike,
    query_images: npt.ArrayLike,
    database_images: npt.ArrayLike,
    config: VerifyConfig | None = None,
    device: str = "cpu",
) -> Neighbors:
    """Each query's best database match under the copy call ``method`` (k = 1): the one place a caller picks
    between the paper's embedding search and retrieval + verification."""
    if method == MatchMethod.PAPER:
        return make_index(database_vectors, SearchConfig(k=1)).search(query_vectors)
    return verify(query_vectors, database_vectors, query_images, database_images, 1, config, device).neighbors


def background_scores(
    query_vectors: npt.ArrayLike,
    query_images: npt.ArrayLike,
    background_vectors: npt.ArrayLike,
    background_images: npt.ArrayLike,
    background_patients: list[str],
    k: int = 5,
    config: VerifyConfig | None = None,
    device: str = "cpu",
    query_patients: list[str] | None = None,
) -> npt.NDArray[np.float32]:
    """Each query's mean verified score to its ``k`` best background scans (SSCD's background normalisation,
    ``score - background``), built the same way for the null and for the test.

    A validation query (``query_patients`` given; they must be background patients) is scored against the other
    background patients only, so it sees ``P - 1`` of them; any other query is scored against each leave-one-
    patient-out background in turn (also ``P - 1`` patients) and the results averaged. Without that symmetry a
    synthetic sample would meet a richer background than the null did and the normalisation would only shift the
    threshold. Measured on the planted-copy benchmark (``--background``), the normalisation does not make the
    threshold transfer to unseen patients, so the scan does not use it.
    """
    config = config or VerifyConfig()
    qv, qx = np.asarray(query_vectors, np.float32), np.asarray(query_images, np.float32)
    bv, bx = np.asarray(background_vectors, np.float32), np.asarray(background_images, np.float32)
    labels = np.asarray(background_patients)
    names = sorted(set(labels.tolist()))
    if len(names) < 2:
        raise ValueError("background normalisation needs background scans of at least 2 patients")

    def top_mean(rows: npt.NDArray[np.int64], drop: str) -> npt.NDArray[np.float32]:
        keep = labels != drop
        found = verify(qv[rows], bv[keep], qx[rows], bx[keep], k, config, device).neighbors.similarity
        return found.mean(axis=1).astype(np.float32)

    out = np.zeros(len(qv), np.float32)
    if query_patients is not None:
        own = np.asarray(query_patients)
        for name in sorted(set(own.tolist())):
            rows = np.flatnonzero(own == name)
            out[rows] = top_mean(rows, name)
        return out
    every = np.arange(len(qv))
    for name in names:
        out += top_mean(every, name) / len(names)
    return out


@dataclass(frozen=True)
class VerifiedTables:
    """The four directions of :class:`~core.detect.search.NeighborTables`, each verified.

    ``tables`` holds the verified (structure) scores, so every rule and metric that reads a
    ``NeighborTables`` works on them unchanged; ``synthetic_to_train`` keeps the retrieval score, the
    aligned pixel correlation and the alignment of each pair for the study's pairs and the Review page.
    """

    tables: NeighborTables
    synthetic_to_train: Verified


def verify_tables(
    vectors: dict[str, npt.NDArray[np.float32]],
    images: dict[str, npt.NDArray[np.float32]],
    k: int,
    config: VerifyConfig | None = None,
    device: str = "cpu",
    ray: str = "",
    workers: int = 0,
    on_step: Callable[[int, int, str], None] | None = None,
) -> VerifiedTables:
    """Verify all four directions (``vectors`` and ``images`` keyed ``train``, ``val``, ``synthetic``).

    The null (validation -> training, and training -> validation for the paper's rule) goes through the
    same retrieval and verification as the synthetic samples: the threshold is calibrated on the
    statistic it is applied to. ``on_step(done, 4, what)`` is told as each direction starts and when all are done
    (a progress bar that moves, not one that sits at 0 of 1 while the ETA climbs).
    """
    directions = (("synthetic", "train"), ("train", "synthetic"), ("train", "val"), ("val", "train"))
    found: dict[tuple[str, str], Verified] = {}
    for i, (query, database) in enumerate(directions):
        if on_step is not None:
            on_step(i, len(directions), f"aligning {query} scans to their {database} candidates")
        found[(query, database)] = verify(
            vectors[query], vectors[database], images[query], images[database], k, config, device, ray, workers
        )
    if on_step is not None:
        on_step(len(directions), len(directions), "verified every direction")
    s2t = found[("synthetic", "train")]
    return VerifiedTables(
        NeighborTables(
            synthetic_to_train=s2t.neighbors,
            train_to_synthetic=found[("train", "synthetic")].neighbors,
            train_to_val=found[("train", "val")].neighbors,
            val_to_train=found[("val", "train")].neighbors,
        ),
        s2t,
    )
