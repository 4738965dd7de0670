"""Reading the deployment files the way Docker does, for tests that run without a Docker engine.

- Compose files: YAML (anchors and merge keys included), variable interpolation as the Compose
  Specification defines it (`$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
  `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`, `${VAR+alt}`), and the merge of an override
  file restricted to what is unambiguous (mappings merge; replacing an existing list is refused,
  since Compose merges some lists and replaces others).
- Dockerfiles: instructions with line continuations, grouped by stage, `ARG` defaults.
- `.dockerignore` files: Docker's rules (a pattern matches a path or any of its parents; the
  last matching pattern wins; `!` re-includes).

`compose-spec.json` beside this file is `schema/compose-spec.json` of
github.com/compose-spec/compose-spec (Apache-2.0) at commit 170098ba07d9.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
SCHEMA = Path(__file__).with_name("compose-spec.json")


def load_script(name: str) -> ModuleType:
    """docker/<name>.py, imported by path (docker/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"docker_{name}", DOCKER / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- compose


class InterpolationError(ValueError):
    pass


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Substitute variables in one string value, as Compose does."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "$":
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            end = _closing_brace(text, i + 2)
            out.append(_expand(text[i + 2 : end], env))
            i = end + 1
        else:
            m = _NAME.match(text, i + 1)
            if m is None:
                raise InterpolationError(f"invalid interpolation at {text[i:]!r}")
            out.append(env.get(m.group(0), ""))
            i = m.end()
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    raise InterpolationError(f"unclosed ${{ in {text!r}")


def _expand(body: str, env: Mapping[str, str]) -> str:
    m = _NAME.match(body)
    if m is None:
        raise InterpolationError(f"invalid variable name in ${{{body}}}")
    name, rest = m.group(0), body[m.end() :]
    value = env.get(name)
    if not rest:
        return value or ""
    for op in (":-", ":?", ":+", "-", "?", "+"):
        if rest.startswith(op):
            arg = rest[len(op) :]
            break
    else:
        raise InterpolationError(f"invalid interpolation ${{{body}}}")
    unset_or_empty = not value if op.startswith(":") else value is None
    kind = op[-1]
    if kind == "-":
        return interpolate(arg, env) if unset_or_empty else value  # type: ignore[return-value]
    if kind == "?":
        if unset_or_empty:
            raise InterpolationError(f"required variable {name} is missing: {arg}")
        return value  # type: ignore[return-value]
    return "" if unset_or_empty else interpolate(arg, env)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    return node


def variables(node: Any) -> set[str]:
    """Names of every variable a compose document interpolates."""
    found: set[str] = set()
    if isinstance(node, str):
        text = node.replace("$$", "")
        found.update(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
        found.update(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", text))
    elif isinstance(node, list):
        for v in node:
            found |= variables(v)
    elif isinstance(node, dict):
        for v in node.values():
            found |= variables(v)
    return found


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def merge(base: Any, override: Any, where: str = "") -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value, f"{where}.{key}") if key in base else value
        return merged
    if isinstance(base, list) or isinstance(override, list):
        raise ValueError(f"{where}: an override replacing a list is ambiguous in Compose")
    return override


def environment(service: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """A rendered service's environment as a mapping; `- NAME` entries pass the variable through
    from `env` when it is set, and are left out otherwise."""
    raw = service.get("environment") or {}
    if isinstance(raw, dict):
        return {k: "" if v is None else str(v) for k, v in raw.items()}
    result: dict[str, str] = {}
    for item in raw:
        name, eq, value = item.partition("=")
        if eq:
            result[name] = value
        elif name in env:
            result[name] = env[name]
    return result


@dataclass
class Project:
    """Compose files rendered with an environment (the shell's variables)."""

    files: tuple[Path, ...]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def raw(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        for path in self.files:
            doc = merge(doc, load_yaml(path))
        return doc

    @property
    def config(self) -> dict[str, Any]:
        return interpolate_tree(self.raw, self.env)

    def services(self, profiles: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
        """The services that `up` starts with these profiles enabled."""
        return {
            name: svc
            for name, svc in self.config["services"].items()
            if not svc.get("profiles") or set(svc["profiles"]) & set(profiles)
        }

    def environment(self, service: str) -> dict[str, str]:
        return environment(self.config["services"][service], self.env)


def compose(*names: str, env: Mapping[str, str] | None = None) -> Project:
    return Project(tuple(DOCKER / n for n in names), dict(env or {}))


@cache
def compose_schema() -> dict[str, Any]:
    return json.loads(SCHEMA.read_text())


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}


def seconds(duration: str) -> float:
    """A Compose duration ("1m30s", "330s") in seconds."""
    parts = _DURATION.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


# --------------------------------------------------------------------------- Dockerfiles


@dataclass
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str] | None:
        try:
            value = json.loads(self.args)
        except ValueError:
            return None
        return value if isinstance(value, list) else None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    @property
    def run_text(self) -> str:
        return "\n".join(i.args for i in self.all("RUN"))


@dataclass
class Dockerfile:
    path: Path
    args: dict[str, str]
    """Global ARGs (before the first FROM) and their defaults."""
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"{self.path.name} has no stage {name!r}")

    @property
    def final(self) -> Stage:
        """The stage `docker build` builds when no --target is given."""
        return self.stages[-1]

    def chain(self, stage: Stage) -> list[Stage]:
        """The stage and the stages it is built FROM, nearest first."""
        chain = [stage]
        names = {s.name for s in self.stages}
        while chain[-1].base in names:
            chain.append(self.stage(chain[-1].base))
        return chain

    def effective(self, stage: Stage, keyword: str) -> Instruction | None:
        """The instruction in force for `stage` (its own, or inherited from its parents)."""
        for s in self.chain(stage):
            found = s.last(keyword)
            if found is not None:
                return found
        return None

    def resolve(self, text: str, overrides: Mapping[str, str] | None = None) -> str:
        values = {**self.args, **(overrides or {})}
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m.group(1) or m.group(2)], text)


def parse_dockerfile(path: Path) -> Dockerfile:
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    if pending:
        raise ValueError(f"{path}: a continuation line ends the file")

    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            if keyword != "ARG":
                raise ValueError(f"{path}: {keyword} before the first FROM")
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, rest))
    return Dockerfile(path, args, stages)


def copy_sources(instruction: Instruction) -> list[str]:
    """The context paths a COPY reads (none for COPY --from=...)."""
    words = shlex.split(instruction.args)
    if any(w.startswith("--from") for w in words):
        return []
    words = [w for w in words if not w.startswith("--")]
    return words[:-1]


# --------------------------------------------------------------------------- .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


@dataclass
class DockerIgnore:
    rules: list[tuple[bool, re.Pattern[str]]]
    """(excludes, pattern) in file order."""

    @classmethod
    def read(cls, path: Path) -> DockerIgnore:
        rules = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = line[1:] if negate else line
            rules.append((not negate, _pattern_regex(pattern.strip("/"))))
        return cls(rules)

    def excluded(self, path: str) -> bool:
        parts = path.strip("/").split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for excludes, regex in self.rules:
            if any(regex.match(c) for c in candidates):
                result = excludes
        return result
