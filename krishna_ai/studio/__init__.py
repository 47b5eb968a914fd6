"""The app: the chat service (Studio) and who may use it, and the Gradio UI over it (chat, sidebar, API)."""
