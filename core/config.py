"""plugins.toml: schema, lookup order, trust, profiles, and one-line errors.

Lookup order (first found wins, then merged over the built-in defaults):
`--config PATH`, `$HERD_CONFIG`, `./plugins.toml` *if the user trusted it* (`herd
trust`, core/trust.py), the user config dir
(`platformdirs.user_config_dir("modelherd")/plugins.toml`). An untrusted
`./plugins.toml` is skipped with one notice line; so is an untrusted `./.env`.
"""

from __future__ import annotations

import difflib
import logging
import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError
from .lazy_model import LazyModel
from .types import ModelSpec

if TYPE_CHECKING:
    # trust.py is needed only when there is a ./plugins.toml or ./.env to check (or one
    # was skipped): it is imported there, not by every process that loads the config
    from .trust import Skipped

_T = TypeVar("_T", bound=BaseModel)

log = logging.getLogger("modelherd.config")


def table_error(where: str, exc: ValidationError, model: type[BaseModel], docs: str) -> str:
    """One line for a bad config table: where, the key, and the fix.

    Every table — `[plugins.x]`, `[models.x]`, `[agents.x]` — reports the same way, so
    users learn one shape: an unknown key gets the closest name and the allowed ones.
    """
    first = exc.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        fields = list(model.model_fields)
        close = difflib.get_close_matches(key, fields, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(fields)}"
        return f"{where} {key}: unknown key — {hint} (see {docs})"
    # a check across fields has no key: say the table, not "?"
    return f"{where}{' ' + key if key else ''}: {first['msg']} — fix that value (see {docs})"


def validate_table(model: type[_T], table: Mapping[str, Any], where: str, docs: str) -> _T:
    """Validate one config table with `model`; a problem is a one-line ConfigError."""
    try:
        return model.model_validate(dict(table))
    except ValidationError as exc:
        raise ConfigError(table_error(where, exc, model, docs)) from None


#: keys of a [models.<alias>] table that are not provider settings
_SPEC_KEYS = {"provider", "model", "options", "fallbacks", "timeout", "retries", "price"}


if TYPE_CHECKING:
    _SkippedList = list[Skipped]
else:
    # load_config sets `skipped` after validation (it never comes from a file), so
    # pydantic checks it as a plain list: a stdlib dataclass in the annotation would make
    # every process build a dataclass schema (~1 ms) on its first load_config
    _SkippedList = list


class HerdSection(LazyModel):
    model_config = ConfigDict(extra="forbid")

    default_model: str = "local"
    #: per-call timeout in seconds unless the alias or the call says otherwise
    timeout: float = 120.0
    #: attempts after the first for retryable errors
    retries: int = 2
    #: backoff base and cap, seconds (exponential with full jitter)
    backoff_base: float = 0.25
    backoff_max: float = 8.0
    profile: str | None = None
    #: load only these plugins (same as HERD_PLUGINS); None = all installed
    allow_plugins: list[str] | None = None


class ProfileSection(LazyModel):
    model_config = ConfigDict(extra="forbid")

    default_model: str | None = None
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)


class HerdConfig(LazyModel):
    """The validated configuration. `plugins` holds `disable` and per-plugin tables."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    herd: HerdSection = Field(default_factory=HerdSection)
    plugins: dict[str, Any] = Field(default_factory=dict)
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    agents: dict[str, dict[str, Any]] = Field(default_factory=dict)
    tenants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    tiers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    profiles: dict[str, ProfileSection] = Field(default_factory=dict)

    #: where it came from (not part of the file)
    source: str = "built-in defaults"
    active_profile: str | None = None
    #: files found but not used (an untrusted ./plugins.toml); see core/trust.py
    skipped: _SkippedList = Field(default_factory=list)

    @property
    def disabled_plugins(self) -> set[str]:
        disabled = self.plugins.get("disable", [])
        return set(disabled) if isinstance(disabled, list) else set()

    def plugin_settings(self, name: str) -> dict[str, Any]:
        table = self.plugins.get(name, {})
        return table if isinstance(table, dict) else {}

    def spec(self, alias: str) -> ModelSpec:
        """The ModelSpec for `alias` (KeyError when the alias is not configured)."""
        table = self.models[alias]
        return _spec_from_table(alias, table, self.source)


def _spec_from_table(alias: str, table: dict[str, Any], source: str) -> ModelSpec:
    if "provider" not in table:
        raise ConfigError(
            f"{source}: [models.{alias}] has no 'provider' — add e.g. provider = \"ollama\""
        )
    known = {k: v for k, v in table.items() if k in _SPEC_KEYS}
    settings = {k: v for k, v in table.items() if k not in _SPEC_KEYS}
    try:
        return ModelSpec(alias=alias, settings=settings, **known)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        if key.startswith("price"):
            from .types import Price

            raise ConfigError(
                table_error(f"{source}: [models.{alias}]", exc, Price, "docs/cost.md")
            ) from None
        raise ConfigError(f"{source}: [models.{alias}] {key}: {first['msg']}") from None


def user_config_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("modelherd")) / "plugins.toml"


def user_env_path() -> Path:
    """The user's own .env (beside their plugins.toml): trusted, read under ./.env."""
    return user_config_path().parent / ".env"


