"""Helpers shared by the agent tests (imported as a plain module: tests/ has no packages)."""

from __future__ import annotations

import json
from typing import Any

import anyio
from modelherd.testing import MockModel


class CancelAwareModel(MockModel):
    """A MockModel that records whether its calls were cancelled mid-flight."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cancelled = 0
        self.finished = 0

    async def chat(self, request: Any) -> Any:
        try:
            response = await super().chat(request)
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        self.finished += 1
        return response


def answer(label: str, confidence: float = 0.8, key: str = "answer", why: str = "because") -> str:
    return json.dumps({key: label, "confidence": confidence, "reasoning": why})


def mock(name: str, *answers: Any, latency: float = 0.0, cls: type[MockModel] = MockModel) -> Any:
    """A MockModel with its own model id: identical requests to *different* model ids are
    not coalesced by the kernel (it shares one upstream call per model and request)."""
    from modelherd.types import ModelSpec

    model = cls(ModelSpec(alias=name, provider="mock", model=f"mock-{name}"), latency=latency)
    model.enqueue(*answers)
    return model
