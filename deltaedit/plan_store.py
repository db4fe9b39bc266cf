"""Kept edits of the page's sessions, for the live strength slider."""

from __future__ import annotations

import threading
import uuid

from .errors import InputError
from .pipelines.diffusion_editor import DiffusionPlan


class PlanStore:
    """The last edit of each of the page's sessions, kept so that moving the strength slider
    redraws it without text, mapper, encoder or inversion work. Bounded: the oldest goes first; a
    session's own is dropped when its page closes (the app's `unload` event)."""

    def __init__(self, max_plans: int = 16):
        self.max_plans = max_plans
        self._plans: dict[str, tuple[str, object]] = {}
        self._lock = threading.Lock()

    def keep(self, domain: str, plan, token: str | None = None) -> str:
        """Keep `plan` under `token` (the page's session; a new one when None), replacing its last."""
        token = token or uuid.uuid4().hex
        with self._lock:
            self._plans.pop(token, None)  # the newest goes last: evicted last
            self._plans[token] = (domain, plan)
            while len(self._plans) > self.max_plans:
                self._plans.pop(next(iter(self._plans)))
        return token

    def get(self, token) -> tuple[str, object]:
        with self._lock:
            kept = self._plans.get(token) if isinstance(token, str) else None
        if kept is None:
            raise InputError("the edit to redraw is no longer kept (the page was idle, or the server restarted): press Edit again")
        return kept

    def has(self, token) -> bool:
        with self._lock:
            return isinstance(token, str) and token in self._plans

    def backbone(self, token) -> str | None:
        """Which backbone's edit `token` keeps ("gan", "diffusion"), or None."""
        with self._lock:
            kept = self._plans.get(token) if isinstance(token, str) else None
        return None if kept is None else plan_backbone(kept[1])

    def drop(self, token) -> None:
        with self._lock:
            self._plans.pop(token, None) if isinstance(token, str) else None

    def __len__(self) -> int:
        return len(self._plans)


PLANS = PlanStore()


def plan_backbone(plan) -> str:
    """The backbone a kept plan decodes with."""
    return "diffusion" if isinstance(plan, DiffusionPlan) else "gan"
