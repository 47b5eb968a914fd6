"""Model tiers and what a model spec names: a tier id, a GGUF file, a local folder or a hub id.

Nothing here loads weights: `runtime.load.load_engine` turns a spec into an engine, `push` and
`space` read the hub ids. The family of a checkpoint is read from its config, never guessed from
its name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from krishna_ai.core.errors import ModelUnavailable


@dataclass(frozen=True)
class Tier:
    id: str
    label: str
    source: str
    """Hub id, or "embedded" for the packaged light model."""
    multimodal: bool


TIERS: dict[str, Tier] = {
    "light": Tier("light", "Light · Gemma 3 270M (embedded, CPU)", "embedded", False),
    "light-gguf": Tier("light-gguf", "Light · Gemma 3 270M Q4_K_M via llama.cpp (embedded, CPU, fastest)",
                       "embedded GGUF, llama.cpp", False),
    "e2b": Tier("e2b", "Gemma 3n E2B (google/gemma-3n-E2B-it)", "google/gemma-3n-E2B-it", True),
    "e4b": Tier("e4b", "Gemma 3n E4B (google/gemma-3n-E4B-it)", "google/gemma-3n-E4B-it", True),
}
GGUF_TIER = "light-gguf"


def default_tier() -> str:
    """The fastest light tier this install can run: `light-gguf` when llama-cpp-python is installed
    (about 5x the transformers decode rate on a CPU), else `light`."""
    import importlib.util

    return GGUF_TIER if importlib.util.find_spec("llama_cpp") is not None else "light"


FAST_PATH_HINT = ("Replies here run on transformers. For about 5x faster replies on a CPU, install llama.cpp "
                  "(pip install -r requirements-llamacpp.txt, a one-off ~5 minute build) and restart: "
                  "the app then serves light-gguf, with every persona's adapter.")


def describe_tiers() -> str:
    return ", ".join(f"{t.id} ({t.source})" for t in TIERS.values())


def image_tiers_hint() -> str:
    names = [t.id for t in TIERS.values() if t.multimodal]
    return (f"Images work on the Gemma 3n tiers ({', '.join(names)}) or any Gemma 3n folder "
            "loaded with --model.")


def is_gguf_spec(spec: str | os.PathLike[str] | None) -> bool:
    """True for the `light-gguf` tier and for paths ending in .gguf: models that llama.cpp runs."""
    return spec is not None and (str(spec) == GGUF_TIER or str(spec).lower().endswith(".gguf"))


def resolve_source(spec: str) -> tuple[str, str, bool]:
    """Map a tier id / folder / hub id to (name, source, is_local). Raises ModelUnavailable."""
    if is_gguf_spec(spec):
        raise ModelUnavailable(
            f"{spec!r} is a GGUF model: the app, `ask` and `eval` run it with llama.cpp, but this command needs "
            "transformers weights (use the tier `light`, or the folder the GGUF was exported from)")
    if spec.startswith("openai:"):
        raise ModelUnavailable(f"{spec!r} is a model on a server: the app, `ask` and `eval` can use it, but this "
                               "command needs the weights themselves (a tier, or a local model folder)")
    if spec == "light":
        from krishna_ai.runtime.light import ensure_light_checkpoint

        return "light", str(ensure_light_checkpoint()), True
    if spec in TIERS:
        return spec, TIERS[spec].source, False
    check_spec(spec)
    path = Path(spec).expanduser()
    return (path.name, str(path), True) if path.exists() else (spec, spec, False)


def split_model(spec: str) -> tuple[str, str | None]:
    """(model, adapter) of a model box value: `light@runs/x/adapter` names its adapter; a model server's URL
    (openai:…, which may hold user@host) never does."""
    from krishna_ai.runtime.probe import is_remote_spec

    if is_remote_spec(spec) or "@" not in spec:
        return spec, None
    model, _, adapter = spec.rpartition("@")
    return model, adapter or None


def check_spec(spec: str) -> None:
    """Refuse, without loading anything, a model spec that names nothing: not a tier, a model server, a GGUF
    file, a model folder or a hub id (ModelUnavailable says which it is not)."""
    if spec in TIERS or spec == "light" or spec == GGUF_TIER or spec.startswith("openai:"):
        return
    path = Path(spec).expanduser()
    if is_gguf_spec(spec):
        if not path.is_file():
            raise ModelUnavailable(f"no GGUF file {spec!r}")
        return
    if path.exists():
        if not path.is_dir():
            raise ModelUnavailable(f"model path {spec!r} is a file; give the folder that holds config.json")
        check_local_folder(path)
        return
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):  # a hub id
        return
    raise ModelUnavailable(
        f"no model {spec!r}: it is not a tier ({describe_tiers()}), not an existing folder, "
        "and not a Hugging Face hub id (owner/name)"
    )


def check_local_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise ModelUnavailable(f"{folder} has no config.json: give a Hugging Face model folder")
    if not any(folder.glob("*.safetensors")):
        found = sorted(p.name for p in folder.glob("*.bin")) or ["no weight files"]
        raise ModelUnavailable(
            f"{folder} has no *.safetensors weights (found: {', '.join(found)}); this app loads "
            "safetensors only, never pickled .bin files (convert them with transformers' save_pretrained)"
        )


def check_adapter(adapter: str | os.PathLike[str]) -> Path:
    """A LoRA adapter folder saved by peft, with safetensors weights. Raises ModelUnavailable."""
    path = Path(adapter).expanduser()
    if not path.is_dir():
        raise ModelUnavailable(f"adapter folder {str(adapter)!r} does not exist")
    if not (path / "adapter_config.json").is_file():
        raise ModelUnavailable(f"{path} has no adapter_config.json: not a peft LoRA adapter folder")
    if not (path / "adapter_model.safetensors").is_file():
        found = sorted(p.name for p in path.iterdir() if p.name.startswith("adapter_model")) or ["nothing"]
        raise ModelUnavailable(
            f"{path} has no adapter_model.safetensors (found: {', '.join(found)}); adapters load from "
            "safetensors only"
        )
    weights = path / "adapter_model.safetensors"
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="np") as fh:
            if not list(fh.keys()):
                raise ValueError("it holds no tensors")
    except Exception as exc:  # noqa: BLE001 - SafetensorError and friends: one clear message naming the file
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ModelUnavailable(f"{weights} is damaged or not a safetensors file ({reason}); re-copy the adapter "
                               "or train it again") from None
    return path
