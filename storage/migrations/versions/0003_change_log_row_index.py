"""Index change_log by (row_id, position): which rows left after a page's window.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_change_log_row_position", "change_log", ["row_id", "position"])


def downgrade() -> None:
    op.drop_index("ix_change_log_row_position", table_name="change_log")
