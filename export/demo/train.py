#!/usr/bin/env python
"""Train the embedded demo model: a small OME super-resolution model (encoder + StyleGAN2
decoder trained jointly) on photographs that ship inside Python packages.

    python export/demo/train.py                       # ~25 min on two CPU cores, seeded
    python export/demo/train.py --steps 50 --out /tmp/demo.pt   # a quick smoke run
    python export/demo/train.py --init-from OLD.pt --lr 5e-4 --steps N --threads 1   # fine-tune

The committed model's exact command and figures: docs/demo_model.md.

What it is: OME's loop (seed 000, Algorithm 1) at 64 px. The encoder is OME's multi-scale
encoder (ResNet-18 trunk of width 32, FPN of 64 channels, one feature-to-code head per W+ code: 2 read P5,
3 read P4, 5 read P3) over the low-resolution input and the fed-back image (6 channels);
its output is an offset added to the codes. The decoder is a rosinality-architecture
StyleGAN2 synthesis network at 64 px (widths 128/128/64/32/16, 10 W+ codes of 128) trained
from scratch *as a decoder*: no adversarial loss, no mapping network training, so it is an
image model of the training photographs, not a face GAN. ``z_0`` (the "average latent") is a
learned code and ``y_0 = G(z_0)``.

What it is not: FFHQ quality. There are no face datasets on this machine; the training set is
about a dozen photographs from scikit-image and matplotlib (``TRAIN_IMAGES``), cropped at
random positions and scales with flips and colour jitter; ``HELD_OUT`` images are never seen.

Training (seeded, deterministic for a given ``--steps`` and thread count): every batch runs a
few refinement steps without gradients (as ReStyle trains, steps are detached), then one step
with gradients; the loss is L2 + L1 against the high-resolution crop plus a small L2 on that
step's offset (so the codes settle once the image fits instead of drifting along directions
the image loss cannot see). Half the batches are stills: ``k`` in 0..N-1 steps from ``z_0``,
so every step of the N = 5 loop learns to improve on the state the previous ones leave. The
other half are video: 2..N steps on a neighbouring frame (the same view shifted by up to 4 px),
then 0..1 on the frame itself, so a warm start (``infer(init=previous result)``) starts from
states the model has seen. Carried chains (``--carry``, export/demo/chains.py): that share of
each batch continues the previous batch's loop states on the same or a neighbouring frame,
chains of any length up to ``--max-chain`` (truncated backprop: gradients through the last step
only), so an unbounded warm start meets no state it was not trained on. The low-resolution input is made by the SDK's own
super-resolution pre-processing (``sdk.tasks.simulate_low_resolution``, pSp's transforms) with
a random factor (mostly 4), so training and run time see the same inputs.

Writes an ``ome_stylegan2`` checkpoint (export/checkpoints/ome.py) that
``python export/build_engines.py`` (no arguments) builds into ``engines/demo``.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root replaces this folder on the path
    sys.path[0] = str(Path(__file__).resolve().parents[2])

import numpy as np

from sdk.extras import exit_for_missing_extra

try:
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from export.demo.chains import CarriedChains, warm_chain_psnr
    from export.demo.data import HELD_OUT, TRAIN_IMAGES, CropSampler, load_photographs
    from export.demo.finetune import load_demo_weights
    from export.models.ome_encoder import OMEEncoder
    from export.models.stylegan2 import Generator
except ModuleNotFoundError as e:
    exit_for_missing_extra(e, "export,demo", __name__)

from export.demo import DEMO_CHECKPOINT

log = logging.getLogger("train_demo")


@dataclass
class DemoConfig:
    """The demo model's architecture and training recipe (stored in the checkpoint's opts)."""

    size: int = 64
    style_dim: int = 128
    channels: dict = field(default_factory=lambda: {4: 128, 8: 128, 16: 64, 32: 32, 64: 16})
    n_mlp: int = 2  # the mapping network is not trained (a decoder, not a GAN); kept small
    encoder_width: int = 32
    fpn_dim: int = 64
    codes_per_level: tuple = (2, 3, 5)  # P5, P4, P3 (coarse -> fine) for the 10 codes
    iterations: int = 5
    factors: dict = field(default_factory=lambda: {1: 0.1, 2: 0.2, 4: 0.5, 8: 0.2})
    batch: int = 16
    steps: int = 3000
    lr: float = 2e-3
    l1_weight: float = 0.5
    offset_weight: float = 0.1  # L2 on the trained step's offset: settle once the image fits
    warm_fraction: float = 0.5  # batches that start from a neighbouring frame's result (video)
    warm_shift: int = 4  # px a neighbouring frame moves
    seed: int = 0
    # carried chains (export/demo/chains.py): this share of each batch continues the previous
    # batch's states on the same or a neighbouring frame, so warm starts of any length are trained
    carry: float = 0.5
    chain_mean: float = 50.0  # mean steps of a carried chain (geometric)
    max_chain: int = 300  # longest carried chain
    carry_still: float = 0.3  # share of carried frames that repeat the previous view
    carry_offset_weight: float = 0.1  # the offset L2 on carried crops: a long chain's steps should settle


class DemoModel(torch.nn.Module):
    """Encoder, decoder and the learned start code, as trained together."""

    def __init__(self, cfg: DemoConfig):
        super().__init__()
        self.generator = Generator(cfg.size, style_dim=cfg.style_dim, n_mlp=cfg.n_mlp, channels=cfg.channels)
        self.encoder = OMEEncoder(
            depth=18,
            input_nc=6,
            width=cfg.encoder_width,
            fpn_dim=cfg.fpn_dim,
            code_dim=cfg.style_dim,
            codes_per_level=cfg.codes_per_level,
            input_size=cfg.size,
        )
        assert self.encoder.n_styles == self.generator.n_latent, "one head per W+ code"
        self.latent_avg = torch.nn.Parameter(torch.zeros(self.generator.n_latent, cfg.style_dim))
        with torch.no_grad():  # small first offsets: the loop starts near z_0
            for head in self.encoder.heads:
                head.linear.weight.mul_(0.1)
                head.linear.bias.zero_()

    def start(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.latent_avg[None].expand(batch, -1, -1)
        return z, self.generator(z[:1]).expand(batch, -1, -1, -1)

    def step(self, x: torch.Tensor, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One OME iteration: z' = z + E(x || y), y' = G(z')."""
        z = z + self.encoder(torch.cat([x, y], dim=1))
        return z, self.generator(z)

    def run(self, x: torch.Tensor, n: int) -> list[torch.Tensor]:
        """Images of steps 1..n (inference)."""
        z, y = self.start(x.shape[0])
        images = []
        for _ in range(n):
            z, y = self.step(x, z, y)
            images.append(y)
        return images


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of images in [-1, 1] (peak-to-peak 2), after clipping ``a``."""
    mse = F.mse_loss(a.clamp(-1, 1), b).item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def train(cfg: DemoConfig, out: Path, threads: int = 2, progress: bool = True, init_from: Path | None = None) -> dict:
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(cfg.seed)
    sampler = CropSampler(load_photographs(TRAIN_IMAGES), cfg.size, rng)
    held_photos = load_photographs(HELD_OUT)
    held = CropSampler(held_photos, cfg.size, np.random.default_rng(1234))
    val_hr = held.batch(64)
    val_x = held.low_resolution(val_hr, 4)
    model = DemoModel(cfg)
    if init_from is not None:  # a fine-tune: the same architecture, the recipe of cfg
        load_demo_weights(model, init_from)
    slots = round(cfg.batch * cfg.carry)
    carried = (
        CarriedChains(
            sampler,
            slots,
            np.random.default_rng([cfg.seed, 1]),
            cfg.factors,
            shift=cfg.warm_shift,
            still=cfg.carry_still,
            mean_length=cfg.chain_mean,
            max_chain=cfg.max_chain,
        )
        if slots
        else None
    )
    fresh = cfg.batch - slots
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
    warm = max(1, cfg.steps // 20)  # linear warm-up, then cosine decay to 2 %
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else max(0.02, 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, cfg.steps - warm))))
        ),
    )
    factors, weights = list(cfg.factors), np.array(list(cfg.factors.values()), dtype=np.float64)
    history, start = [], time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="train demo", unit="step", disable=not progress)
    for step in bar:
        factor = int(rng.choice(factors, p=weights / weights.sum()))
        warm = rng.random() < cfg.warm_fraction
        if warm:  # a video frame: start from the loop's result on the previous frame
            hr, prev = sampler.pairs(fresh, cfg.warm_shift)
            chains = [(sampler.low_resolution(prev, factor), int(rng.integers(2, cfg.iterations + 1)))]
            k = int(rng.integers(0, 2))
        else:  # a still: start from the average, as N = 1..5 does
            hr, chains, k = sampler.batch(fresh), [], int(rng.integers(0, cfg.iterations))
        x = sampler.low_resolution(hr, factor)
        with torch.no_grad():
            z, y = model.start(fresh)
            for inp, n in chains + [(x, k)]:
                for _ in range(n):
                    z, y = model.step(inp, z, y)
        if carried is not None:  # the carried tracks join the batch with their own states
            hr_c, x_c, z_c, y_c = carried.frames(model)
            hr, x, z, y = torch.cat([hr, hr_c]), torch.cat([x, x_c]), torch.cat([z, z_c]), torch.cat([y, y_c])
        z0 = z.detach()
        z, y = model.step(x, z0, y.detach())
        offsets = (z - z0).pow(2).mean(dim=(1, 2))
        offset_weights = torch.full_like(offsets, cfg.offset_weight)
        offset_weights[fresh:] = cfg.carry_offset_weight
        loss = F.mse_loss(y, hr) + cfg.l1_weight * F.l1_loss(y, hr) + (offset_weights * offsets).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if carried is not None:
            carried.keep(z[fresh:], y[fresh:])
        if step % 50 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.4f}", k=k, f=factor, warm=int(warm))
        if step % 500 == 0 or step == cfg.steps - 1:
            model.eval()
            with torch.no_grad():
                val = [psnr(y, val_hr) for y in model.run(val_x, cfg.iterations)]
            chain = warm_chain_psnr(
                model, CropSampler(held_photos, cfg.size, np.random.default_rng(4321)), iterations=cfg.iterations
            )
            model.train()
            history.append(
                {
                    "step": step,
                    "loss": loss.item(),
                    "val_psnr_x4": val,
                    "val_warm_chain_x4": chain,
                    "minutes": (time.perf_counter() - start) / 60,
                }
            )
            log.info(
                "step %d: loss %.4f, held-out x4 PSNR per iteration %s; 24-frame warm start %.2f (cold N=%d %.2f)",
                step,
                loss.item(),
                " ".join(f"{v:.2f}" for v in val),
                chain["warm"],
                cfg.iterations,
                chain["cold"],
            )
    save_checkpoint(model, cfg, out, history)
    return {"history": history, "minutes": (time.perf_counter() - start) / 60}


def save_checkpoint(model: DemoModel, cfg: DemoConfig, out: Path, history: list) -> None:
    """An ``ome_stylegan2`` file; atomic (written beside ``out`` and renamed)."""
    state = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    state.update({f"decoder.{k}": v for k, v in model.generator.state_dict().items()})
    opts = {
        "input_size": cfg.size,
        "n_iters_per_batch": cfg.iterations,
        "output_size": cfg.size,
        "dataset_type": "demo_super_resolution",
        "resize_factors": ",".join(map(str, cfg.factors)),
        "train_config": {k: (str(v) if isinstance(v, dict) else v) for k, v in asdict(cfg).items()},
        "train_history": history,
    }
    payload = {
        "format": "ome_stylegan2",
        "format_version": 1,
        "state_dict": state,
        "opts": opts,
        "latent_avg": model.latent_avg.detach().clone(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(out)
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEMO_CHECKPOINT, help=f"checkpoint to write (default {DEMO_CHECKPOINT})")
    p.add_argument("--steps", type=int, default=DemoConfig.steps, help="training steps (default %(default)s)")
    p.add_argument("--batch", type=int, default=DemoConfig.batch, help="crops per step (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, crops and factors (default 0)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2; results depend on it)")
    p.add_argument("--lr", type=float, default=DemoConfig.lr, help="peak learning rate (default %(default)s)")
    p.add_argument("--init-from", type=Path, help="fine-tune: start from this demo checkpoint's weights")
    p.add_argument(
        "--carry",
        type=float,
        default=DemoConfig.carry,
        help="share of each batch continuing the previous batch's loop states, in [0, 1) (default %(default)s)",
    )
    p.add_argument(
        "--chain-mean", type=float, default=DemoConfig.chain_mean, help="mean carried chain (default %(default)s)"
    )
    p.add_argument("--max-chain", type=int, default=DemoConfig.max_chain, help="longest chain (default %(default)s)")
    p.add_argument(
        "--carry-offset-weight",
        type=float,
        default=DemoConfig.carry_offset_weight,
        help="offset L2 weight on carried crops (default %(default)s)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.steps < 1 or args.batch < 1:
        p.error("--steps and --batch must be positive")
    if not 0 <= args.carry < 1 or round(args.batch * args.carry) >= args.batch:
        p.error("--carry must leave at least one fresh crop per batch: 0 <= carry < 1")
    if args.chain_mean < 1 or args.max_chain < 1:
        p.error("--chain-mean and --max-chain must be at least 1")
    if args.init_from is not None and not args.init_from.is_file():
        p.error(f"--init-from {args.init_from}: no such file; pass a checkpoint written by this script")
    cfg = DemoConfig(
        steps=args.steps,
        batch=args.batch,
        seed=args.seed,
        lr=args.lr,
        carry=args.carry,
        chain_mean=args.chain_mean,
        max_chain=args.max_chain,
        carry_offset_weight=args.carry_offset_weight,
    )
    result = train(cfg, args.out, threads=args.threads, init_from=args.init_from)
    last = result["history"][-1]["val_psnr_x4"]
    log.info(
        "done in %.1f min; held-out x4 PSNR N=1..%d: %s",
        result["minutes"],
        cfg.iterations,
        " ".join(f"{v:.2f}" for v in last),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
