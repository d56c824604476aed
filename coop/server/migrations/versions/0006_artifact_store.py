"""artifact store: sets of files per attempt, storage quota

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('artifactset',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('member_id', sa.Integer(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('files', sa.Integer(), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('complete', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], ),
    sa.ForeignKeyConstraint(['member_id'], ['member.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('artifactset', schema=None) as batch_op:
        batch_op.create_index('ix_artifactset_job_kind', ['job_id', 'kind'], unique=False)
        batch_op.create_index(batch_op.f('ix_artifactset_member_id'), ['member_id'], unique=False)

    op.create_table('artifactfile',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('set_id', sa.Integer(), nullable=False),
    sa.Column('path', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.ForeignKeyConstraint(['set_id'], ['artifactset.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('set_id', 'path')
    )
    with op.batch_alter_table('artifactfile', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_artifactfile_set_id'), ['set_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_artifactfile_sha256'), ['sha256'], unique=False)

    with op.batch_alter_table('member', schema=None) as batch_op:
        batch_op.add_column(sa.Column('storage_bytes', sa.BigInteger(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('member', schema=None) as batch_op:
        batch_op.drop_column('storage_bytes')

    with op.batch_alter_table('artifactfile', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_artifactfile_sha256'))
        batch_op.drop_index(batch_op.f('ix_artifactfile_set_id'))

    op.drop_table('artifactfile')
    with op.batch_alter_table('artifactset', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_artifactset_member_id'))
        batch_op.drop_index('ix_artifactset_job_kind')

    op.drop_table('artifactset')
