"""job arrays: the jobarray table, and a job's array, index and matrix values

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'jobarray',
        sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('member_id', sa.Integer(), nullable=False),
        sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('gpus', sa.Integer(), nullable=False),
        sa.Column('nodes', sa.Integer(), nullable=False),
        sa.Column('size', sa.Integer(), nullable=False),
        sa.Column('max_parallel', sa.Integer(), nullable=True),
        sa.Column('spec', sa.JSON(), nullable=False),
        sa.Column('submitted_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['member_id'], ['member.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('jobarray', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_jobarray_member_id'), ['member_id'], unique=False)
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('array_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('array_index', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('array_values', sa.JSON(none_as_null=True), nullable=True))
        batch_op.create_foreign_key('fk_job_array_id_jobarray', 'jobarray', ['array_id'], ['id'])
        batch_op.create_index('ix_job_array', ['array_id', 'array_index'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_index('ix_job_array')
        batch_op.drop_constraint('fk_job_array_id_jobarray', type_='foreignkey')
        batch_op.drop_column('array_values')
        batch_op.drop_column('array_index')
        batch_op.drop_column('array_id')
    with op.batch_alter_table('jobarray', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobarray_member_id'))
    op.drop_table('jobarray')
