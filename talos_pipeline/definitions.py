"""The Dagster code location `talos_pipeline.definitions` (workspace.yaml, `[tool.dg]`).

Everything under `talos_pipeline/defs/` is loaded by `dg.load_from_defs_folder`, which finds the
project through `[tool.dg]` in pyproject.toml. An installed wheel carries no pyproject.toml, so
there the same folder is loaded as a module tree (`dg.ComponentTree.from_module`).
"""

from pathlib import Path

import dagster as dg

import talos_pipeline.defs

PACKAGE = Path(__file__).resolve().parent


@dg.definitions
def defs() -> dg.Definitions:
    if (PACKAGE.parent / "pyproject.toml").is_file():
        return dg.load_from_defs_folder(path_within_project=PACKAGE)
    return dg.ComponentTree.from_module(defs_module=talos_pipeline.defs, project_root=PACKAGE).build_defs()
