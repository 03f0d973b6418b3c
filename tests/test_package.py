"""The package's surface: every public module says what it exports, workflow functions take
their options by keyword, and a library call changes nothing process-wide (the CLI tunes malloc)."""
import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gnhub

ROOT = Path(gnhub.__file__).parent
MODULES = sorted(
    ".".join(("gnhub", *p.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
    for p in ROOT.rglob("*.py") if not p.name.startswith("_") or p.name == "__init__.py"
) + sorted(f"gnhub.converters.{p.stem}" for p in Path(importlib.import_module("gnhub.converters").__file__).parent.glob(
    "[!_]*.py")) + ["gnhub.converters", "gnhub.model_cards"]


@pytest.mark.parametrize("name", MODULES)
def test_every_public_module_lists_names_that_exist(name):
    module = importlib.import_module(name)
    assert isinstance(module.__all__, list), f"{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing and len(set(module.__all__)) == len(module.__all__), (name, missing)


def test_the_packages_modules_are_all_checked():
    assert len(MODULES) > 60 and "gnhub.modeling.boxes" in MODULES and "gnhub.converters.detectron2" in MODULES


# (module, function, how many leading parameters may be passed by position)
WORKFLOWS = [("gnhub.convert", "convert", 2), ("gnhub.predict", "predict", 2), ("gnhub.evaluate", "evaluate_model", 1),
             ("gnhub.evaluate", "evaluate", 1), ("gnhub.export", "export_model", 2), ("gnhub.export", "export", 2),
             ("gnhub.publish", "publish_model", 2), ("gnhub.publish", "publish_zoo", 1),
             ("gnhub.checks", "verify_model", 2), ("gnhub.train.loop", "finetune_model", 1),
             ("gnhub.train.loop", "finetune", 1), ("gnhub.api", "load", 2)]


@pytest.mark.parametrize("module, function, positional", WORKFLOWS)
def test_workflow_options_are_keyword_only(module, function, positional):
    params = list(inspect.signature(getattr(importlib.import_module(module), function)).parameters.values())
    assert [p.kind for p in params[:positional]] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * positional
    assert all(p.kind == inspect.Parameter.KEYWORD_ONLY for p in params[positional:]), function


def test_a_library_predict_leaves_malloc_alone_and_the_command_tunes_it(small_dir):
    code = ("import gnhub, gnhub.allocator as a; from gnhub.samples import sample_images; "
            f"gnhub.load({str(small_dir)!r}).predict(sample_images()[3]); print(a._applied)")
    env = {k: v for k, v in os.environ.items() if k != "GNHUB_MALLOC"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.stdout.strip() == "False", out.stderr
    code = "import gnhub.allocator as a; from gnhub.cli import main; import sys; sys.argv = ['gnhub', 'list']\n" \
           "try:\n    main()\nexcept SystemExit:\n    pass\nprint(a._applied)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout.strip().splitlines()[-1] == str(bool(os.confstr("CS_GNU_LIBC_VERSION"))), out.stderr
