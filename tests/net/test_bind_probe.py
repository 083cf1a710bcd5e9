"""The pre-start port probe: a held port is refused, a port left in TIME_WAIT is not."""

import os
import re
import socket

import pytest

from shardroute.errors import StartupError
from shardroute.net.transport import check_bindable


def test_a_listening_port_is_refused_with_its_holder() -> None:
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        refused = re.escape(f"grpc_listen 127.0.0.1:{port}: cannot listen: the port is in use")
        refused += re.escape(f" by pid {os.getpid()} (")
        with pytest.raises(StartupError, match=refused):
            check_bindable("grpc_listen", f"127.0.0.1:{port}")


def test_a_port_whose_server_closed_first_is_free_again() -> None:
    # the server side closing first leaves its end in TIME_WAIT, as a SIGKILLed node's
    # connections to its clients are left; the restart on that port must still start
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()
    listener.close()
    assert client.recv(1) == b""  # the server's FIN arrived: its end is in TIME_WAIT
    client.close()
    check_bindable("grpc_listen", f"127.0.0.1:{port}")
