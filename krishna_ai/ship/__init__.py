"""What leaves the machine: Ollama Modelfiles, Hugging Face Hub uploads and Spaces, and llama.cpp's server."""
