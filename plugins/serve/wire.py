"""Each vendor's messages -> the herd's `Message` (text and image parts, tool calls, tool
answers), and the herd's tool calls -> each vendor's shape.

An image is taken only as a URL or inline bytes, never as a path: a request from the
network must not make the gateway read its own files.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from modelherd.plugins.serve.auth import Refusal
from modelherd.types import ImagePart, Message, TextPart, ToolCall
from pydantic import ValidationError

_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}


def _bad(where: str, why: str) -> Refusal:
    return Refusal(400, "invalid_messages", f"{where}: {why}")


def _image_url(part: dict[str, Any], where: str) -> ImagePart:
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str) or not url.startswith(("http://", "https://", "data:image/")):
        raise _bad(where, "image_url.url must be an http(s) URL or a data:image/… URL")
    try:
        return ImagePart(url=url)
    except ValidationError as exc:
        raise _bad(where, exc.errors()[0]["msg"]) from None


def _image_bytes(data: str, media_type: str | None, where: str) -> ImagePart:
    try:
        raw = base64.b64decode(data, validate=True)
        return ImagePart(data=raw, media_type=media_type)
    except (binascii.Error, ValueError) as exc:
        msg = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else "not valid base64"
        raise _bad(where, f"image: {msg}") from None


def openai_content(content: Any, where: str) -> str | list[TextPart | ImagePart]:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(where, "content must be a string or a list of parts")
    parts: list[TextPart | ImagePart] = []
    for index, part in enumerate(content):
        at = f"{where}.content[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text"):
            parts.append(TextPart(text=str(part.get("text", ""))))
        elif kind == "image_url":
            parts.append(_image_url(part, at))
        else:
            raise Refusal(
                400,
                "unsupported_content",
                f"{at}: content part of type '{kind}' is not supported by this gateway — "
                f"send text or image_url parts",
            )
    if all(isinstance(p, TextPart) for p in parts):
        return "".join(p.text for p in parts if isinstance(p, TextPart))
    return parts


def _arguments(raw: Any) -> tuple[dict[str, Any], str]:
    if isinstance(raw, dict):
        return raw, json.dumps(raw)
    text = raw if isinstance(raw, str) else ""
    try:
        parsed = json.loads(text) if text else {}
    except ValueError:
        parsed = {}
    return (parsed if isinstance(parsed, dict) else {}), text


def openai_messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise Refusal(400, "invalid_messages", '"messages" must be a non-empty list')
    out: list[Message] = []
    for index, item in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise _bad(where, "must be an object")
        role = _ROLES.get(str(item.get("role")))
        if role is None:
            raise Refusal(
                400,
                "invalid_role",
                f"{where}.role {item.get('role')!r} is not one of {', '.join(_ROLES)}",
            )
        calls = []
        for n, call in enumerate(item.get("tool_calls") or []):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise _bad(f"{where}.tool_calls[{n}]", "needs function.name")
            arguments, text = _arguments(function.get("arguments"))
            calls.append(
                ToolCall(
                    id=str(call.get("id") or f"call_{n}"),
                    name=function["name"],
                    arguments=arguments,
                    raw_arguments=text,
                )
            )
        try:
            out.append(
                Message(
                    role=role,
                    content=openai_content(item.get("content"), where),
                    tool_calls=calls,
                    tool_call_id=item.get("tool_call_id"),
                    name=item.get("name") if role == "tool" else None,
                )
            )
        except ValidationError as exc:
            raise _bad(where, exc.errors()[0]["msg"]) from None
    return out


def ollama_messages(raw: Any) -> list[Message]:
    """Ollama's messages: `images` are base64 strings; `tool_calls` carry dict arguments."""
    if not isinstance(raw, list) or not raw:
        raise Refusal(400, "invalid_messages", '"messages" must be a non-empty list')
    out: list[Message] = []
    for index, item in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise _bad(where, "must be an object")
        converted = dict(item)
        images = converted.pop("images", None) or []
        extra_calls = converted.pop("tool_calls", None) or []
        tool_name = converted.pop("tool_name", None)
        converted.pop("thinking", None)
        converted["tool_calls"] = [
            {
                "id": c.get("id") or f"call_{n}",
                "function": {
                    "name": (c.get("function") or {}).get("name"),
                    "arguments": (c.get("function") or {}).get("arguments") or {},
                },
            }
            for n, c in enumerate(extra_calls)
            if isinstance(c, dict)
        ]
        if converted.get("role") == "tool" and not converted.get("tool_call_id"):
            converted["tool_call_id"] = tool_name or "call_0"
            converted["name"] = tool_name
        message = openai_messages([converted])[0]
        if images:
            parts: list[TextPart | ImagePart] = (
                [TextPart(text=message.text)] if message.text else []
            )
            parts += [_image_bytes(str(b), None, f"{where}.images") for b in images]
            message = message.model_copy(update={"content": parts})
        out.append(message)
    return out


def anthropic_messages(raw: Any) -> list[Message]:
    """Anthropic's content blocks: text, image (base64 / url), tool_use, tool_result."""
    if not isinstance(raw, list) or not raw:
        raise Refusal(400, "invalid_messages", '"messages" must be a non-empty list')
    out: list[Message] = []
    for index, item in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(item, dict) or item.get("role") not in ("user", "assistant"):
            raise _bad(where, "role must be 'user' or 'assistant'")
        content = item.get("content")
        if isinstance(content, str):
            out.append(Message(role=item["role"], content=content))
            continue
        if not isinstance(content, list):
            raise _bad(where, "content must be a string or a list of blocks")
        parts: list[TextPart | ImagePart] = []
        calls: list[ToolCall] = []
        for n, block in enumerate(content):
            at = f"{where}.content[{n}]"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                parts.append(TextPart(text=str(block.get("text", ""))))
            elif kind == "image":
                source = block.get("source") or {}
                if source.get("type") == "base64":
                    parts.append(
                        _image_bytes(str(source.get("data")), source.get("media_type"), at)
                    )
                elif source.get("type") == "url":
                    parts.append(_image_url({"image_url": source.get("url")}, at))
                else:
                    raise _bad(at, "image source must be base64 or url")
            elif kind == "tool_use":
                arguments, text = _arguments(block.get("input") or {})
                calls.append(
                    ToolCall(
                        id=str(block.get("id")),
                        name=str(block.get("name")),
                        arguments=arguments,
                        raw_arguments=text,
                    )
                )
            elif kind == "tool_result":
                result = block.get("content")
                if isinstance(result, list):
                    result = "".join(str(b.get("text", "")) for b in result if isinstance(b, dict))
                out.append(
                    Message(
                        role="tool",
                        content=str(result or ""),
                        tool_call_id=str(block.get("tool_use_id")),
                    )
                )
            else:
                raise Refusal(
                    400, "unsupported_content", f"{at}: block type '{kind}' is not supported"
                )
        if parts or calls:
            text_only = all(isinstance(p, TextPart) for p in parts)
            body: str | list[TextPart | ImagePart] = (
                "".join(p.text for p in parts if isinstance(p, TextPart)) if text_only else parts
            )
            try:
                out.append(Message(role=item["role"], content=body, tool_calls=calls))
            except ValidationError as exc:
                raise _bad(where, exc.errors()[0]["msg"]) from None
    return out


def openai_tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [
        {
            "id": call.id,
            "type": "function",
            "function": {
                "name": call.name,
                "arguments": call.raw_arguments or json.dumps(call.arguments),
            },
        }
        for call in calls
    ]
