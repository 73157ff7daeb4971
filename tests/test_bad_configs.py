"""The bad-config corpus: every ``tests/bad_configs/*.conf`` starts with
``# expect: LINE: substring`` and must be refused with exactly that ``FILE:LINE:`` and message,
both by the library (:func:`parse_config_text`) and by the installed ``hostsflowd -f FILE
--test`` (exit status 2, the message on stderr, no traceback)."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from hostsflow.config import ConfigError, ConfigRegistry, parse_config_text, read_config_text

CORPUS = Path(__file__).parent / "bad_configs"
FILES = sorted(CORPUS.glob("*.conf"))
EXPECT_RE = re.compile(rb"# expect: (\d+): (.+)\n")


def expectation(path: Path) -> tuple[int, str]:
    m = EXPECT_RE.match(path.read_bytes())
    assert m, f"{path.name}: first line must be '# expect: LINE: substring'"
    return int(m.group(1)), m.group(2).decode()


def installed_registry() -> ConfigRegistry:
    """A registry that knows the really installed modules (none is loaded: the corpus only
    uses core keys and modules that are not installed)."""
    return ConfigRegistry({ep.name: ep.dist.name if ep.dist else "?"
                           for ep in entry_points(group="hostsflow.modules")})


def test_corpus_is_big_enough() -> None:
    assert len(FILES) >= 40


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_library_refuses(path: Path) -> None:
    line, substring = expectation(path)
    with pytest.raises(ConfigError) as info:
        parse_config_text(read_config_text(str(path)), str(path), installed_registry())
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert substring in message, message


def _agent_command() -> list[str]:
    """How to run ``hostsflowd``, or skip if the CLI is not importable yet."""
    try:
        cli = importlib.import_module("hostsflow.cli")
    except ImportError as exc:
        pytest.skip(f"hostsflowd is not importable yet ({exc})")
    if not hasattr(cli, "agent_main"):
        pytest.skip("hostsflow.cli has no agent_main yet")
    script = shutil.which("hostsflowd")
    if script:
        return [script]
    return [sys.executable, "-c", "import sys; from hostsflow.cli import agent_main; "
            "sys.exit(agent_main())"]


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_hostsflowd_refuses(path: Path) -> None:
    line, substring = expectation(path)
    proc = subprocess.run([*_agent_command(), "-f", str(path), "--test"], capture_output=True,
                          text=True, errors="replace", timeout=60)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    expected = f"{path}:{line}: "
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(expected)]
    assert lines, f"no line starting with {expected!r} in stderr:\n{proc.stderr}"
    assert substring in lines[0], lines[0]
