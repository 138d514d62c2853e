"""A moto S3 server on a free loopback port, in its own process (tests and benchmarks use it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bridge-test-key",
    "AWS_SECRET_ACCESS_KEY": "bridge-test-secret-do-not-log",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def use_test_credentials() -> None:
    """Credentials for this process and what it starts (moto accepts any). Without any, the client
    sends unsigned aws-chunked bodies, which moto stores with their framing: files come back altered."""
    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)


def start_s3_server(env: dict | None = None, bucket: str | None = None) -> tuple[subprocess.Popen, str]:
    """(the server process, its endpoint URL); `bucket` is created when given. Kill it when done."""
    use_test_credentials()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError("the moto S3 server did not start (pip install 'moto[server]')") from None
            time.sleep(0.2)
    if bucket:
        import pyarrow.fs as pafs

        pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1", allow_bucket_creation=True
        ).create_dir(bucket)
    return server, endpoint
