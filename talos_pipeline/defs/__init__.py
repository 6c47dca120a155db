"""The Dagster wiring, loaded by `talos_pipeline/definitions.py` with `dg.load_from_defs_folder`:
every module here is picked up without a list to edit. Thin: assets call `talos_pipeline.core`.

Shared here: `partitions` (Talos version × arch), `resources` (the settings table as resources),
`execution` (console logger, in-process executor), `automation` (the automation sensor),
`metadata` and `failures` (how the UI and the CLI show results). By feature: `publish/`,
`drift/`, `retention/`.
"""
