"""docs/configuration.md is generated from the settings models and must not go stale."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.runtime.settings import Settings
from tools import settings_doc
from tools.run_settings import RunSettings


def test_the_committed_configuration_page_is_what_the_settings_say() -> None:
    committed = settings_doc.PAGE.read_text(encoding="utf-8")
    assert committed == settings_doc.render(), (
        "docs/configuration.md is stale: run `python -m tools.settings_doc` and commit it"
    )


@pytest.mark.parametrize("model", [Settings, RunSettings])
def test_every_setting_has_a_docstring_and_a_row(model: type[BaseSettings]) -> None:
    page = settings_doc.render()
    for name, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{name} has no docstring"
        assert f"| `{name.upper()}` |" in page


class _Sample(BaseSettings):
    model_config = SettingsConfigDict(use_attribute_docstrings=True)

    # --- First part -----------------------------------------------------------------------
    port: int = Field(8080, ge=0, le=65535)
    """The ``port``, with a | in it."""
    token: SecretStr | None = None
    """A secret."""

    # --- Second part ----------------------------------------------------------------------
    mode: Literal["a", "b"] = "a"
    """Which mode."""
    flag: bool = True
    """A flag."""
    ratio: float = Field(1.5, gt=0)
    """A ratio."""


class _Undocumented(BaseSettings):
    model_config = SettingsConfigDict(use_attribute_docstrings=True)

    known: int = 1
    """Documented."""
    unknown: int = 2


def test_rows_carry_each_fields_section_default_constraints_and_docstring() -> None:
    found = {row.name: row for row in settings_doc.rows(_Sample)}
    assert found["PORT"] == settings_doc.Row(
        "First part", "PORT", "`8080`", "0 to 65,535", "The `port`, with a \\| in it."
    )
    assert (found["TOKEN"].default, found["TOKEN"].allowed) == ("unset", "secret")
    assert found["MODE"].section == "Second part"
    assert found["MODE"].allowed == "`a`, `b`"
    assert (found["FLAG"].default, found["FLAG"].allowed) == ("`1`", "`0`, `1`")
    assert (found["RATIO"].default, found["RATIO"].allowed) == ("`1.5`", "> 0")


def test_a_setting_without_a_docstring_is_refused() -> None:
    with pytest.raises(ValueError, match="_Undocumented.unknown has no docstring"):
        settings_doc.rows(_Undocumented)


def test_check_fails_on_a_stale_page_and_passes_once_written(tmp_path: Path) -> None:
    page = tmp_path / "configuration.md"
    page.write_text("# Configuration\n\nsomething older\n", encoding="utf-8")
    assert settings_doc.main(["--check", "--output", str(page)]) == 1
    assert settings_doc.main(["--output", str(page)]) == 0
    assert settings_doc.main(["--check", "--output", str(page)]) == 0
    assert page.read_text(encoding="utf-8") == settings_doc.render()
