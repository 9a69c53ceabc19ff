"""The one road every call takes, written once for `chat` and `stream`.

    admission -> cache lookup -> coalesce -> for each candidate (the alias, then its
    fallbacks): prepare -> before_call -> attempt under a timeout -> retry
    -> validate -> store -> after_call | on_error -> metrics

Streaming differs only where it must: retries and fallbacks happen only before the
first chunk reaches the caller, the timeout bounds the wait for each chunk (an idle
timeout, not a total one), a cached answer is replayed as one chunk, and streams are
not coalesced. Every failure on either road — an admission refusal, a cache-only
miss, a provider bug, the last fallback's error — leaves through `_fail`: one
`on_error(final=True)` and one `herd.errors` metric. Each failed attempt before it is
reported by `_attempt_error` (`on_error(final=False)`).

The functions take the Herd as their first argument instead of being its methods so
that this file is the whole road, readable top to bottom; `Herd.chat` and
`Herd.stream` are one-line calls into it. They touch the Herd's private fields on
purpose: the pipeline is the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import anyio

from .cache import coalesce_key
from .errors import (
    AllModelsFailedError,
    BadResponseError,
    CacheMissError,
    CallTimeoutError,
    HerdError,
    ProviderError,
)
from .provider import Model
from .retry import retry_delay
from .stash import Stash, StashKey
from .tools import check_response, require_tool_support
from .types import ChatRequest, ChatResponse, KeepAlive, Metric, ReasoningDelta, assign

if TYPE_CHECKING:
    from .kernel import Herd

Validator = Callable[[ChatResponse], bool]

#: the caller's own options and timeout, which a fallback request is rebuilt from
#: (set by `Herd.build_request` only when the alias has fallbacks)
CALLER = StashKey[tuple[dict[str, Any], float | None]]()
#: perf_counter() when the call entered the pipeline (on_error observers time failures)
STARTED = StashKey[float]()

#: `herd.stream(..., deadline=S)`: seconds the whole stream may take, retries and
#: fallbacks included (the per-item timeout is an idle timeout)
DEADLINE = StashKey[float]()

_LOOKUP_MODES = frozenset({"default", "no-store", "only"})
_STORE_MODES = frozenset({"default", "no-cache"})


# ---- chat -----------------------------------------------------------------------


async def chat(herd: Herd, request: ChatRequest, validate: Validator | None) -> ChatResponse:
    """The whole call: admission, cache, coalescing, attempts, validation, hooks."""
    if not herd._started:
        await herd.start()
    started = request.stash[STARTED] = time.perf_counter()
    if herd._has.get("acquire_admission"):
        gates = _gates(herd, request)
        if gates:  # else no exit stack to build: most calls have no gate to enter
            async with AsyncExitStack() as stack:
                await _admit(herd, request, gates, stack)
                return await _chat_admitted(herd, request, validate, started)
    return await _chat_admitted(herd, request, validate, started)


async def _chat_admitted(
    herd: Herd, request: ChatRequest, validate: Validator | None, started: float
) -> ChatResponse:
    cache = herd._cache
    # the cache policy decides which requests get a key ([plugins.cache] cache_sampled)
    key = cache.key_for(request) if cache is not None else coalesce_key(request)
    answered_by: list[ChatRequest] = []
    try:
        # the guard keeps the common miss path free of a coroutine (bench/overhead.py)
        if (key is not None and cache is not None) or request.cache == "only":
            hit = await _lookup(herd, request, key, started)
            if hit is not None:
                return hit
        if key is not None:
            # a follower got the leader's answer: only the leader stores it
            response, led = await herd._coalescer.run_led(
                key, lambda: _call_chain(herd, request, answered_by)
            )
        else:
            response, led = await _call_chain(herd, request, answered_by), True
    except BaseException as exc:
        _fail(herd, request, exc)
        raise
    assign(response, "latency_s", time.perf_counter() - started)
    if response.tool_calls:  # checked against the tools' schemas (docs/tools.md)
        check_response(request, response)
    valid = _validate(herd, request, response, validate) if validate is not None else None
    if led and cache is not None and answered_by:
        await _store(herd, request, answered_by[0], key, response, valid)
    _finish(herd, request, response, valid)
    return response


async def _call_chain(
    herd: Herd, request: ChatRequest, answered_by: list[ChatRequest]
) -> ChatResponse:
    """The primary model, then each fallback, each with its own retries."""
    candidates = _candidates(herd, request)
    errors: list[tuple[str, HerdError]] = []
    for index, alias in enumerate(candidates):
        attempt_request = request if index == 0 else _request_for(herd, request, alias)
        try:
            response = await _attempts(herd, attempt_request)
        except HerdError as exc:
            errors.append((alias, exc))
            if _falls_back(herd, request, exc, index, len(candidates)):
                continue
            break
        if index > 0:
            assign(response, "fallback_from", request.alias)
        answered_by.append(attempt_request)
        return response
    raise _chain_error(request, errors)


async def _attempts(herd: Herd, request: ChatRequest) -> ChatResponse:
    """One model: before_call, then attempts under the timeout until one succeeds."""
    model = herd.get_model(request.alias)
    # the guards below keep the common call (no tools, prepared model) free of a function
    # call each: this runs on every call (bench/overhead.py)
    if request.options.get("tools"):  # else skipped, with the reason, for a fallback
        require_tool_support(model, request)
    if not model.prepared:
        await _prepare(model)
    retries, timeout = _limits(herd, model, request)
    has_before_call = herd._has.get("before_call")
    attempt = 0
    while True:
        if has_before_call:
            answered = herd.call_before_call(request)
            if answered is not None:
                return answered
        try:
            # asyncio.timeout costs a few µs; anyio's cancel scope costs ~4x that,
            # and this runs on every call (bench/overhead.py)
            async with asyncio.timeout(timeout):
                response = await model.chat(request)
            if response.finish_reason == "unknown":
                _check_complete(request, response)
            assign(response, "attempts", attempt + 1)
            if not response.alias:
                assign(response, "alias", request.alias)
            return response
        except Exception as exc:
            error = _attempt_error(herd, request, exc, timeout, streaming=False)
        delay = _retry_delay(herd, request, error, attempt, retries)
        if delay is None:
            raise error
        attempt += 1
        await anyio.sleep(delay)


# ---- stream ---------------------------------------------------------------------


async def stream(herd: Herd, request: ChatRequest) -> AsyncIterator[Any]:
    """Yield what the model streams (text chunks, events), then the final ChatResponse."""
    if not herd._started:
        await herd.start()
    started = request.stash[STARTED] = time.perf_counter()
    async with AsyncExitStack() as stack:
        if herd._has.get("acquire_admission"):
            await _admit(herd, request, _gates(herd, request), stack)
        async for item in _stream_admitted(herd, request, started):
            yield item


async def _stream_admitted(herd: Herd, request: ChatRequest, started: float) -> AsyncIterator[Any]:
    cache = herd._cache
    key = cache.key_for(request) if cache is not None else None
    try:
        hit = await _lookup(herd, request, key, started)
    except BaseException as exc:
        _fail(herd, request, exc)
        raise
    if hit is not None:
        if hit.content:
            yield hit.content
        yield hit
        return
    final: ChatResponse | None = None
    answered_by: ChatRequest | None = None
    errors: list[tuple[str, HerdError]] = []
    candidates = _candidates(herd, request)
    deadline = request.stash.get(DEADLINE, None)
    ends = None if deadline is None else asyncio.get_running_loop().time() + deadline
    for index, alias in enumerate(candidates):
        attempt_request = _request_for(herd, request, alias)
        emitted = False
        try:
            async for item in _stream_attempts(herd, attempt_request, ends, deadline):
                if isinstance(item, ChatResponse):
                    final = item
                else:
                    # reasoning and keep-alives are not the answer: a fallback may follow
                    emitted = emitted or not isinstance(item, KeepAlive | ReasoningDelta)
                    yield item
        except HerdError as exc:
            errors.append((alias, exc))
            if not emitted and _falls_back(herd, request, exc, index, len(candidates)):
                continue
            error = exc if emitted else _chain_error(request, errors)
            _fail(herd, request, error)
            if error is exc:
                raise
            raise error from exc
        except asyncio.CancelledError as exc:
            _fail(herd, request, exc)
            raise
        if index > 0 and final is not None:
            assign(final, "fallback_from", request.alias)
        answered_by = attempt_request
        break
    assert final is not None and answered_by is not None
    assign(final, "latency_s", time.perf_counter() - started)
    check_response(request, final)
    await _store(herd, request, answered_by, key, final, None)
    _finish(herd, request, final, None)
    yield final


async def _stream_attempts(
    herd: Herd, request: ChatRequest, ends: float | None = None, deadline: float | None = None
) -> AsyncIterator[Any]:
    """One model's stream, retried (like `_attempts`) only until the first chunk of the
    answer. `timeout` is an idle timeout: any item restarts it — text, reasoning, a
    provider's KeepAlive (a ping, an empty chunk; only `events=True` callers see it). `ends` (loop
    time) is when the whole stream's `deadline` (seconds) runs out, if one was asked for."""
    model = herd.get_model(request.alias)
    require_tool_support(model, request)
    if not model.prepared:
        await _prepare(model)
    retries, timeout = _limits(herd, model, request)
    loop = asyncio.get_running_loop()
    attempt = 0
    while True:
        answered = _before_call(herd, request)
        if answered is not None:
            if answered.content:
                yield answered.content
            yield answered
            return
        emitted = False
        iterator = model.stream(request).__aiter__()
        try:
            while True:
                # the timeout bounds the wait for each item, not the whole stream
                wait = timeout if ends is None else min(timeout, ends - loop.time())
                async with asyncio.timeout(wait):
                    try:
                        item = await iterator.__anext__()
                    except StopAsyncIteration:
                        break
                if isinstance(item, ChatResponse):
                    _check_complete(request, item)
                    item.attempts = attempt + 1
                    if not item.alias:
                        item.alias = request.alias
                elif not isinstance(item, KeepAlive | ReasoningDelta):
                    emitted = True  # the caller has answer text: no retry after this
                yield item
            return
        except Exception as exc:
            if ends is not None and isinstance(exc, TimeoutError) and loop.time() >= ends:
                exc = _deadline_error(request, deadline or 0.0)
            error = _attempt_error(herd, request, exc, timeout, streaming=True)
        finally:
            # a timeout, an error or a caller that went away: let the provider close
            # its HTTP stream or free its engine slot now, not at garbage collection
            closer = getattr(iterator, "aclose", None)
            if closer is not None:
                # closing a failed stream: its own error was reported already
                with contextlib.suppress(Exception):
                    await closer()
        delay = None if emitted else _retry_delay(herd, request, error, attempt, retries)
        if delay is None:
            raise error
        attempt += 1
        await anyio.sleep(delay)


