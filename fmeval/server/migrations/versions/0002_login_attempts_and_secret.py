"""Login attempts (the sliding-window rate limit) and the server's own secret (signs CSRF tokens of
the forms shown before login).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_attempts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),  # "account" (an email) or "address" (a client IP)
        sa.Column("key", sa.String(254), nullable=False),
        sa.Column("created", sa.DateTime, nullable=False),
    )
    op.create_index("ix_login_attempts_kind_key_created", "login_attempts", ["kind", "key", "created"])
    op.create_table(
        "server_secrets",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("value", sa.String(128), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("server_secrets")
    op.drop_index("ix_login_attempts_kind_key_created", "login_attempts")
    op.drop_table("login_attempts")
