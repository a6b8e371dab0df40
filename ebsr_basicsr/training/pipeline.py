"""What ``python -m ebsr_basicsr.train`` / ``.test`` (and ``basicsr train/test``) run:
check the option file (:mod:`.preflight`), register this package's classes in BasicSR
(:mod:`.registration`), then run BasicSR's own pipeline with the entry points' process-level
fixes (:mod:`._basicsr_compat`) in place, and put BasicSR's functions back afterwards.
"""
from __future__ import annotations

import importlib
import os
import sys


def run(phase: str, argv=None) -> None:
    """Run ``basicsr.train.train_pipeline`` (``phase='train'``) or ``basicsr.test.test_pipeline``
    (``'test'``) in the current folder. BasicSR reads ``sys.argv`` itself; ``argv`` (without
    the program name) replaces ``sys.argv[1:]`` when given. A problem found before the start
    is printed (once per machine under torchrun) and exits with status 1 or 2."""
    from .preflight import PreflightError, check, cpu_run

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        opt = check(sys.argv[1:], phase)
    except PreflightError as exc:
        if os.environ.get("LOCAL_RANK", "0") == "0":  # torchrun starts one process per rank
            sys.stderr.write(f"{exc}\n")
        raise SystemExit(exc.status) from None
    from ._basicsr_compat import entry_point_fixes
    from .registration import register_with_basicsr

    register_with_basicsr()
    pipeline = getattr(importlib.import_module(f"basicsr.{phase}"), f"{phase}_pipeline")
    with entry_point_fixes(cpu=cpu_run(opt)):
        pipeline(os.getcwd())
