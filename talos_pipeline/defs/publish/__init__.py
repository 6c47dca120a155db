"""Publication, per image and for the catalog.

`assets` (release facts, metadata tarballs, disks) → `signatures` (Sigstore bundles) →
`records` (product records) → `catalog` (the simplestreams catalog and its check); `jobs`,
`release_sensor` (new upstream releases), `catalog_sensor` (the catalog's backstop) and
`alerts` (failed publications).
"""
