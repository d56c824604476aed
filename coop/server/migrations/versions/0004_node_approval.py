"""a node takes jobs and learns the Ray token only once an admin approved it

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('node', schema=None) as batch_op:
        batch_op.add_column(sa.Column('approved', sa.Boolean(), nullable=False, server_default=sa.false()))
    # the nodes of a running cooperative were admitted before approval existed: an upgrade keeps them
    # working; only nodes registered from now on wait for an admin
    node = sa.table('node', sa.column('approved', sa.Boolean()))
    op.execute(node.update().values(approved=True))


def downgrade() -> None:
    with op.batch_alter_table('node', schema=None) as batch_op:
        batch_op.drop_column('approved')
