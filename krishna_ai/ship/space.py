"""Assemble a deployable Hugging Face Space: the chat studio, its personas, pinned requirements.

    python -m krishna_ai space --out build/space --model you/krishna-light --persona krishna
    python -m krishna_ai space --out build/space --model e4b --hardware zero-a10g

The folder holds README.md (the Space's front matter: sdk gradio at the version pinned in
requirements.txt, suggested hardware, models, license: gemma), app.py (the template in `spaces/`),
space.json (model, persona, ZeroGPU duration), requirements.txt (the project's pins, plus `spaces`
for ZeroGPU hardware), the `krishna_ai` package and the `prompts/` personas. Push it with
`hf upload OWNER/NAME DIR . --repo-type space`, or git.
"""

from __future__ import annotations

import json
import re
import shutil
import string
from pathlib import Path
from typing import Any

import yaml

from krishna_ai.core.errors import ConfigError, problems

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "spaces"
SPACES_PIN = "spaces==0.51.3"
"""ZeroGPU's decorator package, added to requirements only for zero-* hardware."""
PYTHON_VERSION = "3.11"
"""The floor in pyproject.toml, the version CI tests."""
HARDWARE = ("cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "l4x1", "l4x4", "l40sx1", "l40sx4", "l40sx8",
            "a10g-small", "a10g-large", "a10g-largex2", "a10g-largex4", "a100-large", "h100", "h100x8", "zero-a10g")
COLORS = ("red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray")
MARKER = "space.json"
COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.partial*", "eval-*.json")  # eval replies: not served


def pinned(requirements: Path, package: str) -> str:
    for line in requirements.read_text(encoding="utf-8").splitlines():
        m = re.match(rf"^\s*{re.escape(package)}\s*==\s*([\w.+-]+)", line, re.IGNORECASE)
        if m:
            return m.group(1)
    raise ConfigError(f"{requirements}: no `{package}==VERSION` pin")


def models_for(model: str) -> list[str]:
    """The hub ids the Space's front matter links (a tier maps to the model its weights come from)."""
    from krishna_ai.ship.push import HUB_BASES

    return [HUB_BASES.get(model, model)]


def front_matter(*, title: str, emoji: str, color_from: str, color_to: str, sdk_version: str, hardware: str,
                 models: list[str], short_description: str) -> str:
    meta = {"title": title, "emoji": emoji, "colorFrom": color_from, "colorTo": color_to, "sdk": "gradio",
            "sdk_version": sdk_version, "app_file": "app.py", "python_version": PYTHON_VERSION,
            "suggested_hardware": hardware, "models": models, "license": "gemma",
            "short_description": short_description}
    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)


