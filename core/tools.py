"""Tools a model may call: defined by a typed function, a pydantic model or a JSON schema.

`as_tools([...])` turns what the caller passes as `tools=` into `Tool`s, once, at the
edge. A function's schema comes from its annotations through pydantic (`create_model`
over the signature, the docstring's first paragraph as the description, its
"Args:" lines as the parameters' descriptions); a pydantic model's from
`model_json_schema()`. Arguments a model sends back are validated by the same
pydantic model (or, for a raw JSON schema, by `jsonschema`), so what the tool's
function receives has been checked.

`parse_call` turns one call off the wire into a `ToolCall` whose `error` says what is
wrong with its arguments (bad JSON, an unknown tool, a schema violation) — a value
the caller can feed back (`Message.tool_error`), never an exception thrown from the
middle of a response. The pipeline's side is here too: `normalize_tool_options` (once,
when the request is built), `require_tool_support` (a fallback without tools is
skipped), `check_response` (each call against the schemas). Streamed calls:
tool_stream.py.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, create_model

from .errors import (
    ConfigError,
    HerdError,
    MissingDependencyError,
)
from .lazy_model import LazyModel
from .types import (
    ChatRequest,
    ToolCall,
)

#: what OpenAI and Anthropic accept as a function name
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: tool_choice words, and the other vendors' spellings of them
_CHOICES = {"auto": "auto", "none": "none", "required": "required", "any": "required"}
_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$")
_ARG_LINE = re.compile(r"^\s+(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.+)$")


class ToolArgumentsError(HerdError):
    """A model called a tool with arguments that do not fit its schema.

    `call` is the ToolCall (its `error` holds the same text); feed
    `Message.tool_error(call)` back to the model so it can correct the call."""

    fallback_ok = False

    def __init__(self, call: ToolCall) -> None:
        super().__init__(
            f"the model called '{call.name}' with invalid arguments: {call.error} — "
            f"send Message.tool_error(call) back so it can correct them"
        )
        self.call = call


class Tool(LazyModel):
    """One function a model may call: its name, description and JSON-schema parameters.

    Build with `Tool.from_function(fn)`, `Tool.from_model(Model)` or
    `Tool.from_schema(name, schema)`, or let `as_tools` do it. Only the three public
    fields take part in cache keys and go on the wire; the function and validator
    stay private.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    #: what runs the call (`herd.run_tools`); None for a tool defined by schema or model
    _function: Callable[..., Any] | None = PrivateAttr(default=None)
    #: validates arguments; a pydantic model for functions and models, else None
    _arguments_model: type[BaseModel] | None = PrivateAttr(default=None)

    @property
    def function(self) -> Callable[..., Any] | None:
        return self._function

    # ---- constructors ----------------------------------------------------------------

    @classmethod
    def from_function(
        cls,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
    ) -> Tool:
        """A tool from a typed function: annotations -> schema, docstring -> description."""
        tool_name: str = name or str(getattr(function, "__name__", ""))
        summary, arg_docs = _parse_docstring(inspect.getdoc(function) or "")
        try:
            hints = get_type_hints(function, include_extras=True)
        except Exception as exc:  # a forward reference that does not resolve
            raise ConfigError(
                f"tool '{tool_name}': cannot read its type annotations ({exc}) — "
                f"annotate every parameter with an importable type"
            ) from None
        fields: dict[str, Any] = {}
        for param in inspect.signature(function).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise ConfigError(
                    f"tool '{tool_name}': *{param.name} cannot be described to a model — "
                    f"give the function named, annotated parameters"
                )
            annotation = hints.get(param.name, Any)
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (
                annotation,
                Field(default, description=arg_docs.get(param.name)),
            )
        try:
            model = create_model(
                f"{tool_name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
            )
            schema = _clean_schema(model.model_json_schema())
        except Exception as exc:  # a type pydantic cannot describe
            raise ConfigError(
                f"tool '{tool_name}': its parameters cannot be turned into a JSON schema "
                f"({type(exc).__name__}: {exc}) — use JSON-compatible annotations"
            ) from None
        tool = cls._make(tool_name, description or summary, schema)
        tool._function = function
        tool._arguments_model = model
        return tool

    @classmethod
    def from_model(
        cls, model: type[BaseModel], *, name: str | None = None, description: str | None = None
    ) -> Tool:
        """A tool whose arguments are `model` (its docstring is the description)."""
        doc = inspect.getdoc(model) or ""
        if doc == inspect.getdoc(BaseModel):
            doc = ""
        tool = cls._make(
            name or model.__name__,
            description if description is not None else _parse_docstring(doc)[0],
            _clean_schema(model.model_json_schema()),
        )
        tool._arguments_model = model
        return tool

    @classmethod
    def from_schema(
        cls,
        name: str,
        parameters: Mapping[str, Any],
        description: str = "",
        function: Callable[..., Any] | None = None,
    ) -> Tool:
        """A tool from a JSON schema (validated with `jsonschema` when a call comes back)."""
        schema = dict(parameters)
        if schema.get("type", "object") != "object":
            raise ConfigError(
                f"tool '{name}': parameters must be a JSON schema of type 'object' "
                f"(got {schema.get('type')!r})"
            )
        schema.setdefault("type", "object")
        tool = cls._make(name, description, schema)
        tool._function = function
        return tool

    @classmethod
    def _make(cls, name: str, description: str, parameters: dict[str, Any]) -> Tool:
        if not _NAME.match(name):
            raise ConfigError(
                f"tool name {name!r} is not valid — use 1-64 letters, digits, '_' or '-'"
            )
        return cls(name=name, description=description, parameters=parameters)

    # ---- calls -----------------------------------------------------------------------

    def check_arguments(self, arguments: dict[str, Any]) -> str | None:
        """None when `arguments` fit the schema, else the reason (one line per problem)."""
        model = self._arguments_model
        if model is not None:
            try:
                model.model_validate(arguments)
            except ValidationError as exc:
                return _pydantic_problems(exc)
            return None
        try:
            import jsonschema
        except ImportError:
            raise MissingDependencyError(
                "jsonschema",
                "tools",
                f"checking the arguments of the JSON-schema tool '{self.name}'",
            ) from None
        validator = jsonschema.Draft202012Validator(self.parameters)
        problems = sorted(validator.iter_errors(arguments), key=lambda e: list(e.path))
        if not problems:
            return None
        return "; ".join(
            f"{'.'.join(str(p) for p in e.path) or '(arguments)'}: {e.message}"
            for e in problems[:5]
        )

    def arguments_for(self, call: ToolCall) -> Any:
        """The call's arguments in the tool's own types: a model instance for a tool made
        from a pydantic model, validated keyword values for a function, else the dict."""
        model = self._arguments_model
        if model is None:
            return dict(call.arguments)
        try:
            parsed = model.model_validate(call.arguments)
        except ValidationError as exc:
            raise ToolArgumentsError(
                call.model_copy(update={"error": _pydantic_problems(exc)})
            ) from None
        if self._function is None:
            return parsed
        return {name: getattr(parsed, name) for name in type(parsed).model_fields}

    async def invoke(self, call: ToolCall) -> Any:
        """Run the tool's function on the call's validated arguments. A sync function runs
        in a worker thread (a slow tool must not stall every other call); an async one is
        awaited."""
        function = self._function
        if function is None:
            raise ConfigError(
                f"tool '{self.name}' has no function to run — define it with "
                f"Tool.from_function (or pass the function itself) to use run_tools"
            )
        if call.error is not None:
            raise ToolArgumentsError(call)
        kwargs = self.arguments_for(call)
        if inspect.iscoroutinefunction(function):
            return await function(**kwargs)
        import functools

        import anyio

        return await anyio.to_thread.run_sync(functools.partial(function, **kwargs))


