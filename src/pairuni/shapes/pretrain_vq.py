"""Train the VQ image tokenizer of the ShapesWorld base model (`JanusVQVAE`) on rendered scenes.

transformers' `JanusVQVAE.decode(codes)` looks the codes up in an **L2-normalised** codebook
(`get_codebook_entry`), while its `quantize.forward` compares un-normalised vectors and is never
used at generation time. So the training step here quantises the way decoding reads the codebook
(LlamaGen's `codebook_l2_norm`): latents and codebook rows are L2-normalised, each latent takes
the row of highest cosine similarity, and the decoder always sees unit-length code vectors.
`encode_codes` is the matching tokenizer; `vq.decode(encode_codes(vq, x))` is the reconstruction.

Loss per step (images x in [-1, 1], (B, 3, H, W)):

    recon = mean_pixels((1 + w_fg * fg) * (x_hat - x)^2)     fg: 1 on shape pixels (chroma)
    codebook = mean((sg[z] - e)^2) + beta * mean((z - sg[e])^2)
    loss = recon + codebook          (straight-through gradient from x_hat to z)

Shapes cover about a tenth of a ShapesWorld image; weighting their pixels up keeps the
reconstruction from settling on "grey background with coloured smudges". Codebook rows unused
for `restart_every` steps are re-seeded from latents of the current batch (dead-code restart).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pairuni.shapes.detect import detect_objects
from pairuni.shapes.scene import Scene


@dataclass(frozen=True)
class VQTrainSettings:
    """What `train_vq` needs (filled from `PretrainConfig`)."""

    steps: int
    batch_size: int
    learning_rate: float
    commitment: float = 0.25
    foreground_weight: float = 4.0
    restart_every: int = 50


def to_model_pixels(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1] (what the Janus processor feeds)."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"expected (B, H, W, 3) uint8 images, got {images.dtype} {tuple(images.shape)}"
        )
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, rounding as `policy.images.to_pil` does."""
    scaled = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    return scaled.byte().permute(0, 2, 3, 1).contiguous().numpy()


def quantize(
    vq: torch.nn.Module, latents: torch.Tensor, commitment: float = 0.25
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cosine nearest-code quantisation, consistent with `JanusVQVAE.decode`.

    latents: (B, D, h, w) output of `quant_conv`. Returns the straight-through quantised latents
    (B, D, h, w) (unit vectors), the codebook + commitment loss (scalar) and the codes (B, h*w)
    in raster order.
    """
    batch, dim, height, width = latents.shape
    unit = F.normalize(latents, dim=1)
    flat = unit.permute(0, 2, 3, 1).reshape(-1, dim)
    codebook = F.normalize(vq.quantize.embedding.weight, dim=1)
    codes = (flat @ codebook.T).argmax(dim=1)
    chosen = codebook[codes]
    loss = F.mse_loss(chosen, flat.detach()) + commitment * F.mse_loss(flat, chosen.detach())
    straight = flat + (chosen - flat).detach()
    quantized = straight.view(batch, height, width, dim).permute(0, 3, 1, 2)
    return quantized, loss, codes.view(batch, height * width)


@torch.no_grad()
def encode_codes(vq: torch.nn.Module, pixels: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(B, 3, H, W) pixels in [-1, 1] -> (B, N) int64 VQ codes, raster order."""
    out = []
    for start in range(0, pixels.shape[0], batch_size):
        latents = vq.quant_conv(vq.encoder(pixels[start : start + batch_size]))
        out.append(quantize(vq, latents)[2])
    return torch.cat(out)


@torch.no_grad()
def reconstruct(vq: torch.nn.Module, pixels: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8 decoded from the image's own codes."""
    out = []
    for start in range(0, pixels.shape[0], batch_size):
        codes = encode_codes(vq, pixels[start : start + batch_size])
        out.append(to_uint8(vq.decode(codes)))
    return np.concatenate(out)


def scene_recovered(image: np.ndarray, scene: Scene) -> bool:
    """The detector reads the scene back exactly: same count, same (colour, shape) multiset."""
    found = Counter((obj.color, obj.shape) for obj in detect_objects(image))
    return found == Counter((obj.color, obj.shape) for obj in scene.objects)


def recovery_rate(images: np.ndarray, scenes: Sequence[Scene]) -> float:
    """Share of (H, W, 3) uint8 images whose scene the detector recovers exactly."""
    if len(images) != len(scenes) or not scenes:
        raise ValueError(f"got {len(images)} images for {len(scenes)} scenes (need >= 1 of each)")
    return float(np.mean([scene_recovered(im, sc) for im, sc in zip(images, scenes, strict=True)]))


def foreground(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 1, H, W) 1.0 where the pixel is coloured (a shape)."""
    chroma = pixels.max(dim=1, keepdim=True).values - pixels.min(dim=1, keepdim=True).values
    return (chroma > 0.3).float()  # palette chroma is ~1.5 in these units, grey is 0


def vq_loss(
    vq: torch.nn.Module, batch: torch.Tensor, settings: VQTrainSettings
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass: (total loss, reconstruction loss, codes (B, N))."""
    latents = vq.quant_conv(vq.encoder(batch))
    quantized, codebook_loss, codes = quantize(vq, latents, settings.commitment)
    decoded = vq.decoder(vq.post_quant_conv(quantized))
    weight = 1.0 + settings.foreground_weight * foreground(batch)
    recon = (weight * (decoded - batch) ** 2).mean()
    return recon + codebook_loss, recon, codes


def train_vq(
    vq: torch.nn.Module,
    pixels: torch.Tensor,
    settings: VQTrainSettings,
    generator: torch.Generator,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train `vq` (a `JanusVQVAE`) in place on pixels (M, 3, H, W) in [-1, 1].

    Batches are drawn with replacement from `generator`; returns the reconstruction loss of
    every step. `on_step(step, recon_loss)` is called after each step (progress bars).
    """
    vq.train()
    optimizer = torch.optim.Adam(vq.parameters(), lr=settings.learning_rate)
    num_codes = vq.quantize.embedding.weight.shape[0]
    usage = torch.zeros(num_codes)
    losses = []
    for step in range(1, settings.steps + 1):
        picks = torch.randint(0, pixels.shape[0], (settings.batch_size,), generator=generator)
        loss, recon, codes = vq_loss(vq, pixels[picks], settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        usage += torch.bincount(codes.flatten(), minlength=num_codes)
        if step % settings.restart_every == 0:
            _restart_dead_codes(vq, pixels[picks], usage, generator)
            usage.zero_()
        losses.append(recon.item())
        if on_step is not None:
            on_step(step, losses[-1])
    vq.eval()
    return losses


@torch.no_grad()
def _restart_dead_codes(
    vq: torch.nn.Module, batch: torch.Tensor, usage: torch.Tensor, generator: torch.Generator
) -> None:
    """Re-seed codebook rows that no latent chose since the last restart with random latents."""
    dead = (usage == 0).nonzero().flatten()
    if len(dead) == 0:
        return
    latents = F.normalize(vq.quant_conv(vq.encoder(batch)), dim=1)
    flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    picks = torch.randint(0, flat.shape[0], (len(dead),), generator=generator)
    vq.quantize.embedding.weight[dead] = flat[picks]
