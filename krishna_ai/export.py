"""Export: GGUF through llama.cpp's own converter (verified after writing), and an Ollama Modelfile.

    python -m krishna_ai export fetch-converter                       # once: ~75 MB from PyPI, keeps ~3 MB
    python -m krishna_ai export gguf --model merged/krishna-light --out krishna-light.f16.gguf
    python -m krishna_ai export modelfile --persona krishna --gguf krishna-light.f16.gguf --out Modelfile

PyPI's `gguf` package reads and writes GGUF but has no converter; llama.cpp's `convert_hf_to_gguf.py`
(with its `conversion/` package and its own `gguf-py`) ships inside the llama-cpp-python source
distribution. `fetch-converter` downloads that sdist (pinned below) and extracts only the converter
into the krishna_ai cache; `--llama-cpp DIR` or $KRISHNA_AI_LLAMA_CPP point at a llama.cpp checkout
instead. The converter runs in a subprocess and writes to a temporary name that is renamed only after
the file was read back and checked against the source model (`gguf_check.verify_gguf`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
from collections import deque
from pathlib import Path, PurePosixPath
from typing import Any

from krishna_ai.errors import ConfigError, problems

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
"""The llama-cpp-python sdist whose vendored llama.cpp converter `fetch-converter` extracts."""
LLAMA_CPP_PYTHON_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
"""Its sha256: the converter is code that runs here, so the pinned download is checked."""
LLAMA_CPP_ENV = "KRISHNA_AI_LLAMA_CPP"
OUTTYPES = ("f16", "bf16", "q8_0")
CONVERTER = "convert_hf_to_gguf.py"
SOURCE_MARKER = "KRISHNA_AI_SOURCE.txt"
MULTIMODAL = ("Gemma3nForConditionalGeneration", "Gemma3ForConditionalGeneration")
# Ollama's default context is small; a persona's system part plus a few turns fits in this, and
# the full 32k of Gemma 3 would reserve far more KV memory than a chat needs.
DEFAULT_NUM_CTX = 8192


def converter_cache() -> Path:
    from krishna_ai.light import cache_root

    return cache_root() / "llama.cpp"


def is_converter(folder: Path) -> bool:
    return (folder / CONVERTER).is_file() and (folder / "gguf-py" / "gguf" / "__init__.py").is_file()


def find_converter(llama_cpp: str | Path | None = None) -> Path:
    """--llama-cpp DIR, else $KRISHNA_AI_LLAMA_CPP, else the cached extraction; a clear error otherwise."""
    for origin, value in (("--llama-cpp", llama_cpp), (f"${LLAMA_CPP_ENV}", os.environ.get(LLAMA_CPP_ENV))):
        if value:
            folder = Path(value).expanduser()
            if not is_converter(folder):
                raise ConfigError(f"{origin} {folder}: no {CONVERTER} with gguf-py/ there; give a llama.cpp "
                                  "checkout, or run `python -m krishna_ai export fetch-converter`")
            return folder
    cache = converter_cache()
    if is_converter(cache):
        return cache
    raise ConfigError(
        "no llama.cpp converter (convert_hf_to_gguf.py) found.\n"
        f"Tried: --llama-cpp (not given), ${LLAMA_CPP_ENV} (not set), {cache} (missing).\n"
        "To fix: run `python -m krishna_ai export fetch-converter` (downloads the llama-cpp-python "
        f"{LLAMA_CPP_PYTHON_VERSION} source from PyPI, about 75 MB, and keeps only the converter), or pass "
        "--llama-cpp DIR pointing at a llama.cpp checkout.")


def _wanted(rel: PurePosixPath) -> bool:
    """The converter, its `conversion` package, gguf-py, the built-in vocabularies and chat templates."""
    s = str(rel)
    return (s in (CONVERTER, "LICENSE", "requirements/requirements-convert_hf_to_gguf.txt",
                  "models/ggml-vocab-gpt-neox.gguf", "models/ggml-vocab-llama-spm.gguf")
            or (s.startswith("conversion/") and s.endswith(".py"))
            or s.startswith(("gguf-py/gguf/", "models/templates/"))
            or s in ("gguf-py/LICENSE", "gguf-py/pyproject.toml"))


def extract_converter(sdist: Path, target: Path) -> int:
    """Copy the converter's files out of a llama-cpp-python sdist into `target`; returns the file count."""
    count = 0
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            if len(parts) < 4 or parts[1:3] != ("vendor", "llama.cpp") or not member.isfile():
                continue
            rel = PurePosixPath(*parts[3:])
            if ".." in rel.parts or not _wanted(rel):
                continue
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, dest.open("wb") as fh:  # type: ignore[union-attr]
                fh.write(src.read())
            count += 1
    if not is_converter(target):
        raise ConfigError(f"{sdist.name}: no vendor/llama.cpp/{CONVERTER} with gguf-py inside")
    return count


