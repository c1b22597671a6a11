"""``stages.json``: one record per stage (settings hash, status, start/end times, the upstream runs it used).

A stage counts as done when its record says ``done``, its settings hash and the runs of the stages it
depends on are unchanged, and its marker file exists. Each finished run gets a fresh ``run_id``; stages
downstream of a redone stage see a different upstream ``run_id`` and are redone too.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from depthprune.core.io import write_json_atomic

STAGES_FILE = "stages.json"


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class StageLog:
    """The records of one experiment directory, rewritten atomically after every change."""

    def __init__(self, root: Path):
        self.root = root
        self.path = root / STAGES_FILE
        self.data = {"version": 1, "stages": {}}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError:  # never written half (atomic), but stay usable if edited by hand
                self.data = {"version": 1, "stages": {}}

    @property
    def stages(self) -> dict:
        return self.data.setdefault("stages", {})

    def set_plan(self, stages) -> None:
        """Record every planned stage (settings hash, dependencies), so a report can tell what is current."""
        self.data["plan"] = {s.id: {"hash": config_hash(s.config), "deps": list(s.deps),
                                    "marker": str(s.marker.relative_to(self.root))} for s in stages}
        self.save()

    def get(self, stage_id: str) -> dict | None:
        return self.stages.get(stage_id)

    def save(self) -> None:
        write_json_atomic(self.path, self.data)

    def is_done(self, stage, upstream: dict) -> bool:
        rec = self.get(stage.id)
        return (rec is not None and rec.get("status") == "done" and rec.get("hash") == config_hash(stage.config)
                and rec.get("upstream") == upstream and stage.marker.exists())

    def can_resume(self, stage, upstream: dict) -> bool:
        """An unfinished earlier attempt with the same settings and inputs (its checkpoints may be reused)."""
        rec = self.get(stage.id)
        return (rec is not None and rec.get("status") != "done" and rec.get("hash") == config_hash(stage.config)
                and rec.get("upstream") == upstream)

    def find_done(self, kind: str, exclude_id: str, hash_: str) -> Path | None:
        """The marker of another finished stage of ``kind`` with identical settings, if any."""
        for sid, rec in self.stages.items():
            if sid != exclude_id and rec.get("kind") == kind and rec.get("hash") == hash_ \
                    and rec.get("status") == "done" and rec.get("marker"):
                path = self.root / rec["marker"]
                if path.exists():
                    return path
        return None

    def start(self, stage, upstream: dict) -> None:
        prev = self.get(stage.id) or {}
        h = config_hash(stage.config)
        self.stages[stage.id] = {
            "kind": stage.kind, "hash": h, "status": "running", "started": now(), "started_unix": time.time(),
            "finished": None, "wall_s": None, "run_id": None, "upstream": upstream,
            "attempt": prev.get("attempt", 0) + 1 if prev.get("hash") == h else 1,
            "marker": str(stage.marker.relative_to(self.root)), "config": stage.config,
        }
        self.save()

    def finish(self, stage) -> None:
        rec = self.stages[stage.id]
        rec.update(status="done", finished=now(), wall_s=round(time.time() - rec["started_unix"], 3),
                   run_id=uuid.uuid4().hex[:12])
        self.save()

    def stop(self, stage, status: str, error: str | None = None) -> None:
        rec = self.stages[stage.id]
        rec.update(status=status, finished=now(), wall_s=round(time.time() - rec["started_unix"], 3))
        if error:
            rec["error"] = error
        self.save()

    def run_id(self, stage_id: str) -> str | None:
        rec = self.get(stage_id)
        return rec.get("run_id") if rec else None
