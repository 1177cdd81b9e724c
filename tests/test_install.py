"""The registry-route Detectron2 build: the sdist's setup.py edits are applied and checked."""
import ast
import importlib.util
import os
import re
import sys

import pytest

from tests.common import REPO

_spec = importlib.util.spec_from_file_location(
    "build_detectron2_wheel", os.path.join(REPO, "tools", "build_detectron2_wheel.py"))
bdw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bdw)

SETUP_EXCERPT = '''
    install_requires=[
        "omegaconf>=2.1",
        "black==21.4b2",
    ],
    package_data={"detectron2.model_zoo": get_model_zoo_configs()},
    ext_modules=get_extensions(),
'''


def test_patch_applies_the_three_edits():
    out = bdw.patch_setup_py(SETUP_EXCERPT)
    assert "ext_modules=[]," in out and "get_extensions()" not in out
    assert '"configs/**/*.yaml"' in out and "black" not in out


def test_patch_fails_loudly_on_unexpected_sdist():
    with pytest.raises(RuntimeError, match="expected exactly one occurrence"):
        bdw.patch_setup_py(SETUP_EXCERPT.replace("ext_modules=get_extensions(),", ""))


def test_installed_detectron2_has_model_zoo_configs():
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")
    assert os.path.isfile(path)


# import name -> distribution name, where they differ
_DIST_OF = {"cv2": "opencv-python-headless", "PIL": "Pillow", "sklearn": "scikit-learn",
            "yaml": "PyYAML"}
# installed with Detectron2 (not on PyPI, so not declared), or the project itself
_NOT_DECLARED = {"detectron2", "oneshot_d2"}


def _third_party_imports():
    names = set()
    for top in ("oneshot_d2", "tools", "datasets"):
        for dirpath, _, files in os.walk(os.path.join(REPO, top)):
            for fname in files:
                if not fname.endswith(".py"):
                    continue
                with open(os.path.join(dirpath, fname), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        names.update(a.name.split(".")[0] for a in node.names)
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        names.add(node.module.split(".")[0])
    local = {os.path.splitext(f)[0] for top in ("tools", "datasets")
             for f in os.listdir(os.path.join(REPO, top))}
    return {n for n in names if n not in sys.stdlib_module_names and n not in local
            and n not in _NOT_DECLARED and n != "__future__"}


@pytest.mark.skipif(not hasattr(sys, "stdlib_module_names"), reason="Python >= 3.10")
def test_setup_declares_exactly_the_imported_packages():
    """install_requires = the third-party packages that oneshot_d2/, tools/ and datasets/
    import: nothing missing, nothing unused."""
    with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call)
                and getattr(n.func, "id", None) == "setup")
    reqs = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "install_requires"))
    declared = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in reqs}
    imported = {_DIST_OF.get(n, n).lower() for n in _third_party_imports()}
    assert declared == imported
