"""Grids: many runs from one params file, and the report on them. The layer above training.

The import rule: ``running.py`` → ``grids`` → ``training`` → ``dataset`` / ``models`` / ``privacy``
→ ``utils``; nothing imports from a layer above it (``tests/test_layers.py`` checks it).

- :mod:`grids.sweep`: a ``sweep:`` / ``zip:`` file expanded into points, each an ordinary run, and
  the grid runner (in this process, stacked, or as Ray tasks) with its status file.
- :mod:`grids.report`: ``--report``: report.md, report.csv and the figures, written through a
  staging folder and a ledger; it assembles the views below.
- :mod:`grids.runs`: the runs read back from disk and grouped into points (seeds of one setting).
- :mod:`grids.table`: the point table (report.csv, report.md's notes and individual-privacy section).
- :mod:`grids.figures`: the point figures against the minority share and the drawing helpers.
- :mod:`grids.methods`: the method view (a grid of repair methods).
- :mod:`grids.repair_privacy`: the repair-under-privacy view (methods crossed with privacy levels).
- :mod:`grids.release`: what ε covers, per training pool (the report's combined release).
- :mod:`grids.mitigation`: the DP mitigation view (a grid of clipping rules).
- :mod:`grids.dashboards`: the grid and its report in TensorBoard and wandb.
"""
