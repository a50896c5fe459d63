#!/usr/bin/env python
"""HRInversion (seed 004): offline, optimisation-based refinement of W+ codes (PyTorch).

Start from a bundle's encoder result (``--bundle``: ``Translator.infer`` on the image) or from
``latent_avg``, then optimise the codes (and, with ``--optimize-noise``, the generator's noise
maps) to reconstruct the image under HRInversion's loss: the **full-resolution VGG16
conv-feature perceptual loss** (conv1_2, conv2_2, conv3_3, conv4_3, conv5_3 *before* ReLU,
weights 0.0002, 0.0001, 0.0001, 0.0002, 0.0005; the image is never downsampled; [-1, 1] →
[0, 1] → ImageNet mean/std), ``d = sum_l ||lambda_l (phi_l(G(w)) - phi_l(x))||^2``, plus an
optional MSE term. Adam with the StyleGAN2-ADA projector schedule: lr 0.1 with a cosine
ramp-down over the last 25 % and a linear ramp-up over the first 5 %, Gaussian noise on w of
scale ``sigma_w * 0.05 * max(0, 1 - t / 0.75)^2``, noise regularisation 1e5.

    python export/tools/hrinversion.py --checkpoint ckpt.pt --vgg16 vgg16.pth --image face.png \\
        --bundle engines/restyle --steps 1000 --out face_w.npy
    python -c "import numpy as np; from sdk import Translator; \\
        img = Translator('engines/restyle').synthesise(np.load('face_w.npy'))"

VGG16 weights are not downloaded: pass a torchvision-style state dict (``features.N.weight`` /
``.bias``, e.g. torchvision's ``vgg16-397923af.pth``; other keys are ignored). Not real time:
minutes per image on a GPU (the paper: 2 min 18 s for 1000 steps at 1024 px).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root replaces this folder on the path
    sys.path[0] = str(Path(__file__).resolve().parents[2])

import numpy as np

from sdk.extras import exit_for_missing_extra

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
    from tqdm import tqdm
except ModuleNotFoundError as e:
    exit_for_missing_extra(e, "export", __name__)

log = logging.getLogger("hrinversion")

# torchvision's vgg16().features: conv indices, "M" = max pool (indices 4, 9, 16, 23, 30)
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
FEATURE_LAYERS = (2, 7, 14, 21, 28)  # conv1_2, conv2_2, conv3_3, conv4_3, conv5_3 (pre-ReLU)
LAYER_WEIGHTS = (0.0002, 0.0001, 0.0001, 0.0002, 0.0005)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class HRInversionError(ValueError):
    """Bad input to the inversion tool: weights, image, latents or options."""


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features`` (indices 0..29; ``features.N`` keys), returning the
    pre-ReLU outputs of :data:`FEATURE_LAYERS`. ReLUs are not in place, so the taps keep the
    conv outputs. Input ``[B, 3, H, W]`` ImageNet-normalised, any H, W ≥ 16. ``width_divisor``
    divides every width (smoke tests with random weights only; real weights are full width)."""

    def __init__(self, width_divisor: int = 1):
        super().__init__()
        layers, c_in = [], 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, v // width_divisor, 3, padding=1), nn.ReLU()]
                c_in = v // width_divisor
        self.features = nn.Sequential(*layers[: FEATURE_LAYERS[-1] + 1])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in FEATURE_LAYERS:
                taps.append(x)
        return taps


def load_vgg16(path: str | Path) -> VGG16Features:
    """VGG16 features from a torchvision-style state dict file (``features.N.*``; others ignored)."""
    path = Path(path)
    if not path.is_file():
        raise HRInversionError(
            f"VGG16 weights {path} do not exist (they are not downloaded: pass "
            f"torchvision's vgg16-397923af.pth or any state dict with features.N.weight keys)"
        )
    sd = torch.load(path, map_location="cpu", weights_only=True)
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    vgg = VGG16Features()
    own = vgg.state_dict()
    missing = [k for k in own if k not in sd]
    if missing:
        raise HRInversionError(
            f"{path} is not a VGG16 state dict: missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"
        )
    wrong = [k for k in own if tuple(sd[k].shape) != tuple(own[k].shape)]
    if wrong:
        raise HRInversionError(
            f"{path}: {wrong[0]} has shape {tuple(sd[wrong[0]].shape)}, VGG16 needs {tuple(own[wrong[0]].shape)}"
        )
    vgg.load_state_dict({k: sd[k].float() for k in own})
    return vgg.eval().requires_grad_(False)


class VGGConvLoss(nn.Module):
    """HRInversion's perceptual distance between images in [-1, 1] at full resolution:
    ``sum_l ||lambda_l (phi_l(a) - phi_l(b))||^2`` per image, averaged over the batch."""

    def __init__(self, vgg: VGG16Features, weights=LAYER_WEIGHTS):
        super().__init__()
        self.vgg, self.weights = vgg, tuple(weights)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def features(self, img: torch.Tensor) -> list[torch.Tensor]:
        return self.vgg(((img + 1) / 2 - self.mean) / self.std)

    def forward(self, img: torch.Tensor, target_features: list[torch.Tensor]) -> torch.Tensor:
        loss = img.new_zeros(())
        for lam, a, b in zip(self.weights, self.features(img), target_features):
            loss = loss + (lam * (a - b)).square().sum() / img.shape[0]
        return loss