# ---- the steps both roads share ---------------------------------------------------


def _gates(herd: Herd, request: ChatRequest) -> list[Any]:
    """The admission gates this call must enter (quotas, scheduler, residency); a
    refusal while asking for them is a reported failure."""
    try:
        return herd.call_admission(request)
    except BaseException as exc:
        _fail(herd, request, exc)
        raise


async def _admit(herd: Herd, request: ChatRequest, gates: list[Any], stack: AsyncExitStack) -> None:
    """Enter every gate in order; a refusal (a quota, a full queue) is a reported failure."""
    try:
        for gate in gates:
            await stack.enter_async_context(gate)
    except BaseException as exc:
        _fail(herd, request, exc)
        raise


async def _lookup(
    herd: Herd, request: ChatRequest, key: str | None, started: float
) -> ChatResponse | None:
    """A cached answer (finished: after_call already ran), or None to go upstream."""
    cache = herd._cache
    if cache is not None and key is not None and request.cache in _LOOKUP_MODES:
        hit = await cache.lookup(key)
        if hit is not None:
            hit.latency_s = time.perf_counter() - started
            hit.alias = request.alias
            _finish(herd, request, hit, None)
            return hit
    if request.cache == "only":
        raise CacheMissError(
            f"no cache tier holds an answer for this '{request.alias}' request — "
            f'call again without cache="only"'
        )
    return None


