"""workers per device: which device a worker measures on, which a job asks for and ran on, and who runs it

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 10:00:00.000000

Existing workers count as CPU workers, existing jobs asked for any device ("auto") and were run by a worker, so
the upgrade keeps every row and needs no data step. `jobs.device` (where a job ran) stays NULL for old jobs.
Plain-string server defaults, as in 0003, so SQLite adds the columns with ALTER TABLE instead of a rebuild.
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('device', sa.String(length=50), server_default='cpu', nullable=False))
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('device_kind', sa.String(length=20), server_default='auto', nullable=False))
        batch_op.add_column(sa.Column('device', sa.String(length=250), nullable=True))
        batch_op.add_column(sa.Column('runner', sa.String(length=20), server_default='worker', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('runner')
        batch_op.drop_column('device')
        batch_op.drop_column('device_kind')
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.drop_column('device')
