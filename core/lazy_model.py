"""`LazyModel`: the pydantic base class of every modelherd model.

Building a pydantic model's validator costs ~14 M instructions per class; modelherd
defines ~60 of them (requests, responses, every plugin's settings, the agents'
decisions), and most processes use a handful: `herd models` never validates a
ChatResponse, a chat never validates a copy-trading decision. With `defer_build`
the validator is built on the class's first use (once per process, a few hundred
microseconds) instead of at import, which halves what the classes cost `import
modelherd` (bench/overhead.py, docs/performance.md).

Subclasses keep their own `model_config`; pydantic merges it with this one.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class LazyModel(BaseModel):
    """A pydantic model whose validator and serializer are built on first use."""

    model_config = ConfigDict(defer_build=True)


__all__ = ["LazyModel"]
