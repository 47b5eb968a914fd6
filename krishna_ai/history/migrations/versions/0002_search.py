"""chat search: an index for one user's newest chats, and (SQLite) a full-text index of messages

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04

On SQLite, `message_search` is an FTS5 table with the trigram tokenizer over messages.content (external
content: the text is not stored twice), kept in step by triggers, so a search for any 3+ characters is an
index lookup rather than a scan of every message. Other databases search with LIKE as before.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SQLITE_SEARCH = [
    "CREATE VIRTUAL TABLE message_search USING fts5(content, content='messages', content_rowid='id', "
    "tokenize='trigram')",
    "CREATE TRIGGER message_search_insert AFTER INSERT ON messages BEGIN "
    "INSERT INTO message_search(rowid, content) VALUES (new.id, new.content); END",
    "CREATE TRIGGER message_search_delete AFTER DELETE ON messages BEGIN "
    "INSERT INTO message_search(message_search, rowid, content) VALUES ('delete', old.id, old.content); END",
    "CREATE TRIGGER message_search_update AFTER UPDATE OF content ON messages BEGIN "
    "INSERT INTO message_search(message_search, rowid, content) VALUES ('delete', old.id, old.content); "
    "INSERT INTO message_search(rowid, content) VALUES (new.id, new.content); END",
    "INSERT INTO message_search(message_search) VALUES ('rebuild')",  # the messages saved before this version
]


def upgrade() -> None:
    op.create_index("ix_chats_user_updated", "chats", ["user_id", "updated_at"])
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_SEARCH:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in ("message_search_insert", "message_search_delete", "message_search_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS message_search")
    op.drop_index("ix_chats_user_updated", "chats")
