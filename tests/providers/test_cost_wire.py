"""Cost end to end: the official OpenAI SDK reads usage off the wire (loopback server),
the cost plugin prices it, the call log stores it, and `herd chat --verbose` shows it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from modelherd import Herd
from modelherd.config import HerdConfig
from modelherd.plugins import cost
from modelherd.plugins.providers import openai as openai_provider

from .fake_openai import API_KEY
from .loopback import LoopbackServer

pytestmark = pytest.mark.anyio

#: the fake server's usage for any echo answer: 11 prompt tokens (3 cached), 5 completion;
#: gpt-4o is $2.50 in, $1.25 cached in, $10 out per million tokens
GPT_4O_CALL = (8 * 2.50 + 3 * 1.25 + 5 * 10.0) / 1e6


async def test_openai_wire_usage_is_priced(openai_server: LoopbackServer) -> None:
    config = HerdConfig.model_validate(
        {
            "herd": {"retries": 0, "timeout": 5.0},
            "models": {
                "cloud": {
                    "provider": "openai",
                    "model": "gpt-4o",
                    "base_url": f"{openai_server.url}/v1",
                }
            },
        }
    )
    herd = Herd(
        config,
        env={"OPENAI_API_KEY": API_KEY},
        load_entry_points=False,
        plugins=(openai_provider, cost),
    )
    async with herd:
        response = await herd.chat("cloud", "hello")
    assert response.usage.cache_read_tokens == 3
    assert response.usage.cost is not None
    assert response.usage.cost.amount == pytest.approx(GPT_4O_CALL)
    assert pytest.approx(73.75e-6) == GPT_4O_CALL


def test_herd_chat_verbose_then_herd_logs(openai_server: LoopbackServer, tmp_path: Path) -> None:
    config = tmp_path / "plugins.toml"
    config.write_text(
        f"""
[herd]
default_model = "cloud"
retries = 0

[models.cloud]
provider = "openai"
model = "gpt-4o"
base_url = "{openai_server.url}/v1"

[plugins.logs]
path = "{tmp_path}/logs.db"
"""
    )
    env = {**os.environ, "HERD_CONFIG": str(config), "OPENAI_API_KEY": API_KEY}

    def herd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "modelherd.cli", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=120,
        )

    chat = herd("chat", "--verbose", "--no-stream", "hi there")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip() == "echo: hi there"
    stats = chat.stderr.strip().splitlines()[-1]
    assert stats.startswith("[cloud · openai/gpt-4o · cache miss · 11 in / 5 out tokens · ")
    assert " tok/s · " in stats
    assert stats.endswith(" · cost $0.000074]")

    listed = herd("logs", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert (row["alias"], row["provider"], row["model"]) == ("cloud", "openai", "gpt-4o")
    assert row["cost"] == pytest.approx(GPT_4O_CALL)
    assert (row["input_tokens"], row["output_tokens"]) == (11, 5)
    usage = json.loads(herd("usage", "--by", "provider", "--json").stdout)
    assert usage[0]["provider"] == "openai" and usage[0]["calls"] == 1
    assert usage[0]["cost"] == pytest.approx(GPT_4O_CALL)
