"""votes: two replies to one question side by side, and the one the user preferred

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "votes",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("persona", sa.String(100), nullable=False),
        sa.Column("question", sa.Text, nullable=False),
        sa.Column("context", sa.JSON, nullable=False),
        sa.Column("a_model", sa.String(300), nullable=False),
        sa.Column("b_model", sa.String(300), nullable=False),
        sa.Column("a_reply", sa.Text, nullable=False),
        sa.Column("b_reply", sa.Text, nullable=False),
        sa.Column("a_meta", sa.JSON, nullable=False),
        sa.Column("b_meta", sa.JSON, nullable=False),
        sa.Column("winner", sa.String(8), nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("voted_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_votes_user_id", "votes", ["user_id"])
    op.create_index("ix_votes_persona_voted", "votes", ["persona", "voted_at"])


def downgrade() -> None:
    op.drop_index("ix_votes_persona_voted", "votes")
    op.drop_index("ix_votes_user_id", "votes")
    op.drop_table("votes")