async def _store(
    herd: Herd,
    request: ChatRequest,
    answered_by: ChatRequest,
    key: str | None,
    response: ChatResponse,
    valid: bool | None,
) -> None:
    """Store a finished, valid answer under the key of the model that gave it.

    A fallback's answer goes under the fallback's own key, never the primary's: a
    later call for the primary asks the primary again (once it has recovered) instead
    of being served the fallback's answer for the whole TTL.
    """
    cache = herd._cache
    if cache is None or valid is False or request.cache not in _STORE_MODES:
        return
    if not cache.storable(response):
        return
    if answered_by is not request:
        key = cache.key_for(answered_by)
        response = response.model_copy(update={"fallback_from": None})
    if key is not None:
        await cache.store(key, response, request.cache_ttl)


def _validate(
    herd: Herd, request: ChatRequest, response: ChatResponse, validate: Validator
) -> bool:
    try:
        valid = bool(validate(response))
    except Exception:
        valid = False
    herd.emit(Metric("herd.validation", 1.0 if valid else 0.0, attributes=_attrs(request)))
    return valid


def _finish(herd: Herd, request: ChatRequest, response: ChatResponse, valid: bool | None) -> None:
    """after_call, then the call's metrics (cache hits included)."""
    if herd._has.get("after_call"):
        # the answer exists: a plugin bug here is recorded (herd plugins / doctor, fatal
        # under --strict), never a traceback that loses it; a HerdError is deliberate
        herd.call_observers(
            {"request": request, "response": response, "herd": herd, "valid": valid}
        )
    if not herd._has.get("on_metric"):
        return
    attrs = _attrs(request)
    emit = herd.emit
    emit(Metric("gen_ai.client.operation.duration", response.latency_s, "s", "histogram", attrs))
    emit(
        Metric("herd.cache.lookups", 1, attributes={**attrs, "tier": response.cache_tier or "miss"})
    )
    if response.cache_tier is None:
        usage = response.usage
        for kind, count in (("input", usage.input_tokens), ("output", usage.output_tokens)):
            token_attrs = {**attrs, "gen_ai.token.type": kind}
            emit(Metric("gen_ai.client.token.usage", count, "{token}", "histogram", token_attrs))
        for name, value in response.provider_metrics.items():
            emit(Metric(name, value, "s", "histogram", attrs))


