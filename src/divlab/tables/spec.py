"""A paper table's config (`conf/table/<name>.yaml`): the grid, the metric, the seeds, published values.

These files are data, not a Hydra group of train.yaml: they are read with OmegaConf and each cell is
composed from `train` with its overrides (common, then column, then row, then cell, then seed).

    title: "..."                 # optional heading
    metric: test/acc             # a key of metrics.json's "metrics"
    scale: 100                   # shown value = metric x scale (100: percent)
    decimals: 2                  # digits after the point
    higher_is_better: true       # the best mean of each column is bold
    seeds: [0, 1, 2]
    common_overrides: [experiment=kd/digits]
    baseline_row: CE-only        # optional: each row's difference from this row's mean
    rows:    [{name: KD, overrides: [divergence=forward_kl]}, ...]   # `kind: teacher` reads the cached teacher
    columns: [{name: "CNN -> MLP", overrides: [teacher=digits_cnn, student=digits_mlp]}, ...]
             # a column may show its own metric of the same runs (metric: test/recall), with its own
             # scale / decimals / higher_is_better; then the top-level metric is optional. Cells whose
             # overrides are equal share one run, so a row of metric-columns trains once per seed.
    cell_overrides: {KD: {"CNN -> MLP": [distill.temperature=2]}}    # optional, per (row, column)
    reference: {KD: {"CNN -> MLP": 98.5}}   # optional published values, in shown units (after scale)
    notes: ["...", ...]          # optional lines printed under the table
    setup: [data-text]           # optional make targets that install the table's data; reproduce.py runs
                                 # them first (each target checks what is there and installs only what is not)
"""

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from divlab.errors import ConfigError

KINDS = (
    "run",
    "teacher",
    "reference",
)  # a row trains runs; shows the cached teacher of each column; or runs a
# config that trains nothing (task.fit=false: a pretrained teacher, a student before training), with the first seed only


@dataclass(frozen=True)
class Axis:
    """A row or a column of the grid."""

    name: str
    overrides: tuple[str, ...] = ()
    kind: str = "run"
    metric: str | None = None  # columns only: a metric of their own (else the table's)
    scale: float | None = None
    decimals: int | None = None
    higher_is_better: bool | None = None


@dataclass(frozen=True)
class TableSpec:
    name: str
    metric: str | None
    rows: tuple[Axis, ...]
    columns: tuple[Axis, ...]
    seeds: tuple[int, ...] = (0,)
    scale: float = 1.0
    decimals: int = 2
    higher_is_better: bool = True
    title: str = ""
    common_overrides: tuple[str, ...] = ()
    baseline_row: str | None = None
    cell_overrides: dict = field(default_factory=dict)  # {(row, column): (override, ...)}
    reference: dict = field(default_factory=dict)  # {(row, column): float}
    notes: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()  # make targets run before planning (data the runs need)

    def column(self, name: str) -> Axis:
        return next(c for c in self.columns if c.name == name)

    def metric_of(self, column: str) -> str:
        return self.column(column).metric or self.metric

    def scale_of(self, column: str) -> float:
        own = self.column(column).scale
        return self.scale if own is None else own

    def decimals_of(self, column: str) -> int:
        own = self.column(column).decimals
        return self.decimals if own is None else own

    def higher_is_better_of(self, column: str) -> bool:
        own = self.column(column).higher_is_better
        return self.higher_is_better if own is None else own

    @property
    def one_metric(self) -> bool:
        """True when every column shows the same metric (one axis for the bar chart)."""
        return len({self.metric_of(c.name) for c in self.columns}) == 1

    def overrides(self, row: Axis, column: Axis) -> list[str]:
        """Every override of one cell but its seed: common, column, row, then the cell's own; where
        two set the same key the later one wins (e.g. a CE-only row's experiment=... replaces the
        common one)."""
        return latest(
            [
                *self.common_overrides,
                *column.overrides,
                *row.overrides,
                *self.cell_overrides.get((row.name, column.name), ()),
            ]
        )


def latest(overrides) -> list[str]:
    """Drop every `key=value` that a later override of the same key replaces."""
    keys = [o.split("=", 1)[0] if "=" in o and not o.startswith(("+", "~")) else None for o in overrides]
    return [o for i, (o, k) in enumerate(zip(overrides, keys)) if k is None or k not in keys[i + 1 :]]


