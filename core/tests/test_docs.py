"""docs/plugins.md stays in step with the code (datasette's test_docs idea):

* every hook spec has a section whose heading is its exact signature, ``### name(a, b)``, with
  the argument names pluggy reads from the spec, and each section says when it is called,
  what it returns and which module uses it;
* every ``### sflow_*(...)`` heading names a hook that exists;
* the Agent API table names exactly the members of ``hookspecs.AgentAPI`` (what modules may
  use), the hook specs type ``agent`` with it, and the Agent has every member;
* every Python example compiles, and the ones marked ``<!-- doctest -->`` run.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pluggy
import pytest

from hostsflow import hookspecs
from hostsflow.agent import Agent
from hostsflow.hookspecs import AgentAPI

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
HEADING = re.compile(r"^### (sflow_\w+)\((.*)\)\s*$", re.M)
PY_BLOCK = re.compile(r"(<!-- doctest -->\n)?```python\n(.*?)```", re.S)


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def spec_argnames() -> dict[str, tuple[str, ...]]:
    """Hook name -> argument names, as pluggy reads them from the specs."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    out = {}
    for name in dir(pm.hook):
        caller = getattr(pm.hook, name)
        if name.startswith("sflow_") and getattr(caller, "spec", None) is not None:
            out[name] = tuple(caller.spec.argnames)
    return out


def documented() -> dict[str, tuple[str, ...]]:
    found: dict[str, tuple[str, ...]] = {}
    for name, args in HEADING.findall(doc_text()):
        assert name not in found, f"hook {name} documented twice"
        found[name] = tuple(a.strip() for a in args.split(",") if a.strip())
    return found


def sections() -> dict[str, str]:
    text = doc_text()
    marks = list(HEADING.finditer(text))
    out = {}
    for m, nxt in zip(marks, marks[1:] + [None]):
        end = nxt.start() if nxt else text.find("\n## ", m.end())
        out[m.group(1)] = text[m.end():end if end > 0 else len(text)]
    return out


def test_specs_are_found() -> None:
    specs = spec_argnames()
    assert len(specs) >= 10 and "sflow_flow_sample" in specs
    # pluggy's view agrees with the spec functions' own signatures
    for name, args in specs.items():
        assert tuple(inspect.signature(getattr(hookspecs, name)).parameters) == args


@pytest.mark.parametrize("hook", sorted(spec_argnames()))
def test_every_hook_has_a_section_with_its_exact_signature(hook: str) -> None:
    docs = documented()
    want = f"### {hook}({', '.join(spec_argnames()[hook])})"
    assert hook in docs, f"docs/plugins.md has no section '{want}'"
    assert docs[hook] == spec_argnames()[hook], (
        f"docs/plugins.md: '### {hook}({', '.join(docs[hook])})' but the spec is '{want}'")
    body = sections()[hook]
    for part in ("**When:**", "**Returns:**", "**Used by:**", "```python"):
        assert part in body, f"section {hook} lacks {part}"


def test_every_documented_hook_exists() -> None:
    unknown = set(documented()) - set(spec_argnames())
    assert not unknown, f"docs/plugins.md documents hooks that do not exist: {sorted(unknown)}"


def agent_api_members() -> set[str]:
    """The members of the Protocol modules see the agent through."""
    return {n for n in vars(AgentAPI) if not n.startswith("_")}


def test_agent_api_table_is_the_protocol() -> None:
    text = doc_text()
    table = text[text.index("## The Agent API"):text.index("## Flow samples")]
    names = set(re.findall(r"`agent\.(\w+)", table))
    assert {"module_config", "logger", "take_samples", "hold_timeout"} <= names
    assert names == agent_api_members(), (
        f"docs/plugins.md's Agent API table and hookspecs.AgentAPI differ: only in the doc "
        f"{sorted(names - agent_api_members())}, only in the Protocol "
        f"{sorted(agent_api_members() - names)}")


def test_the_agent_has_every_member_of_the_protocol() -> None:
    # attributes set in __init__ exist only on instances: read them from the source
    init_src = inspect.getsource(Agent.__init__)
    missing = [n for n in agent_api_members()
               if not hasattr(Agent, n) and f"self.{n} =" not in init_src]
    assert not missing, f"Agent lacks what AgentAPI promises: {missing}"


def test_hook_specs_type_agent_with_the_protocol() -> None:
    for name in spec_argnames():
        spec = inspect.signature(getattr(hookspecs, name))
        if "agent" in spec.parameters:
            assert spec.parameters["agent"].annotation == "AgentAPI", name


def test_python_examples_compile_and_doctests_run() -> None:
    blocks = PY_BLOCK.findall(doc_text())
    assert blocks
    for i, (_, code) in enumerate(blocks):
        compile(code, f"docs/plugins.md block {i}", "exec")
    runnable = [code for marker, code in blocks if marker]
    assert runnable, "no <!-- doctest --> example in docs/plugins.md"
    for code in runnable:
        exec(compile(code, "docs/plugins.md doctest", "exec"), {"__name__": "docs_example"})
