"""The audit log: metadata of every call, no content unless opted in, size rotation."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import anyio
import pytest
from modelherd import ConfigError, ProviderError
from modelherd.plugins.observability import audit
from modelherd.testing import MockModel, make_herd


def _herd(path: Path, models: dict[str, MockModel] | None = None, **settings: Any) -> Any:
    return make_herd(
        models or {"mock": MockModel(default="the answer")},
        config={"herd": {"retries": 0}, "plugins": {"audit": {"path": str(path), **settings}}},
        plugins=(audit,),
        fallbacks={"primary": ["mock"]},
    )


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_call_is_recorded_without_content(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    primary = MockModel()
    primary.enqueue(ProviderError("down"))
    broken = MockModel()
    broken.enqueue(ProviderError("down"))
    herd = _herd(
        path, {"mock": MockModel(default="the answer"), "primary": primary, "broken": broken}
    )

    async def main() -> None:
        async with herd:
            await herd.chat("mock", "top secret prompt", tenant="acme", agent="trading")
            answered = await herd.chat("primary", "top secret prompt")
            assert answered.fallback_from == "primary"
            with pytest.raises(ProviderError):
                await herd.chat("broken", "top secret prompt")

    anyio.run(main)
    text = path.read_text()
    assert "top secret" not in text and "the answer" not in text
    ok, fell_back, failed = _lines(path)
    assert ok["outcome"] == "ok" and ok["tenant"] == "acme" and ok["agent"] == "trading"
    assert ok["alias"] == "mock" and ok["input_tokens"] == 3 and ok["output_tokens"] == 2
    assert ok["latency_s"] >= 0 and ok["cache_tier"] is None
    assert ok["time"].endswith("+00:00")
    assert fell_back["fallback_from"] == "primary" and fell_back["answered_by"] == "mock"
    assert failed["outcome"] == "error" and failed["error_type"] == "ProviderError"
    assert failed["latency_s"] is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_content_only_when_opted_in(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    herd = _herd(path, include_content=True)

    async def main() -> None:
        async with herd:
            await herd.chat("mock", "top secret prompt")

    anyio.run(main)
    (line,) = _lines(path)
    assert line["messages"] == [{"role": "user", "content": "top secret prompt"}]
    assert line["answer"] == "the answer"


def test_rotation_by_size_keeps_every_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    herd = _herd(path, max_bytes=2048, backups=10)

    async def main() -> None:
        async with herd:
            for index in range(40):
                await herd.chat("mock", f"call {index}", cache="no-store")

    anyio.run(main)
    files = sorted(tmp_path.glob("audit.jsonl*"))
    assert len(files) > 2
    assert all(f.stat().st_size <= 2048 for f in files)
    # oldest first: .N ... .1, then the live file
    ordered = sorted((f for f in files if f != path), key=lambda f: -int(f.suffix[1:]))
    lines = [line for f in [*ordered, path] for line in _lines(f)]
    assert len(lines) == 40
    assert [x["time"] for x in lines] == sorted(x["time"] for x in lines)


def test_off_unless_configured(tmp_path: Path) -> None:
    herd = make_herd(plugins=(audit,))

    async def main() -> None:
        async with herd:
            await herd.chat("mock", "hi")
            assert audit.audit_log(herd) is None
            assert not herd.hook.after_call.get_hookimpls()

    anyio.run(main)


def test_bad_settings_and_unwritable_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        audit.parse_settings({"max_size": 1}, "plugins.toml")
    assert str(err.value).startswith("plugins.toml: [plugins.audit] max_size: unknown key")
    assert "allowed: enabled, path, max_bytes" in str(err.value)
    blocker = tmp_path / "file"
    blocker.write_text("")
    herd = _herd(blocker / "audit.jsonl")
    herd.strict = True

    async def main() -> None:
        await herd.start()

    with pytest.raises(Exception) as start_err:
        anyio.run(main)
    assert "[plugins.audit] path: cannot open" in str(start_err.value.__cause__ or start_err.value)