def as_tools(value: Any) -> tuple[Tool, ...]:
    """`tools=` as passed by a caller -> Tools. Accepts Tool, a function, a pydantic model
    class, or a dict (OpenAI's `{"type": "function", "function": {...}}`, Anthropic's
    `{"name", "input_schema"}`, or `{"name", "parameters"}`). Idempotent."""
    if value is None:
        return ()
    if isinstance(value, Tool | dict) or (callable(value) and not isinstance(value, list | tuple)):
        value = [value]
    tools: list[Tool] = []
    seen: set[str] = set()
    for item in value:
        tool = _one_tool(item)
        if tool.name in seen:
            raise ConfigError(f"two tools are named '{tool.name}' — tool names must be unique")
        seen.add(tool.name)
        tools.append(tool)
    return tuple(tools)


#: tools built from functions and model classes, once each (create_model costs ~1 ms)
_BUILT: weakref.WeakKeyDictionary[Any, Tool] = weakref.WeakKeyDictionary()


def _one_tool(item: Any) -> Tool:
    if isinstance(item, Tool):
        return item
    if not isinstance(item, dict):
        try:
            built = _BUILT.get(item)
        except TypeError:  # not weak-referenceable: build it each time
            built = None
        if built is not None:
            return built
        if isinstance(item, type) and issubclass(item, BaseModel):
            built = Tool.from_model(item)
        elif callable(item):
            built = Tool.from_function(item)
        if built is not None:
            with contextlib.suppress(TypeError):
                _BUILT[item] = built
            return built
    if isinstance(item, dict):
        spec = item.get("function") if item.get("type") == "function" else item
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ConfigError(
                f"a tool given as a dict needs a 'name' (and 'parameters') — got keys "
                f"{sorted(item)}"
            )
        schema = spec.get("parameters", spec.get("input_schema")) or {"type": "object"}
        if not isinstance(schema, dict):
            raise ConfigError(f"tool '{spec['name']}': parameters must be a JSON schema object")
        return Tool.from_schema(spec["name"], schema, str(spec.get("description") or ""))
    raise ConfigError(
        f"tools= takes functions, pydantic models, Tool objects or dicts — got "
        f"{type(item).__name__}"
    )


