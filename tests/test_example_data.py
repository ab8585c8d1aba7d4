"""The bundled example table is exactly what its seeded generator produces."""

from __future__ import annotations

from homunculus.data.example import write_example

from conftest import EXAMPLE_DIR


def test_bundled_example_is_reproducible(tmp_path) -> None:
    path = write_example(tmp_path / "iot.csv")
    assert path.read_bytes() == (EXAMPLE_DIR / "iot_features.csv").read_bytes()


def test_readme_python_example_is_short() -> None:
    lines = [line for line in (EXAMPLE_DIR / "compile_iot.py").read_text().splitlines()
             if line.strip() and not line.strip().startswith("#")]
    assert len(lines) <= 40


def test_readme_shows_the_python_example_verbatim() -> None:
    readme = (EXAMPLE_DIR.parents[1] / "README.md").read_text()
    script = (EXAMPLE_DIR / "compile_iot.py").read_text()
    body = script.split('"""', 2)[2].strip()  # without the module docstring
    assert body in readme