def _fail(herd: Herd, request: ChatRequest, error: BaseException) -> None:
    """The error the caller will see: on_error(final=True) and `herd.errors`, once."""
    if herd._has.get("on_error"):
        herd.hook.on_error(request=request, error=error, herd=herd, final=True)
    if herd._has.get("on_metric"):
        herd.emit(Metric("herd.errors", 1, attributes=_attrs(request, type(error).__name__)))


def _attempt_error(
    herd: Herd, request: ChatRequest, exc: Exception, timeout: float, *, streaming: bool
) -> HerdError:
    """A failed attempt as a typed error (reported with on_error(final=False))."""
    error: HerdError
    if isinstance(exc, HerdError):
        error = exc
    elif isinstance(exc, TimeoutError):
        waited = "sent nothing for" if streaming else "gave no answer within"
        error = CallTimeoutError(
            f"'{request.alias}' ({request.provider}) {waited} {timeout:g}s — "
            f"pass a larger timeout= or set [models.{request.alias}] timeout"
        )
    else:  # a provider bug: report it typed, never retry it
        error = ProviderError(
            f"provider '{request.provider}' raised {type(exc).__name__}: {exc} — "
            f"this is a bug in its plugin; please report it"
        )
        error.retryable = False
    if herd._has.get("on_error"):
        herd.hook.on_error(request=request, error=error, herd=herd, final=False)
    return error


