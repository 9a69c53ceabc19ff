"""The neutral message shape: parts, images, tool calls, tool answers; and cache keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from modelherd.cache import request_key
from modelherd.types import (
    ChatRequest,
    ChatResponse,
    ImagePart,
    Message,
    TextPart,
    ToolCall,
    trusted,
)
from pydantic import ValidationError

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8


def test_content_may_be_parts() -> None:
    m = Message(
        role="user",
        content=[
            {"type": "text", "text": "what is "},
            {"type": "image", "data": PNG},
            TextPart(text="this?"),
        ],
    )
    assert m.text == "what is this?"
    assert m.images[0].media_type == "image/png"
    assert not m.is_plain
    assert Message(role="user", content="hi").is_plain


def test_image_sources_and_media_types(tmp_path: Path) -> None:
    path = tmp_path / "chart.jpg"
    path.write_bytes(b"\xff\xd8\xff" + b"\x00" * 4)
    by_path = ImagePart(path=str(path))
    assert by_path.media_type == "image/jpeg"
    assert by_path.load() == ("image/jpeg", path.read_bytes())
    assert by_path.data_url().startswith("data:image/jpeg;base64,/9j/")
    by_url = ImagePart(url="https://example.invalid/a.png")
    assert by_url.is_remote and by_url.data_url() == "https://example.invalid/a.png"
    data_url = ImagePart(url="data:image/gif;base64,R0lGODlh")
    assert data_url.media_type == "image/gif" and data_url.load()[1] == b"GIF89a"
    # bytes survive JSON (cache entries) as base64
    dumped = Message(role="user", content=[ImagePart(data=PNG)]).model_dump_json()
    assert Message.model_validate_json(dumped).images[0].data == PNG


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "an image part needs exactly one of url=, data= or path= (got none)"),
        ({"url": "https://x", "data": PNG}, "exactly one of url=, data= or path= (got url, data)"),
        ({"data": b"not an image"}, "an image given as data= needs media_type="),
        (
            {"path": "chart"},
            "cannot tell the image type of 'chart' from its name — pass media_type=",
        ),
        (
            {"data": PNG, "media_type": "text/plain"},
            "media_type 'text/plain' is not an image/* type",
        ),
    ],
)
def test_bad_images_say_what_to_fix(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        ImagePart(**kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_a_missing_image_file_is_named() -> None:
    with pytest.raises(ValueError, match=r"cannot read the image '/nonexistent/x.png'"):
        ImagePart(path="/nonexistent/x.png").load()


def test_tool_messages_need_the_call_id_and_only_assistants_call_tools() -> None:
    call = ToolCall(id="call_1", name="get_weather", arguments={"city": "Oslo"})
    assistant = Message(role="assistant", tool_calls=[call])
    assert assistant.content == ""
    answer = Message.tool_result(call, {"temp": 3})
    assert (answer.role, answer.tool_call_id, answer.name, answer.content) == (
        "tool",
        "call_1",
        "get_weather",
        '{"temp": 3}',
    )
    bad = call.model_copy(update={"error": "city: Field required"})
    feedback = Message.tool_error(bad)
    assert feedback.content == (
        "error: city: Field required — call get_weather again with corrected arguments"
    )
    with pytest.raises(ValidationError, match="a 'tool' message needs tool_call_id="):
        Message(role="tool", content="3")
    with pytest.raises(
        ValidationError, match="only assistant messages carry tool_calls, not 'user'"
    ):
        Message(role="user", content="x", tool_calls=[call])


def test_trusted_fills_fields_the_caller_left_out() -> None:
    m = trusted(Message, {"role": "user", "content": "x"})
    assert m.tool_calls == [] and m.tool_call_id is None and m.is_plain
    r = trusted(ChatResponse, {"content": "x", "model": "m", "provider": "p"})
    assert r.tool_calls == [] and r.parsed is None and r.usage.input_tokens == 0


def _key(*messages: Message, **options: object) -> str:
    return request_key(
        ChatRequest(alias="a", provider="p", model="m", messages=list(messages), options=options)
    )


def test_the_cache_key_covers_parts_tool_calls_and_tool_answers(tmp_path: Path) -> None:
    call = ToolCall(id="c1", name="f", arguments={"x": 1})
    base = _key(Message(role="user", content="hi"))
    assert base == _key(Message(role="user", content="hi"))
    assert base != _key(Message(role="user", content=[TextPart(text="hi")]))
    with_image = _key(Message(role="user", content=[TextPart(text="hi"), ImagePart(data=PNG)]))
    other_image = _key(
        Message(role="user", content=[TextPart(text="hi"), ImagePart(data=PNG + b"\x01")])
    )
    assert with_image != other_image
    path = tmp_path / "a.png"
    path.write_bytes(PNG)
    by_path = _key(Message(role="user", content=[ImagePart(path=str(path))]))
    path.write_bytes(PNG + b"\x02")  # the same path, new content: a new request
    assert by_path != _key(Message(role="user", content=[ImagePart(path=str(path))]))
    calls_1 = _key(Message(role="assistant", tool_calls=[call]))
    calls_2 = _key(
        Message(role="assistant", tool_calls=[call.model_copy(update={"arguments": {"x": 2}})])
    )
    assert calls_1 != calls_2
    answer_1 = _key(Message(role="tool", content="1", tool_call_id="c1"))
    assert answer_1 != _key(Message(role="tool", content="1", tool_call_id="c2"))
    tool = {"name": "f", "parameters": {"type": "object"}}
    assert _key(Message(role="user", content="hi"), tools=[tool]) != _key(
        Message(role="user", content="hi"), tools=[tool], tool_choice="required"
    )
