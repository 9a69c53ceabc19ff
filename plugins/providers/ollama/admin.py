"""Ollama's model management: list (tags), show, ps, pull, unload, and the health flow.

Plain dicts come back (JSON-ready for `--json`), with sizes in bytes and times as
ISO strings. Each function takes an `ollama.AsyncClient`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from modelherd.types import Health

if TYPE_CHECKING:
    from modelherd.plugins.providers.ollama import OllamaModel


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None and hasattr(value, "isoformat") else value


def _details(details: Any) -> dict[str, Any]:
    if details is None:
        return {}
    return {
        "family": details.family,
        "parameter_size": details.parameter_size,
        "quantization_level": details.quantization_level,
        "format": details.format,
    }


async def list_models(client: Any) -> list[dict[str, Any]]:
    """Models pulled on the server (`/api/tags`)."""
    reply = await client.list()
    return [
        {
            "name": m.model,
            "size": int(m.size or 0),
            "digest": m.digest,
            "modified_at": _iso(m.modified_at),
            **_details(m.details),
        }
        for m in reply.models
    ]


async def show(client: Any, name: str) -> dict[str, Any]:
    """Context length, parameter count, quantization and capabilities (`/api/show`)."""
    reply = await client.show(name)
    info: dict[str, Any] = dict(reply.modelinfo or {})
    arch = info.get("general.architecture", "")
    return {
        "name": name,
        "context_length": info.get(f"{arch}.context_length"),
        "parameter_count": info.get("general.parameter_count"),
        "capabilities": list(reply.capabilities or []),
        "parameters": reply.parameters,
        "modified_at": _iso(reply.modified_at),
        **_details(reply.details),
    }


async def ps(client: Any) -> list[dict[str, Any]]:
    """Models loaded in memory now (`/api/ps`): size, size_vram, expires_at."""
    reply = await client.ps()
    return [
        {
            "name": m.model or m.name,
            "size": int(m.size or 0),
            "size_vram": int(m.size_vram or 0),
            "expires_at": _iso(m.expires_at),
            "context_length": m.context_length,
            **_details(m.details),
        }
        for m in reply.models
    ]


async def pull(client: Any, name: str) -> AsyncIterator[dict[str, Any]]:
    """Progress of `/api/pull`: status, digest, total, completed — ending with "success"."""
    async for part in await client.pull(name, stream=True):
        yield {
            "status": part.status,
            "digest": part.digest,
            "total": part.total,
            "completed": part.completed,
        }


async def unload(client: Any, name: str) -> bool:
    """Free the model's memory now: an empty generate with keep_alive 0."""
    reply = await client.generate(model=name, keep_alive=0)
    return bool(reply.done)


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    return f"{size:.1f} TB"


async def diagnose(model: OllamaModel) -> Health:
    """The troubleshooting flow: is the server up, is the model pulled, is it loaded."""
    import httpx
    import ollama

    started = time.perf_counter()
    client = model.client()
    try:
        pulled = await list_models(client)
    except (ConnectionError, httpx.ConnectError):
        error = model.not_running()
        detail, _, fix = error.message.partition(" — ")
        return Health(ok=False, detail=detail, fix=fix)
    except (httpx.HTTPError, ollama.ResponseError, ValueError) as exc:
        return Health(
            ok=False,
            detail=f"{model.host} is not answering like Ollama ({type(exc).__name__})",
            fix="check OLLAMA_HOST / host points at an Ollama server",
        )
    latency = time.perf_counter() - started
    names = {m["name"]: m for m in pulled}
    found = names.get(model.name)
    if found is None:
        from modelherd.plugins.providers.ollama import close_tags

        close = close_tags(model.name, list(names))
        also = f" (pulled here: {', '.join(close)})" if close else ""
        return Health(
            ok=False,
            detail=f"model {model.name} is not pulled on {model.host}{also}",
            fix=f"run `herd pull {model.name}`",
            latency_s=latency,
        )
    loaded = {m["name"]: m for m in await ps(client)}
    size = human_size(found["size"])
    quant = found.get("quantization_level") or "?"
    state = "not loaded (first call loads it)"
    if model.name in loaded:
        entry = loaded[model.name]
        state = (
            f"loaded, {human_size(entry['size_vram'])} in VRAM of "
            f"{human_size(entry['size'])}, until {entry['expires_at']}"
        )
    return Health(
        ok=True, detail=f"{model.name} pulled ({size}, {quant}); {state}", latency_s=latency
    )
