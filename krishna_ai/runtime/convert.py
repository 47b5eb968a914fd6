"""GGUF through llama.cpp's own converter: find or fetch the converter, convert, verify, rename into place.

PyPI's `gguf` package reads and writes GGUF but has no converter; llama.cpp's `convert_hf_to_gguf.py`
(with its `conversion/` package and its own `gguf-py`) ships inside the llama-cpp-python source
distribution. `fetch-converter` downloads that sdist (pinned below) and extracts only the converter
into the krishna_ai cache; `--llama-cpp DIR` or $KRISHNA_AI_LLAMA_CPP point at a llama.cpp checkout
instead. The converter runs in a subprocess and writes to a temporary name that is renamed only after
the file was read back and checked against the source model (`gguf_check.verify_gguf`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from collections import deque
from pathlib import Path, PurePosixPath
from typing import Any

from krishna_ai.core.cache import atomic_dir, atomic_file, cache_root
from krishna_ai.core.errors import ConfigError, problems

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
"""The llama-cpp-python sdist whose vendored llama.cpp converter `fetch-converter` extracts."""
LLAMA_CPP_PYTHON_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
"""Its sha256: the converter is code that runs here, so the pinned download is checked."""
LLAMA_CPP_ENV = "KRISHNA_AI_LLAMA_CPP"
OUTTYPES = ("f16", "bf16", "q8_0")
CONVERTER = "convert_hf_to_gguf.py"
SOURCE_MARKER = "KRISHNA_AI_SOURCE.txt"
MULTIMODAL = ("Gemma3nForConditionalGeneration", "Gemma3ForConditionalGeneration")


def converter_cache() -> Path:
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
        with atomic_dir(target) as partial:
            n = extract_converter(sdist, partial)
            (partial / SOURCE_MARKER).write_text(
                f"llama-cpp-python=={version} sdist sha256 {digest}\n"
                f"{n} files (vendor/llama.cpp converter) extracted by `python -m krishna_ai export fetch-converter`\n")
    return target


def _source_folder(model: str) -> Path:
    from krishna_ai.runtime.tiers import check_local_folder, resolve_source

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

    from krishna_ai.runtime.gguf_check import verify_gguf

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
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(converter / "gguf-py"), str(converter), *filter(None, [os.environ.get("PYTHONPATH")])]))
    tail: deque[str] = deque(maxlen=20)
    with atomic_file(out) as tmp:  # renamed to `out` only once verified
        cmd = [sys.executable, str(converter / CONVERTER), str(source), "--outfile", str(tmp), "--outtype", outtype]
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
    return out, report
