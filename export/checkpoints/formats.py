"""The checkpoint format names, per family, without importing torch (the command line's
``--format`` choices and ``--help`` need them before any model code is loaded)."""

from __future__ import annotations

PSP_FORMATS = ("psp", "restyle_psp", "restyle_fpn", "e2style", "rosinality")
OME_FORMATS = ("ome_progan", "ome_stylegan2")
MTV_FORMATS = ("mtv_tsa",)
FORMATS = PSP_FORMATS + OME_FORMATS + MTV_FORMATS
