"""Issue 17, the other doors: MQTT over TLS with a login read from a file (a real mosquitto with a
certificate and a password file), never credentials on the command line; the DQM page's optional login
(Bokeh's auth hooks) and the warning when it is exposed without one."""

from __future__ import annotations

import http.cookiejar
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, na64_command, require_program
from tests.dqm.conftest import Broker, DqmProcess

pytestmark = [pytest.mark.integration, pytest.mark.external]


def _tls_broker(tmp: Path) -> tuple[Broker, Path]:
    """mosquitto with a TLS listener (a CA made here signs its certificate for 127.0.0.1) and a password
    file (user 'dqm', password 's3cret word'); anonymous clients refused."""
    openssl, passwd = require_program("openssl"), require_program("mosquitto_passwd")
    path = Path(require_program("mosquitto"))

    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, cwd=tmp)

    run(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=na64 test CA",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    run(openssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
        "-out", "server.csr")  # fmt: skip
    (tmp / "san.cnf").write_text("subjectAltName = IP:127.0.0.1\n")
    run(openssl, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "san.cnf", "-out", "server.pem")  # fmt: skip
    run(passwd, "-b", "-c", str(tmp / "passwd"), "dqm", "s3cret word")
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {tmp / 'passwd'}\n"
        f"cafile {tmp / 'ca.pem'}\ncertfile {tmp / 'server.pem'}\nkeyfile {tmp / 'server.key'}\n"
        "persistence false\n" + ("user root\n" if os.geteuid() == 0 else "")
        # as root, mosquitto would drop to its own user, which cannot read the test's private directory
    )
    b = Broker(port, path, conf)
    b.start()
    return b, tmp / "ca.pem"


def _subscriber(port: int, ca: Path) -> Any:
    import paho.mqtt.client as mqtt

    got: list[Any] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.tls_set(ca_certs=str(ca))
    c.username_pw_set("dqm", "s3cret word")
    c.on_connect = lambda client, *a: client.subscribe("#", qos=1)
    c.on_message = lambda client, userdata, msg: got.append((msg.topic, msg.payload))
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c, got


def test_mqtt_over_tls_with_a_login_from_a_file(tmp_path: Path, dqm_process: Any) -> None:
    broker, ca = _tls_broker(tmp_path)
    cred = tmp_path / "mqtt-login"
    cred.write_text("dqm:s3cret word\n")
    cred.chmod(0o600)
    client, got = _subscriber(broker.port, ca)
    try:
        url = f"mqtts://127.0.0.1:{broker.port}"
        source = f"tcp://127.0.0.1:{free_port()}"
        dqm: DqmProcess = dqm_process(
            "--source",
            source,
            "--port",
            "0",
            "--mqtt",
            url,
            "--mqtt-ca",
            str(ca),
            "--mqtt-credentials",
            str(cred),
        )
        deadline = time.monotonic() + 20
        while not any(t.endswith("/status") and b'"online"' in p for t, p in got):
            assert time.monotonic() < deadline, dqm.output()[-2000:]
            time.sleep(0.1)
        dqm.stop()
    finally:
        client.loop_stop()
        client.disconnect()
        broker.stop()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--mqtt", "mqtt://dqm:pw@127.0.0.1:1883"], "no user or password in the URL"),
        (["--mqtt", "mqtt://127.0.0.1:1883", "--mqtt-ca", "/etc/hostname"], "use an mqtts:// URL"),
        (["--mqtt", "mqtts://127.0.0.1", "--mqtt-credentials", "/nonexistent"], "cannot read it"),
    ],
)
def test_mqtt_credentials_never_on_the_command_line(args: list[str], says: str) -> None:
    out = subprocess.run(
        na64_command("dqm", "--source", "tcp://127.0.0.1:1", "--port", "0", *args),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_the_page_asks_for_a_login_when_given_one(tmp_path: Path, dqm_process: Any) -> None:
    logins = tmp_path / "logins"
    logins.write_text("# shift crew\nshifter:correct horse\n")
    logins.chmod(0o600)
    dqm: DqmProcess = dqm_process(
        "--source", f"tcp://127.0.0.1:{free_port()}", "--port", "0", "--login-file", str(logins)
    )
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(dqm.url, timeout=10) as r:  # redirected to the login form
        form = r.read().decode()
        assert "/login" in r.url and 'name="password"' in form
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form)
    assert xsrf is not None

    def login(password: str) -> int:
        data = urllib.parse.urlencode(
            {"user": "shifter", "password": password, "_xsrf": xsrf.group(1)}
        ).encode()
        try:
            with opener.open(dqm.url.rstrip("/") + "/login?next=/", data=data, timeout=10) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    assert login("wrong") == 403
    assert not any(c.name == "na64_dqm_user" for c in jar)
    assert login("correct horse") == 200  # redirected to the page
    with opener.open(dqm.url, timeout=10) as r:
        assert r.url.rstrip("/") == dqm.url.rstrip("/") and "bokeh" in r.read().decode().lower()
    assert "failed login for 'shifter'" in dqm.output()


def test_an_exposed_page_without_a_login_is_warned_about(dqm_process: Any) -> None:
    dqm: DqmProcess = dqm_process(
        "--source", f"tcp://127.0.0.1:{free_port()}", "--host", "0.0.0.0", "--port", "0"
    )
    dqm.stop()
    assert "reachable from other machines without a login" in dqm.output()


def test_broker_login_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dqm.errors import DqmUserError
    from dqm.mqtt import BrokerAddress, credentials

    assert credentials(None, {"NA64_MQTT_USERNAME": "u", "NA64_MQTT_PASSWORD": "p w"}) == ("u", "p w")
    assert credentials(None, {}) is None
    with pytest.raises(DqmUserError, match="without NA64_MQTT_USERNAME"):
        credentials(None, {"NA64_MQTT_PASSWORD": "p"})
    f = tmp_path / "c"
    f.write_text("user:pa:ss\n")
    assert credentials(str(f), {"NA64_MQTT_USERNAME": "ignored"}) == ("user", "pa:ss")
    a = BrokerAddress.parse("mqtts://broker.example", None, ("u", "secret"))
    assert (a.port, a.tls) == (8883, True) and "secret" not in repr(a) + str(a)
