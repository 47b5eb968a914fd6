"""The lowest layer: personas, knowledge banks, prompt building, style rules, sampling, images, errors.

No model and no Gradio here, and nothing above: every other layer builds on these (see .importlinter)."""
