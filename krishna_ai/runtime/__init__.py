"""Running models: the engine contract and its back ends, and the weights they run.

    engine.py        the `Engine` Protocol every back end satisfies, `Reply`/`ReplyStats`, and the steps
                     they share (`prepare`: validate → slice → images → fit; stop tokens; errors)
    tiers.py         tier ids and hub ids, what a model spec names (no loading)
    load.py          `load_engine(spec, adapter)`: the one factory
    weights.py       transformers weights: fp32/bf16, 4-bit nf4, LoRA merge (and its bf16 cache)
    hf.py            the transformers engine
    llamacpp.py      the llama.cpp engine (GGUF)
    probe.py         a model server's spec, key and capabilities; remote.py the engine that talks to it
    light.py         the embedded light tier (Gemma 3 270M from PyPI)
    merge.py         an adapter merged into its base on disk; convert.py / gguf_check.py: GGUF and its check
    gguf_adapter.py  a persona's adapter on the llama.cpp path (merge → convert → cache)
"""
