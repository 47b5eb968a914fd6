"""An Ollama Modelfile for a persona and a GGUF file: Gemma's turn template, the persona's system part
and sampling, the context window and the Gemma licence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from krishna_ai.core.cache import write_text
from krishna_ai.core.errors import ConfigError

# Ollama's default context is small; a persona's system part plus a few turns fits in this, and
# the full 32k of Gemma 3 would reserve far more KV memory than a chat needs.
DEFAULT_NUM_CTX = 8192

# Gemma has no system role: the system text opens the first user turn, as in Gemma's own chat template.
# Ollama passes the Modelfile's SYSTEM in .Messages as a "system" message.
OLLAMA_TEMPLATE = """\
{{- $system := "" }}
{{- range .Messages }}{{ if eq .Role "system" }}{{ $system = .Content }}{{ end }}{{ end }}
{{- $first := true }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<start_of_turn>user
{{ if and $first $system }}{{ $system }}

{{ end }}{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}{{ $first = false }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""
GEMMA_LICENSE = ("Gemma is provided under and subject to the Gemma Terms of Use found at "
                 "https://ai.google.dev/gemma/terms")


def _quoted(name: str, text: str) -> str:
    if '"""' in text:
        raise ConfigError(f'{name}: contains """, which a Modelfile cannot hold in a quoted block')
    return f'{name} """{text}"""'


def gguf_context_length(path: Path) -> int | None:
    import gguf

    reader = gguf.GGUFReader(path)
    arch = reader.fields.get("general.architecture")
    field = reader.fields.get(f"{arch.contents()}.context_length") if arch else None
    return int(field.contents()) if field else None


def modelfile_text(persona: Any, gguf_ref: str, *, num_ctx: int) -> str:
    from krishna_ai.core.prompting import system_text

    s = persona.sampling
    lines = [f"# Ollama Modelfile for the {persona.name} persona (krishna_ai). Create and run it with:",
             f"#   ollama create {persona.id} -f Modelfile && ollama run {persona.id}",
             f"FROM {gguf_ref}",
             _quoted("TEMPLATE", OLLAMA_TEMPLATE),
             _quoted("SYSTEM", system_text(persona)),
             f"PARAMETER temperature {s.temperature:g}",
             f"PARAMETER top_p {s.top_p:g}",
             f"PARAMETER top_k {s.top_k}",
             f"PARAMETER num_ctx {num_ctx}",
             f"PARAMETER num_predict {s.max_new_tokens}",
             'PARAMETER stop "<end_of_turn>"']
    if s.repetition_penalty != 1.0:
        lines.append(f"PARAMETER repeat_penalty {s.repetition_penalty:g}")
    if s.dry_multiplier > 0:
        lines.append(f"# dry_multiplier {s.dry_multiplier:g} is not carried over: Ollama has no DRY sampler")
    lines.append(_quoted("LICENSE", GEMMA_LICENSE))
    return "\n".join(lines) + "\n"


def write_modelfile(persona_id: str, gguf_path: str | Path, out: str | Path, *, prompts: list[str] | None = None,
                    num_ctx: int | None = None) -> Path:
    from krishna_ai.core.personas import get_persona, load_personas, persona_dirs

    persona = get_persona(load_personas(persona_dirs(prompts)), persona_id)
    gguf_path, out = Path(gguf_path), Path(out)
    if not gguf_path.is_file():
        raise ConfigError(f"--gguf {gguf_path}: file not found (make one with `python -m krishna_ai export gguf`)")
    with gguf_path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ConfigError(f"--gguf {gguf_path}: not a GGUF file")
    if num_ctx is not None and num_ctx < 256:
        raise ConfigError(f"--num-ctx must be at least 256, got {num_ctx}")
    ctx = num_ctx or min(gguf_context_length(gguf_path) or DEFAULT_NUM_CTX, DEFAULT_NUM_CTX)
    # Ollama resolves a relative FROM against the Modelfile's folder.
    try:
        ref = "./" + gguf_path.resolve().relative_to(out.resolve().parent).as_posix()
    except ValueError:
        ref = str(gguf_path.resolve())
    return write_text(out, modelfile_text(persona, ref, num_ctx=ctx))
