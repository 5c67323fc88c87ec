"""Session CSRF tokens are derived, not stored: drop ``sessions.csrf``.

A session's token is now an HMAC of its cookie under the server's secret
(``auth.session_token``), so the database keeps nothing secret about a
session in the clear. Live sessions survive the upgrade (their cookie still
logs in; the token their pages show is the derived one). Registration attempts
share ``login_attempts`` (kind "register"), so no table is added.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:  # SQLite rebuilds the table; others ALTER in place
        batch.drop_column("csrf")


def downgrade() -> None:
    # the old code compares with a stored token it never made for these sessions: log everyone out
    op.execute(sa.text("DELETE FROM sessions"))
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("csrf", sa.String(64), nullable=False, server_default=""))
