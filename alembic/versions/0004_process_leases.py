"""process leases: which chat-server processes are alive, so that a live one can store the
replies of one that died

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # UNLOGGED on PostgreSQL: a lease is soft state, renewed every second or so; it need not
    # survive a crash of the database (its table is emptied then, and every process writes its
    # lease again at its next heartbeat), and its writes then cost no WAL flush.
    prefixes = ["UNLOGGED"] if op.get_bind().dialect.name == "postgresql" else []
    op.create_table(
        "process_leases",
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("named_session", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("owner", name="pk_process_leases"),
        prefixes=prefixes,
    )


def downgrade() -> None:
    op.drop_table("process_leases")
