"""The model registry's SQLite store (synchronous; the ModelRegistry actor runs it off the loop).

One row per model version; lineage is a separate edge table so a model can gain parents after
registration, and an edge that would close a cycle is refused. A training config is
identified by the sha256 of its canonical JSON (sorted keys, no whitespace), so the same
config registered twice is caught whatever its key order.
"""

from __future__ import annotations

import json
import operator
import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from crucible.training.registry._records import (
    STAGES,
    AlreadyExists,
    CycleDetected,
    DuplicateConfig,
    InvalidPromotion,
    MetricOp,
    MissingFields,
    ModelNotFound,
    ModelRecord,
    ModelStage,
    config_hash,
)

_OPS: Final[dict[str, Callable[[float, float], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_HASH: Final = re.compile(r"[0-9a-f]{64}")
_REQUIRED: Final = ("name", "version", "base_model", "recipe", "training_config", "checkpoint_path")


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    base_model TEXT NOT NULL,
    recipe TEXT NOT NULL,
    training_config TEXT NOT NULL,
    config_hash TEXT NOT NULL UNIQUE,
    checkpoint_path TEXT NOT NULL,
    metrics TEXT NOT NULL,
    tags TEXT NOT NULL,
    stage TEXT NOT NULL,
    created_at TEXT NOT NULL,
    parent_id INTEGER REFERENCES models(id),
    UNIQUE (name, version)
);
CREATE TABLE IF NOT EXISTS lineage (
    child_id INTEGER NOT NULL REFERENCES models(id),
    parent_id INTEGER NOT NULL REFERENCES models(id),
    PRIMARY KEY (child_id, parent_id)
);
"""
_COLUMNS: Final = (
    "id, name, version, base_model, recipe, training_config, config_hash, checkpoint_path, "
    "metrics, tags, stage, created_at, parent_id"
)


def _record(row: tuple[Any, ...]) -> ModelRecord:
    (id_, name, version, base, recipe, config, digest, path, metrics, tags, stage, at, parent) = row
    return ModelRecord(
        id=id_,
        name=name,
        version=version,
        base_model=base,
        recipe=recipe,
        training_config=json.loads(config),
        config_hash=digest,
        checkpoint_path=path,
        metrics=json.loads(metrics),
        tags=tuple(json.loads(tags)),
        stage=stage,
        created_at=at,
        parent_id=parent,
    )


class RegistryStore:
    """All registry rules, on one SQLite connection (one caller at a time)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def _one(self, sql: str, parameters: Sequence[Any] = ()) -> ModelRecord | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM models {sql}", parameters).fetchone()
        return None if row is None else _record(row)

    def _many(self, sql: str, parameters: Sequence[Any] = ()) -> list[ModelRecord]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM models {sql}", parameters).fetchall()
        return [_record(row) for row in rows]

    # ---- writes --------------------------------------------------------------------------

    def register(
        self,
        name: str,
        version: str,
        base_model: str,
        recipe: str,
        training_config: Mapping[str, Any],
        checkpoint_path: str,
        metrics: Mapping[str, float] | None = None,
        tags: Iterable[str] = (),
        parent: int | None = None,
        *,
        stage: ModelStage = "experiment",
        created_at: str | None = None,
    ) -> ModelRecord:
        given = {
            "name": name,
            "version": version,
            "base_model": base_model,
            "recipe": recipe,
            "training_config": training_config,
            "checkpoint_path": checkpoint_path,
        }
        missing = [field for field in _REQUIRED if not given[field]]
        if missing:
            raise MissingFields(missing)
        if stage not in STAGES:
            raise InvalidPromotion(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        record = ModelRecord(
            id=0,
            name=name,
            version=version,
            base_model=base_model,
            recipe=recipe,
            training_config=dict(training_config),
            config_hash=config_hash(training_config),
            checkpoint_path=checkpoint_path,
            metrics={key: float(value) for key, value in (metrics or {}).items()},
            tags=tuple(sorted(set(tags))),
            stage=stage,
            created_at=created_at or datetime.now(UTC).isoformat(),
            parent_id=parent,
        )
        with self._db:  # one transaction: the checks and the insert see the same state
            self._db.execute("BEGIN IMMEDIATE")
            model_id = self._insert(record)
        return self.get(model_id)

    def _insert(self, record: ModelRecord) -> int:
        """Check the uniqueness rules and insert (inside the caller's transaction)."""
        if self._one("WHERE name = ? AND version = ?", (record.name, record.version)):
            raise AlreadyExists(
                f"model {record.name!r} version {record.version!r} is already registered"
            )
        existing = self._one("WHERE config_hash = ?", (record.config_hash,))
        if existing is not None:
            raise DuplicateConfig(existing)
        parent = record.parent_id
        if parent is not None and self._one("WHERE id = ?", (parent,)) is None:
            raise ModelNotFound(f"parent model {parent} is not registered")
        cursor = self._db.execute(
            "INSERT INTO models (name, version, base_model, recipe, training_config, "
            "config_hash, checkpoint_path, metrics, tags, stage, created_at, parent_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.name,
                record.version,
                record.base_model,
                record.recipe,
                json.dumps(record.training_config, sort_keys=True, default=str),
                record.config_hash,
                record.checkpoint_path,
                json.dumps(record.metrics),
                json.dumps(list(record.tags)),
                record.stage,
                record.created_at,
                parent,
            ),
        )
        model_id = int(cursor.lastrowid or 0)
        if parent is not None:
            self._db.execute(
                "INSERT INTO lineage (child_id, parent_id) VALUES (?, ?)", (model_id, parent)
            )
        return model_id

    def update_metrics(self, model_id: int, metrics: Mapping[str, float]) -> ModelRecord:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            merged = {**self.get(model_id).metrics, **{k: float(v) for k, v in metrics.items()}}
            self._db.execute(
                "UPDATE models SET metrics = ? WHERE id = ?", (json.dumps(merged), model_id)
            )
        return self.get(model_id)

    def promote(self, model_id: int, stage: ModelStage) -> ModelRecord:
        """Move forward through experiment → staging → production → archived, one stage at a
        time; archived is reachable from any stage and is final."""
        if stage not in STAGES:
            raise InvalidPromotion(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        current = self.get(model_id).stage
        position = STAGES.index(current)
        allowed = {"archived"} if current != "archived" else set()
        if position + 1 < len(STAGES):
            allowed.add(STAGES[position + 1])
        if stage not in allowed:
            raise InvalidPromotion(
                f"model {model_id} is in {current!r}; it can move to "
                f"{' or '.join(sorted(allowed)) or 'nothing (archived is final)'}, not {stage!r}"
            )
        with self._db:
            self._db.execute("UPDATE models SET stage = ? WHERE id = ?", (stage, model_id))
        return self.get(model_id)

    def add_parent(self, child_id: int, parent_id: int) -> None:
        self.get(child_id)
        self.get(parent_id)
        if child_id == parent_id or child_id in {m.id for m in self.ancestors(parent_id)}:
            raise CycleDetected(
                f"making model {parent_id} a parent of {child_id} would close a lineage cycle"
            )
        with self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO lineage (child_id, parent_id) VALUES (?, ?)",
                (child_id, parent_id),
            )

    # ---- reads ---------------------------------------------------------------------------

    def get(self, model_id: int) -> ModelRecord:
        record = self._one("WHERE id = ?", (model_id,))
        if record is None:
            raise ModelNotFound(f"no model with id {model_id}")
        return record

    def get_by_config_hash(self, digest: str) -> ModelRecord:
        """The model registered with the training config whose ``config_hash`` is ``digest``
        (a config is registered once, so there is at most one)."""
        if not _HASH.fullmatch(digest):
            raise ValueError(
                f"a config hash is 64 lowercase hex digits (config_hash(training_config)), "
                f"got {digest!r}"
            )
        record = self._one("WHERE config_hash = ?", (digest,))
        if record is None:
            raise ModelNotFound(f"no model is registered with config hash {digest}")
        return record

    def list_models(
        self, name: str | None = None, stage: ModelStage | None = None, limit: int | None = None
    ) -> list[ModelRecord]:
        """Newest first."""
        clauses, parameters = [], []
        if name is not None:
            clauses.append("name = ?")
            parameters.append(name)
        if stage is not None:
            clauses.append("stage = ?")
            parameters.append(stage)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        records = self._many(f"{where} ORDER BY id DESC", parameters)
        return records if limit is None else records[:limit]

    def find(
        self,
        tags: Iterable[str] = (),
        base_model: str | None = None,
        recipe: str | None = None,
        metric: tuple[str, MetricOp, float] | None = None,
    ) -> list[ModelRecord]:
        """Models with every tag in ``tags`` and matching the other filters, newest first."""
        required = set(tags)
        if metric is not None and metric[1] not in _OPS:
            raise ValueError(f"metric operator must be one of {', '.join(_OPS)}, got {metric[1]!r}")
        found = []
        for record in self.list_models():
            if not required <= set(record.tags):
                continue
            if base_model is not None and record.base_model != base_model:
                continue
            if recipe is not None and record.recipe != recipe:
                continue
            if metric is not None:
                name, op, value = metric
                if name not in record.metrics or not _OPS[op](record.metrics[name], value):
                    continue
            found.append(record)
        return found

    def find_for_ensemble(
        self,
        metric: str,
        top_n: int = 5,
        tags: Iterable[str] = (),
        mode: Literal["min", "max"] = "max",
    ) -> list[ModelRecord]:
        """The ``top_n`` best models by ``metric`` (those lacking it are left out)."""
        having = [r for r in self.find(tags=tags) if metric in r.metrics]
        sign = -1.0 if mode == "max" else 1.0
        return sorted(having, key=lambda r: sign * r.metrics[metric])[:top_n]

    def _walk(self, model_id: int, up: bool) -> list[ModelRecord]:
        self.get(model_id)
        near, far = ("child_id", "parent_id") if up else ("parent_id", "child_id")
        rows = self._db.execute(
            f"WITH RECURSIVE walk(id, depth) AS ("
            f" SELECT {far}, 1 FROM lineage WHERE {near} = ?"
            f" UNION SELECT lineage.{far}, walk.depth + 1 FROM lineage"
            f" JOIN walk ON lineage.{near} = walk.id)"
            f" SELECT id, MIN(depth) FROM walk GROUP BY id ORDER BY MIN(depth), id",
            (model_id,),
        ).fetchall()
        return [self.get(row[0]) for row in rows]

    def ancestors(self, model_id: int) -> list[ModelRecord]:
        """Parents, then their parents, ... (nearest first)."""
        return self._walk(model_id, up=True)

    def descendants(self, model_id: int) -> list[ModelRecord]:
        return self._walk(model_id, up=False)

    # ---- export / import -----------------------------------------------------------------

    def export_json(self) -> str:
        models = [msgspec.to_builtins(record) for record in reversed(self.list_models())]
        edges = self._db.execute(
            "SELECT child_id, parent_id FROM lineage ORDER BY child_id, parent_id"
        ).fetchall()
        return json.dumps({"models": models, "lineage": [list(edge) for edge in edges]}, indent=2)

    def import_json(self, text: str) -> list[ModelRecord]:
        """Register every model of an export (new ids; lineage remapped). Nothing is imported
        if any model conflicts (AlreadyExists / DuplicateConfig)."""
        data = json.loads(text)
        new_ids: dict[int, int] = {}
        with self._db:  # one transaction: all or nothing
            self._db.execute("BEGIN IMMEDIATE")
            for row in data["models"]:
                record = msgspec.convert(row, ModelRecord)
                new_ids[record.id] = self._insert(msgspec.structs.replace(record, parent_id=None))
            for child, parent in data.get("lineage", []):
                self._db.execute(
                    "INSERT OR IGNORE INTO lineage (child_id, parent_id) VALUES (?, ?)",
                    (new_ids[child], new_ids[parent]),
                )
            for row in data["models"]:
                if row.get("parent_id") is not None:
                    self._db.execute(
                        "UPDATE models SET parent_id = ? WHERE id = ?",
                        (new_ids[row["parent_id"]], new_ids[row["id"]]),
                    )
        return [self.get(model_id) for model_id in new_ids.values()]
