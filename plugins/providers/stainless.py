"""What the `openai` and `anthropic` providers share: both official SDKs are generated
by Stainless, so their clients have one shape (`Async*(api_key=, base_url=,
max_retries=, http_client=)`, `.post(path, body=, cast_to=, options=)`,
`models.list()`) and one error tree (APIStatusError, APIConnectionError,
APITimeoutError, APIError).

`StainlessModel` holds the SDK plumbing: key lookup, availability, client creation,
the raw POST, model listing, health and the error mapping around the HTTP-status
branch. Each provider keeps its request/response mapping and says what differs in a
few class attributes and hooks. No SDK is imported here at module import time.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import Mapping
from typing import Any, ClassVar

from modelherd.errors import (
    BadResponseError,
    ConfigError,
    HerdError,
    MissingDependencyError,
    ProviderError,
)
from modelherd.plugins.providers.errors import as_health, status_error, transport_error
from modelherd.plugins.providers.keys import find_key, redact
from modelherd.provider import CommonOptionRanges, Model
from modelherd.types import Availability, ChatRequest, Health, ModelSpec


def default_transport() -> str:
    return "aiohttp" if importlib.util.find_spec("aiohttp") is not None else "httpx"


class StainlessModel(Model):
    """A provider on a Stainless-generated SDK. Settings need `base_url`, `api_key_env`,
    `transport` and `headers`."""

    #: the SDK's import name (also the pip extra) and its async client class
    sdk: ClassVar[str]
    client_class: ClassVar[str]
    #: name used in messages
    vendor: ClassVar[str]
    default_base_url: ClassVar[str | None]
    key_required: ClassVar[bool] = True
    #: the chat endpoint, relative to base_url
    chat_path: ClassVar[str]
    #: how a bare transport error is worded: "connection to X <verb> (...)"
    transport_error_verb: ClassVar[str]
    #: health passes when the server has no GET /models (a 404 there)
    models_list_optional: ClassVar[bool] = False
    #: health's detail when the model is listed; {base_url}, {count}, {model}
    health_detail: ClassVar[str]
    #: (response class, stream class), loaded on the first call
    _types: ClassVar[tuple[Any, Any] | None] = None
    #: ranges of the common options, checked before anything is sent
    option_ranges: ClassVar[type[CommonOptionRanges]] = CommonOptionRanges

    def __init__(self, spec: ModelSpec, herd: Any) -> None:
        super().__init__(spec, herd)
        settings: Any = self.settings
        self.base_url = (settings.base_url or self.default_base_url or "").rstrip("/")
        self.transport = settings.transport or default_transport()
        env: Mapping[str, str] = getattr(herd, "env", None) or {}
        names = (settings.api_key_env,) if settings.api_key_env else self.key_env_vars
        legacy = () if settings.api_key_env else self.legacy_key_env_vars
        self._key, self.key_var = find_key(env, names, legacy)
        if self.key_var is None:
            self.key_var = names[0] if names else None

    def __repr__(self) -> str:  # never the key
        return f"<{type(self).__name__} alias={self.spec.alias!r} base_url={self.base_url!r}>"

    # ---- hooks -----------------------------------------------------------------

    @staticmethod
    def _load_types() -> tuple[Any, Any]:
        """(response class, AsyncStream[event class]) for the chat endpoint."""
        raise NotImplementedError

    def client(self) -> Any:
        """This model's pooled SDK client (made by `_new_client`)."""
        raise NotImplementedError

    def _client_kwargs(self) -> dict[str, Any]:
        """Vendor-only keyword arguments for the SDK client."""
        return {}

    async def _list_model_ids(self) -> list[str]:
        raise NotImplementedError

    async def _status_error(self, exc: Any, request: ChatRequest) -> HerdError:
        """The typed error for the SDK's APIStatusError `exc`."""
        raise NotImplementedError

    def _bad_body(self, request: ChatRequest, what: str) -> BadResponseError:
        raise NotImplementedError

    # ---- preparation (once, before the first attempt) ----------------------------

    async def prepare(self) -> None:
        """Import the SDK and its response types in a worker thread, then build this
        loop's client. The pipeline awaits this before the first attempt's timeout
        starts: importing `anthropic` takes about a second, which a `timeout=1` first
        call used to spend — with the event loop blocked — before sending anything."""
        import anyio

        await anyio.to_thread.run_sync(self._import_sdk)
        self.client()  # the pooled client belongs to the running loop: made here, not there

    def _import_sdk(self) -> None:
        try:
            importlib.import_module(self.sdk)
        except ImportError:
            raise MissingDependencyError(
                self.sdk, self.sdk, f"the {self.provider} provider"
            ) from None
        if type(self)._types is None:
            type(self)._types = self._load_types()

    # ---- availability (no network) ---------------------------------------------

    @classmethod
    def availability(cls, spec: ModelSpec, env: Mapping[str, str]) -> Availability:
        if importlib.util.find_spec(cls.sdk) is None:
            return Availability(
                ok=False,
                reason=f"the {cls.sdk} package is not installed",
                fix=f'pip install "modelherd[{cls.sdk}]"',
            )
        settings: Any = cls.parse_settings(spec)
        if not (settings.base_url or cls.default_base_url):
            return Availability(
                ok=False,
                reason="no base_url",
                fix=f'set base_url = "http://host:port/v1" in [models.{spec.alias}]',
            )
        if settings.api_key_env:
            if env.get(settings.api_key_env):
                return Availability(ok=True)
            return Availability(
                ok=False,
                reason=f"{settings.api_key_env} is not set",
                fix=f"set {settings.api_key_env} in the environment or .env",
            )
        if not cls.key_required:
            return Availability(ok=True)
        return super().availability(spec, env)

    # ---- client ----------------------------------------------------------------

    def _new_client(self) -> Any:
        try:
            sdk = importlib.import_module(self.sdk)
        except ImportError:
            raise MissingDependencyError(
                self.sdk, self.sdk, f"the {self.provider} provider"
            ) from None
        if self.key_required and not self._key:
            var = self.key_var or "the API key variable"
            raise ConfigError(
                f"'{self.spec.alias}' ({self.provider}) needs an API key — "
                f"set {var} in the environment or .env"
            )
        settings: Any = self.settings
        http_client = None  # None: the SDK's default httpx transport
        if self.transport == "aiohttp":
            try:
                http_client = sdk.DefaultAioHttpClient()
            except RuntimeError:  # the SDK's aiohttp extra is missing: stay on httpx
                self.transport = "httpx"
        return getattr(sdk, self.client_class)(
            api_key=self._key or "not-needed",  # self-hosted servers ignore it; the SDK wants one
            base_url=self.base_url,
            default_headers=settings.headers or None,
            max_retries=0,  # the kernel's retry policy decides
            timeout=self.herd.config.herd.timeout if self.herd is not None else 600.0,
            http_client=http_client,
            **self._client_kwargs(),
        )

    async def _send(self, request: ChatRequest, params: dict[str, Any], *, stream: bool) -> Any:
        """POST the chat endpoint through the SDK's own client: its transport, auth, error
        classes and response models — without `create()`'s per-call TypedDict transform,
        which costs ~200 µs a call here and is a no-op for the plain JSON we build
        (bench/providers.py measures it; the openai README documents `client.post`).
        SDK errors come back as the kernel's typed errors (`map_error`)."""
        client = self.client()
        try:
            types = self._types
            if types is None:
                types = type(self)._types = self._load_types()
            body = dict(params)
            options: dict[str, Any] = {}
            timeout = body.pop("timeout", None)
            if timeout is not None:
                options["timeout"] = timeout
            extra = body.pop("extra_body", None)
            if extra:
                body.update(extra)
            if stream:
                return await client.post(
                    self.chat_path,
                    body=body,
                    cast_to=types[0],
                    options=options,
                    stream=True,
                    stream_cls=types[1],
                )
            return await client.post(self.chat_path, body=body, cast_to=types[0], options=options)
        except Exception as exc:
            error = await self.map_error(exc, request)
        raise error  # outside the except block: the SDK's exception is not chained

    # ---- models and health -----------------------------------------------------

    async def offered_models(self, timeout: float = 3.0) -> list[str] | None:
        """The model ids the endpoint lists (for 'did you mean'); None when it won't say."""
        import anyio

        try:
            with anyio.fail_after(timeout):
                return await self._list_model_ids()
        except Exception:
            return None

    async def health(self) -> Health:
        avail = self.availability(self.spec, getattr(self.herd, "env", {}) or {})
        if not avail.ok:
            return Health(ok=False, detail=avail.reason, fix=avail.fix)
        import time

        started = time.perf_counter()
        request = ChatRequest(
            alias=self.spec.alias, provider=self.provider, model=self.spec.model, messages=[]
        )
        try:
            ids = await self._list_model_ids()
        except Exception as exc:
            if self.models_list_optional:
                sdk = importlib.import_module(self.sdk)
                if isinstance(exc, sdk.NotFoundError):  # a server without GET /models
                    return Health(
                        ok=True,
                        detail=f"{self.base_url} answers (it lists no models)",
                        latency_s=time.perf_counter() - started,
                    )
            return as_health(await self.map_error(exc, request))
        latency = time.perf_counter() - started
        if self.spec.model and ids and self.spec.model not in ids:
            return as_health(
                status_error(
                    404,
                    "",
                    provider=self.vendor,
                    alias=self.spec.alias,
                    model=self.spec.model,
                    key_var=self.key_var,
                    offered=ids,
                ),
                latency,
            )
        detail = self.health_detail.format(
            base_url=self.base_url, count=len(ids), model=self.spec.model
        )
        return Health(ok=True, detail=detail, latency_s=latency)

    # ---- errors ----------------------------------------------------------------

    async def _http_error(
        self,
        request: ChatRequest,
        status: int,
        detail: str,
        headers: Mapping[str, str] | None,
    ) -> HerdError:
        """`status_error` for this model, with the offered models on a 404."""
        offered = await self.offered_models() if status == 404 else None
        return status_error(
            status,
            detail,
            provider=self.vendor,
            alias=request.alias,
            model=request.model or self.spec.model,
            key_var=self.key_var,
            headers=headers,
            offered=offered,
            secret=self._key,
        )

    async def map_error(self, exc: BaseException, request: ChatRequest) -> HerdError:
        """The typed error for anything the SDK raised. Callers raise it outside their
        `except` block (see `_send`), so the SDK's exception — whose text may echo the
        request, key included — is neither chained nor kept as context."""
        sdk = importlib.import_module(self.sdk)
        if isinstance(exc, HerdError):
            return exc
        name = f"{self.vendor} at {self.base_url}"
        if isinstance(exc, sdk.APIStatusError):
            return await self._status_error(exc, request)
        # DNS, refused, dropped, timeout: by the real cause, not the SDK's wrapper class
        transport = transport_error(
            exc, name, request.alias, f"base_url in [models.{request.alias}]"
        )
        if transport is not None:
            return transport
        if isinstance(exc, json.JSONDecodeError | sdk.APIResponseValidationError):
            return self._bad_body(request, "a malformed JSON body")
        if isinstance(exc, sdk.APIError):  # an error event inside a stream
            detail = redact(str(exc.message), self._key)[:300]
            return ProviderError(f"{name} failed mid-answer ({detail}) — the call can be retried")
        return self._bad_body(request, f"something the SDK could not read ({type(exc).__name__})")
