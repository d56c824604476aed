"""work on the Ray cluster that Coop did not start, as the coordinator's checks saw it

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('foreignwork',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('ray_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('ray_job_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('node_id', sa.Integer(), nullable=True),
    sa.Column('ray_node_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('place', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('first_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('gone_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['node_id'], ['node.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('kind', 'ray_id')
    )
    with op.batch_alter_table('foreignwork', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_foreignwork_node_id'), ['node_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('foreignwork', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_foreignwork_node_id'))
    op.drop_table('foreignwork')
