"""/metrics over TLS and with basic auth, for clusters that require them; probes stay open."""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from monitor.simulator import Simulator
from tests.support import run_cli, running_daemon, write_config

PASSWORD = "scrape-password-never-logged"


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(seed=5)
    pid = simulator.add_promotion()
    simulator.add_job(pid, status="completed")
    await simulator.start()
    yield simulator
    await simulator.stop()


async def test_metrics_over_tls_with_basic_auth(sim: Simulator, tmp_path: Path) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    certificate.cert_chain_pems[0].write_to_path(str(cert_file))
    certificate.private_key_pem.write_to_path(str(key_file))
    password_file = tmp_path / "scrape-password"
    password_file.write_text(PASSWORD + "\n", encoding="utf-8")
    config = write_config(
        tmp_path,
        sim,
        [{"id": p["id"]} for p in sim.promotions()],
        server={
            "tls_cert_file": str(cert_file),
            "tls_key_file": str(key_file),
            "basic_auth": {"username": "prometheus", "password_file": str(password_file)},
        },
        log={"level": "debug", "format": "json"},
    )
    async with running_daemon(config) as daemon:
        await daemon.wait_for("baseline_loaded")
        trusted = ssl.create_default_context()
        authority.configure_trust(trusted)
        base = f"https://127.0.0.1:{daemon.port}"
        async with aiohttp.ClientSession() as session:
            good = basic("prometheus", PASSWORD)
            async with session.get(f"{base}/metrics", ssl=trusted, headers=good) as response:
                assert response.status == 200
                assert "epcc_promotion_jobs{" in await response.text()
            bad = basic("prometheus", "wrong")
            async with session.get(f"{base}/metrics", ssl=trusted, headers=bad) as response:
                assert response.status == 401
            async with session.get(f"{base}/metrics", ssl=trusted) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"].startswith("Basic")
            # The kubelet's probes carry no credentials.
            async with session.get(f"{base}/healthz", ssl=trusted) as response:
                assert response.status == 200
            # Plain HTTP to the TLS port gets nothing useful.
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{daemon.port}/metrics") as response:
                    await response.read()
            # A client that does not trust the certificate refuses it.
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with session.get(f"{base}/healthz") as response:
                    await response.read()
    assert PASSWORD not in "\n".join(daemon.raw) + daemon.stderr


def test_unreadable_certificate_is_a_config_error(sim: Simulator, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        sim,
        [{"id": p["id"]} for p in sim.promotions()],
        server={
            "tls_cert_file": str(tmp_path / "no.crt"),
            "tls_key_file": str(tmp_path / "no.key"),
        },
    )
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"promo-monitor: server.tls_cert_file: cannot read {tmp_path / 'no.crt'}",
        f"promo-monitor: server.tls_key_file: cannot read {tmp_path / 'no.key'}",
    ]


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_certificate_that_does_not_load_is_refused_by_check_config_and_run_alike(
    sim: Simulator, tmp_path: Path, command: str
) -> None:
    # Readable but not a certificate: check-config used to say OK, and run then failed to
    # serve with an SSL error presented as a taken port (exit 1).
    (tmp_path / "junk.crt").write_text("not a certificate\n")
    (tmp_path / "junk.key").write_text("not a key\n")
    config = write_config(
        tmp_path,
        sim,
        [{"id": p["id"]} for p in sim.promotions()],
        server={
            "tls_cert_file": str(tmp_path / "junk.crt"),
            "tls_key_file": str(tmp_path / "junk.key"),
        },
    )
    result = run_cli(command, "--config", str(config))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("promo-monitor: server.tls_cert_file: ")
    assert "not a PEM certificate and its key" in line


@pytest.mark.parametrize("command", ["check-config", "run"])
@pytest.mark.parametrize("content", [b"", b"\n  \n", b"\xff\xfe\x00not utf-8"])
def test_a_password_file_without_a_password_is_refused_by_check_config_and_run_alike(
    sim: Simulator, tmp_path: Path, command: str, content: bytes
) -> None:
    (tmp_path / "password").write_bytes(content)
    config = write_config(
        tmp_path,
        sim,
        [{"id": p["id"]} for p in sim.promotions()],
        server={"basic_auth": {"username": "scraper", "password_file": str(tmp_path / "password")}},
    )
    result = run_cli(command, "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"promo-monitor: server.basic_auth.password_file: {tmp_path / 'password'} holds no "
        "UTF-8 password"
    ]
