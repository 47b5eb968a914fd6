"""Making and measuring models: recipes (config), the SFT and DPO trainers over shared helpers, evaluation,
the Optuna sweep, tiny Gemma 3n checkpoints for tests."""