@dataclass
class InversionResult:
    latents: np.ndarray  # [B, M, D] float32, the refined codes
    noises: dict = field(default_factory=dict)  # name -> [1, 1, H, W] (when noise was optimised)
    history: list = field(default_factory=list)  # per step: {"step", "loss", "perceptual", "mse", "psnr"}


def psnr(image: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak = 1 after mapping to [0, 1], clipped)."""
    mse = F.mse_loss(((image.clamp(-1, 1) + 1) / 2), (target + 1) / 2).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def latent_std(generator: nn.Module, n: int = 10000, seed: int = 0) -> float:
    """sigma_w as the ADA projector computes it: ``sqrt(sum ||w - mean(w)||^2 / n)`` over mapped
    samples (ProGAN: the z codes themselves)."""
    with torch.no_grad():
        z = torch.randn(n, generator.style_dim, generator=torch.Generator().manual_seed(seed))
        w = generator.mapping(z) if hasattr(generator, "mapping") else z
        return float(((w - w.mean(0)) ** 2).sum() / n) ** 0.5


def _noise_buffers(generator: nn.Module) -> dict:
    noises = getattr(generator, "noises", None)
    return {} if noises is None else dict(noises.named_buffers())


def _noise_regularisation(bufs) -> torch.Tensor:
    """The ADA projector's multi-scale autocorrelation penalty on the noise maps."""
    reg = 0.0
    for v in bufs:
        while True:
            reg = reg + (v * torch.roll(v, 1, dims=3)).mean() ** 2 + (v * torch.roll(v, 1, dims=2)).mean() ** 2
            if v.shape[2] <= 8:
                break
            v = F.avg_pool2d(v, 2)
    return reg


def invert(
    generator: nn.Module,
    target: torch.Tensor,
    loss_fn: VGGConvLoss,
    start: torch.Tensor,
    steps: int = 1000,
    mse_weight: float = 0.0,
    optimize_noise: bool = False,
    initial_lr: float = 0.1,
    noise_factor: float = 0.05,
    noise_ramp: float = 0.75,
    rampdown: float = 0.25,
    rampup: float = 0.05,
    noise_reg: float = 1e5,
    seed: int = 0,
    progress: bool = True,
) -> InversionResult:
    """Optimise W+ ``start`` [B, M, D] so ``generator(w)`` [B, 3, R, R] reconstructs ``target``
    [B, 3, R, R] in [-1, 1] (same resolution: HRInversion never downsamples)."""
    if steps < 1:
        raise HRInversionError(f"steps must be >= 1; got {steps}")
    if start.ndim != 3 or start.shape[1:] != (generator.n_latent, generator.style_dim):
        raise HRInversionError(
            f"start latents must be [B, {generator.n_latent}, {generator.style_dim}]; got {list(start.shape)}"
        )
    generator.eval().requires_grad_(False)
    with torch.no_grad():
        probe = generator(start[:1])
    if target.shape[1:] != probe.shape[1:] or target.shape[0] != start.shape[0]:
        raise HRInversionError(
            f"target must be [{start.shape[0]}, {', '.join(map(str, probe.shape[1:]))}] "
            f"(the generator's resolution); got {list(target.shape)}"
        )
    rng = torch.Generator().manual_seed(seed)
    w_std = latent_std(generator)
    w = start.detach().clone().float().requires_grad_(True)
    noise_bufs = _noise_buffers(generator) if optimize_noise else {}
    originals = {k: v.detach().clone() for k, v in noise_bufs.items()}
    for buf in noise_bufs.values():
        buf.requires_grad_(True)
    opt = torch.optim.Adam([w, *noise_bufs.values()], betas=(0.9, 0.999), lr=initial_lr)
    with torch.no_grad():
        target_features = [f.detach() for f in loss_fn.features(target)]
    history = []
    try:
        for step in tqdm(range(steps), desc="hrinversion", unit="step", disable=not progress):
            t = step / steps
            w_noise = w_std * noise_factor * max(0.0, 1.0 - t / noise_ramp) ** 2
            lr_ramp = min(1.0, (1.0 - t) / rampdown)
            lr_ramp = (0.5 - 0.5 * math.cos(lr_ramp * math.pi)) * min(1.0, t / rampup)
            for group in opt.param_groups:
                group["lr"] = initial_lr * lr_ramp
            image = generator(w + torch.randn(w.shape, generator=rng) * w_noise)
            perceptual = loss_fn(image, target_features)
            mse = F.mse_loss(image, target)
            loss = perceptual + mse_weight * mse
            if noise_bufs:
                loss = loss + noise_reg * _noise_regularisation(list(noise_bufs.values()))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for buf in noise_bufs.values():  # the ADA projector's noise normalisation
                    buf -= buf.mean()
                    buf *= buf.square().mean().rsqrt()
            history.append(
                {
                    "step": step,
                    "loss": loss.item(),
                    "perceptual": perceptual.item(),
                    "mse": mse.item(),
                    "psnr": psnr(image.detach(), target),
                }
            )
        with torch.no_grad():
            final = generator(w)
            final_perceptual = loss_fn(final, target_features).item()
        history.append(
            {
                "step": steps,
                "loss": float("nan"),
                "perceptual": final_perceptual,
                "mse": F.mse_loss(final, target).item(),
                "psnr": psnr(final, target),
            }
        )
        noises = {k: v.detach().numpy().copy() for k, v in noise_bufs.items()}
    finally:
        for k, buf in noise_bufs.items():  # leave the generator as it was
            buf.requires_grad_(False)
            buf.data.copy_(originals[k])
    return InversionResult(latents=w.detach().numpy().astype(np.float32), noises=noises, history=history)


