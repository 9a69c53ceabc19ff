"""plugins.toml: lookup order, profiles, .env, and the one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from modelherd import ConfigError, Herd
from modelherd.config import (
    HerdConfig,
    builtin_defaults,
    load_config,
    load_env,
    user_config_path,
)
from modelherd.testing import MockModel, make_herd


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_builtin_defaults_serve_the_embedded_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config()
    assert config.source == "built-in defaults"
    assert config.herd.default_model == "local"
    assert config.spec("local").provider == "llamacpp"


def test_builtin_defaults_load_exactly_as_validating_them_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # with no config file, load_config builds the defaults without validating them
    # (config.py `_trusted_defaults`); this is the validation it skips: the shipped
    # defaults.toml must be valid and give the same config, field for field and type for
    # type (an int where the schema says float would differ in repr), nested sections
    # and which fields count as set included
    monkeypatch.chdir(tmp_path)
    fast = load_config()
    validated = HerdConfig.model_validate(builtin_defaults())
    validated.source, validated.skipped = fast.source, fast.skipped  # as load_config sets them
    assert fast == validated
    assert repr(fast) == repr(validated)
    assert fast.model_fields_set == validated.model_fields_set
    assert fast.herd.model_fields_set == validated.herd.model_fields_set
    assert fast.profiles.keys() == validated.profiles.keys()
    for name, profile in fast.profiles.items():
        assert type(profile) is type(validated.profiles[name])
        assert profile.model_fields_set == validated.profiles[name].model_fields_set
    assert fast.model_dump() == validated.model_dump()
    # every built-in alias is a valid ModelSpec (load_config checks a user's tables)
    assert fast.models
    for alias in fast.models:
        assert fast.spec(alias) == validated.spec(alias)


def test_a_user_file_merged_over_the_defaults_is_still_validated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    user = user_config_path()
    user.parent.mkdir(parents=True)
    write(user, '[herd]\ntimeout = "soon"\n')
    with pytest.raises(ConfigError, match=r"herd.timeout: .*fix that value"):
        load_config()
    write(user, '[models.local]\nprovider = "llamacpp"\ntimeout = "soon"\n')
    with pytest.raises(ConfigError, match=r"\[models.local\] timeout"):
        load_config()


def test_lookup_order_explicit_then_env_then_cwd_then_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trust_files
) -> None:
    monkeypatch.chdir(tmp_path)
    user = user_config_path()
    user.parent.mkdir(parents=True)
    write(user, '[herd]\ndefault_model = "from-user"\n')
    assert load_config().herd.default_model == "from-user"
    write(tmp_path / "plugins.toml", '[herd]\ndefault_model = "from-cwd"\n')
    assert load_config().herd.default_model == "from-user"  # untrusted: skipped
    trust_files(tmp_path / "plugins.toml")
    assert load_config().herd.default_model == "from-cwd"
    env_file = write(tmp_path / "env.toml", '[herd]\ndefault_model = "from-env"\n')
    monkeypatch.setenv("HERD_CONFIG", str(env_file))
    assert load_config().herd.default_model == "from-env"
    explicit = write(tmp_path / "explicit.toml", '[herd]\ndefault_model = "from-flag"\n')
    assert load_config(explicit).herd.default_model == "from-flag"


def test_user_models_merge_over_builtin_ones(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", '[models.fast]\nprovider = "ollama"\nmodel = "llama3.2"\n')
    config = load_config(path)
    assert set(config.models) >= {"fast", "local"}


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", '[herd]\ndefault_model = "x"\nretries = \n')
    with pytest.raises(ConfigError, match=r"p.toml: invalid TOML — .*line 3"):
        load_config(path)


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", '[herd]\ndefualt_model = "x"\n')
    with pytest.raises(
        ConfigError, match=r"unknown key 'herd.defualt_model' — did you mean 'default_model'\?"
    ):
        load_config(path)


def test_unknown_top_level_section(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", "[modles.x]\nprovider = 'ollama'\n")
    with pytest.raises(ConfigError, match=r"unknown key 'modles' — did you mean 'models'\?"):
        load_config(path)


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", '[herd]\nretries = "many"\n')
    with pytest.raises(ConfigError, match=r"p.toml: herd.retries: .*integer"):
        load_config(path)


def test_model_without_provider(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", '[models.x]\nmodel = "y"\n')
    with pytest.raises(ConfigError, match=r"\[models.x\] has no 'provider' — add e.g. provider"):
        load_config(path)


def test_missing_config_file_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="does not exist — check the --config path"):
        load_config(tmp_path / "nope.toml")
    monkeypatch.setenv("HERD_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match=r"HERD_CONFIG points to .* fix or unset it"):
        load_config()


def test_unknown_provider_suggests_the_closest_installed() -> None:
    herd = make_herd({"mock": MockModel()}, config={"models": {"typo": {"provider": "mokc"}}})
    with pytest.raises(
        ConfigError, match=r"\[models.typo\] unknown provider 'mokc' — did you mean 'mock'\?"
    ):
        herd.chat_sync("typo", "hi")


def test_profiles_override_aliases_and_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path / "p.toml",
        """
