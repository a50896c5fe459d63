"""The checkpoint formats, detected from the file (``--format`` overrides), and the loaders.

============  ===================================================================
psp           pixel2style2pixel, one pass                        (:mod:`.psp`)
restyle_psp   ReStyle ``BackboneEncoder``, iterative              (:mod:`.psp`)
restyle_fpn   ReStyle ``GradualStyleEncoder`` = OME's StyleGAN2
              encoder, iterative                                  (:mod:`.psp`)
e2style       E2Style, a first stage and k refinement stages      (:mod:`.psp`)
rosinality    stylegan2-pytorch ``g_ema``: a generator only, for
              ``--generator``                                     (:mod:`.psp`)
ome_progan    our OME-over-ProGAN format, iterative               (:mod:`.ome`)
ome_stylegan2 our OME-over-StyleGAN2 format (the demo model)      (:mod:`.ome`)
mtv_tsa       Deep-GAN-Encoders' bare MTV-TSA ``BE`` state dict +
              ``--generator``, one pass                           (:mod:`.mtv`)
============  ===================================================================

Every family module has ``FORMATS``, ``load(fmt, ckpt, where, generator_file)`` and a
detector; the result is always a :class:`~export.checkpoints.types.LoadedCheckpoint`, so the
bundle builder and the runtime loop treat every family as data.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from export.checkpoints import mtv, ome, psp
from export.checkpoints.loading import read_file
from export.checkpoints.types import CheckpointError, LoadedCheckpoint
from sdk.bundle import sha256_file

FAMILIES = (psp, ome, mtv)
FORMATS = tuple(fmt for family in FAMILIES for fmt in family.FORMATS)  # the order of formats.FORMATS


def detect_format(ckpt: Any) -> str:
    """The format of an in-memory checkpoint, from its keys and markers."""
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"expected a dict checkpoint, found {type(ckpt).__name__}")
    if psp.is_generator_file(ckpt):
        return "rosinality"
    for family in (ome, mtv):
        found = family.detect(ckpt)
        if found is not None:
            return found
    return psp.detect(ckpt)  # the public layouts, or an error naming the keys found


def load_checkpoint(
    path: str | Path, format: str | None = None, generator_path: str | Path | None = None
) -> LoadedCheckpoint:
    """Load an encoder checkpoint (with its decoder, or the generator from ``generator_path``)."""
    path = Path(path)
    ckpt = read_file(path)
    generator_file = read_file(generator_path, "--generator file") if generator_path is not None else None
    loaded = from_dict(ckpt, format, where=str(path), generator_file=generator_file)
    loaded.path, loaded.sha256 = path, sha256_file(path)
    return loaded


def from_dict(
    ckpt: Any, format: str | None = None, where: str = "checkpoint", generator_file: Mapping | None = None
) -> LoadedCheckpoint:
    """Build and load the modules from an in-memory checkpoint dict (``load_checkpoint`` minus
    the file). Under ``torch.device("meta")`` with meta tensors it checks a layout for free."""
    fmt = format or detect_format(ckpt)
    family = next((f for f in FAMILIES if fmt in f.FORMATS), None)
    if family is None:
        raise CheckpointError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    return family.load(fmt, ckpt, where, generator_file)
