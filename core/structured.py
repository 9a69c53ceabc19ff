"""Typed outputs: `herd.chat(..., output_type=Model)` -> `response.parsed`.

The type's JSON schema goes to the provider as `response_format` — each provider maps
it to its native structured-output mode (OpenAI `json_schema`, Anthropic
`output_config.format`, Ollama `format`, llama.cpp a grammar). The answer is
validated into `response.parsed`; an answer that does not validate is never cached
(the pipeline's validation step sees it fail). With `output_retries=N` the model
is asked again, at most N times, with the validation error fed back; when every try
fails, `OutputValidationError` says why and holds the last answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from .errors import BadResponseError, ConfigError, MissingDependencyError
from .types import ChatResponse, Message

if TYPE_CHECKING:
    from .kernel import Herd


class OutputValidationError(BadResponseError):
    """The answer did not fit `output_type` (after any retries). `response` is the last
    answer, `problems` why it does not fit."""

    retryable = False  # asking again is `output_retries`' job, with the error fed back

    def __init__(self, message: str, response: ChatResponse, problems: str) -> None:
        super().__init__(message)
        self.response = response
        self.problems = problems


@dataclass(slots=True, frozen=True)
class OutputSpec:
    """What an `output_type` becomes: the schema sent, and how an answer is checked."""

    name: str
    schema: dict[str, Any]
    model: type[BaseModel] | None

    @property
    def response_format(self) -> dict[str, Any]:
        return {"type": "json_schema", "name": self.name, "schema": self.schema}

    def parse(self, text: str) -> Any:
        """The validated value; ValueError with the problems when it does not fit."""
        body = _strip_fence(text)
        if self.model is not None:
            try:
                return self.model.model_validate_json(body)
            except ValidationError as exc:
                raise ValueError(_problems(exc)) from None
        try:
            value = json.loads(body)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at char {exc.pos})") from None
        try:
            import jsonschema
        except ImportError:
            raise MissingDependencyError(
                "jsonschema", "tools", "checking answers against a JSON-schema output_type"
            ) from None
        errors = sorted(
            jsonschema.Draft202012Validator(self.schema).iter_errors(value),
            key=lambda e: list(e.path),
        )
        if errors:
            raise ValueError(
                "; ".join(
                    f"{'.'.join(str(p) for p in e.path) or '(answer)'}: {e.message}"
                    for e in errors[:5]
                )
            )
        return value


def output_spec(output_type: Any) -> OutputSpec:
    if isinstance(output_type, type) and issubclass(output_type, BaseModel):
        schema = output_type.model_json_schema()
        return OutputSpec(_name(output_type.__name__), schema, output_type)
    if isinstance(output_type, dict):
        schema = output_type.get("schema", output_type)
        if not isinstance(schema, dict) or ("type" not in schema and "properties" not in schema):
            raise ConfigError(
                "output_type as a dict must be a JSON schema (with 'type' or 'properties')"
            )
        name = str(output_type.get("name") or schema.get("title") or "output")
        return OutputSpec(_name(name), schema, None)
    raise ConfigError(
        f"output_type={output_type!r} is not valid — pass a pydantic model class or a JSON "
        f"schema dict"
    )


async def chat_typed(
    herd: Herd,
    model: str | None,
    messages: Any,
    output_type: Any,
    retries: int,
    validate: Callable[[ChatResponse], bool] | None,
    kwargs: dict[str, Any],
) -> ChatResponse:
    spec = output_spec(output_type)
    if retries < 0:
        raise ConfigError(f"output_retries={retries} must be 0 or more")
    if "response_format" in kwargs:
        raise ConfigError("pass output_type= or response_format=, not both")
    kwargs = {**kwargs, "response_format": spec.response_format}
    conversation = (
        [Message(role="user", content=messages)]
        if isinstance(messages, str)
        else [m if isinstance(m, Message) else Message(**m) for m in messages]
    )
    parsed_by_id: dict[int, tuple[ChatResponse, Any]] = {}

    def check(response: ChatResponse) -> bool:
        # the pipeline's validation step: an answer that does not parse is never cached
        try:
            value = spec.parse(response.content)
        except ValueError:
            return False
        parsed_by_id[id(response)] = (response, value)
        return validate(response) if validate is not None else True

    for attempt in range(retries + 1):
        response = await herd.chat(model, conversation, validate=check, **kwargs)
        entry = parsed_by_id.pop(id(response), None)
        if entry is not None and entry[0] is response:
            response.parsed = entry[1]
            return response
        try:  # a cache hit skips validation: parse it here
            response.parsed = spec.parse(response.content)
            return response
        except ValueError as exc:
            problems = str(exc)
        if attempt == retries:
            break
        conversation = [
            *conversation,
            Message(role="assistant", content=response.content),
            Message(
                role="user",
                content=(
                    f"That answer does not fit the required JSON schema: {problems}. "
                    f"Answer again with only a JSON object that fits it."
                ),
            ),
        ]
    tries = f" after {retries + 1} tries" if retries else ""
    raise OutputValidationError(
        f"'{response.alias}' answered with something that does not fit {spec.name}{tries}: "
        f"{problems} — pass output_retries=N to let the model correct itself, or use a "
        f"model that follows JSON schemas",
        response,
        problems,
    )


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(answer)'}: {e['msg']}" for e in exc.errors()[:5]
    )


def _name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "output"


def _strip_fence(text: str) -> str:
    """Some models wrap JSON in a ```json fence even in structured mode."""
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        stripped = stripped.rsplit("```", 1)[0]
    return stripped.strip()
