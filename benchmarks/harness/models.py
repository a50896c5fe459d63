"""The models the benchmarks run: reference-scale checkpoints and their bundles, cached.

A *reference-scale* checkpoint is what a user downloads from restyle-encoder / OME: a
6-channel IR-SE-50 ``GradualStyleEncoder`` with ``2 log2(R) - 2`` style heads (14 at 256 px,
18 at 1024 px) and a StyleGAN2 generator of side R (channel multiplier 2), in the ReStyle-FPN
file structure ``{state_dict, opts, latent_avg}``. No trained weights of that size are
available offline, so the weights are synthesised deterministically the way the shared
reference vectors were (``../shared/reference_vectors/make_checkpoint.py``): every key gets the
init rule of its counterpart in ``restyle_fpn_layout.json`` (the 64 px vector), and a numpy
generator seeded from the key. Timings do not depend on the values; the values only have to
stay finite through the loop, which these rules were chosen for.

At 1024 px the key set and shapes are checked against the public FFHQ-1024 layout
(``../shared/checkpoint_layouts/restyle_psp_ffhq_1024_GradualStyleEncoder.json``).
"""

from __future__ import annotations

import json
import logging
import re
import zlib
from pathlib import Path

import numpy as np
import torch

from export.models.encoders import GradualStyleEncoder, build_encoder
from export.models.stylegan2 import Generator

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
VENDORED = REPO / "tests" / "data"
RULES_LAYOUT = "reference_vectors/restyle_fpn_layout.json"
PUBLIC_1024 = "checkpoint_layouts/restyle_psp_ffhq_1024_GradualStyleEncoder.json"
SIZES = (256, 1024)


class ModelError(RuntimeError):
    """A reference model cannot be built (layout files missing, or a layout mismatch)."""


def _shared_file(sub: str) -> Path:
    for base in (SHARED, VENDORED):  # the team's shared folder first, then the vendored copy
        if (base / sub).is_file():
            return base / sub
    raise ModelError(
        f"neither {SHARED / sub} nor {VENDORED / sub} exists; the reference layouts are needed "
        f"to synthesise the reference-scale checkpoints"
    )


def _rule_key(key: str) -> str:
    """The key of the 64 px vector whose init rule ``key`` takes. The backbone is the same at every
    size; heads map to the first head reading the same FPN level (same convs, same shapes);
    generator layers to the first layer of the same kind."""
    m = re.match(r"encoder\.styles\.(\d+)\.(.*)", key)
    if m:
        spatial = GradualStyleEncoder.style_spatial(int(m.group(1)))
        first = {16: 0, 32: GradualStyleEncoder.coarse_ind, 64: GradualStyleEncoder.middle_ind}[spatial]
        return f"encoder.styles.{first}.{m.group(2)}"
    key = re.sub(r"^decoder\.convs\.(\d+)\.", lambda g: f"decoder.convs.{int(g.group(1)) % 2}.", key)
    key = re.sub(r"^decoder\.to_rgbs\.\d+\.", "decoder.to_rgbs.0.", key)
    return re.sub(r"^decoder\.noises\.noise_\d+$", "decoder.noises.noise_0", key)


def _synthesise(shape: tuple, rule: dict, seed: str, key: str) -> torch.Tensor:
    rng = np.random.default_rng(zlib.crc32(f"{seed}:{key}".encode()))
    kind = rule["kind"]
    if kind == "zeros":
        value = np.zeros(shape)
    elif kind == "literal":
        value = np.array(rule["value"])
    elif kind == "lognormal":
        value = np.exp(rule["std"] * rng.standard_normal(shape))
    else:
        value = rule["mean"] + rule["std"] * rng.standard_normal(shape)
    return torch.tensor(value, dtype=torch.int64 if key.endswith("num_batches_tracked") else torch.float32)


def reference_state(size: int, input_nc: int = 6) -> tuple[dict, torch.Tensor]:
    """State dict (``encoder.*``, ``decoder.*``) and ``latent_avg`` of the reference model at ``size`` px."""
    rules = json.loads(_shared_file(RULES_LAYOUT).read_text())["keys"]
    with torch.device("meta"):  # shapes only: no memory for the module weights
        generator = Generator(size, style_dim=512, n_mlp=8, channel_multiplier=2)
        encoder = build_encoder(
            {
                "encoder_type": "GradualStyleEncoder",
                "num_layers": 50,
                "mode": "ir_se",
                "input_nc": input_nc,
                "n_styles": generator.n_latent,
            }
        )
    shapes = {f"encoder.{k}": tuple(v.shape) for k, v in encoder.state_dict().items()}
    shapes.update({f"decoder.{k}": tuple(v.shape) for k, v in generator.state_dict().items()})
    seed = f"reference-scale-{size}"
    state = {}
    for key, shape in shapes.items():
        rule_key = _rule_key(key)
        if rule_key not in rules:
            raise ModelError(f"no init rule for {key} (looked up {rule_key} in {RULES_LAYOUT})")
        state[key] = _synthesise(shape, rules[rule_key]["init"], seed, key)
    latent_avg = _synthesise((generator.n_latent, 512), rules["latent_avg"]["init"], seed, "latent_avg")
    if size == 1024:
        _check_public_layout(state)
    return state, latent_avg


def _check_public_layout(state: dict) -> None:
    public = json.loads(_shared_file(PUBLIC_1024).read_text())["keys"]
    ours = {k: list(v.shape) for k, v in state.items()}
    if ours != {k: list(v) for k, v in public.items()}:
        diff = sorted(set(ours) ^ set(public)) or sorted(k for k in ours if ours[k] != public[k])
        raise ModelError(f"the 1024 px reference model does not match the public layout {PUBLIC_1024}: {diff[:5]}")


def write_reference_checkpoint(size: int, path: Path) -> Path:
    """Write the reference-scale ReStyle-FPN checkpoint of ``size`` px to ``path`` (atomically)."""
    if size not in SIZES:
        raise ModelError(f"reference models exist at {SIZES} px, not {size}")
    state, latent_avg = reference_state(size)
    opts = {
        "encoder_type": "GradualStyleEncoder",
        "input_nc": 6,
        "output_size": size,
        "n_iters_per_batch": 5,
        "start_from_latent_avg": True,
        "dataset_type": "ffhq_encode",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": state, "opts": opts, "latent_avg": latent_avg}, tmp)
    tmp.replace(path)
    return path
