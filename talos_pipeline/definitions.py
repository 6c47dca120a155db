"""The Dagster code location `talos_pipeline.definitions` (workspace.yaml, `[tool.dg]`).

Everything under `talos_pipeline/defs/` is loaded by `dg.load_from_defs_folder`, which finds the
project through `[tool.dg]` in pyproject.toml: a new module there is picked up without a list to
edit. An installed wheel (`pip install .`, as the publish workflow does) carries no
pyproject.toml, so there the same folder is loaded as the module tree it is.
"""

import warnings
from pathlib import Path

import dagster as dg

import talos_pipeline.defs

PACKAGE = Path(__file__).resolve().parent


@dg.definitions
def defs() -> dg.Definitions:
    if (PACKAGE.parent / "pyproject.toml").is_file():
        return dg.load_from_defs_folder(path_within_project=PACKAGE)
    with warnings.catch_warnings():  # what load_from_defs_folder suppresses for its own loader
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.ComponentTree.from_module(defs_module=talos_pipeline.defs, project_root=PACKAGE).build_defs()
