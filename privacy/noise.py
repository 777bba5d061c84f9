"""Where the randomness a DP guarantee rests on comes from: a seeded generator, or the OS's CSPRNG.

Two draws carry the guarantee of DP-SGD and DP-FedAvg: *who is sampled* at a step (the Poisson
batch, the round's clients) and *the Gaussian noise*. The accountant assumes both are secret and
independent of each other. A reproducible run (the default) draws them from two generators of their
own, seeded from the run seed (:mod:`utils.seeding`); anyone holding the seed, which config.yaml
records, can replay them, so such a run's model must not be released as private.
``privacy.secure_rng: true`` draws both from :class:`SecureRandom` instead.

Opacus' own ``secure_mode`` would do this through ``torchcsprng``, which has no build for current
torch releases; so the project reads the operating system's cryptographic generator
(``os.urandom``, i.e. getrandom(2) on Linux) and shapes the bytes itself:

- uniforms: 53 random bits per float64, ``(word >> 11) · 2⁻⁵³``, exactly uniform on the 2⁵³-point
  grid of [0, 1);
- Gaussians: Box-Muller on those uniforms in float64, and each noise value the normalized sum of
  four such draws, (z₁ + z₂ + z₃ + z₄) / 2 ~ N(0, 1). The sum defeats the floating-point attacks on
  a single Box-Muller or polar draw (Holohan and Braghin, "Secure Random Sampling in Differential
  Privacy", ESORICS 2021, arXiv 2107.10138, section 5.1, with n = 2; the same choice as Opacus'
  secure mode).

Draws are made on the CPU and copied to the parameters' device: a secure run costs 32 bytes of
system randomness per parameter and step, far slower than a seeded GPU generator on large models;
that is the price of a releasable model.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch


class SecureRandom:
    """Uniform and Gaussian draws from the operating system's cryptographic generator."""

    def uniform(self, n: int) -> np.ndarray:
        """``n`` float64 uniforms on [0, 1), 53 random bits each."""
        words = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
        return (words >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def standard_normal(self, n: int) -> np.ndarray:
        """``n`` float64 N(0, 1) draws, each the normalized sum of four Box-Muller draws."""
        total = np.zeros(n)
        for _ in range(4):
            total += self._box_muller(n)
        return total / 2.0

    def _box_muller(self, n: int) -> np.ndarray:
        pairs = (n + 1) // 2
        radius = np.sqrt(-2.0 * np.log1p(-self.uniform(pairs)))  # 1 − u ∈ (0, 1]: log is finite
        angle = 2.0 * math.pi * self.uniform(pairs)
        return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n]

    def gaussian(self, shape: torch.Size | tuple[int, ...], std: float, *, device: torch.device,
                 dtype: torch.dtype) -> torch.Tensor:
        """N(0, std²) noise of ``shape``, as a tensor on ``device``."""
        n = math.prod(shape)
        values = torch.from_numpy(self.standard_normal(n) * std)
        return values.to(device=device, dtype=dtype).reshape(shape)


# A noise source: a seeded torch generator (reproducible, on the tensor's device) or the CSPRNG.
NoiseSource = torch.Generator | SecureRandom | None


def gaussian_noise(like: torch.Tensor, std: float, source: NoiseSource) -> torch.Tensor:
    """N(0, std²) noise shaped like ``like``, on its device and in its dtype, drawn from ``source``
    (None is torch's global generator: tests only; a run always passes its own stream)."""
    if isinstance(source, SecureRandom):
        return source.gaussian(like.shape, std, device=like.device, dtype=like.dtype)
    return torch.normal(0.0, std, size=like.shape, generator=source, device=like.device,
                        dtype=like.dtype)
