"""The README's two commands are the ones CI runs, verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fenced_command(readme: str, marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\s*```bash\n(.+?)\n```", readme, flags=re.S)
    assert match, f"README has no ```bash block after <!-- {marker} -->"
    lines = match.group(1).strip().splitlines()
    assert len(lines) == 1, f"the {marker} block must be one copy-pastable line, got {lines}"
    return lines[0]


def test_ci_runs_the_readme_commands_verbatim():
    readme = (ROOT / "README.md").read_text()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    install = _fenced_command(readme, "install-command")
    test = _fenced_command(readme, "test-command")
    assert install in ci_lines
    assert test in ci_lines
    assert ci_lines.index(install) < ci_lines.index(test)


def test_ci_treats_no_collected_tests_as_failure():
    ci = (ROOT / ".ci" / "run").read_text()
    assert '"$status" -eq 5' in ci and "exit 1" in ci


def test_readme_shows_the_committed_sandbox_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- sandbox-table -->\n(.+?)\n<!-- /sandbox-table -->", readme, flags=re.S)
    assert match, "README has no sandbox table between its markers"
    assert match.group(1).strip() == (ROOT / "docs" / "sandbox_table.md").read_text(encoding="utf-8").strip()


def test_readme_images_exist():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert images
    for image in images:
        assert (ROOT / image).is_file(), image
