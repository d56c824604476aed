"""gang jobs: a job's node count, an attempt's ranks on several nodes, a node's network label

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('nodes', sa.Integer(), nullable=False, server_default='1'))
    with op.batch_alter_table('attempt', schema=None) as batch_op:
        batch_op.add_column(sa.Column('gang', sa.JSON(), nullable=False, server_default='[]'))
    with op.batch_alter_table('node', schema=None) as batch_op:
        batch_op.add_column(sa.Column('network', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('node', schema=None) as batch_op:
        batch_op.drop_column('network')
    with op.batch_alter_table('attempt', schema=None) as batch_op:
        batch_op.drop_column('gang')
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('nodes')