[models.smart]
provider = "llamacpp"
model = "smollm2-135m-instruct"

[profiles.prod]
default_model = "smart"
[profiles.prod.models.smart]
provider = "anthropic"
model = "claude-sonnet-4-5"
""",
    )
    assert load_config(path).spec("smart").provider == "llamacpp"
    prod = load_config(path, profile="prod")
    assert prod.active_profile == "prod"
    assert prod.spec("smart").provider == "anthropic" and prod.herd.default_model == "smart"
    monkeypatch.setenv("HERD_PROFILE", "prod")
    assert load_config(path).active_profile == "prod"


def test_unknown_profile_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", "[profiles.prod]\n[profiles.dev]\n")
    with pytest.raises(
        ConfigError, match=r"unknown profile 'prdo' — did you mean 'prod'\? profiles: dev, prod"
    ):
        load_config(path, profile="prdo")


def test_dotenv_values_sit_under_the_real_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = write(tmp_path / ".env", "OPENAI_API_KEY=from-file\nGROQ_API_KEY=groq-file\n")
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    env = load_env(env_file)
    assert env["OPENAI_API_KEY"] == "from-env" and env["GROQ_API_KEY"] == "groq-file"


def test_herd_reads_cwd_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trust_files
) -> None:
    monkeypatch.chdir(tmp_path)
    trust_files(write(tmp_path / "plugins.toml", '[herd]\ndefault_model = "local"\ntimeout = 7\n'))
    herd = Herd(load_entry_points=False)
    assert herd.config.herd.timeout == 7 and herd.config.source == "plugins.toml"


def test_every_table_reports_bad_keys_the_same_way() -> None:
    from modelherd.config import validate_table
    from pydantic import BaseModel, ConfigDict, model_validator

    class Table(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ttl: float = 1.0
        size: int = 1

        @model_validator(mode="after")
        def _check(self) -> Table:
            if self.size > 10:
                raise ValueError("size must stay under 10")
            return self

    where = "plugins.toml: [plugins.demo]"
    with pytest.raises(ConfigError) as err:
        validate_table(Table, {"tll": 2}, where, "docs/demo.md")
    assert str(err.value) == (
        "plugins.toml: [plugins.demo] tll: unknown key — did you mean 'ttl'? (see docs/demo.md)"
    )
    with pytest.raises(ConfigError) as err:
        validate_table(Table, {"colour": 2}, where, "docs/demo.md")
    assert str(err.value).endswith("colour: unknown key — allowed: ttl, size (see docs/demo.md)")
    with pytest.raises(ConfigError) as err:
        validate_table(Table, {"size": 11}, where, "docs/demo.md")
    assert str(err.value) == (
        "plugins.toml: [plugins.demo]: Value error, size must stay under 10 — fix that value "
        "(see docs/demo.md)"
    )
    assert validate_table(Table, {"ttl": 3}, where, "docs/demo.md").ttl == 3