def _check(model: str, persona: str, hardware: str, personas: dict[str, Any], title: str, description: str,
           color_from: str, color_to: str) -> None:
    from krishna_ai.runtime.tiers import TIERS

    errors = []
    if persona not in personas:
        errors.append(f"--persona {persona!r}: unknown; available: {', '.join(sorted(personas))}")
    if hardware not in HARDWARE:
        errors.append(f"--hardware {hardware!r}: not a Space hardware ({', '.join(HARDWARE)})")
    if model not in TIERS and (Path(model).exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", model)):
        local = "is a local folder, which the Space cannot see" if Path(model).exists() else "is not a tier or hub id"
        errors.append(f"--model {model!r} {local}: a Space loads a tier ({', '.join(TIERS)}) or a hub id "
                      "(push a local model first: python -m krishna_ai push --model DIR --repo OWNER/NAME)")
    if len(description) > 60:
        errors.append(f"--description: the Hub allows 60 characters, got {len(description)}")
    if not title.strip():
        errors.append("--title: empty")
    for flag, color in (("--color-from", color_from), ("--color-to", color_to)):
        if color not in COLORS:
            errors.append(f"{flag} {color!r}: choose one of {', '.join(COLORS)}")
    if errors:
        raise ConfigError(problems("cannot assemble the Space", errors))


def build_space(out: str | Path, *, model: str = "light", persona: str = "krishna", hardware: str | None = None,
                title: str | None = None, description: str | None = None, emoji: str = "🪷",
                color_from: str = "indigo", color_to: str = "yellow", gpu_duration: int = 120,
                space_id: str | None = None, prompts: list[str] | None = None, force: bool = False) -> Path:
    """Write the Space folder; returns it. An existing folder is replaced only if an earlier build (--force)."""
    from krishna_ai.core.personas import load_personas, persona_dirs
    from krishna_ai.runtime.tiers import is_gguf_spec

    out = Path(out)
    requirements = REPO / "requirements.txt"
    if not (TEMPLATES / "app.py").is_file() or not requirements.is_file():
        raise ConfigError(f"the Space templates ({TEMPLATES}) and requirements.txt come with the krishna_ai "
                          "repository: run this from a checkout")
    personas = load_personas(persona_dirs(prompts))
    hardware = hardware or "cpu-basic"
    p = personas.get(persona)
    title = title or f"krishna_ai {p.name if p else persona}"
    description = description or f"{p.name if p else persona} persona chat on Gemma"[:60]
    _check(model, persona, hardware, personas, title, description, color_from, color_to)
    if out.exists() and any(out.iterdir()):
        if not (force and (out / MARKER).is_file()):
            raise ConfigError(f"--out {out} is not empty; give a new folder (or --force to replace an earlier "
                              "Space build)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    shutil.copytree(REPO / "krishna_ai", out / "krishna_ai", ignore=COPY_IGNORE)
    shutil.copytree(REPO / "prompts", out / "prompts", ignore=COPY_IGNORE)
    for folder in prompts or []:  # extra persona folders join the shipped ones (same ids override)
        for toml in sorted(Path(folder).glob("*.toml")):
            shutil.copy2(toml, out / "prompts" / toml.name)
    _copy_persona_adapters(personas, out)
    shutil.copy2(TEMPLATES / "app.py", out / "app.py")
    (out / MARKER).write_text(json.dumps({"model": model, "persona": persona, "gpu_duration": gpu_duration},
                                         indent=2) + "\n", encoding="utf-8")
    reqs = requirements.read_text(encoding="utf-8").rstrip("\n") + "\n"
    if hardware.startswith("zero-"):
        reqs += f"# ZeroGPU: @spaces.GPU around each reply (see app.py)\n{SPACES_PIN}\n"
    if is_gguf_spec(model):
        reqs += ("# the llama.cpp backend for GGUF models (the Space builds it from source on first start)\n"
                 f"llama-cpp-python=={pinned(REPO / 'requirements-llamacpp.txt', 'llama-cpp-python')}\n")
    (out / "requirements.txt").write_text(reqs, encoding="utf-8")

    tier_note = {"light": " (Gemma 3 270M, shipped through PyPI: runs on the free CPU hardware)"}
    readme = string.Template((TEMPLATES / "README.md").read_text(encoding="utf-8")).substitute(
        front_matter=front_matter(title=title, emoji=emoji, color_from=color_from, color_to=color_to,
                                  sdk_version=pinned(requirements, "gradio"), hardware=hardware,
                                  models=models_for(model), short_description=description),
        title=title, description=p.description, model=model, model_note=tier_note.get(model, ""),
        persona_name=p.name, persona_id=p.id, hardware=hardware, repo_hint=space_id or "OWNER/SPACE_NAME")
    (out / "README.md").write_text(readme, encoding="utf-8")
    return out


def _copy_persona_adapters(personas: dict[str, Any], out: Path) -> None:
    """Adapters a persona file names (paths relative to it: its tiers' LoRAs, its counsel's matcher) must exist at the
    same place in the Space."""
    for p in personas.values():
        named = {f"adapters.{tier}": path for tier, path in (getattr(p, "adapters", None) or {}).items()}
        if (matcher := getattr(getattr(p, "counsel", None), "matcher", None)) is not None:
            named["counsel.matcher"] = matcher
        for field, path in named.items():
            src = Path(path)
            try:
                rel = src.resolve().relative_to(REPO)
            except ValueError:
                raise ConfigError(f"persona {p.id}: {field} {src} lies outside the repository, so the "
                                  "Space cannot ship it; move it under the repository") from None
            if not (out / rel).exists():
                shutil.copytree(src, out / rel, ignore=COPY_IGNORE)


def warnings_for(model: str, hardware: str) -> list[str]:
    if model in ("e2b", "e4b") and hardware.startswith("cpu"):
        return [f"{model} on {hardware} will be very slow or run out of memory (bf16 on CPU); "
                "consider --hardware t4-small or zero-a10g"]
    return []