def table_path(name: str, conf_dir: str | Path) -> Path:
    """`kd_digits` -> conf/table/kd_digits.yaml; a path to a .yaml file is taken as it is."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    given = path.suffix in (".yaml", ".yml")  # a file path that is not there: no `.yaml.yaml` guess
    path = path if given else Path(conf_dir) / "table" / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in (Path(conf_dir) / "table").glob("*.yaml"))
        raise ConfigError(
            f"table={name} is not a table config (no file {path}); choose one of: "
            f"{', '.join(choices) or 'none'}, or give a path to a .yaml file"
        )
    return path


def read_yaml(path: Path):
    """OmegaConf.load, with a YAML syntax error as one sentence naming the file and the line."""
    import yaml

    try:
        return OmegaConf.load(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(f"{path} is not valid YAML{where} ({problem}); fix that line") from None


def _targets(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, ListConfig)) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"setup must be a list of make targets such as [data-text], got {value!r}")
    return tuple(value)


def _strings(value, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple, ListConfig)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"{key} must be a list of override strings such as [divergence=forward_kl], got {value!r}"
        )
    return tuple(value)


def _axes(raw, key: str) -> tuple[Axis, ...]:
    if not isinstance(raw, (list, ListConfig)) or not raw:
        raise ConfigError(f"{key} must be a non-empty list of {{name, overrides}} entries")
    axes = []
    for i, item in enumerate(raw):
        if not isinstance(item, (dict, DictConfig)) or not isinstance(item.get("name"), str):
            raise ConfigError(f"{key}[{i}] must be a mapping with a string `name` and a list `overrides`")
        allowed = {"name", "overrides", "kind"} | (set(COLUMN_KEYS) if key == "columns" else set())
        unknown = set(item) - allowed
        if unknown:
            raise ConfigError(
                f"{key}[{i}] has unknown keys {sorted(unknown)}; use {', '.join(sorted(allowed))}"
            )
        kind = item.get("kind", "run")
        if kind not in KINDS or (kind == "teacher" and key == "columns"):
            raise ConfigError(
                f"{key}[{i}].kind={kind!r} is not allowed; rows take kind: run, teacher or reference"
            )
        own = {k: COLUMN_KEYS[k](item[k], f"{key}[{i}].{k}") for k in COLUMN_KEYS if item.get(k) is not None}
        axes.append(Axis(item.name, _strings(item.get("overrides"), f"{key}[{i}].overrides"), kind, **own))
    names = [a.name for a in axes]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{key} names must be unique; repeated: {', '.join(dup)}")
    return tuple(axes)


def _metric(value, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a metrics.json key such as test/acc, got {value!r}")
    return value


def _decimals(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 8:
        raise ConfigError(f"{key} must be an integer from 0 to 8, got {value!r}")
    return value


def _flag(value, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def _per_cell(raw, key: str, rows, columns, convert) -> dict:
    """{row: {column: value}} -> {(row, column): convert(value)}, every name checked."""
    if raw is None:
        return {}
    row_names, column_names = [r.name for r in rows], [c.name for c in columns]
    out = {}
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{key} must be a mapping {{row name: {{column name: value}}}}")
    for row, per_column in raw.items():
        if not isinstance(per_column, DictConfig):
            raise ConfigError(f"{key}.{row} must be a mapping {{column name: value}}")
        if row not in row_names:
            raise ConfigError(f"{key} names row {row!r}, which is not in rows ({', '.join(row_names)})")
        for column, value in per_column.items():
            if column not in column_names:
                raise ConfigError(
                    f"{key}.{row} names column {column!r}, which is not in columns "
                    f"({', '.join(column_names)})"
                )
            out[(row, column)] = convert(value, f"{key}.{row}.{column}")
    return out


def _number(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            f"{key} must be a number (the published value, in the table's units), got {value!r}"
        )
    return float(value)


# What a column may set for itself, and how each is checked.
COLUMN_KEYS = {"metric": _metric, "scale": _number, "decimals": _decimals, "higher_is_better": _flag}

ALLOWED = {
    "setup",
    "title",
    "metric",
    "scale",
    "decimals",
    "higher_is_better",
    "seeds",
    "common_overrides",
    "baseline_row",
    "rows",
    "columns",
    "cell_overrides",
    "reference",
    "notes",
}


def load_table(name: str, conf_dir: str | Path) -> TableSpec:
    """Read and check conf/table/<name>.yaml; bad input raises one ConfigError sentence naming the key."""
    path = table_path(name, conf_dir)
    raw = read_yaml(path)
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path} must be a mapping with rows, columns and metric")
    unknown = set(raw) - ALLOWED
    if unknown:
        raise ConfigError(
            f"{path.name} has unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(ALLOWED))}"
        )
    rows, columns = _axes(raw.get("rows"), "rows"), _axes(raw.get("columns"), "columns")
    if not isinstance(raw.get("metric"), str) and not all(c.metric for c in columns):
        raise ConfigError(
            f"{path.name}: metric must be set to a metrics.json key such as test/acc "
            f"(or every column must give its own metric)"
        )
    seeds = raw.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"seeds must be a list of non-negative integers, got {seeds!r}")
    baseline = raw.get("baseline_row")
    if baseline is not None and baseline not in [r.name for r in rows]:
        raise ConfigError(
            f"baseline_row={baseline!r} is not one of the rows ({', '.join(r.name for r in rows)})"
        )
    scale = _number(raw.get("scale", 1.0), "scale")
    decimals = _decimals(raw.get("decimals", 2), "decimals")
    return TableSpec(
        name=path.stem,
        metric=raw.get("metric"),
        rows=rows,
        columns=columns,
        seeds=tuple(dict.fromkeys(seeds)),
        scale=scale,
        decimals=decimals,
        higher_is_better=bool(raw.get("higher_is_better", True)),
        title=str(raw.get("title") or path.stem),
        common_overrides=_strings(raw.get("common_overrides"), "common_overrides"),
        baseline_row=baseline,
        cell_overrides=_per_cell(raw.get("cell_overrides"), "cell_overrides", rows, columns, _strings),
        reference=_per_cell(raw.get("reference"), "reference", rows, columns, _number),
        notes=tuple(str(n) for n in (raw.get("notes") or ())),
        setup=_targets(raw.get("setup")),
    )
