"""`python -m krishna_ai`: the parser (main) and one module per command group (chat, train, ship, history)."""
