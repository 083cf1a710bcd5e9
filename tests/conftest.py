import pytest


@pytest.fixture
def anyio_backend() -> str:
    # grpc.aio and SQLAlchemy's async engine are asyncio-only; the node runs on asyncio.
    return "asyncio"
