"""Alembic's entry point: runs migrations on the engine the store passed in (or the URL in the config)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from krishna_ai.history.schema import Base

cfg = context.config
engine = cfg.attributes.get("engine") or create_engine(cfg.get_main_option("sqlalchemy.url") or "")

with engine.begin() as connection:
    # render_as_batch: SQLite cannot ALTER most columns; Alembic's batch mode copies the table instead.
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    context.run_migrations()
