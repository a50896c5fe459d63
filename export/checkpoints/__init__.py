"""Checkpoint loading: the public formats and ours, read as untrusted input.

``registry`` detects a file's format and loads it (:func:`~export.checkpoints.registry.load_checkpoint`);
``psp`` (pSp, ReStyle, E2Style, rosinality), ``ome`` (OME over ProGAN or StyleGAN2) and ``mtv``
(MTV-TSA) hold one format family each; ``loading`` the module-building steps they share;
``values`` the checks on every value read from a file; ``types`` the records they return.
"""
