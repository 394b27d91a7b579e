"""The README stays true to the code: its variables, commands, make targets and layout (issue 14)."""

import re
import subprocess

from django.core.management import get_commands

from tests.server import ROOT

README = (ROOT / "README.md").read_text()
# Read by the code but not a setting of the service: the benchmark points Django at its own URLconf.
INTERNAL_VARIABLES = {"DJANGO_ROOT_URLCONF"}


def variables_read_by_the_code() -> set[str]:
    names = set()
    for path in [*ROOT.glob("trigger_project/*.py"), *ROOT.glob("runs/**/*.py"), *ROOT.glob("mollifier/**/*.py")]:
        text = path.read_text()
        names |= set(re.findall(r"\benv(?:_int|_bool|_pair)?\(\s*[\"']([A-Z][A-Z0-9_]+)[\"']", text))
        # os.environ, and the launcher's copy of it (trigger_project/dev.py: env.get("PORT", …)).
        names |= set(re.findall(r"\b(?:environ|env)(?:\.get\(|\[)\s*[\"']([A-Z][A-Z0-9_]+)[\"']", text))
    return names - INTERNAL_VARIABLES


def variables_in_the_readme_tables() -> set[str]:
    names = set()
    for cell in re.findall(r"^\| (`[^|]+`) \|", README, re.M):
        names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", cell))
    return names


def test_every_variable_the_code_reads_is_documented_and_every_documented_one_is_read():
    documented, read = variables_in_the_readme_tables(), variables_read_by_the_code()
    assert read - documented == set(), "read by the code but not in the README's tables"
    assert documented - read == set(), "in the README's tables but read by no code"


def test_the_commands_and_make_targets_the_readme_names_exist():
    commands = set(get_commands())
    named = set(re.findall(r"manage\.py ([a-z_]+)", README))
    assert named - commands == set()
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, re.M))
    assert set(re.findall(r"`make ([a-z][a-z0-9-]*)", README)) - targets == set()


def test_the_layout_lists_every_top_level_folder():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    folders = {line.split("/", 1)[0] for line in tracked.splitlines() if "/" in line}
    layout = README.split("## Layout", 1)[1]
    listed = set(re.findall(r"^([.\w]+)/", layout, re.M))
    assert folders - listed == set()
