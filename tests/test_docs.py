"""Documentation that must stay true to the code."""
from pathlib import Path

from scripts import settings_table

ROOT = Path(__file__).resolve().parent.parent


def test_readme_settings_table_matches_config_toml():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- settings-table:start -->\n") + len("<!-- settings-table:start -->\n")
    end = readme.index("<!-- settings-table:end -->")
    assert readme[start:end] == settings_table.table() + "\n", \
        "README settings table is stale: regenerate it with scripts/settings_table.py"


def test_readme_names_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