ConfigOrigin = Literal["explicit", "env", "local", "user"]


def find_config_file(
    explicit: str | os.PathLike[str] | None = None,
) -> tuple[Path, ConfigOrigin] | None:
    """The config file to read and how it was found; `./plugins.toml` is returned as
    "local" whether trusted or not (`load_config` decides)."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist — check the --config path")
        return path, "explicit"
    env = os.environ.get("HERD_CONFIG")
    if env:
        path = Path(env)
        if not path.is_file():
            raise ConfigError(
                f"HERD_CONFIG points to {path}, which does not exist — fix or unset it"
            )
        return path, "env"
    local = Path("plugins.toml")
    if local.is_file():
        return local, "local"
    user = user_config_path()
    return (user, "user") if user.is_file() else None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror} — check its permissions") from None


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text — save it as UTF-8") from None


def _read_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML — {exc}") from None


def builtin_defaults() -> dict[str, Any]:
    text = resources.files("modelherd").joinpath("defaults.toml").read_text(encoding="utf-8")
    return _read_toml(text, "built-in defaults.toml")


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge tables; a [models.x] table in the user file replaces the default's."""
    out = dict(base)
    for key, value in override.items():
        if key == "models" and isinstance(value, dict):
            out[key] = {**base.get(key, {}), **value}
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


#: HerdConfig fields that say where the config came from; a file cannot set them
_INTERNAL_FIELDS = ("source", "active_profile", "skipped")


def _unknown_key_message(exc: ValidationError, data: dict[str, Any], source: str) -> str:
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"]]
    dotted = ".".join(loc)
    if first["type"] == "extra_forbidden":
        section_fields: list[str]
        if len(loc) == 1:
            section_fields = list(HerdConfig.model_fields)
            for internal in _INTERNAL_FIELDS:
                section_fields.remove(internal)
        elif loc[0] == "herd":
            section_fields = list(HerdSection.model_fields)
        else:
            section_fields = list(ProfileSection.model_fields)
        close = difflib.get_close_matches(loc[-1], section_fields, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(section_fields)}"
        return f"{source}: unknown key '{dotted}' — {hint}"
    return f"{source}: {dotted}: {first['msg']} — fix that value"


def load_config(
    explicit: str | os.PathLike[str] | None = None,
    profile: str | None = None,
    *,
    announce: bool = True,
) -> HerdConfig:
    """Find, read, merge and validate the configuration; apply the active profile.

    An untrusted `./plugins.toml` is not read: the user's own config (or the built-in
    defaults) is used and `config.skipped` says so, which is also logged as a
    one-line warning unless `announce=False` (the CLI prints one line itself).
    """
    data = builtin_defaults()
    source = "built-in defaults"
    skipped: list[Skipped] = []
    found = find_config_file(explicit)
    raw: bytes | None = None
    if found is not None and found[1] == "local":
        from .trust import Skipped, TrustStore

        raw = _read_bytes(found[0])
        store = TrustStore()
        verdict = store.verdict(found[0], raw)
        if verdict != "trusted":
            user = user_config_path()
            instead = str(user) if user.is_file() else "the built-in defaults"
            skipped.append(Skipped(found[0], verdict, instead, store.problem))
            found, raw = ((user, "user") if user.is_file() else None), None
    if found is not None:
        path = found[0]
        source = str(path)
        if raw is None:
            raw = _read_bytes(path)
        data = _merge(data, _read_toml(_decode(raw, source), source))
    for internal in _INTERNAL_FIELDS:
        if internal in data:
            raise ConfigError(f"{source}: unknown key '{internal}' — remove it")
    _check_plugins_section(data.get("plugins"), source)
    if found is None:
        # nothing but the shipped defaults.toml: a constant that
        # tests/core/test_config.py validates, so it is not validated again at every
        # start (building the HerdConfig and ModelSpec validators is ~40 M instructions,
        # a third of what loading every plugin costs). A user's file is validated below.
        config = _trusted_defaults(data)
    else:
        try:
            config = HerdConfig.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_unknown_key_message(exc, data, source)) from None
    config.source = source
    config.skipped = skipped
    if announce and skipped:
        from .trust import skipped_line

        _log_once(skipped_line(skipped))
    if found is not None:
        for alias, table in config.models.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{source}: [models.{alias}] must be a table")
            _spec_from_table(alias, table, source)
    chosen = profile or os.environ.get("HERD_PROFILE") or config.herd.profile
    if chosen:
        apply_profile(config, chosen)
    return config


