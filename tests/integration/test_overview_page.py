"""The overview page in a real browser: Debian's Chromium, headless, JavaScript off, against a
real worker fed with a campaign whose 131049 spike is still going on. The page shows the open
incident and the spiking template first; a template named like an XSS payload stays text. A
screenshot is kept in tests/artifacts/overview.png (ignored by git).

Chromium comes from Debian's ``chromium`` package (``.ci/run`` installs it). Without it the test
fails in CI (``CI`` set) and is skipped elsewhere, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from streams.asyncutil import run_sync
from streams.settings import Settings
from streams.simulate import Message, envelope, spike_campaign, status_item
from streams.topics import ensure_topics, source_topics
from testkit.kafka import produce
from testkit.worker import REPO, WorkerProcess, get_json, unique_env, wait_until

pytestmark = [pytest.mark.kafka]

ARTIFACTS = REPO / "tests" / "artifacts"
HOSTILE = '<script>document.title="owned"</script><img src=x onerror=alert(1)>'
START = 1_767_225_600


def chromium() -> str:
    path = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else ""
    )
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail("chromium not found: .ci/run installs Debian's chromium package")
    pytest.skip("chromium not installed (apt-get install chromium); CI runs this test")


def browse(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Headless Chromium with JavaScript off (the profile blocks it for every site: the
    ``scriptEnabled`` blink setting would also stop ``--dump-dom`` and ``--screenshot``), a
    throwaway profile and no background traffic."""
    (profile / "Default").mkdir(parents=True, exist_ok=True)
    preferences = {"profile": {"default_content_setting_values": {"javascript": 2}}}
    (profile / "Default" / "Preferences").write_text(json.dumps(preferences))
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
        url,
    ]
    result = subprocess.run(command, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    return result


class Dom(HTMLParser):
    """Tags, attributes and the text of each section of the DOM Chromium dumped."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[str] = []
        self.text: dict[str, str] = {}
        self._section = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(name for name, _ in attrs)
        ident = dict(attrs).get("id")
        if tag in ("section", "div") and ident:
            self._section = ident

    def handle_data(self, data: str) -> None:
        self.text[self._section] = self.text.get(self._section, "") + data


def hostile_template_failures(minute: int) -> list[bytes]:
    """Six 131049 failures of a template whose name is markup, in the spike's last minute."""
    bodies = []
    for i in range(6):
        ts = START + minute * 60 + 10 + i
        m = Message(
            wamid=f"wamid.HOSTILE{i:04d}",
            sender="106540352242922",
            display="15550783881",
            recipient=f"55119876{i:05d}",
            country="BR",
            template=HOSTILE,
            category="marketing",
            sent_at=ts,
            statuses=[("failed", ts, 131049)],
            opaque=True,
            campaign="<b>campaign</b>",
        )
        bodies.append(envelope(m.sender, m.display, [status_item(m, "failed", ts, 131049)]))
    return bodies


def test_the_page_shows_the_open_incident_and_the_spiking_template(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    chromium()
    env = unique_env(
        kafka_bootstrap,
        tmp_path / "state",
        DELIVERY_MONITOR_STORE="memory://",
        DELIVERY_MONITOR_LAG_INTERVAL="2",
        DELIVERY_MONITOR_SUMMARY_INTERVAL="3",
        DELIVERY_MONITOR_GRAFANA_URL="http://grafana.example.test",
    )
    settings = Settings.from_env(env)
    run_sync(ensure_topics(kafka_bootstrap, source_topics(settings), 1))
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        worker.start()
        # 24 minutes, the spike from minute 18 to the end: it is still firing when the page
        # is read (it resolves only after 5 clear minutes of event time)
        campaign = spike_campaign(minutes=24, spike_campaign_id="spring-launch")
        produce(
            kafka_bootstrap, settings.topic_raw, campaign.payloads + hostile_template_failures(23)
        )

        def firing() -> list[dict[str, object]] | None:
            _, body = get_json(f"{worker.base_url}/v1/alerts")
            return [i for i in body["open"] if i["scope"]["key"] == "promo_spike"] or None

        wait_until(firing, 120, f"the spike's incident\n{worker.log_tail()}", 1.0)
        wait_until(
            lambda: get_json(f"{worker.base_url}/v1/health")[1]["consumer_lag"],
            30,
            "a consumer-lag measurement",
        )
        with urllib.request.urlopen(worker.base_url + "/", timeout=30) as resp:
            assert resp.headers["Content-Type"].startswith("text/html")
            assert "script-src 'none'" in resp.headers["Content-Security-Policy"]

        # the browser really runs pages without JavaScript
        canary = "data:text/html,<p id=c>off</p><script>c.textContent='on'</script>"
        assert b'<p id="c">off</p>' in browse(canary, tmp_path / "p0", "--dump-dom").stdout
        # the DOM as Chromium built it: no script element, no handler attribute (and the
        # page's CSP forbids scripts anyway)
        dumped = browse(worker.base_url + "/", tmp_path / "profile-dom", "--dump-dom")
        dom = Dom()
        dom.feed(dumped.stdout.decode())
        assert "script" not in dom.tags and "img" not in dom.tags
        assert not [a for a in dom.attrs if a.startswith("on")]
        incidents = dom.text["incidents"]
        assert "Open incidents (1)" in incidents
        assert "Per-user marketing limit (131049) spike: template promo_spike" in incidents
        assert "campaign spring-launch" in incidents  # the spike's campaign is affected too
        assert "do not resend to these recipients for at least 24 h" in incidents
        templates = dom.text["templates"]
        assert templates.index("promo_spike") < templates.index("promo_00")
        assert HOSTILE in templates  # shown as text, never as markup
        assert "<b>campaign</b>" in dom.text["campaigns"]
        assert "spring-launch" in dom.text["campaigns"]

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "overview.png"
        shot.unlink(missing_ok=True)
        browse(
            worker.base_url + "/",
            tmp_path / "profile-shot",
            f"--screenshot={shot}",
            "--window-size=1280,1700",
            "--hide-scrollbars",
        )
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
        print(f"screenshot: {shot}")

        def summarized() -> str | None:  # a summary line comes every 3 s
            text = worker.log_path.read_text()
            return text if "summary: " in text and "1 open incident (" in text else None

        log = wait_until(summarized, 30, "a summary line with the open incident")
        assert "[^MonitorWorker]: Starting" not in log  # Faust's start-up lines are below INFO
    finally:
        worker.stop()
