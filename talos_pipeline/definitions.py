"""The Dagster code location: `dagster dev -w workspace.yaml`."""

from talos_pipeline.defs.build import build_definitions

defs = build_definitions()