def fetch_converter(version: str = LLAMA_CPP_PYTHON_VERSION, *, force: bool = False) -> Path:
    """pip-download the llama-cpp-python sdist and keep only the converter, in the krishna_ai cache."""
    import hashlib
    import shutil

    target = converter_cache()
    marker = target / SOURCE_MARKER
    if is_converter(target) and marker.is_file() and f"=={version} " in marker.read_text() and not force:
        return target
    with tempfile.TemporaryDirectory(prefix="krishna-llama-cpp-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
               f"llama-cpp-python=={version}", "-d", tmp]
        print(f"downloading llama-cpp-python {version} (source, about 75 MB) from PyPI ...", file=sys.stderr)
        if subprocess.run(cmd).returncode != 0:
            raise ConfigError(f"`{' '.join(cmd[2:])}` failed (see pip's output above); without network use "
                              "--llama-cpp DIR with a llama.cpp checkout")
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"), None)
        if sdist is None:
            raise ConfigError(f"pip downloaded no llama_cpp_python-{version}.tar.gz into {tmp}")
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if version == LLAMA_CPP_PYTHON_VERSION and digest != LLAMA_CPP_PYTHON_SHA256:
            raise ConfigError(f"{sdist.name}: sha256 {digest} is not the pinned {LLAMA_CPP_PYTHON_SHA256}; "
                              "refusing to run a converter that differs from the one this project tested")
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            n = extract_converter(sdist, partial)
            (partial / SOURCE_MARKER).write_text(
                f"llama-cpp-python=={version} sdist sha256 {digest}\n"
                f"{n} files (vendor/llama.cpp converter) extracted by `python -m krishna_ai export fetch-converter`\n")
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return target


def _source_folder(model: str) -> Path:
    from krishna_ai.models import check_local_folder, resolve_source

    _, source, is_local = resolve_source(model)
    if not is_local:
        raise ConfigError(f"export needs a local model folder, not {model!r}: download it first "
                          f"(hf download {source} --local-dir DIR) or merge an adapter into one")
    folder = Path(source)
    check_local_folder(folder)
    if not ((folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()):
        raise ConfigError(f"{folder} has no tokenizer.json or tokenizer.model; the GGUF needs the tokenizer")
    return folder


def convert_gguf(model: str, out: str | Path, *, outtype: str = "f16", llama_cpp: str | Path | None = None,
                 verify: bool = True, force: bool = False, verbose: bool = False) -> tuple[Path, Any]:
    """Convert a local Gemma 3 / Gemma 3n folder (or the light tier) to GGUF; returns (path, check report).

    A multimodal checkpoint gives its text model (llama.cpp puts vision/audio into a separate mmproj file).
    """
    import json

    from tqdm.auto import tqdm

    from krishna_ai.gguf_check import verify_gguf

    if outtype not in OUTTYPES:
        raise ConfigError(f"--outtype {outtype!r}: choose one of {', '.join(OUTTYPES)}")
    out = Path(out)
    if out.suffix != ".gguf":
        raise ConfigError(f"--out {out}: the file name should end in .gguf")
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists; choose another --out or pass --force to replace it")
    converter = find_converter(llama_cpp)  # first: cheap, and "light" may otherwise build its cache for nothing
    source = _source_folder(model)
    architectures = json.loads((source / "config.json").read_text()).get("architectures") or []
    if any(a in MULTIMODAL for a in architectures):
        print(f"note: {source.name} is multimodal ({architectures[0]}); the GGUF holds its text model. "
              f"llama.cpp converts the vision/audio towers separately ({CONVERTER} --mmproj).", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(converter / "gguf-py"), str(converter), *filter(None, [os.environ.get("PYTHONPATH")])]))
    cmd = [sys.executable, str(converter / CONVERTER), str(source), "--outfile", str(tmp), "--outtype", outtype]
    tail: deque[str] = deque(maxlen=20)
    try:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                              errors="replace") as proc, \
                tqdm(desc=f"llama.cpp → {out.name}", unit=" tensors", disable=verbose) as bar:
            try:
                for line in proc.stdout:  # type: ignore[union-attr]
                    tail.append(line.rstrip())
                    if verbose:
                        sys.stderr.write(line)
                    elif "torch." in line and "-->" in line:  # one line per tensor written
                        bar.update()
                proc.wait()
            except BaseException:
                proc.kill()
                raise
        if proc.returncode != 0 or not tmp.is_file():
            raise ConfigError(problems(f"the llama.cpp converter failed (exit {proc.returncode}) on {source}; "
                                       "its last lines:", list(tail)))
        report = verify_gguf(tmp, source, label=out.name) if verify else None
        if report is not None and not report.ok:
            raise ConfigError(f"the GGUF does not match {source}; nothing was written to {out}\n{report.format()}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out, report


# -- Ollama Modelfile ---------------------------------------------------------------------------------

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
    from krishna_ai.prompting import system_text

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
    lines.append(_quoted("LICENSE", GEMMA_LICENSE))
    return "\n".join(lines) + "\n"


def write_modelfile(persona_id: str, gguf_path: str | Path, out: str | Path, *, prompts: list[str] | None = None,
                    num_ctx: int | None = None) -> Path:
    from krishna_ai.personas import get_persona, load_personas, persona_dirs

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
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(modelfile_text(persona, ref, num_ctx=ctx), encoding="utf-8")
    return out


# -- CLI ------------------------------------------------------------------------------------------------

def _cmd_gguf(args: argparse.Namespace) -> int:
    out, report = convert_gguf(args.model, args.out, outtype=args.outtype, llama_cpp=args.llama_cpp,
                               verify=not args.no_verify, force=args.force, verbose=args.verbose)
    if report is not None:
        print(report.format())
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MB, {args.outtype})")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    folder = fetch_converter(args.version, force=args.force)
    print(f"llama.cpp converter ready in {folder} ({(folder / SOURCE_MARKER).read_text().splitlines()[0]})")
    return 0


