"""The ``gan-train-demo`` console script, apart from the training module so that a missing
extra ends in one line (an installed script imports its target, so it is never ``__main__``)."""

from __future__ import annotations


def train_main(argv: list[str] | None = None) -> int:
    """The ``gan-train-demo`` console script: :func:`export.demo.train.main`, or one line naming
    the extras to install where torch (or the photographs' packages) is missing."""
    from sdk.extras import exit_for_missing_extra

    try:
        from export.demo.train import main
    except ModuleNotFoundError as e:
        exit_for_missing_extra(e, "export,demo", "__main__")
    return main(argv)
