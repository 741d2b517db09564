"""Stored runs -> one self-contained HTML report, and thesis figures.

- ``data``: read run directories (any kind: run, probe, beam) as the report sees them
- ``figures``: the figures, drawn from stored data only, in the shipped style (``locality.mplstyle``)
- ``html``: ``write_report(run_dirs, out)``, Jinja2 with autoescaping, inline SVG, no network
- ``compare``: the report of `locality compare` (the runs are made by ``locality.experiment.compare``)
- ``thesis``: ``locality figures EXPERIMENT.toml`` (figure sets over a sweep's runs)

Above ``locality.experiment`` (it reads the run store and calls the runner),
never imported by it. Submodules are imported on use: matplotlib is heavy.
"""