# --------------------------------------------------------------------------- command line


def read_image(path: Path, size: int) -> torch.Tensor:
    """An RGB image file (or a [3, H, W] / [H, W, 3] .npy in [-1, 1]) → [1, 3, size, size] in [-1, 1]."""
    if not path.is_file():
        raise HRInversionError(f"image {path} does not exist")
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False).astype(np.float32)
        arr = arr.transpose(2, 0, 1) if arr.ndim == 3 and arr.shape[-1] == 3 else arr
        if arr.shape != (3, size, size):
            raise HRInversionError(f"{path} holds {list(arr.shape)}; expected [3, {size}, {size}] in [-1, 1]")
        return torch.from_numpy(arr)[None]
    from PIL import Image

    img = Image.open(path).convert("RGB").resize((size, size), Image.LANCZOS)
    return torch.from_numpy(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1)[None]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint the bundle was built from")
    p.add_argument("--generator", type=Path, help="generator file, as for build_engines.py --generator")
    p.add_argument("--format", help="checkpoint format (default: detected)")
    p.add_argument("--vgg16", type=Path, required=True, help="VGG16 state dict (features.N.weight keys)")
    p.add_argument("--image", type=Path, required=True, help="target image (PNG/JPEG, or .npy [3, R, R] in [-1, 1])")
    p.add_argument("--bundle", type=Path, help="start from this bundle's encoder result (default: latent_avg)")
    p.add_argument("--iterations", type=int, help="encoder iterations for the start (default: the bundle's)")
    p.add_argument("--start", type=Path, help="start from these latents (.npy [M, D] or [1, M, D])")
    p.add_argument("--steps", type=int, default=1000, help="optimisation steps (default 1000, as the paper)")
    p.add_argument("--lr", type=float, default=0.1, help="initial learning rate (default 0.1)")
    p.add_argument("--mse", type=float, default=0.0, help="weight of the MSE term (default 0)")
    p.add_argument(
        "--optimize-noise",
        action="store_true",
        help="also optimise the noise maps (saved beside --out; Translator renders with the bundle's fixed noise)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="refined latents, .npy [1, M, D]")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from export.checkpoints.registry import load_checkpoint
    from export.checkpoints.types import CheckpointError

    try:
        ckpt = load_checkpoint(args.checkpoint, args.format, args.generator)
        generator = ckpt.generator
        target = read_image(args.image, generator.size)
        if args.start is not None:
            start = torch.from_numpy(np.load(args.start, allow_pickle=False).astype(np.float32)).reshape(
                1, generator.n_latent, generator.style_dim
            )
        elif args.bundle is not None:
            from sdk import Translator

            with Translator(args.bundle, backend="onnxruntime") as t:
                x = t.preprocess((target[0].permute(1, 2, 0).numpy() * 127.5 + 127.5).clip(0, 255).astype(np.uint8))
                start = torch.from_numpy(t.infer(x[None], iterations=args.iterations).latents)
        else:
            start = ckpt.latent_avg[None].clone()
        result = invert(
            generator,
            target,
            VGGConvLoss(load_vgg16(args.vgg16)),
            start,
            steps=args.steps,
            mse_weight=args.mse,
            optimize_noise=args.optimize_noise,
            initial_lr=args.lr,
            seed=args.seed,
            progress=not args.quiet,
        )
    except (CheckpointError, HRInversionError, ValueError) as e:
        log.error("%s", e)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, result.latents)
    if result.noises:
        np.savez(args.out.with_suffix(".noise.npz"), **result.noises)
    first, last = result.history[0], result.history[-1]
    log.info(
        "PSNR %.2f dB -> %.2f dB, perceptual %.4g -> %.4g; latents written to %s",
        first["psnr"],
        last["psnr"],
        first["perceptual"],
        last["perceptual"],
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