def as_tool_choice(value: Any, tools: Iterable[Tool]) -> str | None:
    """`tool_choice=` -> "auto" | "none" | "required" | the name of one tool (None: unset).

    Accepts those words (and Anthropic's "any"), a tool name, a Tool or function, or the
    vendors' dict forms (`{"type": "function", "function": {"name": ...}}`,
    `{"type": "tool", "name": ...}`)."""
    if value is None:
        return None
    names = [t.name for t in tools]
    name: Any = value
    if isinstance(value, Tool):
        name = value.name
    elif isinstance(value, dict):
        kind = value.get("type")
        if kind in _CHOICES:
            name = kind
        else:
            inner = value.get("function")
            name = (inner if isinstance(inner, dict) else value).get("name")
    elif callable(value):
        name = getattr(value, "__name__", None)
    if isinstance(name, str) and name in _CHOICES and name not in names:
        choice = _CHOICES[name]
        if choice != "none" and not names:
            raise ConfigError(f"tool_choice={name!r} needs tools= — pass the tools to choose from")
        return choice
    if isinstance(name, str) and name in names:
        return name
    raise ConfigError(
        f"tool_choice={value!r} is not valid — use 'auto', 'none', 'required' or the name "
        f"of a tool ({', '.join(names) or 'no tools given'})"
    )


def parse_call(
    call_id: str, name: str, raw: str | Mapping[str, Any] | None, tools: Iterable[Tool] | None
) -> ToolCall:
    """A call off the wire, parsed and (with `tools`) checked: `error` says what is wrong."""
    error: str | None = None
    arguments: dict[str, Any] = {}
    if isinstance(raw, Mapping):  # Anthropic and Ollama send an object, not JSON text
        arguments = dict(raw)
        text = json.dumps(arguments, ensure_ascii=False)
    else:
        text = raw or ""
        try:
            value = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            error = f"the arguments are not valid JSON ({exc.msg} at char {exc.pos})"
        else:
            if isinstance(value, dict):
                arguments = value
            else:
                error = f"the arguments must be a JSON object, not {type(value).__name__}"
    call = ToolCall(id=call_id, name=name, arguments=arguments, raw_arguments=text, error=error)
    if error is None and tools is not None:
        return check_calls([call], tools)[0]
    return call


