"""What users make, kept: the history database (schema, store, migrations), chat files in and out,
and SillyTavern character cards as personas."""
