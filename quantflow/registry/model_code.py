"""What a registered model carries: its code file, exactly the project modules prediction needs, pinned pips.

The pyfunc is logged as an MLflow *models-from-code* model: ``python_model`` is the path of
quantflow/registry/pyfunc.py, and ``code_paths`` is a staged copy of the project modules that file imports,
followed transitively through the project's own imports (an AST walk, lazy imports inside functions included;
today quantflow/__init__.py, quantflow/core/__init__.py, bundle.py, onnx_model.py, text.py). The copy keeps
the ``quantflow/core/...`` layout, so ``import quantflow.core.onnx_model`` works in a clean interpreter, and
carries no CLI, flows, steps, registry or intake code.
"""

from __future__ import annotations

import ast
import json
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import mlflow
import mlflow.pyfunc
from mlflow.models.model import Model, ModelInfo

import quantflow
from quantflow.core.bundle import ARTIFACT_KEY

MODEL_NAME = "model"  # the LoggedModel's name inside the run
MODEL_FLAVOR = "pyfunc.ModelFromCode"  # what mlflow.pyfunc.log_model records for a models-from-code file
PYFUNC_FILE = Path(__file__).with_name("pyfunc.py")  # the models-from-code file
PACKAGE = "quantflow"  # staged modules are this package's; anything else comes from pip_requirements
# pinned from the running environment: inferring requirements costs log_model 5-7 s
PINNED = ("mlflow", "onnxruntime", "numpy", "pandas", "spacy", "pydantic")


def project_root() -> Path:
    """The folder holding the ``quantflow`` package (the worktree, or site-packages)."""
    return Path(quantflow.__file__).resolve().parent.parent


def module_file(name: str, root: Path) -> Path | None:
    """The file of module ``name`` under ``root`` (a package's ``__init__.py``), None when it is no module
    (``quantflow.core.text.Tokenizer`` names a class)."""
    base = root.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """``from ..x import y`` inside ``package`` → ``<parent>.x``."""
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - node.level + 1])
    return f"{base}.{node.module}" if node.module else base


def imported_names(path: Path, package: str) -> set[str]:
    """Every dotted name ``path`` imports, anywhere in the file; for ``from a import b`` both ``a`` and ``a.b``
    (``b`` may be a submodule). ``package`` resolves relative imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _package_of(path: Path, root: Path) -> str:
    """The package a module file belongs to (for ``a/b/c.py`` and ``a/b/__init__.py`` alike: ``a.b``)."""
    return ".".join(path.relative_to(root).parts[:-1])


def prediction_modules(entry: Path = PYFUNC_FILE, root: Path | None = None) -> list[Path]:
    """The project files ``entry`` needs, relative to ``root``: the modules it imports, theirs in turn, and
    each one's parent packages (importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py``)."""
    root = root or project_root()
    found: set[Path] = set()
    todo = [entry]
    while todo:
        path = todo.pop()
        for name in imported_names(path, _package_of(path, root)):
            if name.split(".")[0] != PACKAGE:
                continue
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                file = module_file(".".join(parts[:depth]), root)
                if file is not None and file not in found and file != entry:
                    found.add(file)
                    todo.append(file)
    return sorted(file.relative_to(root) for file in found)


def stage_code(dst: Path) -> Path:
    """Copy the prediction modules under ``dst`` (``dst/quantflow/core/...``); returns ``dst/quantflow``."""
    root = project_root()
    for relative in prediction_modules(PYFUNC_FILE, root):
        (dst / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / relative, dst / relative)
    return dst / PACKAGE


def pip_requirements(variant_dir: Path) -> list[str]:
    """Exact pins of what the pyfunc model imports; jieba too when the tokenizer segments with it."""
    names = list(PINNED)
    tokenizer = json.loads((variant_dir / "tokenizer.json").read_text(encoding="utf-8"))
    if tokenizer.get("segmenter") in ("jieba", "char+word"):
        names.append("jieba")
    return [f"{name}=={metadata.version(name)}" for name in names]


def log_pyfunc(run_id: str, variant_dir: Path, example: list[str]) -> ModelInfo:
    """Log the variant folder as run ``run_id``'s pyfunc LoggedModel (models-from-code, minimal code).

    The pipeline's run is not this thread's active run and must stay running, so the run is named, not active:
    the LoggedModel is initialized in the run's experiment (``mlflow.initialize_logged_model``), then
    ``Model.log`` with the pyfunc flavor (what ``mlflow.pyfunc.log_model`` calls) fills it and links it to the
    run. No signature is passed: MLflow infers it from ``predict``'s type hints, which is what makes
    ``mlflow models serve`` accept ``{"inputs": [...]}`` on its fast path. ``example`` (a few texts) is run
    through the model once by MLflow and stored as the input example.
    """
    experiment_id = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    model = mlflow.initialize_logged_model(MODEL_NAME, source_run_id=run_id, experiment_id=experiment_id)
    with tempfile.TemporaryDirectory(prefix="quantflow-code-") as scratch:
        return Model.log(
            artifact_path=None,  # deprecated in MLflow 3 (``name`` replaces it), still positional
            flavor=mlflow.pyfunc,
            flavor_name=MODEL_FLAVOR,
            run_id=run_id,
            model_id=model.model_id,
            name=MODEL_NAME,
            python_model=str(PYFUNC_FILE),
            artifacts={ARTIFACT_KEY: str(variant_dir)},
            code_paths=[str(stage_code(Path(scratch)))],
            input_example=example,
            pip_requirements=pip_requirements(variant_dir),
        )