def _retry_delay(
    herd: Herd, request: ChatRequest, error: HerdError, attempt: int, retries: int
) -> float | None:
    """Seconds to wait before the next attempt, or None when this error is final."""
    if attempt >= retries:
        return None
    cfg = herd.config.herd
    delay = retry_delay(error, attempt, cfg.backoff_base, cfg.backoff_max)
    if delay is not None:
        herd.emit(Metric("herd.retries", 1, attributes=_attrs(request, type(error).__name__)))
    return delay


def _falls_back(herd: Herd, request: ChatRequest, error: HerdError, index: int, count: int) -> bool:
    """Whether the chain moves on to the next candidate (and count it if so)."""
    if not error.fallback_ok or index == count - 1:
        return False
    herd.emit(Metric("herd.fallbacks", 1, attributes=_attrs(request, type(error).__name__)))
    return True


def _chain_error(request: ChatRequest, errors: list[tuple[str, HerdError]]) -> HerdError:
    if len(errors) == 1:
        return errors[0][1]
    return AllModelsFailedError(request.alias, list(errors))


def _check_complete(request: ChatRequest, response: ChatResponse) -> None:
    """An answer without a finish reason was cut short somewhere: never take it as done."""
    if response.finish_reason == "unknown" and response.cache_tier is None:
        raise BadResponseError(
            f"'{request.alias}' ({request.provider}) returned an unfinished answer (no finish "
            f"reason) — retrying; if it persists, a proxy or the server is cutting answers short"
        )


def _deadline_error(request: ChatRequest, deadline: float) -> HerdError:
    """The whole stream ran out of time: final (retrying cannot give time back)."""
    error = CallTimeoutError(
        f"'{request.alias}' ({request.provider}) did not finish streaming within its "
        f"deadline of {deadline:g}s — pass a larger deadline= (the idle timeout, which "
        f"any event from the server restarts, did not fire)"
    )
    error.retryable = False
    error.fallback_ok = False
    return error


def _before_call(herd: Herd, request: ChatRequest) -> ChatResponse | None:
    if herd._has.get("before_call"):
        return herd.call_before_call(request)
    return None


async def _prepare(model: Model) -> None:
    """Import the SDK and build clients once, outside the first attempt's timeout."""
    await model.prepare()
    model.prepared = True


def _limits(herd: Herd, model: Model, request: ChatRequest) -> tuple[int, float]:
    cfg = herd.config.herd
    retries = model.spec.retries if model.spec.retries is not None else cfg.retries
    timeout = request.timeout if request.timeout is not None else cfg.timeout
    return retries, timeout


def _candidates(herd: Herd, request: ChatRequest) -> list[str]:
    """The alias first, then its fallbacks (each once)."""
    spec = herd.resolve(request.alias)
    seen = [request.alias]
    if not spec.fallbacks:
        return seen
    for name in spec.fallbacks:
        if name not in seen:
            seen.append(name)
    return seen


def _request_for(herd: Herd, request: ChatRequest, alias: str) -> ChatRequest:
    if alias == request.alias:
        return request
    spec = herd.resolve(alias)
    # the fallback gets its own alias's defaults plus what the caller passed — not
    # the primary alias's defaults (an Ollama num_ctx would make a cloud fallback
    # refuse the call) nor what plugins wrote into the primary's options
    call_options, call_timeout = request.stash.get(CALLER, (request.options, None))
    stash = Stash()
    stash[CALLER] = (call_options, call_timeout)
    return request.model_copy(
        update={
            "alias": alias,
            "provider": spec.provider,
            "model": spec.model,
            "options": {**spec.options, **call_options},
            "timeout": call_timeout if call_timeout is not None else spec.timeout,
            "stash": stash,
        }
    )


def _attrs(request: ChatRequest, error_type: str | None = None) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.provider.name": request.provider,
        "gen_ai.request.model": request.model,
        "herd.alias": request.alias,
    }
    if request.tenant:
        attrs["herd.tenant"] = request.tenant
    if error_type:
        attrs["error.type"] = error_type
    return attrs
