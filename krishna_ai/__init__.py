"""krishna_ai: a Gradio chat studio for domain-specialised Gemma models, and the pipeline that makes them."""

__version__ = "0.1.0"
