"""The gateway's JSON writer: orjson, and the standard library for what orjson refuses."""

from __future__ import annotations

import json

import pytest
from modelherd.plugins.serve import jsonio


def test_dumps_is_compact_utf8_json_that_reads_back_the_same() -> None:
    obj = {"id": "chatcmpl-1", "content": "héllo ✓", "n": [1, 2.5, None, True], "o": {}}
    out = jsonio.dumps(obj)
    assert isinstance(out, bytes)
    assert json.loads(out) == obj
    # compact separators, UTF-8 as is (not \\u escapes): what the standard library writes so
    assert out == json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize(
    "obj",
    [
        {"seed": 2**70},  # past 64 bits: orjson raises, the standard library writes it exactly
        {1: "a non-string key"},
    ],
)
def test_what_orjson_refuses_is_written_by_the_standard_library(obj: dict) -> None:
    out = jsonio.dumps(obj)
    assert out == json.dumps(obj, separators=(",", ":")).encode()
    if "seed" in obj:
        assert json.loads(out)["seed"] == 2**70


def test_json_response_sets_the_type_status_and_headers() -> None:
    response = jsonio.json_response({"ok": True}, status=201, headers={"x-herd-cache": "miss"})
    assert response.status == 201
    assert response.content_type == "application/json"
    assert response.headers["x-herd-cache"] == "miss"
    assert response.body == b'{"ok":true}'


def test_orjson_is_the_writer_when_installed() -> None:
    pytest.importorskip("orjson")
    assert jsonio.orjson is not None
