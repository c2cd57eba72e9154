from __future__ import annotations

import os

import pytest

import netguard.sitecustomize  # noqa: F401  (loopback-only sockets for this test process)

# Tests use loopback servers; a proxy from the environment would route around them.
for _var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
    os.environ.pop(_var, None)
# The tests rely on runpod's guard being ON (only the narrow loopback allowance is used).
os.environ.pop("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS", None)


@pytest.fixture
def audio_host():
    from http_server import AudioHost

    host = AudioHost()
    yield host
    host.close()


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    from models import build_all

    return build_all(tmp_path_factory.mktemp("models"))
