"""student_env.yml must provide every module the student notebooks (and their public tests) import."""

import ast
import json
import sys

import yaml

from conftest import ROOT

# import name -> the package that provides it in student_env.yml
PROVIDERS = {
    "torch": "torch",
    "numpy": "numpy",
    "matplotlib": "matplotlib",
    "skimage": "scikit-image",
    "scipy": "scipy",
    "otter": "otter-grader",
    "tensorgrade": "-e .",
    "IPython": "jupyterlab",
}


def _env_packages() -> set[str]:
    env = yaml.safe_load((ROOT / "student_env.yml").read_text())
    names = set()
    for dep in env["dependencies"]:
        items = dep["pip"] if isinstance(dep, dict) else [dep]
        for item in items:
            names.add(item.split("==")[0].split("=")[0].strip())
    return names


def _imports(source: str) -> set[str]:
    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    tree = ast.parse("\n".join(lines))
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module.split(".")[0])
    return mods


def _student_imports() -> set[str]:
    mods = set()
    for nb_path in sorted((ROOT / "assignments").glob("*/*.ipynb")):
        nb = json.loads(nb_path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                mods |= _imports("".join(cell["source"]))
        for test_src in nb["metadata"].get("otter", {}).get("tests", {}).values():
            mods |= _imports(test_src)
    return mods


def test_student_env_provides_every_import():
    mods = _student_imports()
    assert {"torch", "otter", "tensorgrade"} <= mods, "the scan should see the notebooks' imports"
    third_party = sorted(m for m in mods if m not in sys.stdlib_module_names)
    unknown = [m for m in third_party if m not in PROVIDERS]
    assert not unknown, f"add these imports to PROVIDERS and student_env.yml: {unknown}"
    missing = [m for m in third_party if PROVIDERS[m] not in _env_packages()]
    assert not missing, f"student_env.yml lacks the packages for: {missing}"


def test_torch_is_pinned():
    env = (ROOT / "student_env.yml").read_text()
    assert "torch==" in env, "pin torch: an open requirement can pull a multi-GB build"