def _trusted_defaults(data: dict[str, Any]) -> HerdConfig:
    """The HerdConfig of the built-in defaults, built without validation.

    Equal, field for field and type for type, to `HerdConfig.model_validate(data)`
    (tests/core/test_config.py says so); the nested sections are built the same way,
    since calling `HerdSection()` would build its validator.
    """
    values = dict(data)
    values["herd"] = _construct(HerdSection, values.get("herd", {}))
    values["profiles"] = {
        name: _construct(ProfileSection, table)
        for name, table in values.get("profiles", {}).items()
    }
    config = _construct(HerdConfig, values)
    config.__pydantic_fields_set__ = set(data)  # what validating `data` would record
    return config


def _construct(model: type[_T], values: dict[str, Any]) -> _T:
    """`model.model_construct(**values)`, calling the default factories itself: pydantic
    inspects each factory's signature first, which for a builtin such as `dict` runs the
    tokenizer (~2 M instructions a field)."""
    full = dict(values)
    for name, info in model.model_fields.items():
        if name not in full and info.default_factory is not None:
            full[name] = info.default_factory()  # type: ignore[call-arg]
    return model.model_construct(set(values), **full)


_ANNOUNCED: set[str] = set()


def _log_once(line: str) -> None:
    if line not in _ANNOUNCED:
        _ANNOUNCED.add(line)
        log.warning("%s", line)


def _check_plugins_section(plugins: Any, source: str) -> None:
    """`[plugins]`: `disable` is a list of names and every other key is a table."""
    if plugins is None:
        return
    if not isinstance(plugins, dict):
        raise ConfigError(f"{source}: [plugins] must be a table — see docs/configuration.md")
    disable = plugins.get("disable", [])
    if not isinstance(disable, list) or not all(isinstance(n, str) for n in disable):
        raise ConfigError(
            f"{source}: [plugins] disable must be a list of plugin names — "
            f'write disable = ["otel"] (see `herd plugins` for the names)'
        )
    for name, table in plugins.items():
        if name != "disable" and not isinstance(table, dict):
            raise ConfigError(
                f"{source}: [plugins] {name} must be a table — write [plugins.{name}] "
                f"with its settings below it (see docs/configuration.md)"
            )


def apply_profile(config: HerdConfig, name: str) -> None:
    if name not in config.profiles:
        known = ", ".join(sorted(config.profiles)) or "none defined"
        close = difflib.get_close_matches(name, list(config.profiles), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"{config.source}: unknown profile '{name}' — {hint}profiles: {known}")
    prof = config.profiles[name]
    for alias, table in prof.models.items():
        merged = {**config.models.get(alias, {}), **table}
        _spec_from_table(alias, merged, f"{config.source} [profiles.{name}]")
        config.models[alias] = merged
    if prof.default_model:
        config.herd.default_model = prof.default_model
    config.active_profile = name


def load_env_checked(
    dotenv_path: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, str], list[Skipped]]:
    """(the environment as modelherd sees it, the files skipped as untrusted).

    The real environment wins over `./.env`, which wins over the user's own .env
    (`user_env_path()`). `./.env` is read only when trusted (`herd trust`); an explicit
    `dotenv_path` is the caller's choice and always read.
    """
    from dotenv import dotenv_values

    skipped: list[Skipped] = []
    layers: list[Path] = [user_env_path()]
    if dotenv_path:
        layers.append(Path(dotenv_path))
    else:
        local = Path(".env")
        if local.is_file():
            from .trust import Skipped, TrustStore

            store = TrustStore()
            verdict = store.verdict(local, _read_bytes(local))
            if verdict == "trusted":
                layers.append(local)
            else:
                instead = "the environment" + (
                    f" and {user_env_path()}" if user_env_path().is_file() else ""
                )
                skipped.append(Skipped(local, verdict, instead, store.problem))
    values: dict[str, str] = {}
    for path in layers:
        if path.is_file():
            values.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    return {**values, **os.environ}, skipped


def load_env(dotenv_path: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """The environment as modelherd sees it (see `load_env_checked`); a skipped,
    untrusted `./.env` is logged as a warning once."""
    env, skipped = load_env_checked(dotenv_path)
    if skipped:
        from .trust import skipped_line

        _log_once(skipped_line(skipped))
    return env
