"""The gateway's live status page (serving/services/status_page.py), driven the way an operator uses it.

Every model service of the repository's zoo.yaml runs as a real app on a loopback port (uvicorn), each with
its manager on a FakeDevice and fake adapters (the page shows the manager, not the models' outputs); the
real gateway sits in front with the thermal API and an admin token. Then:
- the JSON feed and the admin proxy over HTTP (auth, validation, unknown service, a service down);
- headless Chromium (Debian's `chromium`, driven by Playwright's Python client through its executable):
  the page loads, shows a card for every service, preloads a model through the UI with the admin token
  and sees the VRAM bar grow, sets a thermal state, sees the events list, and saves a screenshot that
  must not be blank (in the test's temporary folder; `ZOO_SCREENSHOT_TO=docs/status-page.png pytest ...`
  refreshes the one committed in docs/, so a test run never modifies the repository).
  Every request the page makes must go to the gateway.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import httpx
import pytest

from serving.vram.fakes import FakeBehaviour
from tests.integration.debian_tools import ensure
from tests.integration.zoo_fakes import TOKEN, running_zoo

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_feed_and_admin_proxy_over_http(zoo, tmp_path):
    with running_zoo(zoo, tmp_path, down=frozenset({"clip"})) as (gw, _), httpx.Client(base_url=gw, timeout=30) as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script src="/ui/status.js">' in page.text
        assert c.get("/ui/status.js").headers["content-type"].startswith("text/javascript")
        assert c.get("/ui/nope.js").json()["error_type"] == "not_found"
        feed = c.get("/zoo/feed").json()
        model_services = {n for n, s in zoo.services.items() if s.kind != "gateway"}
        assert set(feed["services"]) == model_services
        assert feed["services"]["clip"]["reachable"] is False and "unreachable" in feed["services"]["clip"]["error"]
        # refused connections fail fast by themselves: the gateway's circuit (serving/router/breaker.py) stays closed
        assert feed["services"]["clip"]["circuit"]["state"] == "closed"
        assert feed["services"]["detection"]["circuit"]["state"] == "closed"
        det = feed["services"]["detection"]
        assert det["reachable"] and det["status"]["vram_used_mb"] > 0 and det["gpu"] == 0
        assert {m["name"] for m in det["models"]} == set(zoo.services["detection"].models)
        assert all(m["leases"] == 0 for m in det["models"])
        assert feed["admin_required"] and feed["thermal_api"]
        # the `always` models loaded at start are in the event list
        assert any(e["type"] == "load" and e["model"] == "yolo26" for e in feed["events"])

        url = "/zoo/services/enrichment-light/models/preload"
        assert c.post(url, json={"model": "pet_classifier"}).json()["error_type"] == "unauthorized"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = c.post(url, json={"model": "pet_classifier"}, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = c.post(url, json={"model": 7}, headers=auth)
        assert r.status_code == 422 and r.json()["error_type"]
        r = c.post("/zoo/services/nope/models/preload", json={"model": "x"}, headers=auth)
        assert r.status_code == 404 and r.json()["error_type"] == "not_found"
        r = c.post("/zoo/services/enrichment-light/models/explode", json={"model": "x"}, headers=auth)
        assert r.status_code == 422
        r = c.post(url, json={"model": "no_such_model"}, headers=auth)
        assert r.status_code == 404 and r.json()["error_type"] == "unknown_model"
        r = c.post("/zoo/services/clip/models/preload", json={"model": "clip_vit_l"}, headers=auth)
        assert r.status_code == 503 and r.json()["error_type"] == "service_unavailable"

        r = c.post(url, json={"model": "pet_classifier", "unknown": 1}, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["models"][0]["tier"] == "HOT"
        feed = c.get("/zoo/feed").json()
        light = feed["services"]["enrichment-light"]
        assert "pet_classifier" in {m["name"] for m in light["status"]["loaded_models"]}
        assert any(e["type"] == "load" and e["model"] == "pet_classifier" for e in feed["events"])
        r = c.post("/zoo/services/enrichment-light/models/unload", json={"model": "pet_classifier", "to": "warm"},
                   headers=auth)
        assert r.status_code == 200 and r.json()["models"][0]["tier"] == "WARM"
        feed = c.get("/zoo/feed").json()
        evict = [e for e in feed["events"] if e["type"] == "evict" and e["model"] == "pet_classifier"]
        assert evict and "HOT -> WARM (request)" in evict[0]["detail"]
        warm = {m["name"]: m for m in feed["services"]["enrichment-light"]["models"]}["pet_classifier"]
        assert warm["tier"] == "WARM" and warm["host_mb"] > 0


def _not_blank(png: bytes) -> tuple[int, float]:
    """(distinct colours, standard deviation of the grey levels) of a screenshot."""
    from PIL import Image, ImageStat

    img = Image.open(io.BytesIO(png)).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 20) or []
    return len(colours), ImageStat.Stat(img.convert("L")).stddev[0]


@pytest.mark.slow
def test_status_page_in_headless_chromium(zoo, tmp_path):
    chromium = ensure("chromium", "chromium")
    from playwright.sync_api import expect, sync_playwright

    gate = threading.Event()  # holds the load of segformer_clothes so the page can show it loading
    behaviour = FakeBehaviour(gates={"segformer_clothes": gate})
    with running_zoo(zoo, tmp_path, behaviour=behaviour) as (gw, _), sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(  # a fresh --user-data-dir
            tmp_path / "chromium", executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1500, "height": 1100})
        try:
            page = browser.new_page()
            requested: list[str] = []
            page.on("request", lambda req: requested.append(req.url))
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(gw + "/")

            # every service has a card, with the models its manager holds
            for name, spec in zoo.services.items():
                if spec.kind != "gateway":
                    expect(page.locator(f'.card[data-service="{name}"]')).to_be_visible(timeout=15_000)
            expect(page.locator('.card[data-service="detection"] .bar.vram .seg[data-model="yolo26"]')).to_have_count(1)
            expect(page.locator("#summary")).to_contain_text("6/6 services up")
            expect(page.locator("#events li[data-type=load]").first).to_be_visible()

            # read-only without a token: the buttons are disabled
            preload = page.locator('.card[data-service="enrichment-light"] button[data-action=preload]'
                                   '[data-model="pet_classifier"]')
            expect(preload).to_be_disabled()
            bar = page.locator('.card[data-service="enrichment-light"] .bar.vram')
            used_before = float(bar.get_attribute("data-used-mb"))
            expect(bar.locator('.seg[data-model="pet_classifier"]')).to_have_count(0)

            page.fill("#token", TOKEN)
            expect(preload).to_be_enabled()
            preload.click()
            expect(bar.locator('.seg[data-model="pet_classifier"][data-tier="HOT"]')).to_have_count(1, timeout=15_000)
            used_after = float(page.locator('.card[data-service="enrichment-light"] .bar.vram')
                               .get_attribute("data-used-mb"))
            assert used_after > used_before, (used_before, used_after)
            expect(page.locator('#events li[data-type=load]', has_text="pet_classifier").first).to_be_visible()
            expect(page.locator("#toast")).to_contain_text("preload pet_classifier on enrichment-light: done")

            # set a thermal state through the UI (the control plane's PUT /thermal/models/{id})
            page.select_option('.card[data-service="enrichment-light"] select[data-model="depth_estimator"]', "WARM")
            expect(page.locator("#toast")).to_contain_text("thermal depth_estimator -> WARM: done", timeout=15_000)
            page.locator("body").click(position={"x": 5, "y": 5})  # blur the menu so the card re-renders
            expect(page.locator('.card[data-service="enrichment-light"] select[data-model="depth_estimator"]')
                   ).to_have_value("WARM", timeout=15_000)

            # unload: the model leaves the VRAM bar
            page.locator('.card[data-service="enrichment-light"] button[data-action=unload]'
                         '[data-model="pet_classifier"]').click()
            expect(bar.locator('.seg[data-model="pet_classifier"]')).to_have_count(0, timeout=15_000)
            expect(page.locator("#events li[data-type=evict]", has_text="pet_classifier").first).to_be_visible()

            # a load in flight is a striped "loading" segment on the bar and its row says loading
            auth = {"Authorization": f"Bearer {TOKEN}"}
            holder = threading.Thread(target=lambda: httpx.post(
                f"{gw}/zoo/services/enrichment/models/preload", json={"model": "segformer_clothes"}, headers=auth,
                timeout=60))
            holder.start()
            heavy = page.locator('.card[data-service="enrichment"]')
            expect(heavy.locator('.bar.vram .seg[data-model="segformer_clothes"][data-tier="loading"]')
                   ).to_have_count(1, timeout=15_000)
            expect(heavy.locator('tr[data-model="segformer_clothes"] td.tier')).to_have_text("loading")
            gate.set()
            holder.join(timeout=60)
            expect(heavy.locator('.bar.vram .seg[data-model="segformer_clothes"][data-tier="HOT"]')
                   ).to_have_count(1, timeout=15_000)

            # a busier picture for the screenshot: more enrichment models HOT, one parked WARM in host RAM
            for model, to in (("fashion_clip", None), ("vehicle_classifier", None), ("demographics_age", "warm")):
                r = httpx.post(f"{gw}/zoo/services/enrichment/models/preload", json={"model": model}, headers=auth)
                assert r.status_code == 200, r.text
                if to:
                    r = httpx.post(f"{gw}/zoo/services/enrichment/models/unload", json={"model": model, "to": to},
                                   headers=auth)
                    assert r.status_code == 200, r.text
            expect(heavy.locator('.bar.vram .seg[data-tier="HOT"]')).to_have_count(3, timeout=15_000)
            expect(heavy.locator('.bar.host .seg[data-model="demographics_age"]')).to_have_count(1, timeout=15_000)

            png = page.screenshot(full_page=True)
            (tmp_path / "status-page.png").write_bytes(png)
            if os.environ.get("ZOO_SCREENSHOT_TO"):
                Path(os.environ["ZOO_SCREENSHOT_TO"]).write_bytes(png)
        finally:
            browser.close()
    colours, stddev = _not_blank(png)
    assert colours > 50 and stddev > 10, (colours, stddev)
    assert not errors, errors
    outside = [u for u in requested if not u.startswith(gw)]
    assert not outside, f"the page fetched from outside the gateway: {outside}"
