"""Paper tables: `conf/table/<name>.yaml` -> runs of each (row, column, seed) -> md, csv, tex, png.

python scripts/reproduce.py table=kd_digits [jobs=2] [overrides ...]
"""

from divlab.tables.cells import Job, Runner, plan, to_run
from divlab.tables.render import Cell, cells_from_jobs, write_all
from divlab.tables.spec import Axis, TableSpec, load_table

__all__ = [
    "Axis",
    "Cell",
    "Job",
    "Runner",
    "TableSpec",
    "cells_from_jobs",
    "load_table",
    "plan",
    "to_run",
    "write_all",
]