def _cmd_modelfile(args: argparse.Namespace) -> int:
    out = write_modelfile(args.persona, args.gguf, args.out, prompts=getattr(args, "prompts", None),
                          num_ctx=args.num_ctx)
    print(f"wrote {out}; create the model with: ollama create {args.persona} -f {out}")
    return 0


def add_cli(subparsers: Any) -> None:
    """Register `export {gguf,fetch-converter,modelfile}` on the CLI's subparsers."""
    p = subparsers.add_parser("export", help="export a model: GGUF (llama.cpp), Ollama Modelfile")
    sub = p.add_subparsers(dest="export_command", required=True, metavar="FORMAT")

    g = sub.add_parser("gguf", help="convert a local model folder to GGUF with llama.cpp's converter, then verify")
    g.add_argument("--model", required=True, help="model folder (e.g. from `merge`), or the light tier")
    g.add_argument("--out", required=True, metavar="FILE", help="the .gguf file to write")
    g.add_argument("--outtype", choices=OUTTYPES, default="f16", help="tensor type (q8_0 = 8-bit, about half of f16)")
    g.add_argument("--llama-cpp", dest="llama_cpp", metavar="DIR",
                   help=f"llama.cpp folder with {CONVERTER} (default: ${LLAMA_CPP_ENV}, then the fetched one)")
    g.add_argument("--no-verify", dest="no_verify", action="store_true", help="skip reading the file back")
    g.add_argument("--force", action="store_true", help="replace --out if it exists")
    g.add_argument("--verbose", action="store_true", help="show the converter's own log")
    g.set_defaults(func=_cmd_gguf)

    f = sub.add_parser("fetch-converter", help="download llama.cpp's converter (from the llama-cpp-python sdist)")
    f.add_argument("--version", default=LLAMA_CPP_PYTHON_VERSION, help="llama-cpp-python version")
    f.add_argument("--force", action="store_true", help="download again even if cached")
    f.set_defaults(func=_cmd_fetch)

    m = sub.add_parser("modelfile", help="write an Ollama Modelfile for a persona and a GGUF file")
    m.add_argument("--persona", required=True)
    m.add_argument("--gguf", required=True, metavar="FILE")
    m.add_argument("--out", default="Modelfile", metavar="FILE")
    m.add_argument("--num-ctx", dest="num_ctx", type=int,
                   help=f"context window (default: the model's, at most {DEFAULT_NUM_CTX})")
    m.add_argument("--prompts", action="append", default=argparse.SUPPRESS, metavar="DIR",
                   help="extra persona folder (repeatable)")
    m.set_defaults(func=_cmd_modelfile)
