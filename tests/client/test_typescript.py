"""callbox.d.ts and package.json: the client as a TypeScript project and an npm package see it.

The protocol's types in callbox.d.ts are generated from the schemas (tools/gen_typescript.py):
regenerating them must change nothing. The classes are declared by hand, so what callbox.js
exports is checked against what the declarations declare, and a usage file is type-checked by
`tsc` (installed by .ci/run; the test skips without it). `npm pack` must make a package that
a project installs from the tarball and imports.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.helpers import load_tool

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "src/callbox/web"
PACKAGE = json.loads((WEB / "package.json").read_text(encoding="utf-8"))
TSC = shutil.which("tsc")
NPM = shutil.which("npm")
NODE = shutil.which("node")


gen = load_tool("gen_typescript")


def _exports(text: str) -> set[str]:
    """The names a module exports as `export class NAME` or `export function NAME`."""
    return set(re.findall(r"^export (?:class|function) (\w+)", text, flags=re.MULTILINE))


def _run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_generated_types_are_what_the_schemas_give() -> None:
    committed = (WEB / "callbox.d.ts").read_text(encoding="utf-8")
    assert committed == gen.splice(committed, gen.render_block()), (
        "callbox.d.ts is stale: run python tools/gen_typescript.py"
    )
    assert gen.main(["--check"]) == 0


def test_every_message_of_the_schemas_has_its_type() -> None:
    """Read from the schema files, not through the generator: no message is left out."""
    committed = (WEB / "callbox.d.ts").read_text(encoding="utf-8")
    for direction in ("client", "server"):
        block = committed.split(f"export interface {direction.capitalize()}MessageMap {{")[1]
        block = block.split("\n}\n")[0]
        declared = set(re.findall(r"^  (\w+):", block, flags=re.MULTILINE))
        files = {path.stem for path in (ROOT / "schemas" / direction).glob("*.json")}
        assert declared == files, direction


def test_the_declarations_declare_what_callbox_js_exports() -> None:
    javascript = _exports((WEB / "callbox.js").read_text(encoding="utf-8"))
    declared = _exports((WEB / "callbox.d.ts").read_text(encoding="utf-8"))
    assert javascript == declared


def test_the_package_is_the_python_package_s_version_and_points_at_its_files() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert PACKAGE["version"] == pyproject["project"]["version"]
    assert PACKAGE["type"] == "module"
    entry = PACKAGE["exports"]["."]
    assert (entry["types"], entry["default"]) == (PACKAGE["types"], PACKAGE["main"])
    for name in PACKAGE["files"]:
        assert (WEB / name).is_file(), name
    assert {Path(entry["types"]).name, Path(entry["default"]).name} <= set(PACKAGE["files"])


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """A project with callbox-client in its node_modules, as `npm install <tarball>` leaves it
    (the files of package.json's `files`, and package.json)."""
    package = tmp_path / "node_modules" / PACKAGE["name"]
    package.mkdir(parents=True)
    for name in [*PACKAGE["files"], "package.json"]:
        shutil.copy(WEB / name, package / name)
    shutil.copy(ROOT / "tests/client/ts/usage.ts", tmp_path / "usage.ts")
    return tmp_path


@pytest.mark.skipif(TSC is None, reason="no tsc on PATH (.ci/run installs typescript with npm)")
@pytest.mark.parametrize(
    ("module", "resolution"), [("nodenext", "nodenext"), ("esnext", "bundler")]
)
def test_a_typescript_program_type_checks_against_the_declarations(
    installed: Path, module: str, resolution: str
) -> None:
    """usage.ts uses the client as docs/client-js.md does, and expects errors (`@ts-expect-error`)
    where the protocol refuses a message: both must hold, under both module resolutions."""
    assert TSC is not None
    flags = ["--strict", "--noEmit", "--target", "es2022", "--module", module]
    _run([TSC, *flags, "--moduleResolution", resolution, "usage.ts"], installed)


@pytest.mark.skipif(NPM is None or NODE is None, reason="no npm and node on PATH")
def test_npm_pack_makes_a_package_a_project_installs_and_imports(tmp_path: Path) -> None:
    packed = json.loads(
        _run([str(NPM), "pack", "--json", "--pack-destination", str(tmp_path)], WEB)
    )
    (tarball,) = packed
    assert {entry["path"] for entry in tarball["files"]} == {*PACKAGE["files"], "package.json"}
    project = tmp_path / "project"
    project.mkdir()
    (project / "package.json").write_text('{"name": "uses-callbox", "type": "module"}')
    install = [str(NPM), "install", "--offline", "--no-audit", "--no-fund"]
    _run([*install, str(tmp_path / tarball["filename"])], project)
    script = "const m = await import('callbox-client'); console.log(JSON.stringify(Object.keys(m)))"
    names = json.loads(_run([str(NODE), "--input-type=module", "-e", script], project))
    assert set(names) == _exports((WEB / "callbox.js").read_text(encoding="utf-8"))
