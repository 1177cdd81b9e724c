#!/usr/bin/env python
"""Build a pure-Python Detectron2 0.6 wheel from the registry's ``pb1-detectron2`` sdist.

Detectron2 is not published on PyPI. ``pb1-detectron2==0.6`` carries the official v0.6 Python
files but not the C++ sources, so ``pip install`` of it fails while compiling ``detectron2._C``.
This script (see the README's "Install" section) downloads the sdist,
changes three things in its ``setup.py`` and builds a wheel:

1. ``ext_modules=[]``: no C++ extension (``oneshot_d2.compat`` supplies the few ``_C`` helpers
   Detectron2 calls at import time and a clear error for the ops that need the extension);
2. ``package_data`` of ``detectron2.model_zoo`` = the yaml/py files under its ``configs/`` folder
   (otherwise the wheel ships no model-zoo configs);
3. drop the ``black==21.4b2`` requirement (a formatter pin irrelevant at run time).

Every edit is checked; the script fails loudly when the sdist is not what it expects.

Usage: ``python tools/build_detectron2_wheel.py --out build/detectron2`` prints the wheel's path.
"""
from __future__ import annotations

import argparse
import glob
import logging
import os
import subprocess
import sys
import tarfile

SDIST = "pb1-detectron2==0.6"

# (old text, new text): each must occur exactly once in the sdist's setup.py.
SETUP_EDITS = [
    ("ext_modules=get_extensions(),", "ext_modules=[],"),
    (
        'package_data={"detectron2.model_zoo": get_model_zoo_configs()},',
        'package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},',
    ),
    ('"black==21.4b2",', ""),
]

logger = logging.getLogger("build_detectron2_wheel")


def patch_setup_py(text: str) -> str:
    """Apply :data:`SETUP_EDITS` to the text of the sdist's ``setup.py``.

    Raises:
        RuntimeError: if an expected line is absent or ambiguous.
    """
    for old, new in SETUP_EDITS:
        count = text.count(old)
        if count != 1:
            raise RuntimeError(
                f"pb1-detectron2 setup.py: expected exactly one occurrence of {old!r}, "
                f"found {count}; the sdist changed, update tools/build_detectron2_wheel.py"
            )
        text = text.replace(old, new)
    return text


def run(cmd: list[str]) -> None:
    logger.info("$ %s", " ".join(cmd))
    subprocess.run(cmd, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/detectron2", help="work and output folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[build_detectron2_wheel] %(message)s")

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    wheels = glob.glob(os.path.join(out, "pb1_detectron2-0.6-*.whl"))
    if wheels:
        print(wheels[0])
        return 0

    sdists = glob.glob(os.path.join(out, "pb1-detectron2-0.6.tar.gz"))
    if not sdists:
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-build-isolation",
             "--no-binary", ":all:", SDIST, "-d", out])
        sdists = glob.glob(os.path.join(out, "pb1-detectron2-0.6.tar.gz"))
    if not sdists:
        raise RuntimeError(f"pip download of {SDIST} left no sdist in {out}")

    src = os.path.join(out, "pb1-detectron2-0.6")
    with tarfile.open(sdists[0]) as tar:
        tar.extractall(out, filter="data")
    setup_py = os.path.join(src, "setup.py")
    with open(setup_py, encoding="utf-8") as f:
        patched = patch_setup_py(f.read())
    with open(setup_py, "w", encoding="utf-8") as f:
        f.write(patched)
    n_configs = len(glob.glob(os.path.join(src, "detectron2/model_zoo/configs/**/*.yaml"),
                              recursive=True))
    if n_configs == 0:
        raise RuntimeError(f"{src}: no model-zoo configs under detectron2/model_zoo/configs")

    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
         "-w", out, src])
    wheels = glob.glob(os.path.join(out, "pb1_detectron2-0.6-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip wheel produced no pb1_detectron2 wheel in {out}")
    print(wheels[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
