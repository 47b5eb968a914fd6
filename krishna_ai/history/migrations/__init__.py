"""The history database's schema, as Alembic migrations: `upgrade(engine)` brings any database to head.

A new column or table is a new file in versions/ (`alembic -c krishna_ai/migrations/alembic.ini revision
-m "what"`, then fill in upgrade/downgrade by hand); the store runs the upgrade when it opens, so users
keep their chats across versions. A database stamped with a revision this code does not know was
written by a newer krishna_ai: it is refused untouched.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from krishna_ai.core.errors import KrishnaError

HERE = Path(__file__).parent


def config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    if engine is not None:
        cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
        cfg.attributes["engine"] = engine
    return cfg


def head() -> str:
    head = ScriptDirectory.from_config(config()).get_current_head()
    assert head is not None
    return head


def current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to `revision` (creating the schema on an empty one)."""
    script = ScriptDirectory.from_config(config())
    now = current(engine)
    if now is not None and now not in {s.revision for s in script.walk_revisions()}:
        raise KrishnaError(f"the history database is at schema revision {now!r}, which this krishna_ai does not "
                           f"know (newest here: {head()!r}): it was written by a newer version; upgrade krishna_ai")
    command.upgrade(config(engine), revision)