def _pydantic_problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(arguments)'}: {e['msg']}"
        for e in exc.errors()[:5]
    )


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop the model-name title pydantic puts at the top (it names a Python class,
    not anything the model should read)."""
    schema = dict(schema)
    schema.pop("title", None)
    return schema


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(first paragraph, {parameter: description}) from a Google-style docstring."""
    lines = doc.splitlines()
    summary: list[str] = []
    for line in lines:
        if not line.strip() or _ARGS_HEADER.match(line):
            break
        summary.append(line.strip())
    args: dict[str, str] = {}
    in_args = False
    current: str | None = None
    for line in lines:
        if _ARGS_HEADER.match(line):
            in_args = True
            continue
        if not in_args:
            continue
        if line.strip() and not line.startswith((" ", "\t")):
            break  # the next section ("Returns:" …)
        match = _ARG_LINE.match(line)
        if match and match.group(1).lstrip("*") and (current is None or _indent(line) <= 4):
            current = match.group(1).lstrip("*")
            args[current] = match.group(3).strip()
        elif current and line.strip():
            args[current] += " " + line.strip()
    return " ".join(summary), args


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def wire_call(call_id: str, name: str, raw: str | Mapping[str, Any] | None) -> ToolCall:
    """A call as it came off the wire: JSON parsed (a parse problem goes in `error`), not
    yet checked against the tool's schema (`check_calls` does that, in the pipeline)."""
    return parse_call(call_id, name, raw, None)


def check_calls(calls: list[ToolCall], tools: Iterable[Tool]) -> list[ToolCall]:
    """`calls` with `error` set for each whose tool is unknown or whose arguments do not
    fit the schema (a call that already has an error keeps it)."""
    tools = tuple(tools)
    checked: list[ToolCall] = []
    for call in calls:
        if call.error is None:
            error = _check(call, tools)
            if error is not None:
                call = call.model_copy(update={"error": error})
        checked.append(call)
    return checked


def _check(call: ToolCall, tools: tuple[Tool, ...]) -> str | None:
    tool = next((t for t in tools if t.name == call.name), None)
    if tool is None:
        names = ", ".join(t.name for t in tools) or "none"
        return f"there is no tool named '{call.name}' (tools: {names})"
    return tool.check_arguments(call.arguments)


class ToolsUnsupportedError(HerdError):
    """The model cannot take this call's tools (its provider has no tool support, or an
    embedded GGUF has no tool template). In a fallback chain it is skipped with this
    reason instead of being sent a request it cannot honour."""

    def __init__(self, alias: str, provider: str, reason: str) -> None:
        super().__init__(
            f"'{alias}' ({provider}) cannot take tools: {reason} — use a model that does "
            f"(docs/tools.md), or add one to [models.{alias}] fallbacks"
        )


def normalize_tool_options(options: dict[str, Any]) -> dict[str, Any]:
    """The call's options with `tools` as Tools and `tool_choice` as a word or a name:
    checked once at the edge, and what cache keys and providers see."""
    out = dict(options)
    tools = as_tools(out.get("tools"))
    if "tools" in out:
        out["tools"] = tools if tools else None
    if out.get("tool_choice") is not None:
        out["tool_choice"] = as_tool_choice(out["tool_choice"], tools)
    return out


def require_tool_support(model: Any, request: ChatRequest) -> None:
    """Raise ToolsUnsupportedError when `request` has tools `model` cannot take."""
    if request.options.get("tools"):
        reason = model.tools_unsupported(request)
        if reason:
            raise ToolsUnsupportedError(request.alias, request.provider, reason)


def check_response(request: ChatRequest, response: Any) -> None:
    """Check the response's calls against the request's tools (sets each call's
    `error`); a cached answer was checked when it was stored."""
    if response.tool_calls and response.cache_tier is None:
        response.tool_calls = check_calls(
            response.tool_calls, as_tools(request.options.get("tools"))
        )
